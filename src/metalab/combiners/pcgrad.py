"""PCGrad: projecting conflicting gradients (Yu et al., NeurIPS 2020, Algorithm 1).

For each task gradient ``g_i``, in a random order over the other tasks ``j``: if the
current ``g_i'`` conflicts with the ORIGINAL ``g_j`` (``g_i' . g_j < 0``), project it onto
the normal plane of ``g_j``: ``g_i' <- g_i' - (g_i' . g_j / |g_j|^2) g_j``. The update is
``sum_i g_i'``.

Every ``g_i'`` stays a combination of the original gradients, ``g_i' = sum_k C[i, k] g_k``,
so ``g_i' . g_j = (C @ Gram)[i, j]`` and the whole procedure runs on the ``[T, T]`` Gram
matrix: one loop over the T positions of the orders, vectorised over i, no per-pair Python
loop and no device synchronisation. The direction is then ``C.sum(0) @ grads``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from metalab.combiners.base import GradientCombiner
from metalab.validation import check_choice, check_positive_int

ORDERS = ("random", "fixed")


def pcgrad_coefficients(gram: Tensor, orders: Tensor) -> Tensor:
    """Coefficients ``C [T, T]`` with ``g_i' = sum_k C[i, k] g_k`` (PCGrad's projections).

    Args:
        gram: ``[T, T]`` Gram matrix of the task gradients.
        orders: ``[T, T]`` integer tensor; row i is the order (a permutation of 0..T-1) in
            which task i is checked against the other tasks; entry i itself is skipped.
    """
    tasks = gram.shape[0]
    rows = torch.arange(tasks, device=gram.device)
    orders = orders.to(device=gram.device, dtype=torch.long)
    coefficients = torch.eye(tasks, dtype=gram.dtype, device=gram.device)
    squared_norms = gram.diagonal().clamp_min(torch.finfo(gram.dtype).tiny)
    for position in range(tasks):
        other = orders[:, position]  # the task each row is checked against now
        # g_i' . g_j = sum_k C[i, k] Gram[k, j] for j = other[i]
        dots = (coefficients * gram[:, other].T).sum(dim=1)
        # A zero g_j has zero dots, so the clamp leaves 0 and nothing is projected.
        scale = dots.clamp(max=0.0) / squared_norms[other]
        scale = torch.where(other == rows, 0.0, scale)
        coefficients[rows, other] -= scale
    return coefficients


class PCGrad(GradientCombiner):
    """PCGrad (Yu et al., "Gradient Surgery for Multi-Task Learning", NeurIPS 2020).

    The paper's update is the SUM of the projected gradients; here ``reduction="mean"``
    (default) returns that sum divided by T, so with no conflicts the direction is exactly
    the mean gradient and learning rates carry over; ``reduction="sum"`` is the paper's.

    Args:
        order: ``"random"`` (the paper: every task gets its own random order over the
            other tasks, drawn anew each step) or ``"fixed"`` (tasks in index order).
        reduction: ``"mean"`` or ``"sum"``.
        seed: seeds the combiner's own `torch.Generator` for the random orders; its state
            is saved in ``state_dict()`` (extra state), so a resumed run draws the same
            orders as an uninterrupted one.
    """

    def __init__(self, order: str = "random", reduction: str = "mean", seed: int = 0) -> None:
        super().__init__(reduction)
        self.order = check_choice("order", order, ORDERS)
        self.seed = check_positive_int("seed", seed, minimum=0)
        self.generator = torch.Generator().manual_seed(self.seed)

    def sample_orders(self, tasks: int) -> Tensor:
        """The next step's orders ``[T, T]`` (row i: task i's order over the tasks)."""
        if self.order == "fixed":
            return torch.arange(tasks).expand(tasks, tasks)
        return torch.rand(tasks, tasks, generator=self.generator).argsort(dim=1)

    def combination_weights(self, gram: Tensor, losses: Tensor,
                            task_ids: Tensor | None) -> Tensor:
        coefficients = pcgrad_coefficients(gram, self.sample_orders(gram.shape[0]))
        return coefficients.sum(dim=0) / gram.shape[0]

    def get_extra_state(self) -> dict:
        return {"generator": self.generator.get_state()}

    def set_extra_state(self, state: dict) -> None:
        self.generator.set_state(state["generator"])

    def extra_repr(self) -> str:
        return f"order={self.order!r}, reduction={self.reduction!r}, seed={self.seed}"
