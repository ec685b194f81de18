"""PLATIPUS against hand computations (float64).

The references write the method out plainly: a two-layer ReLU network as a function of
its weights, the Gaussian KL entry by entry, MAML's inner step as ``w - alpha * grad``.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from metalab.algorithms.platipus import PLATIPUS, gaussian_kl
from metalab.nn import MLP
from metalab.tasks import TaskBatch
from metalab.train.build import build_meta_learner
from metalab.train.config import load_config
from metalab.train.sources import build_task_source

NAMES = ["body.0.weight", "body.0.bias", "head.weight", "head.bias"]


def network(params: dict, x: torch.Tensor) -> torch.Tensor:
    """The 1-H-1 ReLU network written out: ``W2 relu(W1 x + b1) + b2``."""
    hidden = torch.relu(x @ params["body.0.weight"].T + params["body.0.bias"])
    return hidden @ params["head.weight"].T + params["head.bias"]


def mse(params: dict, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return ((network(params, x) - y) ** 2).mean()


def learned_stds(model) -> tuple[dict, dict]:
    """The prior's and the inference network's stds by parameter name, read off the model."""
    def stds(table):
        return {n: table[n.replace(".", "__")].exp() for n in NAMES}
    return stds(model.log_prior_std), stds(model.log_inference_std)


def step(params: dict, x, y, size) -> dict:
    """``params - size * grad mse(params)`` keeping the graph (second order)."""
    grads = torch.autograd.grad(mse(params, x, y), [params[n] for n in NAMES],
                                create_graph=True)
    return {n: params[n] - size * g for n, g in zip(NAMES, grads, strict=True)}


def hand_kl(q_mean, q_std, p_mean, p_std) -> torch.Tensor:
    """``sum_i log(sp_i / sq_i) + (sq_i^2 + (mq_i - mp_i)^2) / (2 sp_i^2) - 1/2``, entry by
    entry."""
    total = torch.zeros((), dtype=torch.float64)
    for n in NAMES:
        for mq, sq, mp, sp in zip(q_mean[n].flatten(), q_std[n].flatten(),
                                  p_mean[n].flatten(), p_std[n].flatten(), strict=True):
            total = total + torch.log(sp / sq) + (sq ** 2 + (mq - mp) ** 2) / (2 * sp ** 2) - 0.5
    return total


def task(seed: int = 0, shots: int = 4, queries: int = 6):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shots + queries, 1, generator=g, dtype=torch.float64) * 2
    y = torch.sin(x) + 0.1 * torch.randn(x.shape, generator=g, dtype=torch.float64)
    return x[:shots], y[:shots], x[shots:], y[shots:]


def learner(**kwargs) -> PLATIPUS:
    torch.manual_seed(0)
    options = {"inner_lr": 0.05, "inner_steps": 1, "noise_std": 0.2, **kwargs}
    return PLATIPUS(MLP(1, hidden=[3]), **options).double()


def test_kl_between_diagonal_gaussians_by_hand():
    g = torch.Generator().manual_seed(1)
    shapes = {"body.0.weight": (3, 1), "body.0.bias": (3,), "head.weight": (1, 3),
              "head.bias": (1,)}

    def draw(scale=1.0):
        return {n: scale * torch.randn(s, generator=g, dtype=torch.float64)
                for n, s in shapes.items()}

    q_mean, p_mean = draw(), draw()
    q_std = {n: v.abs() + 0.1 for n, v in draw().items()}
    p_std = {n: v.abs() + 0.1 for n, v in draw().items()}
    kl = gaussian_kl((q_mean, q_std), (p_mean, p_std))
    assert torch.allclose(kl, hand_kl(q_mean, q_std, p_mean, p_std), rtol=1e-12)
    assert gaussian_kl((q_mean, q_std), (q_mean, q_std)).abs() < 1e-12
    # the direction matters: KL(q || p) is not KL(p || q) here
    assert not torch.allclose(kl, gaussian_kl((p_mean, p_std), (q_mean, q_std)))


def test_meta_objective_and_its_gradient_by_hand():
    """L(phi, query) + w KL(q || p) with theta = m_q + v_q eps and the two learned steps."""
    model = learner(kl_weight=0.3, prior_std=0.2, inference_std=0.05, gamma_p=0.07,
                    gamma_q=0.11)
    with torch.no_grad():  # distinct per-entry stds, so a swapped KL or std shows
        for p in model.log_prior_std.values():
            p.add_(0.1 * torch.arange(p.numel(), dtype=p.dtype).reshape(p.shape))
    g = torch.Generator().manual_seed(2)
    params = dict(model.model.named_parameters())
    eps = {n: torch.randn(params[n].shape, generator=g, dtype=torch.float64) for n in NAMES}
    model.standard_normal_like = lambda name, like: eps[name]
    sx, sy, qx, qy = task()

    loss, _, kl = model.task_objective(sx, sy, qx, qy)
    meta = list(model.parameters())
    grads = torch.autograd.grad(loss, meta)

    # the reference, written out
    mu = params
    prior_std, q_std = learned_stds(model)
    q_mean = step(mu, qx, qy, model.gamma_q)
    p_mean = step(mu, sx, sy, model.gamma_p)
    theta = {n: q_mean[n] + q_std[n] * eps[n] for n in NAMES}
    phi = step(theta, sx, sy, 0.05)
    hand_kl_value = hand_kl(q_mean, q_std, p_mean, prior_std)
    reference = mse(phi, qx, qy) + 0.3 * hand_kl_value
    reference_grads = torch.autograd.grad(reference, meta)

    assert torch.allclose(kl, hand_kl_value, rtol=1e-10)
    assert torch.allclose(loss, reference, rtol=1e-10)
    names = [n for n, _ in model.named_parameters()]
    assert "gamma_p" in names and "gamma_q" in names
    for name, got, want in zip(names, grads, reference_grads, strict=True):
        assert torch.allclose(got, want, rtol=1e-8, atol=1e-10), name


def test_is_maml_when_the_distributions_collapse():
    """sigma = v_q -> 0 and gamma_p = gamma_q = 0: MAML's adapted parameters and
    meta-gradient (two second-order inner steps, the MAML reference by hand)."""
    model = learner(inner_steps=2, eval_inner_steps=2, prior_std=1e-30, gamma_p=0.0,
                    gamma_q=0.0, learn_gammas=False, kl_weight=1.0)
    batch_tasks = [task(seed) for seed in (3, 4)]
    batch = TaskBatch(*(torch.stack(parts) for parts in zip(*batch_tasks, strict=True)))
    model.zero_grad()
    loss, _ = model.meta_loss(batch)
    loss.backward()

    mu = {n: p.detach().clone().requires_grad_(True)
          for n, p in model.model.named_parameters()}
    maml_loss = 0
    for sx, sy, qx, qy in batch_tasks:
        adapted = step(step(mu, sx, sy, 0.05), sx, sy, 0.05)
        maml_loss = maml_loss + mse(adapted, qx, qy) / len(batch_tasks)
    maml_grads = torch.autograd.grad(maml_loss, [mu[n] for n in NAMES])

    assert torch.allclose(loss, maml_loss, rtol=1e-10)
    for n, want in zip(NAMES, maml_grads, strict=True):
        got = dict(model.model.named_parameters())[n].grad
        assert torch.allclose(got, want, rtol=1e-9, atol=1e-12), n

    # meta-test: every drawn model is MAML's adapted parameters
    sx, sy, _, _ = batch_tasks[0]
    state = model.adapt_task(sx, sy, training=False, samples=3, seed=0)
    adapted = step(step(mu, sx, sy, 0.05), sx, sy, 0.05)
    for n in NAMES:
        for k in range(3):
            assert torch.allclose(state[n][k], adapted[n].detach(), rtol=1e-10, atol=1e-12)


def test_meta_test_draws_from_the_prior_step_on_the_support():
    """Zero inner steps: the drawn theta are N(mu - gamma_p grad L(mu, support), sigma^2)."""
    model = learner(prior_std=0.1, gamma_p=0.3)
    sx, sy, _, _ = task(5)
    state = model.adapt_task(sx, sy, training=False, inner_steps=0, samples=20000, seed=1)
    mu = {n: p.detach().clone().requires_grad_(True)
          for n, p in model.model.named_parameters()}
    mean = step(mu, sx, sy, 0.3)
    for n in NAMES:
        assert torch.allclose(state[n].mean(0), mean[n].detach(), atol=0.004), n
        assert torch.allclose(state[n].std(0), torch.full_like(mean[n], 0.1), atol=0.004), n


def test_samples_are_reproducible_under_a_seed():
    model = learner(prior_std=0.3, eval_inner_steps=3)
    sx, sy, qx, qy = task(6)
    first, again = model.adapt(sx, sy, seed=4), model.adapt(sx, sy, seed=4)
    other = model.adapt(sx, sy, seed=5)
    assert torch.equal(first.mean(qx), again.mean(qx))
    assert torch.equal(first.variance(qx), again.variance(qx))
    assert torch.equal(first.log_likelihood(qx, qy), again.log_likelihood(qx, qy))
    assert not torch.equal(first.mean(qx), other.mean(qx))
    draws = first.sample(qx, 4, seed=9)
    assert draws.shape == (4, 6, 1) and torch.equal(draws, again.sample(qx, 4, seed=9))
    assert not torch.equal(draws, first.sample(qx, 4, seed=10))
    # the draws differ from each other: the samples are distinct functions
    assert (draws.std(dim=0) > 0).all()


@pytest.mark.parametrize("samples", [1, 5])
def test_variance_is_positive_and_finite_for_batch_size_one(samples):
    model = learner(prior_std=0.2)
    sx, sy, qx, qy = task(7, shots=1, queries=1)
    predictive = model.adapt(sx, sy, samples=samples)
    variance = predictive.variance(qx)
    assert variance.shape == (1, 1)
    assert torch.isfinite(variance).all() and (variance >= 0.2 ** 2 - 1e-15).all()
    assert torch.isfinite(predictive.log_likelihood(qx, qy))
    if samples == 1:  # one model: only the observation noise
        assert torch.allclose(variance, torch.full_like(variance, 0.04))


def test_mixture_log_likelihood_by_hand():
    model = learner(prior_std=0.3)
    sx, sy, qx, qy = task(8)
    predictive = model.adapt(sx, sy, samples=4, seed=2)
    functions = predictive.functions(qx)
    per_model = [sum(math.log(1 / math.sqrt(2 * math.pi * 0.04))
                     - (float(y) - float(f)) ** 2 / (2 * 0.04)
                     for y, f in zip(qy.flatten(), functions[k].flatten(), strict=True))
                 for k in range(4)]
    top = max(per_model)
    expected = top + math.log(sum(math.exp(v - top) for v in per_model) / 4)
    assert math.isclose(predictive.log_likelihood(qx, qy).item(), expected, rel_tol=1e-10)
    mean = functions.mean(0)
    assert torch.allclose(predictive.mean(qx), mean)
    assert torch.allclose(predictive.variance(qx),
                          ((functions - mean) ** 2).mean(0) + 0.04)


def test_bad_arguments():
    with pytest.raises(ValueError, match="prior_std must be a finite number > 0"):
        PLATIPUS(MLP(1, hidden=[3]), prior_std=0.0)
    model = learner()
    sx, sy, _, _ = task()
    with pytest.raises(ValueError, match="does not take the adaptation option"):
        model.adapt(sx, sy, particles=3)
    with pytest.raises(ValueError, match="samples must be an integer >= 1"):
        model.adapt(sx, sy, samples=0).mean(sx)


def test_adapted_subset_keeps_the_rest_deterministic():
    model = learner(adapt="head", prior_std=0.3)
    assert set(model.adapt_names) == {"head.weight", "head.bias"}
    assert {k for k in model.log_prior_std} == {"head__weight", "head__bias"}
    sx, sy, qx, _ = task(9)
    draws = model.adapt(sx, sy).sample(qx, 3, seed=0)
    assert torch.isfinite(draws).all() and not torch.equal(draws[0], draws[1])
    assert isinstance(model.model, nn.Module)


@pytest.mark.parametrize("draws", [1, 3])
def test_vmap_over_tasks_matches_the_loop(draws):
    """The same per-task objectives and meta-gradient with ``strategy: vmap`` (fixed noise),
    one draw per task or several (a vmap over the draws nested in the vmap over tasks)."""
    batch = TaskBatch(*(torch.stack(parts) for parts in
                        zip(*(task(seed) for seed in (10, 11, 12)), strict=True)))
    results = []
    for strategy in ("loop", "vmap"):
        model = learner(strategy=strategy, prior_std=0.2, inference_std=0.1, kl_weight=0.5,
                        train_samples=draws)
        g = torch.Generator().manual_seed(3)
        shape = () if draws == 1 else (draws,)
        eps = {n: torch.randn((*shape, *p.shape), generator=g, dtype=torch.float64)
               for n, p in model.model.named_parameters()}
        model.standard_normal_like = lambda name, like, eps=eps: eps[name]
        losses, metrics = model.training_task_losses(batch)
        grads = torch.autograd.grad(losses.sum(), list(model.parameters()))
        results.append((losses, metrics["kl"], grads))
    (loop_losses, loop_kl, loop_grads), (vmap_losses, vmap_kl, vmap_grads) = results
    assert torch.allclose(loop_losses, vmap_losses, rtol=1e-10)
    assert torch.allclose(loop_kl, vmap_kl, rtol=1e-10)
    for a, b in zip(loop_grads, vmap_grads, strict=True):
        assert torch.allclose(a, b, rtol=1e-8, atol=1e-12)


# -- the KL's size at the initialisation (why the Glyphs config weighs it 0.001 / 75) --------
# With v_q = sigma and gamma_q = gamma_p = gamma (the initialisation), q and p differ only in
# their means, mu - gamma g_q and mu - gamma g_s, so KL(q || p) = gamma^2 ||g_q - g_s||^2 /
# (2 sigma^2): with gamma 0.08 and sigma 0.01 every unit of ||g_q - g_s||^2 costs 32 nats.


def linear_ce_gradient(weight, bias, x, y):
    """The mean cross-entropy's gradient of the softmax classifier ``W x + b`` by hand:
    ``(1/N) sum_i (p_i - e_{y_i}) x_i^T`` and ``(1/N) sum_i (p_i - e_{y_i})``."""
    residual = torch.softmax(x @ weight.T + bias, dim=1) - nn.functional.one_hot(y, 5)
    return residual.T @ x / len(y), residual.mean(dim=0)


def test_initial_kl_is_the_closed_form_of_the_two_gradient_steps():
    torch.manual_seed(0)
    model = PLATIPUS(nn.Linear(3, 5), loss="cross_entropy", inner_lr=0.08, prior_std=0.01,
                     kl_weight=1.0).double()
    g = torch.Generator().manual_seed(1)
    sx, qx = (torch.randn(n, 3, generator=g, dtype=torch.float64) for n in (5, 15))
    sy, qy = torch.arange(5), torch.arange(15) % 5
    mu = dict(model.model.named_parameters())
    kl = gaussian_kl(model.inference(mu, qx, qy), model.prior(mu, sx, sy, True))
    w, b = mu["weight"].detach(), mu["bias"].detach()
    diff2 = sum(float(((a - c) ** 2).sum()) for a, c in zip(
        linear_ce_gradient(w, b, qx, qy), linear_ce_gradient(w, b, sx, sy), strict=True))
    # the learner's own gamma and sigma (stored in float32: 0.08 and 0.01 up to ~1e-8)
    gamma = float(model.gamma_p.detach())
    sigma = math.exp(float(model.log_prior_std["weight"][0, 0].detach()))
    assert (float(model.gamma_q.detach()), gamma) == pytest.approx((0.08, 0.08), rel=1e-6)
    assert float(kl.detach()) == pytest.approx(gamma ** 2 * diff2 / (2 * sigma ** 2), rel=1e-10)
    assert float(kl.detach()) > 1.0  # not trivially zero: the two steps differ by ~sigma per weight


CONFIGS = sorted((Path(__file__).parents[1] / "src" / "metalab" / "configs").glob(
    "platipus-*glyphs*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_shipped_glyphs_configs_keep_the_kl_below_the_cross_entropy(path):
    """At the initialisation of every shipped PLATIPUS Glyphs config, on one training task,
    ``kl_weight * KL`` (the KL's share of the per-query-point meta-loss) stays below the query
    cross-entropy. At the former weight 1/75 it was ~127 nats per query point against a
    cross-entropy of 1.5 (``benchmarks/platipus_kl_diagnosis.py``): the meta-gradient then
    flattened the support loss (||g_s||^2 337 -> 2) and training accuracy fell 59% -> 39%."""
    config = load_config(path)
    torch.manual_seed(0)
    model = build_meta_learner(config)
    batch = build_task_source(config, "train", 1, seed=99).sample()
    mu = dict(model.inner_module.named_parameters())
    q = model.inference(mu, batch.query_x[0], batch.query_y[0])
    p = model.prior(mu, batch.support_x[0], batch.support_y[0], True)
    weighted = model.kl_weight * float(gaussian_kl(q, p).detach())
    outputs = model.inner_module(model.encode(batch.query_x[0]))
    ce = float(nn.functional.cross_entropy(outputs, batch.query_y[0]).detach())
    assert weighted < ce, f"{path.stem}: kl_weight x KL {weighted:.3g} against CE {ce:.3g}"


def test_several_training_draws_and_gamma_steps_by_hand():
    """``train_samples = 3``, ``gamma_steps = 2``: the query loss is the mean over three
    draws ``theta_l = m_q + v_q eps_l`` (each adapted), the KL counted once, and both
    means take two learned steps from ``mu``."""
    model = learner(kl_weight=0.3, prior_std=0.2, inference_std=0.05, gamma_p=0.07,
                    gamma_q=0.11, train_samples=3, gamma_steps=2)
    with torch.no_grad():
        for p in model.log_inference_std.values():
            p.add_(0.2 * torch.arange(p.numel(), dtype=p.dtype).reshape(p.shape))
    g = torch.Generator().manual_seed(7)
    params = dict(model.model.named_parameters())
    eps = {n: torch.randn((3, *params[n].shape), generator=g, dtype=torch.float64)
           for n in NAMES}

    def noise(name, like):
        assert like.shape == eps[name].shape
        return eps[name]

    model.standard_normal_like = noise
    sx, sy, qx, qy = task(8)
    loss, _, kl = model.task_objective(sx, sy, qx, qy)
    meta = list(model.parameters())
    grads = torch.autograd.grad(loss, meta)

    mu = params
    prior_std, q_std = learned_stds(model)
    q_mean = step(step(mu, qx, qy, model.gamma_q), qx, qy, model.gamma_q)
    p_mean = step(step(mu, sx, sy, model.gamma_p), sx, sy, model.gamma_p)
    query_loss = 0
    for draw in range(3):
        theta = {n: q_mean[n] + q_std[n] * eps[n][draw] for n in NAMES}
        query_loss = query_loss + mse(step(theta, sx, sy, 0.05), qx, qy) / 3
    hand_kl_value = hand_kl(q_mean, q_std, p_mean, prior_std)
    reference = query_loss + 0.3 * hand_kl_value
    reference_grads = torch.autograd.grad(reference, meta)

    assert torch.allclose(kl, hand_kl_value, rtol=1e-10)
    assert torch.allclose(loss, reference, rtol=1e-10)
    for (name, _), got, want in zip(model.named_parameters(), grads, reference_grads,
                                    strict=True):
        assert torch.allclose(got, want, rtol=1e-8, atol=1e-10), name


def test_gamma_steps_at_meta_test():
    """Zero inner steps, a vanishing prior std: the draws are two prior steps from mu."""
    model = learner(prior_std=1e-30, gamma_p=0.3, gamma_steps=2)
    sx, sy, _, _ = task(5)
    state = model.adapt_task(sx, sy, training=False, inner_steps=0, samples=2, seed=1)
    mu = {n: p.detach().clone().requires_grad_(True)
          for n, p in model.model.named_parameters()}
    gamma = model.gamma_p.detach()
    want = step(step(mu, sx, sy, gamma), sx, sy, gamma)
    one_step = step(mu, sx, sy, gamma)
    for n in NAMES:
        assert torch.allclose(state[n][1], want[n].detach(), rtol=1e-10, atol=1e-14), n
    assert not torch.allclose(state["head.bias"][0], one_step["head.bias"].detach())


def test_log_std_range_starts_each_entry_uniformly_in_log():
    torch.manual_seed(3)
    model = PLATIPUS(MLP(1, hidden=[200]), log_std_range=(-4.0, -3.0)).double()
    for table in (model.log_prior_std, model.log_inference_std):
        values = torch.cat([p.detach().flatten() for p in table.values()])
        assert values.min() >= -4.0 and values.max() <= -3.0
        # U[-4, -3] over 601 entries: mean -3.5 (sd of the mean 0.29 / sqrt(601) = 0.012),
        # variance 1/12
        assert abs(values.mean().item() + 3.5) < 0.05
        assert abs(values.var().item() - 1 / 12) < 0.02
    prior = torch.cat([p.detach().flatten() for p in model.log_prior_std.values()])
    inference = torch.cat([p.detach().flatten() for p in model.log_inference_std.values()])
    assert not torch.equal(prior, inference)  # independent draws
    with pytest.raises(ValueError, match=r"log_std_range must be a \(low, high\) pair with "
                                         "low <= high"):
        PLATIPUS(MLP(1, hidden=[3]), log_std_range=(-3.0, -4.0))
    with pytest.raises(ValueError, match=r"log_std_range must be a \(low, high\) pair of "
                                         "numbers"):
        PLATIPUS(MLP(1, hidden=[3]), log_std_range=-3.0)
    with pytest.raises(ValueError, match="log_std_range must be finite"):
        PLATIPUS(MLP(1, hidden=[3]), log_std_range=(-4.0, math.inf))
    with pytest.raises(ValueError, match="train_samples must be an integer >= 1"):
        PLATIPUS(MLP(1, hidden=[3]), train_samples=0)


@pytest.mark.parametrize("gamma_lambda", [1.5, 2.5])
def test_repeated_prior_steps_follow_gradient_descent_on_a_quadratic(gamma_lambda):
    """``gamma_steps = 5`` on a linear model, whose MSE is the quadratic
    ``L(t) = L* + (t - t*)^T H (t - t*) / 2``: the prior mean is the closed form
    ``t* + (I - gamma H)^5 (mu - t*)``, so along H's top eigenvector the distance to the
    least-squares fit ``t*`` is multiplied by ``|1 - gamma lambda_max|^5``: it shrinks for
    ``gamma lambda_max < 2`` and grows (7.6 times at 2.5) beyond. This is the divergence of
    ``gamma_steps: 5`` in the sine/line runs (docs/bayesian-methods.md, "sixth look"); a
    prior step that reused ``grad L(mu)`` for every repeat would grow only linearly."""
    x = torch.tensor([[-4.0], [-1.0], [0.5], [3.0], [4.5]], dtype=torch.float64)
    y = 2.5 * x - 1.0 + torch.tensor([[0.3], [-0.2], [0.1], [0.0], [-0.4]], dtype=torch.float64)
    design = torch.cat([x, torch.ones_like(x)], dim=1)  # t = (w, b): f(x) = w x + b
    hessian = 2 * design.T @ design / len(x)
    t_star = torch.linalg.lstsq(design, y).solution.flatten()
    eigenvalues, eigenvectors = torch.linalg.eigh(hessian)
    gamma = gamma_lambda / eigenvalues[-1].item()
    linear = MLP(1, hidden=[]).double()
    with torch.no_grad():
        linear.head.weight.fill_(0.2)
        linear.head.bias.fill_(0.7)
    model = PLATIPUS(linear, inner_lr=0.05, prior_std=1e-30, gamma_p=gamma,
                     gamma_steps=5).double()
    gamma = model.gamma_p.item()  # as stored (a float32 tensor before .double())
    mu = {n: p for n, p in model.model.named_parameters()}
    mean, _ = model.prior(mu, x, y, training=False)
    got = torch.stack([mean["head.weight"].flatten()[0], mean["head.bias"].flatten()[0]])
    start = torch.tensor([0.2, 0.7], dtype=torch.float64)
    step_matrix = torch.eye(2, dtype=torch.float64) - gamma * hessian
    want = t_star + torch.linalg.matrix_power(step_matrix, 5) @ (start - t_star)
    assert torch.allclose(got.detach(), want, rtol=1e-10, atol=1e-12)
    top = eigenvectors[:, -1]
    ratio = abs(top @ (got.detach() - t_star)) / abs(top @ (start - t_star))
    gamma_lambda = gamma * eigenvalues[-1].item()  # the stored gamma's
    assert ratio == pytest.approx(abs(1 - gamma_lambda) ** 5, rel=1e-8)
    assert (ratio > 7.5) if gamma_lambda > 2 else (ratio < 0.04)


def test_step_sizes_take_the_networks_dtype_without_float32_rounding():
    """On a float64 network gamma_p = 0.07 is the float64 0.07 (float32 would give
    0.07000000029802322), and the prior step uses exactly that value."""
    torch.manual_seed(0)
    model = PLATIPUS(MLP(1, hidden=[3]).double(), inner_lr=0.05, gamma_p=0.07, gamma_q=0.11)
    assert model.gamma_p.dtype == model.gamma_q.dtype == torch.float64
    assert model.gamma_p.item() == 0.07 and model.gamma_q.item() == 0.11
    sx, sy, _, _ = task()
    params = dict(model.model.named_parameters())
    prior_mean, _ = model.prior(params, sx, sy, training=True)
    want = step(params, sx, sy, 0.07)
    for n in NAMES:
        assert torch.allclose(prior_mean[n], want[n], rtol=0, atol=1e-14), n
