"""Meta-learning without memorization: the non-mutually-exclusive task families, MR-MAML(W)
and MR-MAML(A), and the support-swap diagnostic."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from helpers import ToyImages
from metalab.algorithms import MAML
from metalab.algorithms.memorization import derangement, support_swap_loss, swap_supports
from metalab.algorithms.mr_maml import (
    FLOAT32_EPS,
    MRMAMLA,
    MRMAMLW,
    BodyHead,
    gaussian_kl_to_standard,
)
from metalab.nn import MLP
from metalab.tasks import TaskBatch
from metalab.tasks.memorization import (
    GlyphPose,
    NonMutuallyExclusiveSinusoid,
    check_disjoint_characters,
    rotate_images,
)
from metalab.train import Trainer


def _same_batches(a, b) -> bool:
    return all(torch.equal(getattr(a, f), getattr(b, f))
               for f in ("support_x", "support_y", "query_x", "query_y", "task_id"))


# -- the non-mutually-exclusive sinusoid -------------------------------------------------------
def _amplitudes(batch: TaskBatch) -> torch.Tensor:
    """Amplitude of every point, recovered from noise-free targets (phase 0)."""
    x = torch.cat([batch.support_x, batch.query_x], 1)[..., 0]
    y = torch.cat([batch.support_y, batch.query_y], 1)[..., 0]
    keep = torch.sin(x).abs() > 0.2
    return torch.where(keep, y / torch.sin(x), torch.nan)


def test_sinusoid_train_amplitudes_are_discrete_and_named_by_the_one_hot():
    source = NonMutuallyExclusiveSinusoid("train", tasks_per_batch=64, noise=0.0, seed=0)
    batch = source.sample()
    assert batch.support_x.shape == (64, 10, 21) and batch.query_y.shape == (64, 10, 1)
    amplitudes = torch.linspace(0.1, 4.0, 20)
    assert torch.allclose(source.amplitudes, amplitudes)
    index = batch.task_id
    assert int(index.max()) < 16 and len(index.unique()) > 8
    for x in (batch.support_x, batch.query_x):
        onehot = x[..., 1:]
        assert torch.equal(onehot.argmax(-1), index.view(-1, 1).expand(-1, x.shape[1]))
        assert torch.equal(onehot.sum(-1), torch.ones(x.shape[:2]))
        assert float(x[..., 0].abs().max()) <= 5.0
    recovered = _amplitudes(batch)
    expected = amplitudes[index].view(-1, 1).expand_as(recovered)
    mask = ~recovered.isnan()
    assert torch.allclose(recovered[mask], expected[mask], atol=1e-4)


def test_sinusoid_test_amplitudes_are_continuous_and_the_one_hot_uninformative():
    source = NonMutuallyExclusiveSinusoid("test", tasks_per_batch=200, noise=0.0, seed=1)
    batch = source.sample()
    assert batch.support_x.shape == (200, 5, 21) and batch.query_x.shape == (200, 200, 21)
    grid = torch.linspace(-4.5, 4.5, 200)
    assert torch.allclose(batch.query_x[:, :, 0], grid.expand(200, -1))
    recovered = torch.nanmean(_amplitudes(batch), dim=1)
    assert float(recovered.min()) >= 0.1 - 1e-4 and float(recovered.max()) <= 4.0 + 1e-4
    distance = (recovered.view(-1, 1) - source.amplitudes.view(1, -1)).abs().min(1).values
    assert float((distance > 1e-2).float().mean()) > 0.8  # off the training grid
    onehot = batch.query_x[..., 1:].argmax(-1)[:, 0]
    assert torch.equal(onehot, batch.task_id) and int(onehot.max()) < 16
    training_amplitude = source.amplitudes[onehot]
    correlation = torch.corrcoef(torch.stack([training_amplitude, recovered]))[0, 1]
    assert abs(float(correlation)) < 0.2  # the one-hot says nothing about the amplitude


def test_sinusoid_noise_determinism_and_resume():
    first = NonMutuallyExclusiveSinusoid("train", tasks_per_batch=4, seed=3)
    again = NonMutuallyExclusiveSinusoid("train", tasks_per_batch=4, seed=3)
    assert _same_batches(first.sample(), again.sample())
    state = first.state_dict()
    expected = first.sample()
    resumed = NonMutuallyExclusiveSinusoid("train", tasks_per_batch=4, seed=99)
    resumed.load_state_dict(state)
    assert _same_batches(resumed.sample(), expected)
    clean = NonMutuallyExclusiveSinusoid("train", tasks_per_batch=256, noise=0.0, seed=5).sample()
    noisy = NonMutuallyExclusiveSinusoid("train", tasks_per_batch=256, noise=0.1, seed=5).sample()
    residual = noisy.support_y - clean.support_y
    assert torch.equal(noisy.support_x, clean.support_x)
    assert abs(float(residual.std()) - 0.1) < 0.01


@pytest.mark.parametrize("kwargs, message", [
    ({"split": "val"}, "split must be one of"),
    ({"train_amplitudes": 21}, "train_amplitudes=21 but there are only num_amplitudes=20"),
    ({"noise": -0.1}, "noise must be >= 0"),
    ({"amplitude_range": (4.0, 0.1)}, "amplitude_range must be a (low, high) pair with low < high"),
    ({"shots": 0}, "shots must be an integer >= 1"),
])
def test_sinusoid_errors(kwargs, message):
    with pytest.raises(ValueError) as error:
        NonMutuallyExclusiveSinusoid(**kwargs)
    assert message in str(error.value)


# -- glyph pose ---------------------------------------------------------------------------------
def test_rotate_images_matches_rot90_and_identity():
    images = torch.rand(3, 2, 12, 12, dtype=torch.float64)
    angles = torch.tensor([math.pi / 2, -math.pi / 2, 0.0], dtype=torch.float64)
    turned = rotate_images(images, angles)
    assert torch.allclose(turned[0], torch.rot90(images[0], 1, (-2, -1)), atol=1e-12)
    assert torch.allclose(turned[1], torch.rot90(images[1], -1, (-2, -1)), atol=1e-12)
    assert torch.allclose(turned[2], images[2], atol=1e-12)
    with pytest.raises(ValueError, match=r"angles must have shape \[3\]"):
        rotate_images(images, torch.zeros(2))


def _toy(classes=6, per_class=20, size=12, seed=0, prefix="class"):
    dataset = ToyImages(classes=classes, per_class=per_class, size=size, seed=seed)
    dataset.class_names = [f"{prefix}{c}" for c in range(classes)]
    return dataset


def _drawing_of(example: torch.Tensor, drawings: torch.Tensor, angle: float) -> int:
    """Index of the drawing that, rotated by ``angle``, is ``example`` (-1 if none)."""
    turned = rotate_images(drawings, torch.full((len(drawings),), angle))
    error = (turned - example).abs().flatten(1).amax(1)
    best = int(error.argmin())
    return best if float(error[best]) < 1e-5 else -1


def test_pose_targets_are_the_applied_rotation_minus_the_canonical_angle():
    dataset = _toy()
    source = GlyphPose(dataset, shots=4, queries=5, tasks_per_batch=5, seed=0)
    batch = source.sample()
    assert batch.support_x.shape == (5, 4, 1, 12, 12) and batch.query_y.shape == (5, 5, 1)
    for task in range(5):
        label = int(batch.task_id[task])
        drawings = dataset.images[torch.as_tensor(dataset.labels) == label]
        canonical = source.canonical_angle(label)
        used = []
        for x, y in ((batch.support_x, batch.support_y), (batch.query_x, batch.query_y)):
            for example, target in zip(x[task], y[task, :, 0], strict=True):
                rotation = float(target) + canonical
                assert -math.pi / 2 - 1e-6 <= rotation <= math.pi / 2 + 1e-6
                index = _drawing_of(example, drawings, rotation)
                assert index >= 0, "no drawing of the task's character gives this example"
                used.append(index)
        assert len(set(used)) == len(used), "support and query must use distinct drawings"


def test_pose_canonical_angles_character_subset_determinism_and_resume():
    dataset = _toy(classes=10)
    source = GlyphPose(dataset, tasks_per_batch=8, characters=4, canonical_seed=7, seed=0)
    other_seed = GlyphPose(dataset, tasks_per_batch=8, characters=4, canonical_seed=7, seed=1)
    assert torch.equal(source.canonical, other_seed.canonical)
    assert source.characters == other_seed.characters and len(source.characters) == 4
    assert float(source.canonical.abs().max()) <= math.pi / 2
    names = {f"class{int(t)}" for _ in range(5) for t in source.sample().task_id}
    assert names <= set(source.characters)
    same_seed = GlyphPose(dataset, tasks_per_batch=8, characters=4, canonical_seed=7, seed=0)
    for _ in range(5):
        same_seed.sample()
    state = source.state_dict()
    expected = source.sample()
    assert _same_batches(same_seed.sample(), expected)
    resumed = GlyphPose(dataset, tasks_per_batch=8, characters=4, canonical_seed=7, seed=42)
    resumed.load_state_dict(state)
    assert _same_batches(resumed.sample(), expected)


def test_pose_train_and_test_characters_must_be_disjoint():
    train = GlyphPose(_toy(prefix="train"), tasks_per_batch=2)
    test = GlyphPose(_toy(prefix="test", seed=1), tasks_per_batch=2)
    check_disjoint_characters(train, test)
    with pytest.raises(ValueError, match="share 6 characters"):
        check_disjoint_characters(train, GlyphPose(_toy(prefix="train", seed=2)))


@pytest.mark.parametrize("kwargs, message", [
    ({"shots": 15, "queries": 15}, "shots+queries=30 but character 'class0' has 20 drawings"),
    ({"characters": 7}, "characters=7 but the dataset has 6 characters"),
    ({"rotation_range": (1.0, -1.0)}, "rotation_range must be a (low, high) pair"),
])
def test_pose_errors(kwargs, message):
    with pytest.raises(ValueError) as error:
        GlyphPose(_toy(), **kwargs)
    assert message in str(error.value)


# -- MR-MAML ------------------------------------------------------------------------------------
def _regression_batch(tasks=3, shots=4, queries=5, features=3, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)

    def tensor(*shape):
        return torch.randn(*shape, generator=g, dtype=dtype)

    return TaskBatch(tensor(tasks, shots, features), tensor(tasks, shots, 1),
                     tensor(tasks, queries, features), tensor(tasks, queries, 1))


def _body_head(codes=2, out=None, seed=0):
    torch.manual_seed(seed)
    return BodyHead(MLP(3, (4,), out or codes), MLP(codes, (3,), 1)).double()


INNER = dict(inner_lr=0.3, inner_steps=2, loss="mse")


def test_kl_closed_form_matches_monte_carlo_and_torch_distributions():
    mean = torch.tensor([0.0, 1.5, -0.7], dtype=torch.float64)
    log_sigma = torch.tensor([0.0, -1.0, 0.4], dtype=torch.float64)
    closed = gaussian_kl_to_standard(mean, log_sigma)
    q = torch.distributions.Normal(mean, log_sigma.exp())
    p = torch.distributions.Normal(torch.zeros(3, dtype=torch.float64), 1.0)
    assert torch.allclose(closed, torch.distributions.kl_divergence(q, p), atol=1e-14)
    torch.manual_seed(0)
    w = q.sample((400_000,))
    monte_carlo = (q.log_prob(w) - p.log_prob(w)).mean(0)
    assert torch.allclose(closed, monte_carlo, atol=0.01)
    learner = MRMAMLW(_body_head(), beta=1.0, init_log_sigma=-0.5, **INNER)
    body = dict(learner.model.body.named_parameters())
    assert learner.stochastic_names == ["body.0.weight", "head.weight"]
    expected = sum(torch.distributions.kl_divergence(
        torch.distributions.Normal(body[n], math.exp(-0.5)),
        torch.distributions.Normal(torch.zeros_like(body[n]), 1.0)).sum()
        for n in learner.stochastic_names)
    assert torch.allclose(learner.kl(), expected, atol=1e-12)


def _grads(learner, loss) -> dict[str, torch.Tensor]:
    named = list(learner.named_parameters())
    values = torch.autograd.grad(loss, [p for _, p in named], allow_unused=True)
    return {n: torch.zeros_like(p) if g is None else g
            for (n, p), g in zip(named, values, strict=True)}


def test_mr_maml_w_without_noise_or_kl_is_maml_on_the_head():
    model = _body_head()
    batch = _regression_batch()
    regularized = MRMAMLW(copy.deepcopy(model), beta=0.0, init_log_sigma=-80.0, **INNER)
    plain = MAML(copy.deepcopy(model), adapt="head", **INNER)
    torch.manual_seed(0)
    loss_w, _ = regularized.meta_loss(batch)
    loss_m, _ = plain.meta_loss(batch)
    assert torch.allclose(loss_w, loss_m, rtol=1e-13)
    grads_w, grads_m = _grads(regularized, loss_w), _grads(plain, loss_m)
    for name, grad in grads_m.items():
        assert torch.allclose(grads_w[name], grad, rtol=1e-11, atol=1e-13), name
    assert max(float(g.abs().max()) for n, g in grads_w.items() if "log_sigmas" in n) < 1e-30


def _finite_difference_check(learner, batch, seed=0, step=1e-6, entries=4):
    """Central differences on ``entries`` spread-out entries of every parameter tensor."""

    def loss() -> torch.Tensor:
        torch.manual_seed(seed)  # the same reparametrization noise in every evaluation
        return learner.meta_loss(batch)[0]

    analytic = _grads(learner, loss())
    with torch.no_grad():
        for name, parameter in learner.named_parameters():
            flat = parameter.view(-1)
            for i in sorted(set(torch.linspace(0, flat.numel() - 1, entries).long().tolist())):
                original = flat[i].item()
                flat[i] = original + step
                up = loss().item()
                flat[i] = original - step
                down = loss().item()
                flat[i] = original
                numeric = (up - down) / (2 * step)
                assert abs(analytic[name].view(-1)[i].item() - numeric) < 1e-7 * max(
                    1.0, abs(numeric)), (name, i, analytic[name].view(-1)[i].item(), numeric)


def test_mr_maml_w_second_order_meta_gradient_matches_finite_differences():
    learner = MRMAMLW(_body_head(seed=1), beta=0.3, init_log_sigma=-1.0, **INNER)
    _finite_difference_check(learner, _regression_batch(tasks=2, seed=1))


def test_mr_maml_a_second_order_meta_gradient_matches_finite_differences():
    learner = MRMAMLA(_body_head(out=4, seed=2), beta=0.7, **INNER)
    _finite_difference_check(learner, _regression_batch(tasks=2, seed=2))


def test_mr_maml_w_softplus_sigma_kl_sampling_and_meta_gradient():
    learner = MRMAMLW(_body_head(seed=6), beta=0.4, sigma_transform="softplus", init_rho=-0.8,
                      sigma_floor=0.05, **INNER)
    assert not hasattr(learner, "log_sigmas")
    assert set(learner.rhos) == {"body__0__weight", "head__weight"}
    with torch.no_grad():  # distinct rhos per entry
        for rho in learner.rhos.values():
            rho.add_(torch.linspace(-1.0, 1.0, rho.numel(), dtype=rho.dtype).view_as(rho))
    body = dict(learner.model.body.named_parameters())
    for name, sigma in learner.sigmas().items():
        assert torch.allclose(sigma, 0.05 + torch.log1p(torch.exp(learner.rhos[
            learner._key(name)])), rtol=1e-14)
    expected = sum(torch.distributions.kl_divergence(
        torch.distributions.Normal(body[n], sigma),
        torch.distributions.Normal(torch.zeros_like(body[n]), 1.0)).sum()
        for n, sigma in learner.sigmas().items())
    assert torch.allclose(learner.kl(), expected, rtol=1e-13)
    torch.manual_seed(7)
    drawn = learner._body_weights(sample=True)
    torch.manual_seed(7)
    for name, sigma in learner.sigmas().items():
        noise = torch.randn_like(body[name])
        assert torch.allclose(drawn[name], body[name] + sigma * noise, rtol=1e-14), name
    _finite_difference_check(learner, _regression_batch(tasks=2, seed=6))


def test_mr_maml_w_notebook_sigma_stays_at_the_floor_while_exp_sigma_grows():
    """The notebook's ``eps + softplus(-50)`` gets no gradient; ``exp`` at the same sigma does."""
    softplus = MRMAMLW(_body_head(seed=8), beta=5e-5, sigma_transform="softplus",
                       init_rho=-50.0, sigma_floor=FLOAT32_EPS, **INNER)
    exp = MRMAMLW(_body_head(seed=8), beta=5e-5, init_log_sigma=math.log(FLOAT32_EPS), **INNER)
    for learner, raw in ((softplus, softplus.rhos), (exp, exp.log_sigmas)):
        for sigma in learner.sigmas().values():
            assert torch.allclose(sigma, torch.full_like(sigma, FLOAT32_EPS), rtol=1e-12)
        grads = torch.autograd.grad(learner.regularizer(), list(raw.values()))
        if learner is softplus:
            assert max(float(g.abs().max()) for g in grads) < 1e-18  # ~ beta * 2e-22 / 1.2e-7
        else:  # d/ds beta * (exp(2 s) / 2 - s) = beta * (sigma^2 - 1)
            for g in grads:
                assert torch.allclose(g, torch.full_like(g, 5e-5 * (FLOAT32_EPS ** 2 - 1)))
    assert torch.allclose(softplus.kl(), exp.kl(), rtol=1e-12)


