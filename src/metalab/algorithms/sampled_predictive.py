"""The predictive of a set of sampled models: what `adapt` returns for the methods that
draw whole models for a task (PLATIPUS, amortized Bayesian MAML), for regression
(`SampledPredictive`) and classification (`sampled_classifier`).

A `SampledPredictive` holds a way to draw ``K`` models adapted to one task,
``draw(K, generator) -> state``, and their outputs ``outputs(state, x) -> [K, m, out]``.
With a fixed observation noise ``sigma`` (``noise_std``) the predictive is the equally
weighted mixture

    p(y | x, support) = (1/K) sum_k N(y; f_k(x), sigma^2)

(a Monte Carlo estimate of ``E_{theta ~ posterior} N(y; f(x; theta), sigma^2)``), with

- mean ``(1/K) sum_k f_k(x)`` and variance ``Var_k[f_k(x)] + sigma^2`` (law of total
  variance);
- joint log-likelihood of a task's targets
  ``log (1/K) sum_k prod_i N(y_i; f_k(x_i), sigma^2)`` (the functions are whole draws, so
  the points of one draw are scored together, as the latent neural processes are);
- ``sample``: whole functions ``f_k`` at ``x``, reproducible for a seed (plus observation
  noise when asked).

The ``K`` default draws (``samples``, ``seed``) are made once, on first use, and reused by
`mean`, `variance` and `log_likelihood`, so the three describe the same mixture.

For classification, `sampled_classifier` is the mixture of ``K`` drawn classifiers: the mean
of their softmax probabilities (a `CategoricalPredictive`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from metalab.algorithms.base import CategoricalPredictive, Predictor
from metalab.algorithms.predictive import gaussian_log_density
from metalab.validation import check_positive_int


def seeded_generator(seed: int) -> torch.Generator:
    generator = torch.Generator()
    generator.manual_seed(int(seed))
    return generator


class SampledPredictive(Predictor):
    """The mixture predictive of ``K`` sampled models of one task (module doc).

    Args:
        draw: ``(K, generator) -> state``: ``K`` models adapted to the task, all randomness
            from ``generator``.
        outputs: ``(state, x) -> [K, m, out]``: every drawn model's outputs at ``x [m, in]``.
        noise_std: the observation noise ``sigma`` of every model's likelihood.
        samples, seed: ``K`` and the seed of the draws `mean`, `variance` and
            `log_likelihood` use.
    """

    #: Draws are whole functions (`metalab plot --predictive` draws a few of them).
    is_latent = True

    def __init__(self, draw: Callable[[int, torch.Generator], Any],
                 outputs: Callable[[Any, Tensor], Tensor], noise_std: float,
                 samples: int = 10, seed: int = 0) -> None:
        super().__init__(self.mean)
        if not noise_std > 0:
            raise ValueError(f"noise_std must be positive, got {noise_std}")
        self._draw, self._outputs = draw, outputs
        self.noise_std = float(noise_std)
        self.samples = check_positive_int("samples", samples)
        self.seed = int(seed)
        self._state = None

    @property
    def state(self) -> Any:
        """The ``samples`` default draws (made on first use)."""
        if self._state is None:
            self._state = self._draw(self.samples, seeded_generator(self.seed))
        return self._state

    @torch.no_grad()
    def functions(self, x: Tensor) -> Tensor:
        """``[K, m, out]``: the default draws' outputs at ``x``."""
        return self._outputs(self.state, x)

    @torch.no_grad()
    def mean(self, x: Tensor) -> Tensor:
        """Predictive mean ``[m, out]``: the draws' mean output."""
        return self.functions(x).mean(dim=0)

    @torch.no_grad()
    def variance(self, x: Tensor) -> Tensor:
        """Predictive variance ``[m, out]``: ``Var_k[f_k(x)] + noise_std^2``."""
        return self.functions(x).var(dim=0, unbiased=False) + self.noise_std ** 2

    @torch.no_grad()
    def sample(self, x: Tensor, samples: int, seed: int = 0, noise: bool | None = None
               ) -> Tensor:
        """``samples`` new draws ``[samples, m, out]`` at ``x`` under ``seed``: the drawn
        functions, plus observation noise when ``noise=True``."""
        generator = seeded_generator(seed)
        functions = self._outputs(self._draw(check_positive_int("samples", samples),
                                             generator), x)
        if not noise:
            return functions
        eps = torch.randn(functions.shape, generator=generator, dtype=functions.dtype)
        return functions + self.noise_std * eps.to(functions.device)

    @torch.no_grad()
    def log_likelihood(self, x: Tensor, y: Tensor) -> Tensor:
        """``log (1/K) sum_k N(y; f_k(x), sigma^2 I)`` of the targets ``y [m, out]`` jointly."""
        functions = self.functions(x)
        variance = torch.full_like(functions, self.noise_std ** 2)
        log_densities = gaussian_log_density(y, functions, variance, dims=2)
        return torch.logsumexp(log_densities, dim=0) - math.log(functions.shape[0])


def sampled_classifier(draw: Callable[[int, torch.Generator], Any],
                       outputs: Callable[[Any, Tensor], Tensor], samples: int = 10,
                       seed: int = 0) -> CategoricalPredictive:
    """The classification counterpart of `SampledPredictive`: ``K`` drawn classifiers of one
    task (``draw``, ``outputs`` as there, ``outputs`` giving logits ``[K, m, classes]``) and
    their equally weighted mixture, ``p(c | x) = (1/K) sum_k softmax(f_k(x))_c``.
    ``probabilities(x)`` is that mean softmax; calling the predictor gives its logarithm
    (log-probabilities, whose cross-entropy is the mixture's NLL). The ``K`` draws are made
    once (under ``seed``), on first use."""
    samples = check_positive_int("samples", samples)
    cache: list[Any] = []

    def state() -> Any:
        if not cache:
            cache.append(draw(samples, seeded_generator(seed)))
        return cache[0]

    def log_probabilities(x: Tensor) -> Tensor:
        logits = outputs(state(), x)
        return torch.logsumexp(torch.log_softmax(logits, dim=-1), dim=0) - math.log(
            logits.shape[0])

    return CategoricalPredictive(log_probabilities, lambda x: log_probabilities(x).exp())
