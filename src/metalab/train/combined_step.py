"""The meta-gradient of one step when a combiner merges the tasks (PCGrad, group DRO, ...).

A `metalab.combiners.Combiner` either reweights the per-task losses
(``needs_gradients = False``: mean, uncertainty weighting, group DRO) or turns the matrix
of per-task gradients ``G [T, P]`` into one update (PCGrad, MGDA, CAGrad, GradNorm).

Loss weighting is back-propagated directly: the combiner is applied to detached copies of
the losses (so its state, e.g. DRO's group weights, is updated once per step), its
derivative with respect to each loss is that task's weight ``w_t``, and ``sum_t w_t L_t``
is back-propagated through the learner. Every other case (gradient combiners, diagnostics,
``task_chunk``, several processes) builds ``G`` one task at a time and sets
``.grad = combiner(G)`` for the combined parameters; the others (a multi-task model's heads
under ``combine_params="shared"``) get the plain mean, or ``w @ G`` for loss weighting.
With several processes each computes the rows of its tasks and all gather ``G`` and the
losses, so every process applies the same update and the combiner's state stays in step.

Diagnostics live here too, since they read ``G``: on a diagnosed step `CombinedStep.diagnostics`
reports the task-gradient statistics (`metalab.combiners.gradient_statistics`: cosines,
fraction conflicting, norm ratio) and the curvature of the loss along the update, the three
conditions of the "tragic triad" (Yu et al. 2020).
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.nn.utils import parameters_to_vector

from metalab.algorithms import MetaLearner
from metalab.combiners import gradient_statistics
from metalab.tasks import TaskBatch
from metalab.train import distributed
from metalab.train.backward import BackwardStep
from metalab.train.config import CombineParams
from metalab.validation import check_choice

COMBINE_PARAMS = typing.get_args(CombineParams)


@dataclass
class TaskGradients:
    """Per-task losses and gradients of a meta-batch (the rows of ``G``)."""

    losses: Tensor  # [T], detached
    grads: Tensor  # [T, P]: the combined parameters' columns first, then the others
    metrics: dict[str, float] = field(default_factory=dict)


def _flat(grads, params: list[nn.Parameter]) -> Tensor:
    return torch.cat([torch.zeros(p.numel(), dtype=p.dtype, device=p.device) if g is None
                      else g.reshape(-1) for g, p in zip(grads, params, strict=True)])


def _task_weighted(parts: list[dict[str, Tensor]], total: int) -> dict[str, float]:
    """The mean over all ``total`` tasks of each per-task metric, from chunks of tasks."""
    summary: dict[str, float] = {}
    for metrics in parts:
        for name, values in metrics.items():
            summary[name] = summary.get(name, 0.0) + values.detach().sum().item() / total
    return summary


def task_gradients(learner: MetaLearner, batch: TaskBatch, params: list[nn.Parameter],
                   task_chunk: int | None = None) -> TaskGradients:
    """``G[t] = d L_t / d params`` for every task, built ``task_chunk`` tasks at a time."""
    rows, losses, parts = [], [], []
    for chunk in batch.chunks(task_chunk):
        chunk_losses, metrics = learner.training_losses(chunk)
        for t in range(len(chunk)):
            grads = torch.autograd.grad(chunk_losses[t], params, retain_graph=t + 1 < len(chunk),
                                        allow_unused=True)
            rows.append(_flat(grads, params))
        losses.append(chunk_losses.detach())
        parts.append({"loss": chunk_losses, **metrics})
    return TaskGradients(torch.cat(losses), torch.stack(rows), _task_weighted(parts, len(batch)))


def loss_weights(combiner: nn.Module, losses: Tensor, task_ids: Tensor | None) -> Tensor:
    """``w_t = d combine_losses(L) / d L_t``; accumulates the combiner's own gradients."""
    leaf = losses.detach().requires_grad_(True)
    combined = combiner.combine_losses(leaf, task_ids)
    own = [p for p in combiner.parameters() if p.requires_grad]
    grads = torch.autograd.grad(combined, [leaf, *own], allow_unused=True)
    for p, g in zip(own, grads[1:], strict=True):
        if g is not None:
            p.grad = g if p.grad is None else p.grad + g
    return torch.zeros_like(leaf) if grads[0] is None else grads[0]


