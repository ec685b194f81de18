"""The neural-process family (CNP, NP, ANP), its Gaussian predictive and the GP / image
completion task families, against hand computations and closed forms, in float64."""

from __future__ import annotations

import math

import pytest
import torch

from metalab.algorithms import ALGORITHMS
from metalab.algorithms.predictive import (
    GaussianPredictive,
    diagonal_gaussian_kl,
    gaussian_log_density,
)
from metalab.nn import NeuralProcessNet
from metalab.nn.neural_process import MultiHeadCrossAttention
from metalab.tasks import GaussianProcess, ImageCompletion, TaskBatch
from metalab.tasks.gaussian_process import rbf_kernel
from metalab.tasks.objective import GAUSSIAN_REGRESSION, gaussian_nll

NETS = {
    "cnp": {},
    "np": {"latent": 4, "deterministic": False},
    "anp": {"latent": 4, "attention_heads": 2},
}


def learner(method: str, seed: int = 0, **options):
    torch.manual_seed(seed)
    net = NeuralProcessNet(1, 1, hidden=(16, 16), representation=8, **NETS[method])
    return ALGORITHMS[method](net.double(), **options)


def context(points: int = 6, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(points, 1, generator=g, dtype=torch.float64) * 4 - 2
    return x, torch.sin(2 * x) + 0.1 * torch.randn(points, 1, generator=g, dtype=torch.float64)


TARGETS = torch.linspace(-2, 2, 9, dtype=torch.float64)[:, None]


# -- closed forms ------------------------------------------------------------------------------
def test_gaussian_nll_equals_the_formula_by_hand():
    mean, variance, y = [0.5, -1.0], [0.25, 2.0], [1.0, 0.0]
    by_hand = sum(0.5 * math.log(2 * math.pi * v) + (t - m) ** 2 / (2 * v)
                  for m, v, t in zip(mean, variance, y, strict=True)) / 2
    outputs = torch.tensor([[mean[0], variance[0]], [mean[1], variance[1]]], dtype=torch.float64)
    targets = torch.tensor([[y[0]], [y[1]]], dtype=torch.float64)
    assert gaussian_nll(outputs, targets).item() == pytest.approx(by_hand, rel=1e-12)
    assert GAUSSIAN_REGRESSION.metric(outputs, targets).item() == pytest.approx(
        ((0.5 - 1.0) ** 2 + (-1.0 - 0.0) ** 2) / 2, rel=1e-12)
    density = gaussian_log_density(targets, outputs[:, :1], outputs[:, 1:], dims=2)
    assert density.item() == pytest.approx(-2 * by_hand, rel=1e-12)


def test_kl_between_diagonal_gaussians_against_the_closed_form():
    mu_q, sd_q, mu_p, sd_p = [0.3, -1.0], [0.5, 2.0], [0.0, 1.0], [1.0, 0.7]
    by_hand = sum(math.log(sp / sq) + (sq ** 2 + (mq - mp) ** 2) / (2 * sp ** 2) - 0.5
                  for mq, sq, mp, sp in zip(mu_q, sd_q, mu_p, sd_p, strict=True))
    as_tensors = [torch.tensor(v, dtype=torch.float64) for v in (mu_q, sd_q, mu_p, sd_p)]
    kl = diagonal_gaussian_kl(tuple(as_tensors[:2]), tuple(as_tensors[2:]))
    assert kl.item() == pytest.approx(by_hand, rel=1e-12)
    reversed_kl = diagonal_gaussian_kl(tuple(as_tensors[2:]), tuple(as_tensors[:2]))
    assert reversed_kl.item() != pytest.approx(by_hand, rel=1e-3)  # KL is not symmetric
    same = diagonal_gaussian_kl(tuple(as_tensors[:2]), tuple(as_tensors[:2]))
    assert same.item() == pytest.approx(0.0, abs=1e-15)


def test_multi_head_cross_attention_against_a_plain_loop():
    torch.manual_seed(0)
    attention = MultiHeadCrossAttention(3, 5, width=6, heads=3).double()
    queries = torch.randn(4, 3, dtype=torch.float64)
    keys = torch.randn(7, 3, dtype=torch.float64)
    values = torch.randn(7, 5, dtype=torch.float64)
    wq, wk, wv = attention.query.weight, attention.key.weight, attention.value.weight
    wo, bo = attention.output.weight, attention.output.bias
    d = 2
    rows = []
    with torch.no_grad():
        for i in range(4):
            concatenated = []
            for h in range(3):
                rows_of_head = slice(h * d, (h + 1) * d)
                q = wq[rows_of_head] @ queries[i]
                scores = [float(q @ (wk[rows_of_head] @ keys[j])) / math.sqrt(d)
                          for j in range(7)]
                top = max(scores)
                weights = [math.exp(s - top) for s in scores]
                total = sum(weights)
                head = sum(w / total * (wv[rows_of_head] @ values[j])
                           for j, w in enumerate(weights))
                concatenated.append(head)
            rows.append(wo @ torch.cat(concatenated) + bo)
        expected = torch.stack(rows)
        torch.testing.assert_close(attention(queries, keys, values), expected, rtol=0,
                                   atol=1e-12)


# -- the task families -------------------------------------------------------------------------
def test_gp_sample_covariance_approaches_the_rbf_kernel():
    # n draws of y at 5 fixed inputs; each sample covariance entry has standard deviation
    # sqrt((K_ij^2 + K_ii K_jj) / n) <= sqrt(2 / n) * scale^2 = 0.0071 for n = 40000 and
    # scale 1, so a tolerance of 0.04 is more than 5 standard deviations: a wrong kernel
    # (lengthscale squared, scale not squared, noise missing) is off by far more.
    n, lengthscale, scale, noise = 40000, 0.5, 1.0, 0.1
    family = GaussianProcess(3, 2, tasks_per_batch=n, noise=noise, seed=0)
    x = torch.tensor([-1.0, -0.7, 0.0, 0.3, 1.2], dtype=torch.float64)[None, :, None]
    y = family.draw(x.expand(n, -1, -1), torch.full((n,), lengthscale, dtype=torch.float64),
                    torch.full((n,), scale, dtype=torch.float64))[..., 0]
    sample_covariance = y.T @ y / n  # the mean is known to be 0
    points = x[0, :, 0].tolist()
    expected = torch.tensor([[scale ** 2 * math.exp(-(a - b) ** 2 / (2 * lengthscale ** 2))
                              + (noise ** 2 if i == j else 0.0)
                              for j, b in enumerate(points)] for i, a in enumerate(points)],
                            dtype=torch.float64)
    torch.testing.assert_close(sample_covariance, expected, rtol=0, atol=0.04)
    torch.testing.assert_close(rbf_kernel(x, torch.tensor([lengthscale], dtype=torch.float64),
                                          torch.tensor([scale], dtype=torch.float64))[0]
                               + noise ** 2 * torch.eye(5, dtype=torch.float64), expected)


def test_gp_family_is_seeded_and_varies_the_context_size():
    a = GaussianProcess(3, 10, tasks_per_batch=4, max_shots=8, seed=1)
    b = GaussianProcess(3, 10, tasks_per_batch=4, max_shots=8, seed=1)
    sizes = set()
    for _ in range(20):
        first, second = a.sample(), b.sample()
        torch.testing.assert_close(first.support_y, second.support_y, rtol=0, atol=0)
        sizes.add(first.support_x.shape[1])
        assert first.query_x.shape == (4, 10, 1)
    assert sizes <= set(range(3, 9)) and len(sizes) > 2
    with pytest.raises(ValueError, match="max_shots must be >= shots=3, got 2"):
        GaussianProcess(3, 10, max_shots=2)


def test_image_completion_context_pixels_are_pixels_of_the_same_image():
    images = torch.rand(3, 1, 4, 5)
    family = ImageCompletion(images, shots=6, tasks_per_batch=8, seed=0)
    batch = family.sample()
    assert batch.query_x.shape == (8, 20, 2) and batch.support_y.shape == (8, 6, 1)
    for t in range(8):
        # targets are every pixel in raster order: find the image, then check the context
        image = next(i for i in range(3)
                     if torch.equal(batch.query_y[t, :, 0], images[i, 0].flatten()))
        for coordinate, value in zip(batch.support_x[t], batch.support_y[t], strict=True):
            row = round((coordinate[0].item() + 1) / 2 * 3)
            col = round((coordinate[1].item() + 1) / 2 * 4)
            assert value.item() == images[image, 0, row, col].item()
        assert len({tuple(c.tolist()) for c in batch.support_x[t]}) == 6  # distinct pixels


# -- the methods -------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["cnp", "np", "anp"])
def test_prediction_is_invariant_to_the_order_of_context_points(method):
    model = learner(method)
    x, y = context()
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(3))
    first, permuted = model.adapt(x, y), model.adapt(x[order], y[order])
    torch.testing.assert_close(permuted.mean(TARGETS), first.mean(TARGETS), rtol=0, atol=1e-12)
    torch.testing.assert_close(permuted.variance(TARGETS), first.variance(TARGETS), rtol=0,
                               atol=1e-12)
    changed_y = y.clone()
    changed_y[2] += 1.0
    changed = model.adapt(x, changed_y)
    assert (changed.mean(TARGETS) - first.mean(TARGETS)).abs().max() > 1e-4


