"""GradNorm: gradient normalisation for adaptive loss balancing (Chen et al., ICML 2018).

Task weights ``w_k`` (one per task id, ``sum_k w_k = num_tasks``) scale the task
gradients. Each training step, with ``n_t = |g_t|`` (the square root of the Gram diagonal
of the rows given; the paper uses the last shared layer's weights), the paper's quantities
(its Section 3.2 and Eq. 2) are

    G_t = w_t n_t,   Gbar = mean_t G_t,   Ltilde_t = L_t / L_t(0),
    r_t = Ltilde_t / mean_t Ltilde_t,    L_grad = sum_t |G_t - Gbar r_t^alpha|,

with the target ``Gbar r_t^alpha`` held constant, so ``dL_grad/dw_t = sign(G_t - target_t)
n_t``. The weights take one gradient step ``w <- w - lr dL_grad/dw / mean_t n_t`` (the
division by the mean gradient norm makes ``lr`` dimensionless: without it the step would
scale with the size of the gradients), are clamped to stay positive and renormalised to
sum to ``num_tasks`` (the paper's Algorithm 1, step "renormalize"). The initial losses
``L_t(0)`` are recorded the first time each task id is seen. The loss ratios need
positive losses; a non-positive loss raises (one device synchronisation per step).
"""

from __future__ import annotations

import torch
from torch import Tensor

from metalab.combiners.base import GradientCombiner, check_task_ids
from metalab.combiners.weighting import ids_or_positions
from metalab.validation import check_positive_int, check_real

MIN_WEIGHT = 1e-6  # weights are clamped to at least this before renormalising


class GradNorm(GradientCombiner):
    """GradNorm task weighting of the task gradients.

    The direction is ``sum_t w_{k(t)} g_t / T`` (mean scale: with all weights 1 it is the
    mean gradient), or ``sum_t w_{k(t)} g_t`` (the paper's weighted sum) with
    ``reduction="sum"``; it uses the weights before this step's update. The weights
    (``task_weights``) and initial losses (``initial_losses``, NaN until seen) are buffers,
    in ``state_dict``; they are updated only in training mode.

    Args:
        num_tasks: number of task ids (``task_ids`` in ``[0, num_tasks)``; without
            ``task_ids`` row t is task t and there must be ``num_tasks`` rows).
        alpha: the asymmetry ``alpha`` (>= 0).
        lr: step size of the weight update (> 0; dimensionless, see the module docstring).
        reduction: ``"mean"`` or ``"sum"``.
    """

    def __init__(self, num_tasks: int, alpha: float = 1.5, lr: float = 0.025,
                 reduction: str = "mean") -> None:
        super().__init__(reduction)
        self.num_tasks = check_positive_int("num_tasks", num_tasks)
        self.alpha = check_real("alpha", alpha)
        self.lr = check_real("lr", lr, inclusive=False)
        self.register_buffer("task_weights", torch.ones(self.num_tasks))
        self.register_buffer("initial_losses", torch.full((self.num_tasks,), float("nan")))

    def check_task_ids(self, task_ids, tasks: int) -> Tensor | None:
        return check_task_ids(task_ids, tasks, self.num_tasks)

    def combination_weights(self, gram: Tensor, losses: Tensor,
                            task_ids: Tensor | None) -> Tensor:
        ids = ids_or_positions(task_ids, gram.shape[0], self.num_tasks, gram.device)
        if self.training and bool((losses <= 0).any()):
            raise ValueError(f"gradnorm needs positive task losses (it uses the ratios "
                             f"L_t / L_t(0)), got {losses.tolist()}")
        weights = self.task_weights.to(gram.dtype)[ids] / gram.shape[0]
        if self.training:
            self.update(gram, losses, ids)
        return weights

    @torch.no_grad()
    def update(self, gram: Tensor, losses: Tensor, ids: Tensor) -> None:
        """One GradNorm step on ``task_weights`` (records unseen initial losses first)."""
        dtype = self.task_weights.dtype
        tiny = torch.finfo(gram.dtype).tiny
        initial = self.initial_losses[ids].to(gram.dtype)
        initial = torch.where(torch.isnan(initial), losses, initial)
        self.initial_losses[ids] = initial.to(dtype)
        norms = gram.diagonal().clamp_min(0.0).sqrt()
        weighted = self.task_weights.to(gram.dtype)[ids] * norms  # G_t
        ratios = losses / initial.clamp_min(tiny)  # Ltilde_t
        relative = ratios / ratios.mean().clamp_min(tiny)  # r_t
        target = weighted.mean() * relative.pow(self.alpha)
        gradient = torch.sign(weighted - target) * norms / norms.mean().clamp_min(tiny)
        step = torch.zeros_like(self.task_weights).index_add(0, ids, gradient.to(dtype))
        weights = (self.task_weights - self.lr * step).clamp_min(MIN_WEIGHT)
        self.task_weights.copy_(weights * (self.num_tasks / weights.sum()))

    def extra_repr(self) -> str:
        return (f"num_tasks={self.num_tasks}, alpha={self.alpha}, lr={self.lr}, "
                f"reduction={self.reduction!r}")
