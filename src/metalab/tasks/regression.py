"""Regression task families."""

from __future__ import annotations

import math

import torch

from metalab.tasks.batch import TaskBatch
from metalab.tasks.source import TaskSource
from metalab.validation import check_interval, check_positive_int


def uniform(generator: torch.Generator, bounds: tuple[float, float], *shape: int
            ) -> torch.Tensor:
    """Draws of ``U[low, high]`` of ``shape`` from ``generator``."""
    low, high = bounds
    return low + (high - low) * torch.rand(*shape, generator=generator)


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

    def sample(self) -> TaskBatch:
        tasks, points = self.tasks_per_batch, self.shots + self.queries
        amplitude = uniform(self.generator, self.amplitude, tasks, 1, 1)
        phase = uniform(self.generator, self.phase, tasks, 1, 1)
        x = uniform(self.generator, self.x_range, tasks, points, 1)
        y = amplitude * torch.sin(x - phase)
        if self.noise:
            y = y + self.noise * torch.randn(y.shape, generator=self.generator)
        return TaskBatch(x[:, : self.shots], y[:, : self.shots], x[:, self.shots :],
                         y[:, self.shots :])


#: ``task_id`` of the two kinds of `SineOrLine` tasks.
SINE, LINE = 0, 1


class SineOrLine(TaskSource):
    """The ambiguous regression family of PLATIPUS (Finn, Xu & Levine 2018, section 5.1):
    each task is a sinusoid or a line, observed with Gaussian noise.

    With probability ``line_fraction`` a task is a line ``y = a x + b`` with slope
    ``a ~ U[slope]`` and intercept ``b ~ U[intercept]``, else a sinusoid
    ``y = A sin(x - phi)`` with ``A ~ U[amplitude]``, ``phi ~ U[phase]``; targets carry noise
    ``N(0, noise^2)``. Defaults: MAML's sinusoid ranges, slope and intercept in ``[-3, 3]``,
    ``x`` in ``[-5, 5]`` (the ranges of the PLATIPUS authors' sine/line data generator),
    noise std 0.3.

    The query inputs are ``U[x_range]``. The ``shots`` support inputs are ``U[x_range]`` too,
    or, with ``support_width``, ``U[c, c + support_width]`` for a per-task ``c`` uniform in
    ``[low, high - support_width]``: a narrow window in which a line and a sinusoid can both
    fit the support (the ambiguous supports of the paper's figure).

    ``task_id`` says which kind each task is (`SINE` = 0, `LINE` = 1). Inputs and targets
    have shape ``[T, N, 1]``.
    """

    def __init__(self, shots: int, queries: int, tasks_per_batch: int = 25,
                 line_fraction: float = 0.5, amplitude=(0.1, 5.0), phase=(0.0, math.pi),
                 slope=(-3.0, 3.0), intercept=(-3.0, 3.0), x_range=(-5.0, 5.0),
                 support_width: float | None = None, noise: float = 0.3,
                 seed: int | None = None) -> None:
        super().__init__(tasks_per_batch, seed)
        self.shots = check_positive_int("shots", shots)
        self.queries = check_positive_int("queries", queries)
        if not 0.0 <= line_fraction <= 1.0:
            raise ValueError(f"line_fraction must be in [0, 1], got {line_fraction!r}")
        self.line_fraction = float(line_fraction)
        self.amplitude = check_interval("amplitude", amplitude, allow_empty=True)
        self.phase = check_interval("phase", phase, allow_empty=True)
        self.slope = check_interval("slope", slope, allow_empty=True)
        self.intercept = check_interval("intercept", intercept, allow_empty=True)
        self.x_range = check_interval("x_range", x_range, allow_empty=True)
        width = self.x_range[1] - self.x_range[0]
        if support_width is not None and not 0.0 < support_width <= width:
            raise ValueError(f"support_width must be in (0, {width}] (the width of x_range) "
                             f"or null, got {support_width!r}")
        self.support_width = None if support_width is None else float(support_width)
        if noise < 0:
            raise ValueError(f"noise must be >= 0, got {noise!r}")
        self.noise = float(noise)

    def _support_inputs(self, tasks: int) -> torch.Tensor:
        if self.support_width is None:
            return uniform(self.generator, self.x_range, tasks, self.shots, 1)
        low, high = self.x_range
        start = uniform(self.generator, (low, high - self.support_width), tasks, 1, 1)
        return start + uniform(self.generator, (0.0, self.support_width), tasks, self.shots, 1)

    def sample(self) -> TaskBatch:
        tasks = self.tasks_per_batch
        is_line = torch.rand(tasks, generator=self.generator) < self.line_fraction
        amplitude = uniform(self.generator, self.amplitude, tasks, 1, 1)
        phase = uniform(self.generator, self.phase, tasks, 1, 1)
        slope = uniform(self.generator, self.slope, tasks, 1, 1)
        intercept = uniform(self.generator, self.intercept, tasks, 1, 1)
        x = torch.cat([self._support_inputs(tasks),
                       uniform(self.generator, self.x_range, tasks, self.queries, 1)], dim=1)
        y = torch.where(is_line[:, None, None], slope * x + intercept,
                        amplitude * torch.sin(x - phase))
        if self.noise:
            y = y + self.noise * torch.randn(y.shape, generator=self.generator)
        kind = torch.where(is_line, LINE, SINE)
        return TaskBatch(x[:, : self.shots], y[:, : self.shots], x[:, self.shots :],
                         y[:, self.shots :], task_id=kind)