@pytest.mark.parametrize("method", ["cnp", "np", "anp"])
def test_aggregation_is_a_mean_duplicating_the_context_changes_nothing(method):
    # (1/2n) sum over C twice = (1/n) sum over C; attention weights are renormalised the same
    # way. A sum (or a max-free unnormalised attention) would double the representation.
    model = learner(method)
    x, y = context()
    once, twice = model.adapt(x, y), model.adapt(torch.cat([x, x]), torch.cat([y, y]))
    torch.testing.assert_close(twice.mean(TARGETS), once.mean(TARGETS), rtol=0, atol=1e-12)
    torch.testing.assert_close(twice.variance(TARGETS), once.variance(TARGETS), rtol=0,
                               atol=1e-12)


@pytest.mark.parametrize("method", ["cnp", "np", "anp"])
def test_predictive_variance_is_positive_and_finite_with_one_point(method):
    model = learner(method)
    x, y = context(1)
    predictive = model.adapt(x, y)
    variance = predictive.variance(x)
    assert variance.shape == (1, 1) and torch.isfinite(variance).all() and (variance > 0).all()
    assert torch.isfinite(predictive.log_likelihood(x, y))


@pytest.mark.parametrize("method", ["cnp", "np", "anp"])
def test_samples_are_reproducible_under_a_seed(method):
    predictive = learner(method).adapt(*context())
    first = predictive.sample(TARGETS, 5, seed=7)
    assert first.shape == (5, 9, 1)
    torch.testing.assert_close(predictive.sample(TARGETS, 5, seed=7), first, rtol=0, atol=0)
    assert not torch.equal(predictive.sample(TARGETS, 5, seed=8), first)
    assert (first - first[0]).abs().max() > 0  # the draws differ from each other


