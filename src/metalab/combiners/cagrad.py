"""CAGrad: conflict-averse gradient descent (Liu, Liu, Jin, Stone & Liu, NeurIPS 2021).

The update maximises the worst task's improvement within a ball around the mean gradient
``g0``: ``max_d min_i g_i . d`` subject to ``|d - g0| <= c |g0|``. Its dual (the paper's
Eq. 4 and Algorithm 1) is a problem over simplex weights ``w``,

    w* = argmin_{w in simplex} g_w . g0 + sqrt(phi) |g_w|,   g_w = sum_i w_i g_i,
    phi = c^2 |g0|^2,

and the update is ``d = g0 + (sqrt(phi) / |g_w*|) g_w*``. In Gram terms
``g_w . g0 = w^T Gram 1 / T``, ``|g_w|^2 = w^T Gram w`` and ``|g0|^2 = 1^T Gram 1 / T^2``,
so ``d = (1/T + sqrt(phi) w* / |g_w*|) @ grads``.

Solving for ``w*`` exactly: at the optimum the gradient of the norm term is
``sqrt(phi) Gram w / |g_w|``, so ``w*`` also minimises the quadratic program
``g_w . g0 + (lambda / 2) |g_w|^2`` with ``lambda = sqrt(phi) / |g_w*|``; conversely any
``lambda`` whose QP solution ``w(lambda)`` satisfies ``lambda |g_w(lambda)| = sqrt(phi)``
gives a KKT point, hence the minimum, of the convex dual. The scalar equation is solved
by a bracketed secant search (Illinois) on ``log lambda``, each QP exactly
(`metalab.combiners.simplex.simplex_qp`, warm-started). The official code instead calls
scipy's SLSQP on the dual.
"""

from __future__ import annotations

import math

import numpy as np
from torch import Tensor

from metalab.combiners.base import GradientCombiner
from metalab.combiners.simplex import definite, host_gram, simplex_qp, to_weights
from metalab.validation import check_choice, check_real

RESCALES = (0, 1, 2)


def conflict_averse_objective(w: Tensor, gram: Tensor, radius: Tensor | float) -> Tensor:
    """``g_w . g0 + radius |g_w|`` for weights ``w [T]`` (``radius = sqrt(phi)``)."""
    return w @ gram.mean(dim=1) + radius * (w @ gram @ w).clamp_min(0.0).sqrt()


def conflict_averse_weights(gram: np.ndarray, radius: float, tolerance: float = 1e-12,
                            max_evaluations: int = 200) -> np.ndarray:
    """``argmin_{w in simplex} w^T G 1/T + radius sqrt(w^T G w)`` for a host Gram
    matrix ``G`` and ``radius > 0``.

    Finds ``log lambda`` with ``h = log(lambda |g_w(lambda)| / radius) = 0`` (see the module
    docstring): ``h`` runs from -inf to +inf, so a bracket is found by steps of a factor 10
    in ``lambda``, then refined to ``|h| <= tolerance``.
    """
    hessian = definite(gram)
    linear = hessian.mean(axis=1)
    state = {"w": None}

    def residual(log_lambda: float) -> float:
        w = simplex_qp(math.exp(log_lambda) * hessian, linear, state["w"])
        state["w"] = w
        return log_lambda + 0.5 * math.log(float(w @ hessian @ w)) - math.log(radius)

    a = math.log(radius) - 0.5 * math.log(float(np.diag(hessian).mean()))
    h_a = residual(a)
    evaluations = 1
    step = math.log(10.0) if h_a < 0 else -math.log(10.0)
    b, h_b = a, h_a
    while h_a * h_b > 0 and evaluations < max_evaluations:
        a, h_a = b, h_b
        b = b + step
        h_b = residual(b)
        evaluations += 1
    best = (abs(h_b), state["w"])
    while abs(h_b) > tolerance and abs(b - a) > tolerance and evaluations < max_evaluations:
        x = b - h_b * (b - a) / (h_b - h_a)
        h_x = residual(x)
        evaluations += 1
        best = min(best, (abs(h_x), state["w"]), key=lambda item: item[0])
        if h_x * h_b < 0:
            a, h_a = b, h_b
        else:
            h_a = h_a / 2.0  # Illinois: keep the stale end from stalling the secant
        b, h_b = x, h_x
    return best[1]


class CAGrad(GradientCombiner):
    """Conflict-averse gradient combination; ``c = 0`` gives the mean gradient.

    Args:
        c: the radius ``c`` of the ball around ``g0``, in units of ``|g0|`` (>= 0; the
            paper's default 0.5).
        rescale: as in the official code: 0 returns ``d``, 1 returns ``d / (1 + c^2)``
            (default), 2 returns ``d / (1 + c)``.
        reduction: ``"mean"`` (``g0`` is the mean gradient) or ``"sum"`` (times T).
    """

    def __init__(self, c: float = 0.5, rescale: int = 1, reduction: str = "mean") -> None:
        super().__init__(reduction)
        self.c = check_real("c", c)
        self.rescale = check_choice("rescale", rescale, RESCALES)

    def combination_weights(self, gram: Tensor, losses: Tensor,
                            task_ids: Tensor | None) -> Tensor:
        host = host_gram(gram)
        tasks = len(host)
        weights = np.full(tasks, 1.0 / tasks)
        radius = self.c * math.sqrt(max(float(host.mean()), 0.0))  # c |g0|
        if radius > 0:
            w = conflict_averse_weights(host, radius) if tasks > 1 else np.ones(1)
            norm = math.sqrt(max(float(w @ host @ w), 0.0))
            # A zero g_w adds nothing (the worst task then cannot be improved at all).
            if norm > 0:
                weights = weights + (radius / norm) * w
        if self.rescale == 1:
            weights = weights / (1.0 + self.c ** 2)
        elif self.rescale == 2:
            weights = weights / (1.0 + self.c)
        return to_weights(weights, gram)

    def extra_repr(self) -> str:
        return f"c={self.c}, rescale={self.rescale}, reduction={self.reduction!r}"
