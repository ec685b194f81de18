"""Amortized Bayesian meta-learning against hand computations on a linear model (float64).

For ``f(x) = x . w + b`` with one reparameterised draw ``w~ = m + exp(l) eps`` the
per-point negative ELBO ``F = (1/N)[sum_i r_i^2 / (2 s^2) + N/2 log(2 pi s^2) + c KL]``,
``r_i = y_i - f~(x_i)``, has the gradients

    dF/dm_w = (1/N)[-sum_i r_i x_i / s^2 + c (m_w - mu_w) / sigma_w^2]
    dF/dl_w = (1/N)[-sum_i r_i x_i eps_w exp(l_w) / s^2 + c (exp(2 l_w) / sigma_w^2 - 1)]

(``x -> 1`` for the bias), where ``N(mu, sigma^2)`` is the prior and ``c`` the KL weight.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from metalab.algorithms.abml import ABML
from metalab.tasks import TaskBatch
from metalab.train.config import load_config


def linear(dim: int = 2) -> nn.Linear:
    torch.manual_seed(0)
    return nn.Linear(dim, 1).double()


def data(seed: int = 0, n: int = 5, dim: int = 2):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=g, dtype=torch.float64)
    return x, torch.randn(n, 1, generator=g, dtype=torch.float64)


def learner(**kwargs) -> ABML:
    options = {"inner_lr": 0.05, "inner_steps": 1, "noise_std": 0.5, "kl_weight": 0.7,
               "prior_std": 0.3, **kwargs}
    model = ABML(linear(), **options).double()
    with torch.no_grad():  # distinct prior stds per entry
        model.log_prior_std["weight"].copy_(torch.tensor([[-1.0, -0.5]]))
    return model


def fixed_noise(model: ABML, seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    eps = {n: torch.randn(p.shape, generator=g, dtype=torch.float64)
           for n, p in model.model.named_parameters()}
    model.standard_normal_like = lambda name, like, generator=None: eps[name]
    return eps


def hand_step(m, ls, mu, log_sigma, eps, x, y, *, s, c, lr):
    """One step of the module doc's gradients: ``(m, ls) <- (m, ls) - lr * grad F``."""
    n = len(y)
    w = {k: m[k] + torch.exp(ls[k]) * eps[k] for k in m}
    residual = (y - (x @ w["weight"].T + w["bias"])).squeeze(-1)  # [N]
    inputs = {"weight": x, "bias": torch.ones(n, 1, dtype=torch.float64)}
    grad_m, grad_l = {}, {}
    for k in m:
        data_term = -(residual[:, None] * inputs[k]).sum(0).reshape(m[k].shape) / s ** 2
        sigma2 = torch.exp(2 * log_sigma[k])
        grad_m[k] = (data_term + c * (m[k] - mu[k]) / sigma2) / n
        grad_l[k] = (data_term * eps[k] * torch.exp(ls[k]) + c * (torch.exp(2 * ls[k]) / sigma2
                                                                 - 1)) / n
    return ({k: m[k] - lr * grad_m[k] for k in m}, {k: ls[k] - lr * grad_l[k] for k in m})


def test_zero_steps_leave_the_posterior_at_the_initialisation():
    model = learner()
    x, y = data()
    state = model.adapt_task(x, y, training=False, inner_steps=0)
    for n, p in model.model.named_parameters():
        assert torch.equal(state["mean/" + n], p.detach())
        assert torch.equal(state["log_std/" + n], model.log_prior_std[n].detach())


def test_gradient_steps_on_the_task_elbo_by_hand():
    """Two steps: the first has no KL gradient (q = p), the second does."""
    model = learner()
    eps = fixed_noise(model)
    x, y = data()
    mu = {n: p.detach() for n, p in model.model.named_parameters()}
    log_sigma = {n: model.log_prior_std[n].detach() for n in mu}
    m, ls = dict(mu), dict(log_sigma)
    for steps in (1, 2):
        m, ls = hand_step(m, ls, mu, log_sigma, eps, x, y, s=0.5, c=0.7, lr=0.05)
        state = model.adapt_task(x, y, training=False, inner_steps=steps)
        for n in mu:
            assert torch.allclose(state["mean/" + n], m[n], rtol=1e-12, atol=1e-14), (steps, n)
            assert torch.allclose(state["log_std/" + n], ls[n], rtol=1e-12, atol=1e-14), (
                steps, n)


