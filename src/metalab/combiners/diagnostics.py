"""Per-step statistics of the task gradients, from their Gram matrix alone.

The "tragic triad" of Yu et al. (NeurIPS 2020, Section 3): conflicting gradients
(negative cosine similarity), very different magnitudes, and high curvature. The first two
are read off the Gram matrix ``G = grads @ grads.T`` here; the curvature along the update
is measured by `metalab.train.combined_step.CombinedStep.diagnostics`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

STATISTICS = ("mean_cosine", "min_cosine", "fraction_conflicting", "norm_ratio")


def gradient_statistics(gram: Tensor) -> dict[str, float]:
    """Pairwise cosine and magnitude statistics of T task gradients from ``gram [T, T]``.

    Returns:
        ``mean_cosine`` and ``min_cosine``: mean and minimum of ``cos(g_i, g_j)`` over the
        pairs ``i < j``; ``fraction_conflicting``: the fraction of those pairs with
        ``cos < 0``; ``norm_ratio``: ``max_t |g_t| / min_t |g_t|`` (``inf`` when a gradient
        is zero). A zero gradient has cosine 0 with every other. With one task the pair
        statistics are NaN. One device-to-host transfer at the end.
    """
    if not isinstance(gram, Tensor) or gram.dim() != 2 or gram.shape[0] != gram.shape[1] \
            or gram.shape[0] == 0 or not gram.is_floating_point():
        shape = tuple(gram.shape) if isinstance(gram, Tensor) else type(gram).__name__
        raise ValueError(f"gram must be a non-empty square floating tensor [tasks, tasks] "
                         f"(grads @ grads.T), got {shape}")
    tasks = gram.shape[0]
    norms = gram.diagonal().clamp_min(0.0).sqrt()
    norm_ratio = norms.max() / norms.min()  # x / 0 = inf in floating point
    if tasks == 1:
        return {"mean_cosine": math.nan, "min_cosine": math.nan,
                "fraction_conflicting": math.nan, "norm_ratio": float(norm_ratio.item())}
    outer = (norms[:, None] * norms[None, :]).clamp_min(torch.finfo(gram.dtype).tiny)
    cosine = gram / outer
    i, j = torch.triu_indices(tasks, tasks, offset=1, device=gram.device)
    pairs = cosine[i, j]
    values = torch.stack([pairs.mean(), pairs.min(), (pairs < 0).to(gram.dtype).mean(),
                          norm_ratio.to(gram.dtype)])
    return dict(zip(STATISTICS, values.tolist(), strict=True))