def test_mr_maml_w_kl_is_counted_once_per_meta_batch_under_task_chunks():
    learner = MRMAMLW(_body_head(seed=3), beta=0.5, init_log_sigma=-1.0, **INNER)
    batch = _regression_batch(tasks=4, seed=3)
    gradients = []
    for chunk in (None, 1, 3):
        learner.zero_grad()
        torch.manual_seed(0)
        learner.meta_backward(batch, task_chunk=chunk)
        gradients.append({n: p.grad.clone() for n, p in learner.named_parameters()})
    torch.manual_seed(0)
    total, summary = learner.meta_loss(batch)
    assert summary["loss"] == pytest.approx(summary["query_loss"] + 0.5 * summary["kl"])
    for other in gradients[1:]:
        for name, grad in gradients[0].items():
            assert torch.allclose(other[name], grad, rtol=1e-12, atol=1e-14), name


def test_mr_maml_a_adds_the_query_code_kl_to_each_task_when_training():
    learner = MRMAMLA(_body_head(out=4, seed=4), beta=2.0, **INNER)
    batch = _regression_batch(seed=4)
    torch.manual_seed(0)
    losses, metrics = learner.task_losses(batch, training=True)
    mean, sigma = learner.code_distribution(batch.query_x.reshape(-1, 3))
    kl = torch.distributions.kl_divergence(torch.distributions.Normal(mean, sigma),
                                           torch.distributions.Normal(0.0, 1.0))
    expected_kl = kl.reshape(3, -1).mean(1)
    assert torch.allclose(metrics["kl"], expected_kl, atol=1e-12)
    assert torch.allclose(losses, metrics["mse"] + 2.0 * expected_kl, atol=1e-12)
    eval_losses, eval_metrics = learner.task_losses(batch, training=False)
    assert torch.equal(eval_losses, eval_metrics["mse"])


