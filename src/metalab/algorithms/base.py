"""The `MetaLearner` contract shared by every method.

A meta-learner is an `nn.Module` with ordinary parameters (so any optimizer, DDP and
``state_dict`` work) and three entry points:

- ``task_losses(batch, training=True) -> (losses [T], metrics {name: [T]})``: the query
  loss of every task after adapting to its support set, and per-task metrics;
- ``meta_loss(batch) -> (loss, metrics)``: their mean, ready for ``loss.backward()``;
- ``meta_backward(batch, task_chunk)``: the same gradient, back-propagated chunk by chunk;
- ``adapt(support_x, support_y) -> Predictor``: meta-test adaptation to one task.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metalab.tasks import TaskBatch
from metalab.tasks.source import check_positive_int


def mse_loss(outputs: Tensor, targets: Tensor) -> Tensor:
    return F.mse_loss(outputs, targets)


def accuracy(logits: Tensor, labels: Tensor) -> Tensor:
    return (logits.argmax(dim=-1) == labels).to(logits.dtype).mean()


LOSSES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "cross_entropy": F.cross_entropy,
    "mse": mse_loss,
}
# The metric reported for each loss, with the direction that is better.
METRICS: dict[str, tuple[str, Callable[[Tensor, Tensor], Tensor]]] = {
    "cross_entropy": ("accuracy", accuracy),
    "mse": ("mse", mse_loss),
}


def check_loss(loss: str) -> str:
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {sorted(LOSSES)}, got {loss!r}")
    return loss


class Predictor:
    """A model adapted to one task: ``predictor(x)`` returns logits or predictions."""

    def __init__(self, forward: Callable[[Tensor], Tensor]) -> None:
        self._forward = forward

    @torch.no_grad()
    def __call__(self, x: Tensor) -> Tensor:
        return self._forward(x)


class MetaLearner(nn.Module):
    """Base class. Subclasses implement `task_losses` and `adapt`."""

    def __init__(self, loss: str = "cross_entropy") -> None:
        super().__init__()
        self.loss_name = check_loss(loss)
        self.loss_fn = LOSSES[loss]
        self.metric_name, self.metric_fn = METRICS[loss]
        self._compiled_task_losses: Callable | None = None

    @property
    def task_type(self) -> str:
        return "classification" if self.loss_name == "cross_entropy" else "regression"

    def task_losses(self, batch: TaskBatch, training: bool = True
                    ) -> tuple[Tensor, dict[str, Tensor]]:
        raise NotImplementedError

    def compile(self, **options) -> MetaLearner:
        """Compile the meta-training pass with `torch.compile` (``options`` go to it).

        Same numbers (tested in float64); for small models, where the step is bound by
        Python and dispatch overhead, it is several times faster after a one-off compile.
        Evaluation and `adapt` stay eager.
        """
        self._compiled_task_losses = torch.compile(self.task_losses, **options)
        return self

    def training_losses(self, batch: TaskBatch) -> tuple[Tensor, dict[str, Tensor]]:
        """``task_losses(batch, training=True)``, through `compile` when it was called."""
        task_losses = self._compiled_task_losses or self.task_losses
        return task_losses(batch, training=True)

    def shared_parameter_names(self) -> list[str]:
        """Parameters every task shares (a gradient combiner's ``combine_params="shared"``).

        All trainable parameters by default; multi-task learners exclude per-task heads.
        """
        return [n for n, p in self.named_parameters() if p.requires_grad]

    def regularizer(self) -> Tensor | None:
        """A term of the meta-parameters alone, added once per meta-batch to the task loss.

        ``None`` (the default) adds nothing. Meta-regularization (MR-MAML's
        ``beta * KL(q || p)``) overrides it; the trainer adds it whichever way the tasks
        are combined, and `regularizer_metrics` names it in the logs.
        """
        return None

    def regularizer_metrics(self) -> dict[str, float]:
        """Extra logged values that explain `regularizer` (e.g. the KL itself)."""
        return {}

    def meta_loss(self, batch: TaskBatch) -> tuple[Tensor, dict[str, float]]:
        """Mean query loss over the tasks of ``batch`` plus `regularizer`, differentiable
        w.r.t. the parameters."""
        losses, metrics = self.training_losses(batch)
        loss = losses.mean()
        summary = {name: values.mean().item() for name, values in metrics.items()}
        regularizer = self.regularizer()
        if regularizer is not None:
            summary["query_loss"] = loss.item()
            summary.update(self.regularizer_metrics())
            loss = loss + regularizer
        summary["loss"] = loss.item()
        return loss, summary

    def meta_backward(self, batch: TaskBatch, task_chunk: int | None = None,
                      scale: float = 1.0) -> dict[str, float]:
        """Accumulate ``scale`` times the meta-gradient of ``batch`` into ``.grad``.

        The tasks are back-propagated in chunks of at most ``task_chunk`` (``None``: all at
        once), so peak memory holds one chunk's graph; the gradient is the same.
        Returns the task-weighted mean metrics.
        """
        size = len(batch) if task_chunk is None else check_positive_int("task_chunk",
                                                                         task_chunk)
        metrics: dict[str, float] = {}
        for start in range(0, len(batch), size):
            chunk = batch[start: start + size]
            weight = len(chunk) / len(batch)
            loss, chunk_metrics = self.meta_loss(chunk)
            (loss * (scale * weight)).backward()
            for name, value in chunk_metrics.items():
                metrics[name] = metrics.get(name, 0.0) + weight * value
        return metrics

    def adapt(self, support_x: Tensor, support_y: Tensor) -> Predictor:
        raise NotImplementedError
