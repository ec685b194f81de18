"""Loss-weighting combiners: mean, sum, uncertainty weighting and group DRO.

Each maps the per-task losses ``[T]`` (attached to the graph) to one scalar that is
back-propagated as usual (``needs_gradients = False``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from metalab.combiners.base import REDUCTIONS, Combiner, check_losses, check_task_ids
from metalab.validation import check_choice, check_positive_int, check_real


class MeanLoss(Combiner):
    """The mean of the task losses: exactly what the plain trainer back-propagates."""

    def combine_losses(self, losses: Tensor, task_ids: Tensor | None = None) -> Tensor:
        check_task_ids(task_ids, check_losses(losses).shape[0])
        return losses.mean()


class SumLoss(Combiner):
    """The sum of the task losses (T times the mean's gradient)."""

    def combine_losses(self, losses: Tensor, task_ids: Tensor | None = None) -> Tensor:
        check_task_ids(task_ids, check_losses(losses).shape[0])
        return losses.sum()


def ids_or_positions(task_ids: Tensor | None, tasks: int, num_tasks: int,
                     device: torch.device) -> Tensor:
    """``task_ids``, or ``0..T-1`` when none are given (then T must equal ``num_tasks``)."""
    if task_ids is not None:
        return task_ids.to(device=device, dtype=torch.long)
    if tasks != num_tasks:
        raise ValueError(f"without task_ids the i-th loss is task i, so there must be "
                         f"num_tasks={num_tasks} losses, got {tasks}")
    return torch.arange(tasks, device=device)


class UncertaintyWeighting(Combiner):
    """Homoscedastic uncertainty weighting (Kendall, Gal & Cipolla, CVPR 2018).

    With a learnable log-variance ``s_k`` per task id (``log_variance``, initialised to 0
    and trained by the trainer's optimizer together with the model), task ``t`` with id
    ``k(t)`` contributes ``exp(-s_k) L_t + s_k``: the paper's Eq. 10 in the form
    ``L / sigma^2 + log sigma^2`` with ``s = log sigma^2`` (the factor 1/2 of its Gaussian
    form is dropped, as is usual; it does not move the optimum ``s_k = log L_k``). The
    losses must be positive for that optimum to exist: with ``L < 0``, ``s`` runs to -inf.

    Args:
        num_tasks: number of task ids (``task_ids`` in ``[0, num_tasks)``; without
            ``task_ids`` the T losses are tasks ``0..T-1`` and T must equal ``num_tasks``).
        reduction: ``"mean"`` (default; with ``s = 0`` it equals the mean loss, so learning
            rates carry over) or ``"sum"`` (the paper's sum over tasks).
    """

    def __init__(self, num_tasks: int, reduction: str = "mean") -> None:
        super().__init__()
        self.num_tasks = check_positive_int("num_tasks", num_tasks)
        self.reduction = check_choice("reduction", reduction, REDUCTIONS)
        self.log_variance = nn.Parameter(torch.zeros(self.num_tasks))

    def combine_losses(self, losses: Tensor, task_ids: Tensor | None = None) -> Tensor:
        losses = check_losses(losses)
        task_ids = check_task_ids(task_ids, losses.shape[0], self.num_tasks)
        ids = ids_or_positions(task_ids, losses.shape[0], self.num_tasks, losses.device)
        s = self.log_variance[ids].to(losses.dtype)
        terms = torch.exp(-s) * losses + s
        return terms.mean() if self.reduction == "mean" else terms.sum()

    def extra_repr(self) -> str:
        return f"num_tasks={self.num_tasks}, reduction={self.reduction!r}"


class GroupDRO(Combiner):
    """Online group DRO (Sagawa, Koh, Hashimoto & Liang, ICLR 2020, Algorithm 1).

    ``task_ids`` are group ids. Each training step, for every group ``g`` present in the
    meta-batch with mean task loss ``L_g``, the group weight is updated by exponentiated
    gradient ``q_g <- q_g exp(eta L_g)``; groups not present keep their (unnormalised)
    weight; then ``q`` is renormalised over all ``num_groups`` groups. The returned loss is

        sum_{g present} q_g L_g / sum_{g present} q_g,

    a q-weighted average of the present groups' losses, so it is on the scale of the mean
    loss (it is the mean loss when q is uniform and every group holds equally many
    tasks). When every group is present this is exactly the paper's ``sum_g q_g L_g``;
    otherwise the paper's form would shrink the loss by the missing groups' mass. ``q`` is
    a constant of the backward pass. The weights ``group_weights`` (a buffer, so in
    ``state_dict``) are updated only in training mode, from the detached losses.

    Args:
        num_groups: number of groups (``task_ids`` in ``[0, num_groups)``).
        step_size: the exponentiated-gradient step ``eta`` (paper's ``eta_q``), >= 0.
    """

    def __init__(self, num_groups: int, step_size: float = 0.01) -> None:
        super().__init__()
        self.num_groups = check_positive_int("num_groups", num_groups)
        self.step_size = check_real("step_size", step_size)
        self.register_buffer("group_weights",
                             torch.full((self.num_groups,), 1.0 / self.num_groups))

    def group_losses(self, losses: Tensor, task_ids: Tensor) -> tuple[Tensor, Tensor]:
        """Mean loss of each group ``[G]`` (0 where absent) and which groups are present."""
        ids = task_ids.to(device=losses.device, dtype=torch.long)
        counts = torch.zeros(self.num_groups, dtype=losses.dtype, device=losses.device)
        counts = counts.index_add(0, ids, torch.ones_like(losses))
        sums = torch.zeros_like(counts).index_add(0, ids, losses)
        return sums / counts.clamp_min(1.0), counts > 0

    @torch.no_grad()
    def update_weights(self, group_loss: Tensor, present: Tensor) -> None:
        """``q_g <- q_g exp(eta L_g)`` for present groups, then normalise (in log space)."""
        q = self.group_weights
        step = torch.where(present, self.step_size * group_loss.to(q.dtype), 0.0)
        logits = q.clamp_min(torch.finfo(q.dtype).tiny).log() + step
        q.copy_(torch.softmax(logits, dim=0))

    def combine_losses(self, losses: Tensor, task_ids: Tensor | None = None) -> Tensor:
        losses = check_losses(losses)
        if task_ids is None:
            raise ValueError("group_dro needs task_ids: the group id of every task")
        task_ids = check_task_ids(task_ids, losses.shape[0], self.num_groups, "num_groups")
        group_loss, present = self.group_losses(losses, task_ids)
        if self.training:
            self.update_weights(group_loss.detach(), present)
        q = torch.where(present, self.group_weights.to(losses.dtype), 0.0)
        return (q * group_loss).sum() / q.sum().clamp_min(torch.finfo(q.dtype).tiny)

    def extra_repr(self) -> str:
        return f"num_groups={self.num_groups}, step_size={self.step_size}"