@pytest.mark.parametrize("method", [MRMAMLW, MRMAMLA])
def test_meta_test_uses_the_mean_code_or_weights_and_adapt_agrees(method):
    out = 4 if method is MRMAMLA else 2
    learner = method(_body_head(out=out, seed=5), eval_sample=False, eval_inner_steps=3,
                     **INNER)
    batch = _regression_batch(seed=5)
    first, metrics = learner.task_losses(batch, training=False)
    second, _ = learner.task_losses(batch, training=False)
    assert torch.equal(first, second) and not first.requires_grad
    for t in range(len(batch)):
        predictor = learner.adapt(batch.support_x[t], batch.support_y[t])
        mse = ((predictor(batch.query_x[t]) - batch.query_y[t]) ** 2).mean()
        assert torch.allclose(mse, metrics["mse"][t], rtol=1e-12)
    sampling = method(_body_head(out=out, seed=5), eval_sample=True, **INNER)
    if method is MRMAMLW:
        for log_sigma in sampling.log_sigmas.values():
            log_sigma.data.fill_(0.0)
    a, _ = sampling.task_losses(batch, training=False)
    b, _ = sampling.task_losses(batch, training=False)
    assert not torch.equal(a, b)


def test_trainer_resume_reproduces_the_noise_of_mr_maml_w(tmp_path):
    def fit(run_dir, steps, resume=False):
        torch.manual_seed(0)
        learner = MRMAMLW(BodyHead(MLP(21, (4,), 2), MLP(2, (3,), 1)), beta=1e-2,
                          init_log_sigma=-2.0, inner_lr=0.1, inner_steps=1, loss="mse")
        source = NonMutuallyExclusiveSinusoid("train", tasks_per_batch=2, seed=0)
        Trainer(learner, source, run_dir, steps=steps, progress=False, checkpoint_every=2,
                seed=3).fit(resume=resume)
        return learner

    straight = fit(tmp_path / "a", 4)
    fit(tmp_path / "b", 2)
    resumed = fit(tmp_path / "b", 4, resume=True)
    for (name, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items(),
                                 strict=True):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("build, message", [
    (lambda: MRMAMLW(nn.Linear(3, 1), **INNER), "needs a model with a 'body' submodule"),
    (lambda: MRMAMLW(BodyHead(nn.Identity(), MLP(3, (2,), 1)), **INNER),
     "model.body has no weight tensor"),
    (lambda: MRMAMLA(_body_head(), beta=-1.0, **INNER), "beta must be >= 0"),
    (lambda: MRMAMLW(_body_head(), sigma_transform="log", **INNER),
     "sigma_transform must be one of"),
    (lambda: MRMAMLW(_body_head(), sigma_floor=-1e-3, **INNER), "sigma_floor must be >= 0"),
])
def test_mr_maml_construction_errors(build, message):
    with pytest.raises((TypeError, ValueError)) as error:
        build()
    assert message in str(error.value)