def test_cnp_predictive_is_the_decoders_gaussian():
    model = learner("cnp")
    x, y = context()
    predictive = model.adapt(x, y)
    outputs = model.predict(model.adapt_task(x, y, training=False), TARGETS)
    torch.testing.assert_close(torch.cat([predictive.mean(TARGETS),
                                          predictive.variance(TARGETS)], dim=-1), outputs)
    # the joint log-likelihood of independent Gaussians: minus the per-entry NLL times 9
    targets = torch.cos(TARGETS)
    expected = -9 * gaussian_nll(outputs, targets)
    torch.testing.assert_close(predictive.log_likelihood(TARGETS, targets), expected)


def test_latent_predictive_moments_by_the_law_of_total_variance():
    def decode(x, z):  # mean z * x, variance 0.5 (+ z^2): known per-draw moments
        return z[:, None, :1] * x, 0.5 + z[:, None, :1] ** 2 * torch.ones_like(x)

    prior = (torch.tensor([1.0], dtype=torch.float64), torch.tensor([0.5], dtype=torch.float64))
    predictive = GaussianPredictive(decode, prior, lambda x, y: prior, samples=4, seed=2)
    z = prior[0] + prior[1] * torch.randn(4, 1, generator=torch.Generator().manual_seed(2),
                                          dtype=torch.float64)
    x = torch.tensor([[2.0]], dtype=torch.float64)
    means = [float(v) * 2.0 for v in z[:, 0]]
    average = sum(means) / 4
    expected_variance = (sum(0.5 + float(v) ** 2 for v in z[:, 0]) / 4
                         + sum((m - average) ** 2 for m in means) / 4)
    assert predictive.mean(x).item() == pytest.approx(average, rel=1e-12)
    assert predictive.variance(x).item() == pytest.approx(expected_variance, rel=1e-12)


