"""LLAMA's Laplace predictive against hand computations (float64).

For a linear model ``f(x) = w . x + b`` the output Jacobian is ``(x, 1)``, so the diagonal
Gauss-Newton curvature of the support NLL with noise ``sigma`` is
``h_w = sum_i x_i^2 / sigma^2`` (per input entry) and ``h_b = n / sigma^2``; the linearised
predictive's variance is ``sum_j x_j^2 / (h_wj + lambda) + 1 / (h_b + lambda) + sigma^2``.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from metalab.algorithms import MAML
from metalab.algorithms.llama import LLAMA


def data(seed: int = 0, n: int = 5, dim: int = 2):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=g, dtype=torch.float64)
    return x, torch.randn(n, 1, generator=g, dtype=torch.float64)


def linear(dim: int = 2) -> nn.Linear:
    torch.manual_seed(0)
    return nn.Linear(dim, 1).double()


def test_gauss_newton_diagonal_of_a_linear_model_by_hand():
    learner = LLAMA(linear(), noise_std=0.5, inner_lr=0.1, inner_steps=1)
    x, _ = data()
    params = {n: p.detach() for n, p in learner.model.named_parameters()}
    h = learner.curvature(params, x)
    assert torch.allclose(h["weight"], (x ** 2).sum(0, keepdim=True) / 0.25)
    assert torch.allclose(h["bias"], torch.tensor([5 / 0.25], dtype=torch.float64))


def test_linearised_variance_of_a_linear_model_by_hand():
    learner = LLAMA(linear(), noise_std=0.5, prior_precision=2.0, inner_lr=0.1,
                    inner_steps=1)
    x, y = data()
    query = torch.tensor([[0.3, -1.2]], dtype=torch.float64)
    predictive = learner.adapt(x, y)
    hw, hb = (x ** 2).sum(0) / 0.25, 5 / 0.25
    expected = (query[0] ** 2 / (hw + 2.0)).sum() + 1 / (hb + 2.0) + 0.25
    variance = predictive.variance(query)
    assert variance.shape == (1, 1) and torch.isfinite(variance).all() and (variance > 0).all()
    assert torch.allclose(variance, expected.view(1, 1))


@pytest.mark.parametrize("prior_precision", [1e2, 1e5, 1e9])
def test_laplace_predictive_reduces_to_the_point_prediction(prior_precision):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(1, 8), nn.Tanh(), nn.Linear(8, 1)).double()
    maml = MAML(copy.deepcopy(model), inner_lr=0.05, inner_steps=2, loss="mse")
    learner = LLAMA(copy.deepcopy(model), noise_std=0.1, prior_precision=prior_precision,
                    inner_lr=0.05, inner_steps=2)
    x, y = data(dim=1)
    query = torch.linspace(-3, 3, 7, dtype=torch.float64).unsqueeze(1)
    predictive = learner.adapt(x, y)
    assert torch.allclose(predictive.mean(query), maml.adapt(x, y)(query))
    parameter_variance = predictive.variance(query) - 0.01
    assert (parameter_variance >= 0).all()
    assert parameter_variance.max() < 100.0 / prior_precision  # O(1 / lambda)


def test_variance_shrinks_as_the_prior_precision_grows():
    x, y = data(dim=2)
    query, _ = data(seed=1, dim=2)
    variances = [LLAMA(linear(), noise_std=0.1, prior_precision=lam, inner_steps=1,
                       inner_lr=0.05).adapt(x, y).variance(query) - 0.01
                 for lam in (1e-2, 1.0, 1e2, 1e4)]
    for wider, narrower in zip(variances, variances[1:], strict=False):
        assert (narrower < wider).all()


def test_samples_are_reproducible_under_a_seed():
    x, y = data()
    predictive = LLAMA(linear(), inner_steps=1, inner_lr=0.05).adapt(x, y)
    first = predictive.sample(x, 4, seed=7)
    assert torch.equal(first, predictive.sample(x, 4, seed=7))
    assert not torch.equal(first, predictive.sample(x, 4, seed=8))


def test_a_laplace_prefix_that_names_no_adapted_parameter_is_refused():
    with pytest.raises(ValueError, match="laplace="):
        LLAMA(linear(), laplace="head")
