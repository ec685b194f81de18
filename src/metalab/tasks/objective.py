"""What a task asks for: classification or regression, in one place.

An `Objective` says how a prediction is scored: the training loss, the reported metric and
whether a lower metric is better. Learners, the evaluator and the report read it from
here; nothing else decides classification versus regression.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from metalab.validation import check_choice


def mse(outputs: Tensor, targets: Tensor) -> Tensor:
    """Mean squared error over every entry (written out: the gradient of ``F.mse_loss``
    under a vmap nested in a vmap, PLATIPUS's draws within tasks, has the wrong shape in
    torch 2.x)."""
    return ((outputs - targets) ** 2).mean()


def accuracy(logits: Tensor, labels: Tensor) -> Tensor:
    """Fraction of ``logits [N, C]`` whose argmax is the label."""
    return (logits.argmax(dim=-1) == labels).to(logits.dtype).mean()


def split_mean_variance(outputs: Tensor) -> tuple[Tensor, Tensor]:
    """A Gaussian prediction ``[..., 2D]`` (means then variances) as ``(mean, variance)``."""
    if outputs.shape[-1] % 2:
        raise ValueError(f"a Gaussian prediction has 2D entries (means then variances) in "
                         f"its last dimension, got {outputs.shape[-1]}")
    return outputs.chunk(2, dim=-1)


def gaussian_nll(outputs: Tensor, targets: Tensor) -> Tensor:
    """Mean over entries of ``-log N(y; mu, var) = (log(2 pi var) + (y - mu)^2 / var) / 2``,
    with ``outputs = [mu, var]`` concatenated on the last dimension."""
    mean, variance = split_mean_variance(outputs)
    return 0.5 * (math.log(2 * math.pi) + torch.log(variance)
                  + (targets - mean) ** 2 / variance).mean()


def gaussian_mean_mse(outputs: Tensor, targets: Tensor) -> Tensor:
    """Mean squared error of the mean of a Gaussian prediction ``[mu, var]``."""
    return F.mse_loss(split_mean_variance(outputs)[0], targets)


@dataclass(frozen=True)
class Objective:
    """A task kind: ``loss(outputs, targets)``, ``metric(outputs, targets)`` and its direction."""

    kind: str
    loss_name: str
    loss: Callable[[Tensor, Tensor], Tensor]
    metric_name: str
    metric: Callable[[Tensor, Tensor], Tensor]
    lower_is_better: bool

    def score(self, outputs: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        """``(loss, metric)`` of one task's predictions."""
        return self.loss(outputs, targets), self.metric(outputs, targets)


CLASSIFICATION = Objective("classification", "cross_entropy", F.cross_entropy, "accuracy",
                           accuracy, lower_is_better=False)
REGRESSION = Objective("regression", "mse", mse, "mse", mse, lower_is_better=True)
#: Regression with a Gaussian predictive (neural processes): trained by the negative
#: log-likelihood of ``[mean, variance]`` outputs, reported as the MSE of the mean.
GAUSSIAN_REGRESSION = Objective("regression", "gaussian_nll", gaussian_nll, "mse",
                                gaussian_mean_mse, lower_is_better=True)
OBJECTIVES = {objective.loss_name: objective
              for objective in (CLASSIFICATION, REGRESSION, GAUSSIAN_REGRESSION)}


def objective_for(loss: str) -> Objective:
    """The objective whose training loss is named ``loss`` (``cross_entropy``, ``mse`` or
    ``gaussian_nll``)."""
    return OBJECTIVES[check_choice("loss", loss, sorted(OBJECTIVES))]


def lower_is_better(metric_name: str) -> bool:
    """Whether a lower value of the metric (or of ``loss``) is better."""
    if metric_name == "loss":
        return True
    return any(o.metric_name == metric_name and o.lower_is_better for o in OBJECTIVES.values())