def test_negative_elbo_by_hand():
    model = learner()
    eps = fixed_noise(model)
    x, y = data(3)
    mean = {"weight": torch.tensor([[0.2, -0.4]], dtype=torch.float64),
            "bias": torch.tensor([0.1], dtype=torch.float64)}
    log_std = {"weight": torch.tensor([[-0.3, -1.2]], dtype=torch.float64),
               "bias": torch.tensor([-2.0], dtype=torch.float64)}
    phi = {**{"mean/" + k: v for k, v in mean.items()},
           **{"log_std/" + k: v for k, v in log_std.items()}}
    prior = model.prior(False)
    got = model.negative_elbo(phi, prior, x, y)
    total = 0.0
    w = [float(mean["weight"][0, j] + math.exp(log_std["weight"][0, j]) * eps["weight"][0, j])
         for j in range(2)]
    b = float(mean["bias"][0] + math.exp(log_std["bias"][0]) * eps["bias"][0])
    for i in range(5):
        r = float(y[i, 0]) - (float(x[i, 0]) * w[0] + float(x[i, 1]) * w[1] + b)
        total += r * r / (2 * 0.25) + 0.5 * math.log(2 * math.pi * 0.25)
    kl = 0.0
    for k in ("weight", "bias"):
        for mq, lq, mp, lp in zip(mean[k].flatten().tolist(), log_std[k].flatten().tolist(),
                                  prior[0][k].flatten().tolist(),
                                  prior[1][k].flatten().tolist(), strict=True):
            kl += lp - lq + (math.exp(2 * lq) + (mq - mp) ** 2) / (2 * math.exp(2 * lp)) - 0.5
    assert math.isclose(got.item(), (total + 0.7 * kl) / 5, rel_tol=1e-12)


def test_meta_gradient_reaches_the_prior_through_the_steps():
    """The outer loss F(phi_1; query) and its gradient, against the hand-written chain."""
    model = learner()
    eps = fixed_noise(model)
    sx, sy = data(4)
    qx, qy = data(5, n=7)
    batch = TaskBatch(sx[None], sy[None], qx[None], qy[None])
    losses, _ = model.training_task_losses(batch)
    meta = list(model.parameters())
    grads = torch.autograd.grad(losses.sum(), meta)

    mu = dict(model.model.named_parameters())
    log_sigma = {n: model.log_prior_std[n] for n in mu}

    def elbo(m, ls, x, y):
        w = {k: m[k] + torch.exp(ls[k]) * eps[k] for k in m}
        r = y - (x @ w["weight"].T + w["bias"])
        nll = (r ** 2 / (2 * 0.25) + 0.5 * math.log(2 * math.pi * 0.25)).sum()
        kl = sum((log_sigma[k] - ls[k] + (torch.exp(2 * ls[k]) + (m[k] - mu[k]) ** 2)
                  / (2 * torch.exp(2 * log_sigma[k])) - 0.5).sum() for k in m)
        return (nll + 0.7 * kl) / len(y)

    keys = list(mu)
    inner = elbo(mu, log_sigma, sx, sy)
    g = torch.autograd.grad(inner, [mu[k] for k in keys] + [log_sigma[k] for k in keys],
                            create_graph=True)
    m1 = {k: mu[k] - 0.05 * g[i] for i, k in enumerate(keys)}
    l1 = {k: log_sigma[k] - 0.05 * g[len(keys) + i] for i, k in enumerate(keys)}
    reference = elbo(m1, l1, qx, qy)
    reference_grads = torch.autograd.grad(reference, meta)
    assert torch.allclose(losses[0], reference, rtol=1e-12)
    for got, want in zip(grads, reference_grads, strict=True):
        assert torch.allclose(got, want, rtol=1e-9, atol=1e-12)


def test_samples_are_reproducible_under_a_seed():
    model = learner(eval_inner_steps=3)
    x, y = data(6)
    qx, qy = data(7, n=4)
    first, again, other = (model.adapt(x, y, seed=s) for s in (2, 2, 3))
    assert torch.equal(first.mean(qx), again.mean(qx))
    assert torch.equal(first.log_likelihood(qx, qy), again.log_likelihood(qx, qy))
    assert not torch.equal(first.mean(qx), other.mean(qx))
    draws = first.sample(qx, 6, seed=1)
    assert draws.shape == (6, 4, 1) and torch.equal(draws, again.sample(qx, 6, seed=1))
    assert not torch.equal(draws, first.sample(qx, 6, seed=2))


def test_predictive_draws_from_the_adapted_posterior():
    model = learner(eval_inner_steps=2)
    x, y = data(8)
    state = model.adapt_task(x, y, training=False)
    predictive = model.adapt(x, y, samples=20000)
    grid = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]], dtype=torch.float64)
    functions = predictive.functions(grid)  # w_1 + b, w_2 + b, b
    std = {n: state["log_std/" + n].exp() for n in ("weight", "bias")}
    expected_mean = torch.stack([state["mean/weight"][0, 0] + state["mean/bias"][0],
                                 state["mean/weight"][0, 1] + state["mean/bias"][0],
                                 state["mean/bias"][0]])
    expected_var = torch.stack([std["weight"][0, 0] ** 2 + std["bias"][0] ** 2,
                                std["weight"][0, 1] ** 2 + std["bias"][0] ** 2,
                                std["bias"][0] ** 2])
    assert torch.allclose(functions.mean(0)[:, 0], expected_mean, atol=0.02)
    assert torch.allclose(functions.var(0)[:, 0], expected_var, rtol=0.05)
    variance = predictive.variance(grid)
    assert torch.allclose(variance[:, 0], functions.var(0, unbiased=False)[:, 0] + 0.25)