def test_mr_maml_a_needs_an_even_body_output():
    learner = MRMAMLA(BodyHead(MLP(3, (4,), 3), MLP(2, (3,), 1)).double(), **INNER)
    with pytest.raises(ValueError, match=r"model.body must output \[N, 2 \* d\]"):
        learner.task_losses(_regression_batch(), training=True)


# -- the support-swap diagnostic ----------------------------------------------------------------
@pytest.mark.parametrize("n, count", [(2, 1), (3, 2), (4, 9), (16, None)])
def test_derangement_has_no_fixed_point_and_reaches_every_derangement(n, count):
    generator = torch.Generator().manual_seed(n)
    seen = set()
    for _ in range(300):
        permutation = derangement(n, generator)
        assert sorted(permutation.tolist()) == list(range(n))
        assert not bool((permutation == torch.arange(n)).any())
        seen.add(tuple(permutation.tolist()))
    if count is not None:  # the number of derangements of n items
        assert len(seen) == count


@pytest.mark.parametrize("n", [1, 0, 2.0])
def test_derangement_errors(n):
    with pytest.raises(ValueError, match="a derangement needs n >= 2"):
        derangement(n)


def test_swap_supports_moves_only_support_sets():
    batch = _regression_batch(tasks=3)
    swapped = swap_supports(batch, torch.tensor([2, 0, 1]))
    assert torch.equal(swapped.support_x[0], batch.support_x[2])
    assert torch.equal(swapped.support_y[1], batch.support_y[0])
    assert torch.equal(swapped.query_x, batch.query_x) and torch.equal(swapped.query_y,
                                                                        batch.query_y)
    with pytest.raises(ValueError, match="must be a permutation of range"):
        swap_supports(batch, torch.tensor([0, 0, 1]))


def test_support_swap_separates_a_learner_that_ignores_the_support_from_one_that_adapts():
    batch = _regression_batch(tasks=4, seed=7)
    model = _body_head(seed=7)
    ignores = MAML(copy.deepcopy(model), inner_lr=0.3, inner_steps=0, loss="mse")
    adapts = MAML(copy.deepcopy(model), inner_lr=0.3, inner_steps=3, loss="mse")
    generator = torch.Generator().manual_seed(0)
    blind = support_swap_loss(ignores, batch, generator)
    assert blind.metric == "mse" and torch.equal(blind.normal, blind.swapped)
    seeing = support_swap_loss(adapts, batch, torch.Generator().manual_seed(0))
    expected, _ = adapts.task_losses(swap_supports(batch, seeing.permutation), training=False)
    assert torch.allclose(seeing.swapped, expected, rtol=1e-13)
    assert torch.allclose(seeing.normal, adapts.task_losses(batch, training=False)[0])
    assert not torch.allclose(seeing.normal, seeing.swapped)
