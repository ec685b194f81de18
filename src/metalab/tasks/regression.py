"""Regression task families."""

from __future__ import annotations

import math

import torch

from metalab.tasks.batch import TaskBatch
from metalab.tasks.source import TaskSource
from metalab.validation import check_interval, check_positive_int


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
        self.amplitude = check_interval("amplitude", amplitude, allow_empty=True)
        self.phase = check_interval("phase", phase, allow_empty=True)
        self.x_range = check_interval("x_range", x_range, allow_empty=True)
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
