"""How one training step gets its ``.grad``: the learner's mean loss, or a combined step.

The trainer holds one `BackwardStep`, chosen once (`metalab.train.trainer.backward_step_for`):
`MeanBackward` here (``learner.meta_backward``: the gradient of the mean task loss plus the
regularizer), or `metalab.train.combined_step.CombinedStep` when a combiner merges the
per-task gradients or gradient diagnostics are asked for.
"""

from __future__ import annotations

from metalab.algorithms import MetaLearner
from metalab.tasks import TaskBatch
from metalab.train import distributed


class BackwardStep:
    """Sets ``.grad`` of the trained parameters for one meta-batch (this process's shard).

    ``backward(batch, share, diagnose)`` returns the batch's mean metrics; with
    ``diagnose`` it keeps what `diagnostics` needs, which is called after the optimizer
    step and returns ``{}`` for a step that has none.
    """

    def backward(self, batch: TaskBatch, share: float = 1.0,
                 diagnose: bool = False) -> dict[str, float]:
        raise NotImplementedError

    def diagnostics(self, batch: TaskBatch, share: float = 1.0) -> dict[str, float]:
        return {}


class MeanBackward(BackwardStep):
    """``d/dtheta`` of the mean task loss: each process back-propagates its share
    ``T_r / T`` of it, ``task_chunk`` tasks at a time, and the gradients are summed over
    processes."""

    def __init__(self, learner: MetaLearner, task_chunk: int | None = None) -> None:
        self.learner = learner
        self.task_chunk = task_chunk

    def backward(self, batch: TaskBatch, share: float = 1.0,
                 diagnose: bool = False) -> dict[str, float]:
        metrics = self.learner.meta_backward(batch, self.task_chunk, scale=share)
        distributed.all_reduce_gradients(self.learner.parameters())
        return metrics

