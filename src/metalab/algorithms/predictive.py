"""A Gaussian predictive distribution for regression: what `adapt` returns for methods
that predict a distribution (the neural-process family), with the densities it needs.

A `GaussianPredictive` is a `Predictor` (calling it gives the predictive mean) that also
gives the predictive variance, draws samples under a seed and estimates the
log-likelihood of targets. It is defined by a decoder ``decode(x, z) -> (mean, variance)``
of ``p(y | x, z) = N(mean, diag(variance))`` and, for latent-variable models, a prior
``p(z | context) = N(mu, diag(sigma^2))`` and a proposal ``q(z | context, targets)``:

- no latent (CNP): ``p(y | x, context)`` is the decoder's Gaussian itself;
- latent (NP, ANP): ``p(y | x, context) = E_{p(z | context)} p(y | x, z)``, a mixture, with
  mean ``E_z[mean(x, z)]`` and variance ``E_z[variance(x, z)] + Var_z[mean(x, z)]`` (the law
  of total variance), estimated from ``samples`` draws of ``z`` under ``seed``; its
  log-likelihood is the importance-weighted estimate (Burda et al. 2016)
  ``log (1/K) sum_k p(y | x, z_k) p(z_k | context) / q(z_k | context, targets)`` with
  ``z_k ~ q(z | context, targets)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from metalab.algorithms.base import Predictor

Gaussian = tuple[Tensor, Tensor]  # (mean, standard deviation) of a diagonal Gaussian


def gaussian_log_density(y: Tensor, mean: Tensor, variance: Tensor, dims: int = 1) -> Tensor:
    """``log N(y; mean, diag(variance))`` summed over the last ``dims`` dimensions."""
    log_density = -0.5 * (math.log(2 * math.pi) + torch.log(variance) + (y - mean) ** 2 / variance)
    return log_density.sum(dim=tuple(range(-dims, 0)))


def diagonal_gaussian_kl(q: Gaussian, p: Gaussian) -> Tensor:
    """``KL(N(mu_q, diag sigma_q^2) || N(mu_p, diag sigma_p^2))``, summed over the last
    dimension: ``sum log(sigma_p / sigma_q) + (sigma_q^2 + (mu_q - mu_p)^2) / (2 sigma_p^2)
    - 1/2``."""
    (mu_q, std_q), (mu_p, std_p) = q, p
    return (torch.log(std_p / std_q) + (std_q ** 2 + (mu_q - mu_p) ** 2) / (2 * std_p ** 2)
            - 0.5).sum(dim=-1)


def sample_gaussian(distribution: Gaussian, samples: int, generator: torch.Generator
                    ) -> Tensor:
    """``samples`` draws ``[samples, ...]`` from a diagonal Gaussian, from ``generator``."""
    mu, std = distribution
    eps = torch.randn((samples, *mu.shape), generator=generator, dtype=mu.dtype)
    return mu + std * eps.to(mu.device)


def _generator(seed: int) -> torch.Generator:
    generator = torch.Generator()
    generator.manual_seed(int(seed))
    return generator


class GaussianPredictive(Predictor):
    """The predictive distribution of one adapted task (see the module doc).

    Args:
        decode: ``(x, z) -> (mean, variance)`` of ``p(y | x, z)``; ``z`` is ``None`` without a
            latent path, else ``[K, latent]`` and the outputs ``[K, m, out]``.
        prior: ``p(z | context)`` as ``(mu, sigma)``; ``None``: no latent path.
        proposal: ``(x, y) -> q(z | context, (x, y))``, the importance proposal.
        samples, seed: latent draws and their seed for `mean` and `variance`.
    """

    def __init__(self, decode: Callable[[Tensor, Tensor | None], tuple[Tensor, Tensor]],
                 prior: Gaussian | None = None,
                 proposal: Callable[[Tensor, Tensor], Gaussian] | None = None,
                 samples: int = 64, seed: int = 0) -> None:
        super().__init__(self.mean)
        if prior is not None and proposal is None:
            raise ValueError("a latent predictive needs a proposal q(z | context, targets)")
        if samples < 1:
            raise ValueError(f"samples must be a positive integer, got {samples}")
        self._decode, self.prior, self._proposal = decode, prior, proposal
        self.samples, self.seed = samples, seed

    @property
    def is_latent(self) -> bool:
        return self.prior is not None

    def _latent_moments(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        z = sample_gaussian(self.prior, self.samples, _generator(self.seed))
        return (*self._decode(x, z), z)

    @torch.no_grad()
    def mean(self, x: Tensor) -> Tensor:
        """Predictive mean ``[m, out]`` at ``x [m, in]``."""
        if not self.is_latent:
            return self._decode(x, None)[0]
        return self._latent_moments(x)[0].mean(dim=0)

    @torch.no_grad()
    def variance(self, x: Tensor) -> Tensor:
        """Predictive variance ``[m, out]``: the decoder's (CNP), or
        ``E_z[variance] + Var_z[mean]`` over the latent draws (NP, ANP)."""
        if not self.is_latent:
            return self._decode(x, None)[1]
        means, variances, _ = self._latent_moments(x)
        return variances.mean(dim=0) + means.var(dim=0, unbiased=False)

    @torch.no_grad()
    def sample(self, x: Tensor, samples: int, seed: int = 0, noise: bool | None = None
               ) -> Tensor:
        """``samples`` draws ``[samples, m, out]`` at ``x``, reproducible for ``seed``.

        Latent models draw functions: ``z ~ p(z | context)``, the decoder's mean at ``x``
        (plus observation noise when ``noise=True``). Without a latent the draws are the
        decoder's Gaussian (``noise`` must then be left ``None`` or ``True``).
        """
        generator = _generator(seed)
        if self.is_latent:
            z = sample_gaussian(self.prior, samples, generator)
            mean, variance = self._decode(x, z)
            if not noise:
                return mean
        else:
            if noise is False:
                raise ValueError("noise=False needs a latent path: without one the samples "
                                 "are the predictive's own Gaussian noise")
            mean, variance = self._decode(x, None)
            mean, variance = mean.expand(samples, *mean.shape), variance.expand(samples,
                                                                               *mean.shape)
        eps = torch.randn(mean.shape, generator=generator, dtype=mean.dtype).to(mean.device)
        return mean + variance.sqrt() * eps

    @torch.no_grad()
    def log_likelihood(self, x: Tensor, y: Tensor, samples: int | None = None,
                       seed: int | None = None) -> Tensor:
        """``log p(y | x, context)`` of the targets jointly (summed over points and outputs):
        exact without a latent path, else the importance-weighted estimate with ``samples``
        draws (a lower bound in expectation, tight as ``samples`` grows)."""
        if not self.is_latent:
            mean, variance = self._decode(x, None)
            return gaussian_log_density(y, mean, variance, dims=2)
        samples = self.samples if samples is None else samples
        proposal = self._proposal(x, y)
        z = sample_gaussian(proposal, samples, _generator(self.seed if seed is None else seed))
        mean, variance = self._decode(x, z)
        log_weights = (gaussian_log_density(y, mean, variance, dims=2)
                       + gaussian_log_density(z, self.prior[0], self.prior[1] ** 2)
                       - gaussian_log_density(z, proposal[0], proposal[1] ** 2))
        return torch.logsumexp(log_weights, dim=0) - math.log(samples)
