"""Multi-task learning as a `MetaLearner`: one loss per task, no inner loop.

Entry t of a `TaskBatch` is task ``task_id[t]``'s data; the learner scores its query set
with the model conditioned on that task (a head, a FiLM row, see `metalab.nn.multitask`):

    L_t(theta_sh, theta_t) = loss(f(query_x[t]; theta_sh, theta_t), query_y[t])

`task_losses` returns ``[L_1 .. L_T]`` (Sener & Koltun 2018, eq. 1: the per-task
empirical losses); `meta_loss` is their mean (the uniform scalarisation), and a gradient
combiner (PCGrad, MGDA, ...) can instead combine their gradients with respect to the
shared parameters ``theta_sh`` (`shared_parameter_names`). The support set is ignored.

Multi-task models do not adapt from a support set: ``learner.predictor(task_id)`` is the
`Predictor` for one task, and `adapt` raises an error saying so.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

from metalab.algorithms.base import MetaLearner, Predictor
from metalab.tasks import TaskBatch


class MultiTask(MetaLearner, name="multitask"):
    """Per-task query losses of a task-conditioned ``model(x, task_id)``.

    Args:
        model: called as ``model(x, task_id)`` with a Python int task id (e.g. `MultiHead`,
            `FiLMNet`); if it has ``shared_parameter_names()``, those are the shared
            parameters, otherwise all of its parameters are.
        loss: ``"cross_entropy"`` (classification) or ``"mse"``.
    """

    adapts_to_support = False

    def __init__(self, model: nn.Module, loss: str = "cross_entropy") -> None:
        super().__init__(loss)
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        self.model = model

    def shared_parameter_names(self) -> list[str]:
        """Names (as in ``self.named_parameters()``) of the parameters every task uses."""
        names = getattr(self.model, "shared_parameter_names", None)
        inner = names() if names is not None else [n for n, _ in self.model.named_parameters()]
        return [f"model.{name}" for name in inner]

    @staticmethod
    def _task_ids(batch: TaskBatch) -> list[int]:
        if batch.task_id is None:
            return list(range(len(batch)))
        return [int(t) for t in batch.task_id]

    def task_losses(self, batch: TaskBatch, training: bool = True, **options
                    ) -> tuple[Tensor, dict[str, Tensor]]:
        """``(losses [T], {metric: [T]})``: entry t is task ``batch.task_id[t]``'s query loss.

        Multi-task learning does not adapt, so training and evaluation share this one
        pass (the model's own train/eval mode decides batch norm).
        """
        self.check_adapt_options(options)
        if batch.query_x.shape[1] == 0:
            raise ValueError("MultiTask needs query examples: batch.query_x has 0 examples "
                             "per task")
        losses, metrics = [], []
        with torch.set_grad_enabled(training and torch.is_grad_enabled()):
            for entry, task in enumerate(self._task_ids(batch)):
                outputs = self.model(batch.query_x[entry], task)
                losses.append(self.loss_fn(outputs, batch.query_y[entry]))
                metrics.append(self.metric_fn(outputs, batch.query_y[entry]).detach())
        return torch.stack(losses), {self.metric_name: torch.stack(metrics)}

    def training_task_losses(self, batch: TaskBatch) -> tuple[Tensor, dict[str, Tensor]]:
        return self.task_losses(batch, training=True)

    def predictor(self, task_id: int | Tensor) -> Predictor:
        """The model for task ``task_id``: ``learner.predictor(t)(x)`` returns its outputs.

        The model runs in its current mode: call ``learner.eval()`` first so that batch
        norm uses its running statistics.
        """
        task = int(task_id)
        return Predictor(lambda x: self.model(x, task))

    def adapt(self, support_x: Tensor, support_y: Tensor | None = None, **options) -> Predictor:
        raise NotImplementedError(
            "MultiTask models do not adapt from a support set; use learner.predictor(task_id) "
            "to get the predictor of one task")


@torch.no_grad()
def per_task_metrics(learner: MetaLearner, batches: Iterable[TaskBatch], num_tasks: int
                     ) -> dict[str, Tensor]:
    """Example-weighted mean loss and metric of every task over ``batches`` (eval mode).

    Each entry of every batch is attributed to its ``task_id`` (entry index when absent).
    Returns ``{"loss": [num_tasks], <metric>: [num_tasks], "examples": [num_tasks]}``;
    over a source's ``evaluation_batches()`` this is the exact per-task test accuracy.
    """
    totals: dict[str, Tensor] = {}
    examples = torch.zeros(num_tasks, dtype=torch.float64)
    was_training = learner.training
    learner.eval()
    try:
        for batch in batches:
            losses, metrics = learner.task_losses(batch, training=False)
            ids = batch.task_id if batch.task_id is not None else torch.arange(len(batch))
            if int(ids.max()) >= num_tasks:
                raise ValueError(f"a batch has task_id {int(ids.max())} but num_tasks="
                                 f"{num_tasks}")
            size = batch.query_x.shape[1]
            for name, values in {"loss": losses, **metrics}.items():
                total = totals.setdefault(name, torch.zeros(num_tasks, dtype=torch.float64))
                total.index_add_(0, ids.cpu(), values.detach().cpu().double() * size)
            examples.index_add_(0, ids.cpu(), torch.full((len(batch),), float(size),
                                                          dtype=torch.float64))
    finally:
        learner.train(was_training)
    if bool((examples == 0).any()):
        missing = torch.nonzero(examples == 0).flatten().tolist()
        raise ValueError(f"no examples of tasks {missing} in the batches")
    return {**{name: total / examples for name, total in totals.items()}, "examples": examples}