def test_variance_is_positive_and_finite_for_batch_size_one():
    model = learner()
    x, y = data(9, n=1)
    predictive = model.adapt(x, y, samples=1)
    variance = predictive.variance(x)
    assert torch.allclose(variance, torch.full_like(variance, 0.25))
    assert torch.isfinite(predictive.log_likelihood(x, y))


def test_bad_arguments():
    with pytest.raises(ValueError, match="noise_std must be a finite number > 0"):
        ABML(linear(), noise_std=0.0)
    with pytest.raises(ValueError, match="does not take the adaptation option"):
        learner().adapt(*data(), particles=2)


# -- the KL's pull on the posterior mean in the inner loop ------------------------------------
# From the module doc's dF/dm_w, the KL's part of an inner step of size lr maps the mean's
# distance from the prior d = m - mu to (1 - lr c / (sigma^2 N)) d: gradient descent on that
# quadratic diverges when the factor is below -1, i.e. when lr c / (sigma^2 N) > 2.


def kl_step_factor(inner_lr: float, kl_weight: float, prior_std: float, points: int) -> float:
    return 1 - inner_lr * kl_weight / (prior_std ** 2 * points)


def mean_distances(model: ABML, x, y, steps: int) -> list[float]:
    """``||m_k - mu||`` after k = 1..steps inner steps (meta-test adaptation)."""
    mu = dict(model.model.named_parameters())
    distances = []
    for k in range(1, steps + 1):
        phi = model.adapt_task(x, y, training=False, inner_steps=k)
        distances.append(math.sqrt(sum(float(((phi["mean/" + n] - p) ** 2).sum().detach())
                                       for n, p in mu.items())))
    return distances


def test_inner_steps_diverge_at_the_kl_factor_by_hand():
    """The glyphs config's old numbers (lr 0.08, KL weight 1, sigma 0.01, N = 5 points of a
    5-way 1-shot support) on a linear softmax classifier: factor 1 - 0.08/(1e-4 * 5) = -159,
    and each step after the first (whose KL gradient is zero at the prior) multiplies the
    distance by ~159 (the bounded cross-entropy gradient is negligible beside it)."""
    assert kl_step_factor(0.08, 1.0, 0.01, 5) == pytest.approx(-159.0, rel=1e-12)
    torch.manual_seed(0)
    model = ABML(nn.Linear(3, 5).double(), loss="cross_entropy", inner_lr=0.08, kl_weight=1.0,
                 prior_std=0.01).double()
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(5, 3, generator=g, dtype=torch.float64), torch.arange(5)
    d = mean_distances(model, x, y, 4)
    assert d[2] / d[1] == pytest.approx(159.0, rel=0.01)
    assert d[3] / d[2] == pytest.approx(159.0, rel=0.01)


def test_a_small_kl_weight_keeps_the_inner_steps_bounded():
    """KL weight 0.001 (the glyphs config now): factor 0.84, so a step adds at most one
    cross-entropy gradient step to the distance: the mean cross-entropy's gradient (weight and
    bias) is (1/N) sum_i (p_i - e_{y_i}) (x_i, 1), of norm <= sqrt(2) (max |x_i| + 1)."""
    assert kl_step_factor(0.08, 0.001, 0.01, 5) == pytest.approx(0.84, rel=1e-12)
    torch.manual_seed(0)
    model = ABML(nn.Linear(3, 5).double(), loss="cross_entropy", inner_lr=0.08,
                 kl_weight=0.001, prior_std=0.01).double()
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(5, 3, generator=g, dtype=torch.float64), torch.arange(5)
    d = mean_distances(model, x, y, 4)
    bound = 0.08 * math.sqrt(2) * (float(x.norm(dim=1).max()) + 1)
    assert all(b - a <= bound for a, b in zip([0.0, *d[:-1]], d, strict=True))
    assert d[3] < 4 * bound


CONFIGS = sorted((Path(__file__).parents[1] / "src" / "metalab" / "configs").glob("abml-*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_shipped_configs_keep_the_kl_step_stable(path):
    """Every shipped ABML config's KL factor (at its initial sigma_theta and its support size:
    ways x shots points for classification, shots for regression) is above -1; the glyphs
    config at KL weight 1 had -159 and its 3 test steps diverged to chance accuracy."""
    config = load_config(path)
    algorithm, data = config["algorithm"], config["data"]
    points = data["shots"] * data.get("ways", 1)
    factor = kl_step_factor(algorithm["inner_lr"], algorithm["kl_weight"],
                            algorithm["prior_std"], points)
    assert factor > -1, f"{path.stem}: an inner step scales the KL distance by {factor}"
