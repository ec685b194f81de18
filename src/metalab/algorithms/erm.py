"""Empirical risk minimization on group batches: the baseline of adaptive risk minimization.

No adaptation, ``h(theta; x) = theta``: every task of a `TaskBatch` is one group's batch
and is scored with the model itself. With groups drawn in proportion to their frequency
this is ERM, with a uniform sampler UW (upweighting) and with the ``group_dro`` combiner
group DRO (Sagawa et al. 2020).
"""

from __future__ import annotations

from torch import Tensor, nn

from metalab.algorithms.base import MetaLearner
from metalab.algorithms.stream import check_inputs
from metalab.tasks import TaskBatch


def batched(model: nn.Module, x: Tensor) -> Tensor:
    """``model`` on every example of ``x [T, N, ...]`` as one batch, back to ``[T, N, ...]``."""
    outputs = model(x.flatten(0, 1))
    return outputs.view(*x.shape[:2], *outputs.shape[1:])


class ERM(MetaLearner, name="erm"):
    """Empirical risk minimization: each task's loss on its query set, no adaptation.

    All tasks of a batch go through the model as one batch in training (as a minibatch of
    the official code), so ordinary batch norm pools its training statistics over the
    groups of the meta-batch and uses running statistics in `eval()`, where `adapt`
    predicts (the support set is ignored).
    """

    adapts_to_support = False

    def __init__(self, model: nn.Module, loss: str = "cross_entropy") -> None:
        super().__init__(loss)
        self.model = model

    def training_task_losses(self, batch: TaskBatch) -> tuple[Tensor, dict[str, Tensor]]:
        return self.stacked_scores(zip(batched(self.model, batch.query_x), batch.query_y,
                                       strict=True))

    def adapt_task(self, support_x: Tensor | None, support_y: Tensor | None = None, *,
                   training: bool) -> None:
        """Nothing: ERM does not adapt (both arguments are ignored)."""
        if support_x is not None:
            check_inputs("support_x", support_x)
        return None

    def predict(self, state: None, x: Tensor) -> Tensor:
        check_inputs("x", x)
        return self.model(x)
