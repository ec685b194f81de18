"""The TRPO step (Schulman et al. 2015, appendix C), the outer update of MAML-RL.

Maximise a surrogate ``L(theta)`` subject to ``KL(theta) <= delta``, where ``KL`` is the
mean KL divergence from the policy that sampled the data (zero at the current ``theta_0``):

1. ``g = grad L(theta_0)``; ``F`` = the Hessian of ``KL`` at ``theta_0`` (the Fisher
   information), used only through products ``F v = grad (grad KL . v)`` (plus
   ``damping * v``);
2. ``x ~= F^{-1} g`` by conjugate gradient (`conjugate_gradient`);
3. the largest step along ``x`` whose quadratic model of the KL is ``delta``:
   ``s = sqrt(2 delta / (x^T F x)) x``;
4. a backtracking line search, ``theta_0 + beta^k s`` for ``k = 0, 1, ...``: the first
   candidate that improves ``L`` and whose *actual* ``KL <= delta`` is taken; if none is,
   the parameters stay where they are.

Everything here works on lists of tensors and closures, so the surrogate and the KL may
be any differentiable functions of the parameters (MAML-RL's go through the inner step).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from metalab.validation import check_positive_int, check_real


def trpo_options(max_kl: float, cg_iterations: int, cg_damping: float,
                 backtrack_ratio: float, max_backtracks: int) -> dict:
    """The keyword arguments of `trpo_step`, checked (a method's config names them so)."""
    return {"max_kl": check_real("max_kl", max_kl, inclusive=False),
            "cg_iterations": check_positive_int("cg_iterations", cg_iterations),
            "damping": check_real("cg_damping", cg_damping),
            "backtrack_ratio": check_real("backtrack_ratio", backtrack_ratio, inclusive=False),
            "max_backtracks": check_positive_int("max_backtracks", max_backtracks)}


def flat(tensors: Sequence[Tensor]) -> Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def unflat(vector: Tensor, like: Sequence[Tensor]) -> list[Tensor]:
    pieces, start = [], 0
    for tensor in like:
        pieces.append(vector[start:start + tensor.numel()].view_as(tensor))
        start += tensor.numel()
    return pieces


def conjugate_gradient(matvec: Callable[[Tensor], Tensor], b: Tensor, iterations: int = 10,
                       tolerance: float = 1e-10) -> Tensor:
    """``x`` with ``A x ~= b`` for a symmetric positive definite ``A`` given by ``matvec``,
    by at most ``iterations`` steps of conjugate gradient from ``x = 0`` (exact after
    ``n`` steps in exact arithmetic); stops when ``r^T r < tolerance``."""
    iterations = check_positive_int("iterations", iterations)
    x = torch.zeros_like(b)
    residual = b.clone()
    direction = b.clone()
    residual_sq = residual @ residual
    for _ in range(iterations):
        if residual_sq < tolerance:
            break
        product = matvec(direction)
        alpha = residual_sq / (direction @ product)
        x = x + alpha * direction
        residual = residual - alpha * product
        new_residual_sq = residual @ residual
        direction = residual + (new_residual_sq / residual_sq) * direction
        residual_sq = new_residual_sq
    return x


def fisher_vector_product(kl: Tensor, params: Sequence[Tensor], damping: float = 0.0
                          ) -> Callable[[Tensor], Tensor]:
    """``v -> F v + damping v`` with ``F`` the Hessian of the scalar ``kl`` in ``params``
    (``kl``'s graph is kept across calls)."""
    grads = flat(torch.autograd.grad(kl, list(params), create_graph=True))

    def product(vector: Tensor) -> Tensor:
        hvp = torch.autograd.grad(grads @ vector.detach(), list(params), retain_graph=True)
        return flat(hvp).detach() + damping * vector

    return product


@dataclass(frozen=True)
class TRPOResult:
    """``step``: the accepted change of the parameters (flat; zeros when none was);
    ``surrogate_before/after``, ``kl`` at the accepted point, ``backtracks`` taken."""

    step: Tensor
    surrogate_before: float
    surrogate_after: float
    kl: float
    backtracks: int
    accepted: bool


def trpo_step(evaluate: Callable[[list[Tensor], bool], tuple[Tensor, Tensor]],
              params: Sequence[Tensor], *, max_kl: float, damping: float = 1e-5,
              cg_iterations: int = 10, backtrack_ratio: float = 0.5,
              max_backtracks: int = 15) -> TRPOResult:
    """One TRPO update of ``params`` (leaves with ``requires_grad``; not modified).

    ``evaluate(p, differentiable) -> (surrogate, kl)`` at a list of tensors shaped like
    ``params``: with ``differentiable=True`` (called once, at ``params``) both must be
    twice-differentiable functions of ``p``; with ``False`` (the line search's candidates)
    only their values are used. ``kl`` must be zero at ``params``. Returns the accepted step
    (see `TRPOResult`).
    """
    max_kl = check_real("max_kl", max_kl, inclusive=False)
    damping = check_real("damping", damping)
    backtrack_ratio = check_real("backtrack_ratio", backtrack_ratio, inclusive=False)
    if backtrack_ratio >= 1:
        raise ValueError(f"backtrack_ratio must be in (0, 1), got {backtrack_ratio}")
    max_backtracks = check_positive_int("max_backtracks", max_backtracks)
    params = list(params)
    before, divergence_at_start = evaluate(params, True)
    gradient = flat(torch.autograd.grad(before, params, retain_graph=True)).detach()
    product = fisher_vector_product(divergence_at_start, params, damping)
    direction = conjugate_gradient(product, gradient, cg_iterations)
    curvature = float(direction @ product(direction))
    before = before.item()
    zero = torch.zeros_like(gradient)
    if not math.isfinite(curvature) or curvature <= 0:
        return TRPOResult(zero, before, before, 0.0, 0, False)
    full_step = math.sqrt(2 * max_kl / curvature) * direction
    start = flat(params).detach()
    for backtrack in range(max_backtracks):
        step = backtrack_ratio**backtrack * full_step
        candidate = [value.detach().requires_grad_(p.requires_grad)
                     for value, p in zip(unflat(start + step, params), params, strict=True)]
        after, divergence = (value.item() for value in evaluate(candidate, False))
        if after > before and divergence <= max_kl:
            return TRPOResult(step, before, after, divergence, backtrack, True)
    return TRPOResult(zero, before, before, 0.0, max_backtracks, False)
