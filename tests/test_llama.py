"""LLAMA's Laplace predictive against hand computations (float64).

For a linear model ``f(x) = w . x + b`` the output Jacobian is ``(x, 1)``, so the diagonal
Gauss-Newton curvature of the support NLL with noise ``sigma`` is
``h_w = sum_i x_i^2 / sigma^2`` (per input entry) and ``h_b = n / sigma^2``; the linearised
predictive's variance is ``sum_j x_j^2 / (h_wj + lambda) + 1 / (h_b + lambda) + sigma^2``.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from metalab.algorithms import MAML
from metalab.algorithms.llama import LLAMA
from metalab.tasks import TaskBatch


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


@pytest.mark.parametrize("prior_precision", [1e-6, 1.0])
def test_variance_is_positive_and_finite_for_batch_size_one(prior_precision):
    """One support point and one query point: the curvature of one point is singular in all
    but one direction, the prior precision alone keeps the posterior proper; by hand for the
    linear model, ``x^2 / (x_s^2 / sigma^2 + lambda) + 1 / (1 / sigma^2 + lambda) + sigma^2``
    per input entry (a dropped ``+ lambda`` divides by 0 at a zero input)."""
    x, y = data(n=1, dim=1)
    x[0, 0] = 0.0  # a zero input: no curvature for the weight from the support
    query = torch.tensor([[2.0]], dtype=torch.float64)
    predictive = LLAMA(linear(dim=1), noise_std=0.1, prior_precision=prior_precision,
                       inner_steps=1, inner_lr=0.05).adapt(x, y)
    variance = predictive.variance(query)
    expected = 4.0 / prior_precision + 1.0 / (1.0 / 0.01 + prior_precision) + 0.01
    assert variance.shape == (1, 1) and torch.isfinite(variance).all() and (variance > 0).all()
    assert variance.item() == pytest.approx(expected, rel=1e-9)


def test_a_laplace_prefix_that_names_no_adapted_parameter_is_refused():
    with pytest.raises(ValueError, match="laplace="):
        LLAMA(linear(), laplace="head")


def one_task(dim: int = 2) -> TaskBatch:
    x, y = data(dim=dim)
    qx, qy = data(seed=1, dim=dim)
    return TaskBatch(x[None], y[None], qx[None], qy[None])


def test_logdet_term_of_a_linear_model_by_hand():
    # for f = w . x + b the curvature does not depend on the parameters:
    # 1/2 log det = 1/2 [sum_j log(sum_i x_ij^2 / sigma^2 + lambda) + log(n / sigma^2 + lambda)]
    batch = one_task()
    options = dict(noise_std=0.5, prior_precision=2.0, inner_lr=0.1, inner_steps=1)
    with_term = LLAMA(linear(), logdet_weight=0.3, **options)
    plain = LLAMA(linear(), **options)
    x = batch.support_x[0]
    logdet = 0.5 * (torch.log((x ** 2).sum(0) / 0.25 + 2.0).sum() + math.log(5 / 0.25 + 2.0))
    losses = with_term.training_task_losses(batch)[0]
    assert torch.allclose(losses, plain.training_task_losses(batch)[0] + 0.3 * logdet)


def hand_logdet(model: nn.Module, params: list, x, sigma: float, lam: float):
    """1/2 sum_k log(sum_i (d f(x_i) / d theta_k)^2 / sigma^2 + lam), by per-point autograd."""
    h = [torch.zeros_like(p) for p in params]
    for i in range(len(x)):
        out = torch.func.functional_call(model, dict(zip(NAMES, params, strict=True)),
                                         (x[i:i + 1],)).sum()
        grads = torch.autograd.grad(out, params, create_graph=True)
        h = [hk + g ** 2 / sigma ** 2 for hk, g in zip(h, grads, strict=True)]
    return 0.5 * sum(torch.log(hk + lam).sum() for hk in h)


NAMES = ["0.weight", "0.bias", "2.weight", "2.bias"]


def test_logdet_meta_gradient_through_the_inner_step_matches_a_hand_derivation():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(1, 4), nn.Tanh(), nn.Linear(4, 1)).double()
    batch = one_task(dim=1)
    learner = LLAMA(copy.deepcopy(model), noise_std=0.5, prior_precision=2.0, inner_lr=0.1,
                    inner_steps=1, logdet_weight=0.7)
    loss = learner.training_task_losses(batch)[0].sum()
    grads = torch.autograd.grad(loss, [dict(learner.model.named_parameters())[n]
                                       for n in NAMES])
    # the reference: one hand-written SGD step, query MSE + 0.7 * 1/2 log det at theta'
    theta = [p.detach().clone().requires_grad_(True) for p in model.parameters()]
    sx, sy, qx, qy = (batch.support_x[0], batch.support_y[0], batch.query_x[0],
                      batch.query_y[0])

    def f(params, x):
        return torch.func.functional_call(model, dict(zip(NAMES, params, strict=True)), (x,))

    support = ((f(theta, sx) - sy) ** 2).mean()
    step = torch.autograd.grad(support, theta, create_graph=True)
    adapted = [p - 0.1 * g for p, g in zip(theta, step, strict=True)]
    reference = ((f(adapted, qx) - qy) ** 2).mean() + 0.7 * hand_logdet(model, adapted, sx,
                                                                        0.5, 2.0)
    expected = torch.autograd.grad(reference, theta)
    for got, want in zip(grads, expected, strict=True):
        assert torch.allclose(got, want)
    # and the term changes the meta-gradient (a weight of 0 would not)
    plain = LLAMA(copy.deepcopy(model), noise_std=0.5, prior_precision=2.0, inner_lr=0.1,
                  inner_steps=1)
    plain_grads = torch.autograd.grad(plain.training_task_losses(batch)[0].sum(),
                                      [dict(plain.model.named_parameters())[n] for n in NAMES])
    assert not all(torch.allclose(a, b) for a, b in zip(grads, plain_grads, strict=True))


def test_a_negative_logdet_weight_is_refused():
    with pytest.raises(ValueError, match="logdet_weight"):
        LLAMA(linear(), logdet_weight=-1.0)
