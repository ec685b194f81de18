"""1-D Gaussian-process regression tasks (the neural-process benchmark of Garnelo et al.
2018 and Kim et al. 2019).

A task is one function drawn from a zero-mean Gaussian process with the RBF kernel

    k(x, x') = scale^2 * exp(-(x - x')^2 / (2 * lengthscale^2)),

with ``lengthscale ~ U[lengthscale]`` and ``scale ~ U[scale]`` drawn per task, observed at
``x ~ U[x_range]`` with Gaussian noise of standard deviation ``noise``:
``y = f(x) + noise * eps``, i.e. ``y ~ N(0, K + noise^2 I)``. The first points of a task form
the support (context) set, the others the query (target) set.
"""

from __future__ import annotations

import torch
from torch import Tensor

from metalab.tasks.batch import TaskBatch
from metalab.tasks.source import TaskSource
from metalab.validation import check_interval, check_positive_int

#: Added to the covariance's diagonal before the Cholesky factorisation (float64).
JITTER = 1e-8


def rbf_kernel(x: Tensor, lengthscale: Tensor, scale: Tensor) -> Tensor:
    """``scale^2 exp(-(x_i - x_j)^2 / (2 lengthscale^2))`` for ``x [T, N, 1]`` and per-task
    ``lengthscale``, ``scale`` of shape ``[T]``; returns ``[T, N, N]``."""
    squared = (x - x.transpose(1, 2)) ** 2
    return scale[:, None, None] ** 2 * torch.exp(-squared / (2 * lengthscale[:, None, None] ** 2))


class GaussianProcess(TaskSource):
    """Seeded tasks from a 1-D GP with an RBF kernel of random lengthscale and output scale.

    Args:
        shots: context (support) points per task; with ``max_shots`` the fewest.
        queries: target (query) points per task.
        max_shots: if given, every batch draws its number of context points uniformly in
            ``[shots, max_shots]`` (neural processes train on varying context sizes).
        lengthscale, scale: ranges of the RBF lengthscale and output scale (``U[low, high]``).
        x_range: inputs are ``U[x_range]``.
        noise: standard deviation of the observation noise (``>= 0``).

    Inputs and targets have shape ``[T, N, 1]`` (float32; drawn in float64).
    """

    def __init__(self, shots: int, queries: int, tasks_per_batch: int = 16,
                 max_shots: int | None = None, lengthscale=(0.1, 0.6), scale=(0.1, 1.0),
                 x_range=(-2.0, 2.0), noise: float = 0.02, seed: int | None = None) -> None:
        super().__init__(tasks_per_batch, seed)
        self.shots = check_positive_int("shots", shots)
        self.queries = check_positive_int("queries", queries)
        if max_shots is not None and check_positive_int("max_shots", max_shots) < shots:
            raise ValueError(f"max_shots must be >= shots={shots}, got {max_shots}")
        self.max_shots = max_shots
        self.lengthscale = check_interval("lengthscale", lengthscale, allow_empty=True)
        self.scale = check_interval("scale", scale, allow_empty=True)
        self.x_range = check_interval("x_range", x_range, allow_empty=True)
        if self.lengthscale[0] <= 0:
            raise ValueError(f"lengthscale must be a range of positive values, got {lengthscale}")
        if noise < 0:
            raise ValueError(f"noise must be >= 0, got {noise!r}")
        self.noise = float(noise)

    def _uniform(self, bounds: tuple[float, float], *shape: int) -> Tensor:
        low, high = bounds
        return low + (high - low) * torch.rand(*shape, generator=self.generator,
                                               dtype=torch.float64)

    def _context_size(self) -> int:
        if self.max_shots is None:
            return self.shots
        return int(torch.randint(self.shots, self.max_shots + 1, (), generator=self.generator))

    def draw(self, x: Tensor, lengthscale: Tensor, scale: Tensor) -> Tensor:
        """Noisy function values ``y ~ N(0, K + noise^2 I)`` at ``x [T, N, 1]`` (float64)."""
        points = x.shape[1]
        covariance = rbf_kernel(x, lengthscale, scale)
        covariance = covariance + (self.noise ** 2 + JITTER) * torch.eye(points, dtype=x.dtype)
        factor = torch.linalg.cholesky(covariance)
        eps = torch.randn(x.shape, generator=self.generator, dtype=x.dtype)
        return factor @ eps

    def sample(self) -> TaskBatch:
        shots = self._context_size()
        tasks, points = self.tasks_per_batch, shots + self.queries
        lengthscale = self._uniform(self.lengthscale, tasks)
        scale = self._uniform(self.scale, tasks)
        x = self._uniform(self.x_range, tasks, points, 1)
        y = self.draw(x, lengthscale, scale)
        x, y = x.float(), y.float()
        return TaskBatch(x[:, :shots], y[:, :shots], x[:, shots:], y[:, shots:])