def test_importance_weighted_log_likelihood_by_hand():
    model = learner("np", samples=3)
    x, y = context(4)
    predictive = model.adapt(x, y)
    targets_x, targets_y = TARGETS[:5], torch.sin(2 * TARGETS[:5])
    Normal = torch.distributions.Normal
    with torch.no_grad():
        prior = model.model.latent_distribution(x, y)
        proposal = model.model.latent_distribution(torch.cat([x, targets_x]),
                                                   torch.cat([y, targets_y]))
        eps = torch.randn(3, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        weights = []
        for k in range(3):
            z = proposal[0] + proposal[1] * eps[k]
            mean, variance = model.model.decode(targets_x, None, z)
            weights.append(Normal(mean, variance.sqrt()).log_prob(targets_y).sum()
                           + Normal(*prior).log_prob(z).sum() - Normal(*proposal).log_prob(z).sum())
        expected = torch.logsumexp(torch.stack(weights), 0) - math.log(3)
    torch.testing.assert_close(predictive.log_likelihood(targets_x, targets_y, seed=0), expected)


@pytest.mark.parametrize("method", ["np", "anp"])
def test_negative_elbo_by_hand(method):
    model = learner(method)
    sx, sy = context(3)
    qx, qy = TARGETS[:4], torch.sin(2 * TARGETS[:4])
    torch.manual_seed(11)
    loss, _ = model.negative_elbo(sx, sy, qx, qy)
    Normal, kl = torch.distributions.Normal, torch.distributions.kl_divergence
    tx, ty = torch.cat([sx, qx]), torch.cat([sy, qy])
    with torch.no_grad():
        posterior = Normal(*model.model.latent_distribution(tx, ty))
        prior = Normal(*model.model.latent_distribution(sx, sy))
        torch.manual_seed(11)
        z = posterior.loc + posterior.scale * torch.randn_like(posterior.scale)
        r = model.model.deterministic_representation(sx, sy, tx)
        mean, variance = model.model.decode(tx, r, z)
        elbo = Normal(mean, variance.sqrt()).log_prob(ty).sum() - kl(posterior, prior).sum()
    assert loss.item() == pytest.approx(-elbo.item() / 7, rel=1e-10)


def batch_of(tasks: int = 3, seed: int = 0) -> TaskBatch:
    return GaussianProcess(4, 6, tasks_per_batch=tasks, seed=seed).sample().to(torch.float64)


def test_cnp_vmap_and_loop_give_the_same_losses_and_gradients():
    batch = batch_of()
    results = []
    for strategy in ("loop", "vmap"):
        model = learner("cnp", strategy=strategy)
        loss, _ = model.meta_loss(batch)
        loss.backward()
        results.append((loss.detach(), [p.grad for p in model.parameters()]))
    torch.testing.assert_close(results[1][0], results[0][0], rtol=0, atol=1e-12)
    for a, b in zip(results[0][1], results[1][1], strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-12)


def test_cnp_training_loss_is_the_query_nll_and_evaluation_reports_log_likelihood():
    model = learner("cnp")
    batch = batch_of()
    losses, metrics = model.task_losses(batch)
    for t in range(3):
        state = model.adapt_task(batch.support_x[t], batch.support_y[t], training=True)
        expected = gaussian_nll(model.predict(state, batch.query_x[t]), batch.query_y[t])
        torch.testing.assert_close(losses[t], expected)
    eval_losses, eval_metrics = model.task_losses(batch, training=False)
    torch.testing.assert_close(eval_losses, losses.detach())
    torch.testing.assert_close(eval_metrics["log_likelihood"], -losses.detach())
    torch.testing.assert_close(eval_metrics["mse"], metrics["mse"])


def test_methods_check_their_network():
    with pytest.raises(ValueError, match="cnp needs model.latent: 0"):
        ALGORITHMS["cnp"](NeuralProcessNet(latent=4))
    with pytest.raises(ValueError, match="needs model.latent > 0"):
        ALGORITHMS["np"](NeuralProcessNet())
    with pytest.raises(ValueError, match="anp needs model.latent > 0"):
        ALGORITHMS["anp"](NeuralProcessNet(latent=4))
    with pytest.raises(TypeError, match="needs a NeuralProcessNet"):
        ALGORITHMS["cnp"](torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="at least one context point"):
        learner("cnp").adapt(torch.zeros(0, 1, dtype=torch.float64),
                             torch.zeros(0, 1, dtype=torch.float64))


# -- a fixed trained model ---------------------------------------------------------------------
@pytest.mark.learning
@pytest.mark.parametrize("method", ["cnp", "np"])
def test_log_likelihood_increases_with_more_context_on_a_trained_model(method):
    torch.manual_seed(0)
    torch.set_num_threads(1)
    net = NeuralProcessNet(1, 1, hidden=(32, 32), representation=32, **(
        {"latent": 8, "deterministic": False} if method == "np" else {}))
    model = ALGORITHMS[method](net, samples=16) if method == "np" else ALGORITHMS[method](net)
    model.strategy = "vmap"
    source = GaussianProcess(1, 20, tasks_per_batch=16, max_shots=20, lengthscale=(0.4, 0.6),
                             scale=(0.8, 1.0), seed=0)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    for _ in range(300):
        optimizer.zero_grad()
        model.meta_loss(source.sample())[0].backward()
        optimizer.step()
    tests = GaussianProcess(20, 20, tasks_per_batch=100, lengthscale=(0.4, 0.6),
                            scale=(0.8, 1.0), seed=1).sample()
    averages = []
    for size in (1, 5, 20):
        part = TaskBatch(tests.support_x[:, :size], tests.support_y[:, :size], tests.query_x,
                         tests.query_y)
        averages.append(model.task_losses(part, training=False)[1]["log_likelihood"].mean())
    assert averages[0] < averages[1] < averages[2], averages
