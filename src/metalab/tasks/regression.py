"""Regression task families."""

from __future__ import annotations

import math

import torch

from metalab.tasks.batch import TaskBatch
from metalab.tasks.source import TaskSource, check_positive_int


def _check_range(name: str, value) -> tuple[float, float]:
    low, high = (float(v) for v in value)
    if not low <= high:
        raise ValueError(f"{name} must be a (low, high) pair with low <= high, got {value!r}")
    return low, high


class Sinusoid(TaskSource):
    """The sinusoid family of MAML (Finn et al. 2017, section 5.1).

    A task is ``y = A sin(x - phi)`` with amplitude ``A ~ U[0.1, 5]``, phase
    ``phi ~ U[0, pi]`` and inputs ``x ~ U[-5, 5]``; ``shots`` points form the support set and
    ``queries`` other points the query set. Inputs and targets have shape ``[T, N, 1]``.
    """

    def __init__(self, shots: int, queries: int, tasks_per_batch: int = 25,
                 amplitude=(0.1, 5.0), phase=(0.0, math.pi), x_range=(-5.0, 5.0),
                 noise: float = 0.0, seed: int | None = None) -> None:
        super().__init__(tasks_per_batch, seed)
        self.shots = check_positive_int("shots", shots)
        self.queries = check_positive_int("queries", queries)
        self.amplitude = _check_range("amplitude", amplitude)
        self.phase = _check_range("phase", phase)
        self.x_range = _check_range("x_range", x_range)
        if noise < 0:
            raise ValueError(f"noise must be >= 0, got {noise!r}")
        self.noise = float(noise)

    def _uniform(self, bounds: tuple[float, float], *shape: int) -> torch.Tensor:
        low, high = bounds
        return low + (high - low) * torch.rand(*shape, generator=self.generator)

    def sample(self) -> TaskBatch:
        tasks, points = self.tasks_per_batch, self.shots + self.queries
        amplitude = self._uniform(self.amplitude, tasks, 1, 1)
        phase = self._uniform(self.phase, tasks, 1, 1)
        x = self._uniform(self.x_range, tasks, points, 1)
        y = amplitude * torch.sin(x - phase)
        if self.noise:
            y = y + self.noise * torch.randn(y.shape, generator=self.generator)
        return TaskBatch(x[:, : self.shots], y[:, : self.shots], x[:, self.shots :],
                         y[:, self.shots :])
