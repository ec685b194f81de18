"""k-means clustering in torch, seeded: k-means++ seeding then Lloyd's iterations.

Lloyd (1982) alternates the two steps that each lower ``sum_i ||x_i - mu_{c(i)}||^2``:

- assignment: ``c(i) = argmin_j ||x_i - mu_j||^2`` (ties to the lowest index);
- update: ``mu_j = mean{x_i : c(i) = j}``.

It stops when no assignment changes or after ``iterations`` rounds. The centroids start from
k-means++ (Arthur & Vassilvitskii 2007): the first centroid is a uniformly drawn point, each
next one a point drawn with probability proportional to ``D(x)^2``, its squared distance to
the nearest centroid chosen so far. A cluster that loses every point is re-seeded with the
point farthest from its current centroid (that point moves to it), so every partition has
exactly ``k`` non-empty clusters; with repeated points two centroids can coincide and the
final nearest-centroid assignment empty one again, so the returned assignment is the
re-seeded one then (a tie broken by moving points, as DeepCluster's splitting does).
All randomness comes from the ``generator`` passed in.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from metalab.validation import check_positive_int


class KMeansResult(NamedTuple):
    centroids: Tensor    # [k, D]
    assignments: Tensor  # [N] cluster index of every point
    inertia: float       # sum of squared distances to the assigned centroids
    iterations: int      # Lloyd rounds run


def squared_distances(x: Tensor, centroids: Tensor) -> Tensor:
    """``||x_i - mu_j||^2`` as ``[N, k]`` (expanded form, clamped at 0 against rounding)."""
    cross = x @ centroids.T
    return (x.pow(2).sum(1, keepdim=True) - 2 * cross + centroids.pow(2).sum(1)).clamp_min(0)


def nearest_centroid(x: Tensor, centroids: Tensor) -> Tensor:
    """``argmin_j ||x_i - mu_j||^2`` ``[N]``, from ``||mu_j||^2 - 2 x_i . mu_j`` (the
    ``||x_i||^2`` term is the same for every ``j``), as one fused multiply-add."""
    return torch.addmm(centroids.pow(2).sum(1), x, centroids.T, alpha=-2).argmin(1)


def kmeans_plus_plus(x: Tensor, k: int, generator: torch.Generator) -> Tensor:
    """Indices ``[k]`` of the k-means++ initial centroids of ``x [N, D]``."""
    first = int(torch.randint(len(x), (1,), generator=generator))
    chosen = [first]
    nearest = squared_distances(x, x[first:first + 1]).squeeze(1)
    for _ in range(1, k):
        total = nearest.sum()
        if total <= 0:  # every point coincides with a centroid: take any unchosen one
            remaining = torch.ones(len(x), dtype=torch.bool)
            remaining[chosen] = False
            pick = int(remaining.nonzero()[0])
        else:
            pick = int(torch.multinomial(nearest / total, 1, generator=generator))
        chosen.append(pick)
        nearest = torch.minimum(nearest, squared_distances(x, x[pick:pick + 1]).squeeze(1))
    return torch.tensor(chosen)


def _update(x: Tensor, assignments: Tensor, centroids: Tensor) -> Tensor:
    """Cluster means; an empty cluster takes the point farthest from its centroid."""
    k = len(centroids)
    sums = torch.zeros_like(centroids).index_add_(0, assignments, x)
    counts = torch.bincount(assignments, minlength=k)
    new = sums / counts.clamp_min(1).unsqueeze(1).to(x.dtype)
    for empty in (counts == 0).nonzero().flatten().tolist():
        error = (x - new[assignments]).pow(2).sum(1)
        far = int(error.argmax())
        new[empty] = x[far]
        assignments[far] = empty
    return new


def kmeans(x: Tensor, k: int, generator: torch.Generator, iterations: int = 100
           ) -> KMeansResult:
    """Cluster the rows of ``x [N, D]`` into ``k`` non-empty clusters (module docstring)."""
    if x.dim() != 2:
        raise ValueError(f"kmeans needs points [N, D], got shape {tuple(x.shape)}")
    k = check_positive_int("k", k)
    iterations = check_positive_int("iterations", iterations)
    if k > len(x):
        raise ValueError(f"k={k} clusters but there are only {len(x)} points")
    centroids = x[kmeans_plus_plus(x, k, generator)].clone()
    assignments = nearest_centroid(x, centroids)
    rounds = 0
    for rounds in range(1, iterations + 1):  # noqa: B007 - the count is returned
        centroids = _update(x, assignments, centroids)
        new = nearest_centroid(x, centroids)
        if torch.equal(new, assignments):
            break
        assignments = new
    if (torch.bincount(assignments, minlength=k) == 0).any():
        # coincident centroids (repeated points): Lloyd's assignment, ties to the lowest
        # index, emptied a cluster again; reassign it, then take the clusters' means
        centroids = _update(x, assignments, centroids)  # moves points into empty clusters
        centroids = _update(x, assignments, centroids)  # the means of the new clusters
    inertia = float((x - centroids[assignments]).pow(2).sum())
    return KMeansResult(centroids, assignments, inertia, rounds)