class CombinedStep(BackwardStep):
    """Computes ``.grad`` for one training step with ``combiner``.

    Args:
        learner: the method; its trainable parameters receive ``.grad``.
        combiner: a `metalab.combiners.Combiner`.
        combine_params: ``"all"`` or ``"shared"`` (``learner.shared_parameter_names()``).
        task_chunk: tasks whose graphs are held at once while building ``G`` (``None``:
            one, since each row is a separate backward pass anyway).

    The learner's `regularizer` (a term of the meta-parameters alone) is not a task: its
    gradient is added once, after the tasks are combined.
    """

    def __init__(self, learner: MetaLearner, combiner: nn.Module, combine_params: str = "all",
                 task_chunk: int | None = None) -> None:
        self.learner = learner
        self.combiner = combiner
        self.task_chunk = task_chunk
        trainable = [(n, p) for n, p in learner.named_parameters() if p.requires_grad]
        if check_choice("train.combine_params", combine_params, COMBINE_PARAMS) == "shared":
            shared = set(learner.shared_parameter_names())
            unknown = shared - {n for n, _ in trainable}
            if unknown:
                raise ValueError(f"shared_parameter_names() lists {sorted(unknown)}, which are "
                                 f"not trainable parameters of {type(learner).__name__}")
        else:
            shared = {n for n, _ in trainable}
        self.combined = [p for n, p in trainable if n in shared]
        self.others = [p for n, p in trainable if n not in shared]
        self.combined_size = sum(p.numel() for p in self.combined)
        self.last_gradients: TaskGradients | None = None
        self._before_update: Tensor | None = None

    @property
    def parameters(self) -> list[nn.Parameter]:
        return self.combined + self.others

    def backward(self, batch: TaskBatch, share: float = 1.0,
                 diagnose: bool = False) -> dict[str, float]:
        """Set ``.grad`` of every trainable parameter; returns the shard's mean metrics.

        ``batch`` is this process's shard (of share ``T_r / T``; the update needs no share,
        since ``G`` is gathered whole). ``diagnose`` keeps ``G`` in ``last_gradients`` and
        the parameters for `diagnostics`, to be called after the optimizer step.
        """
        self.last_gradients = None
        self._before_update = None
        needs_rows = (self.combiner.needs_gradients or diagnose
                      or self.task_chunk is not None or distributed.world_size() > 1)
        if not needs_rows:
            return self._weighted_backward(batch)
        # One task per backward by default: a per-task `autograd.grad` through a graph of
        # the whole batch traverses every task's part of it, T times the work.
        chunk = 1 if self.task_chunk is None else self.task_chunk
        rows = task_gradients(self.learner, batch, self.parameters, chunk)
        rows = self._gather(rows)
        task_ids = distributed.all_gather_tasks(batch.task_id) if batch.task_id is not None \
            else None
        self._write(self._update(rows, task_ids))
        metrics = dict(rows.metrics)
        regularizer = self.learner.regularizer()
        if regularizer is not None:  # the same in every process: added after the gather
            regularizer.backward()
            metrics.update(self._regularizer_summary(metrics["loss"], regularizer))
        if diagnose:
            self.last_gradients = rows
            self._before_update = parameters_to_vector(self.parameters).detach()
        return metrics

    def diagnostics(self, batch: TaskBatch, share: float = 1.0) -> dict[str, float]:
        """Gradient statistics of the diagnosed step, and the loss curvature along its update.

        Along the update ``u = theta' - theta``, ``L(theta') = L + g.u + u^T H u / 2`` to
        second order, so ``2 (L(theta') - L(theta) - g.u) / |u|^2`` estimates the Rayleigh
        quotient ``u^T H u / |u|^2`` on the same batch (one extra forward pass). Keys are
        ``diag/<name>``.
        """
        rows, before = self.last_gradients, self._before_update
        if rows is None or before is None:
            raise RuntimeError("diagnostics() needs a step run with backward(..., diagnose=True)")
        combined = rows.grads[:, : self.combined_size]
        stats = gradient_statistics(combined @ combined.T)
        update = parameters_to_vector(self.parameters).detach() - before
        with torch.no_grad():
            after = self.learner.training_losses(batch)[0].detach().mean().item()
        after = distributed.all_reduce_metrics({"loss": after}, share)["loss"]
        change = after - rows.losses.mean().item() - (rows.grads.mean(dim=0) @ update).item()
        norm2 = (update @ update).item()
        stats["curvature"] = 2.0 * change / norm2 if norm2 > 0 else 0.0
        return {f"diag/{name}": value for name, value in stats.items()}

    def _regularizer_summary(self, query_loss: float, regularizer: Tensor) -> dict[str, float]:
        return {"query_loss": query_loss, **self.learner.regularizer_metrics(),
                "loss": query_loss + regularizer.item()}

    def _weighted_backward(self, batch: TaskBatch) -> dict[str, float]:
        losses, metrics = self.learner.training_losses(batch)
        weights = loss_weights(self.combiner, losses, batch.task_id)
        total = (weights * losses).sum()
        summary = _task_weighted([{"loss": losses, **metrics}], len(batch))
        regularizer = self.learner.regularizer()
        if regularizer is not None:
            total = total + regularizer
            summary.update(self._regularizer_summary(summary["loss"], regularizer))
        total.backward()
        return summary

    def _gather(self, rows: TaskGradients) -> TaskGradients:
        if distributed.world_size() == 1:
            return rows
        # The metrics stay this shard's; the trainer averages them over processes.
        return TaskGradients(distributed.all_gather_tasks(rows.losses),
                             distributed.all_gather_tasks(rows.grads), rows.metrics)

    def _update(self, rows: TaskGradients, task_ids: Tensor | None) -> Tensor:
        combined, others = rows.grads.split([self.combined_size,
                                             rows.grads.shape[1] - self.combined_size], dim=1)
        if self.combiner.needs_gradients:
            return torch.cat([self.combiner.combine(combined, rows.losses, task_ids),
                              others.mean(dim=0)])
        return loss_weights(self.combiner, rows.losses, task_ids) @ rows.grads

    def _write(self, update: Tensor) -> None:
        offset = 0
        for p in self.parameters:
            p.grad = update[offset: offset + p.numel()].view_as(p).clone()
            offset += p.numel()
