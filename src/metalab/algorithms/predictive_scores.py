"""Scores of a Gaussian predictive on a task's query set, for the Bayesian MAML family
(ensembles of MAMLs, BMAML, LLAMA): the MSE of the predictive mean, the log-likelihood per
target entry and the coverage of the central 90% predictive interval
``mean +- z_0.95 * std`` (``z_0.95 = 1.6449``).

`PredictiveScores` is a mixin for a `MetaLearner` whose `adapt` returns a
`GaussianPredictive` for regression: its evaluation reports the three numbers per task (the
loss stays the objective's, the MSE).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from metalab.algorithms.predictive import GaussianPredictive
from metalab.tasks import TaskBatch

#: The standard normal's 0.95 quantile: the 90% central interval is mean +- Z90 * std.
Z90 = 1.6448536269514722


def interval_coverage(mean: Tensor, variance: Tensor, y: Tensor, z: float = Z90) -> Tensor:
    """Fraction of entries of ``y`` inside ``mean +- z * sqrt(variance)``."""
    return ((y - mean).abs() <= z * variance.sqrt()).to(mean.dtype).mean()


def central_z(level: float) -> float:
    """``z`` of the central ``level`` interval of a standard normal, ``Phi^-1((1 + level)/2)``
    (``level`` in (0, 1); 0.9 gives `Z90`)."""
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    return math.sqrt(2.0) * torch.erfinv(torch.tensor(float(level), dtype=torch.float64)).item()


def predictive_scores(predictive: GaussianPredictive, x: Tensor, y: Tensor,
                      levels: tuple[float, ...] = ()) -> dict[str, Tensor]:
    """``mse``, ``log_likelihood`` (per target entry) and ``coverage_90`` at ``(x, y)``; and
    ``coverage_<100 level>`` for each further central-interval ``level`` (e.g. 0.5, 0.95)."""
    mean, variance = predictive.mean(x), predictive.variance(x)
    scores = {"mse": ((mean - y) ** 2).mean(),
              "log_likelihood": predictive.log_likelihood(x, y) / y.numel(),
              "coverage_90": interval_coverage(mean, variance, y)}
    for level in levels:
        scores[f"coverage_{round(100 * level)}"] = interval_coverage(mean, variance, y,
                                                                     central_z(level))
    return scores


class PredictiveScores:
    """Evaluation through `adapt`'s `GaussianPredictive` for regression (module doc);
    classification keeps the base class's evaluation."""

    def evaluation_task_losses(self, batch: TaskBatch, **options
                               ) -> tuple[Tensor, dict[str, Tensor]]:
        if self.loss_name != "mse":
            return super().evaluation_task_losses(batch, **options)
        options = {**self.task_options(batch), **options}
        scores: dict[str, list[Tensor]] = {}
        for t in range(len(batch)):
            predictive = self.adapt(batch.support_x[t], batch.support_y[t], **options)
            for name, value in predictive_scores(predictive, batch.query_x[t],
                                                 batch.query_y[t]).items():
                scores.setdefault(name, []).append(value)
        stacked = {name: torch.stack(values) for name, values in scores.items()}
        return stacked["mse"], stacked
