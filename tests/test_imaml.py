"""iMAML against closed forms in float64.

Ridge regression with the proximal term has its inner optimum in closed form. With the
support loss ``L_s(phi) = (1/n) ||X phi - y||^2`` (Hessian ``H = (2/n) X^T X``) and the
query loss ``L_q(phi) = (1/m) ||Z phi - t||^2``:

    phi*(theta) = (H + lam I)^-1 ((2/n) X^T y + lam theta)
    d L_q(phi*) / d theta = lam (H + lam I)^-1 (2/m) Z^T (Z phi* - t)

(differentiate the first line in theta: ``d phi*/d theta = lam (H + lam I)^-1``, symmetric).
The expected side below is written with `torch.linalg.solve` and never calls metalab.
"""

from __future__ import annotations

import json
from itertools import pairwise

import pytest
import torch
import yaml
from torch import nn

from metalab.algorithms import ALGORITHMS
from metalab.algorithms.imaml import IMAML, RELEASED_HESSIAN_DAMPING
from metalab.cli.main import main
from metalab.functional import conjugate_gradient
from metalab.nn import Conv4
from metalab.tasks import TaskBatch
from metalab.train import ConfigError, load_config
from metalab.train.build import build_meta_learner


# -- the CG solver alone --------------------------------------------------------------------
def spd_matrix(size: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(size, size, generator=g, dtype=torch.float64)
    return a @ a.T + 0.5 * torch.eye(size, dtype=torch.float64)


def test_conjugate_gradient_solves_an_spd_system_in_n_steps():
    a = spd_matrix(8)
    b = torch.randn(8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    x = conjugate_gradient(lambda v: a @ v, b, steps=8)
    torch.testing.assert_close(x, torch.linalg.solve(a, b), rtol=1e-9, atol=1e-9)


def test_conjugate_gradient_first_step_is_the_exact_line_search_along_b():
    a = spd_matrix(6, seed=2)
    b = torch.randn(6, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    x = conjugate_gradient(lambda v: a @ v, b, steps=1)
    torch.testing.assert_close(x, (b @ b) / (b @ a @ b) * b, rtol=1e-12, atol=0)


def test_conjugate_gradient_error_in_the_a_norm_decreases_with_steps():
    a = spd_matrix(20, seed=4)
    b = torch.randn(20, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    exact = torch.linalg.solve(a, b)
    errors = []
    for steps in (1, 2, 4, 8, 16):
        e = conjugate_gradient(lambda v: a @ v, b, steps=steps) - exact
        errors.append((e @ a @ e).item())
    assert all(later < earlier for earlier, later in pairwise(errors)), errors


def test_conjugate_gradient_rejects_zero_steps():
    with pytest.raises(ValueError, match="cg_steps must be an integer >= 1, got 0"):
        conjugate_gradient(lambda v: v, torch.ones(3), steps=0)


# -- ridge regression: the closed form ------------------------------------------------------
def ridge_problem(seed: int = 0, d: int = 4, n: int = 10, m: int = 12):
    g = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    return randn(n, d), randn(n, 1), randn(m, d), randn(m, 1)


def ridge_learner(lam: float, seed: int = 0, d: int = 4, **options) -> IMAML:
    torch.manual_seed(seed)
    options = {"inner_lr": 0.2, "inner_steps": 400, "cg_steps": 20, **options}
    return IMAML(nn.Linear(d, 1, bias=False).double(), lam=lam, loss="mse", **options)


def hand_ridge(theta: torch.Tensor, x, y, z, t, lam: float):
    """``(phi*, L_q(phi*), d L_q(phi*) / d theta)`` by the closed forms of the module doc."""
    n, m, d = len(x), len(z), x.shape[1]
    hessian = 2.0 / n * x.T @ x
    system = hessian + lam * torch.eye(d, dtype=torch.float64)
    phi = torch.linalg.solve(system, 2.0 / n * x.T @ y + lam * theta)
    residual = z @ phi - t
    query_loss = (residual ** 2).mean()
    meta_grad = lam * torch.linalg.solve(system, 2.0 / m * z.T @ residual)
    return phi, query_loss, meta_grad


@pytest.mark.parametrize("lam", [0.3, 2.0])
def test_cg_meta_gradient_equals_the_closed_form_on_ridge_regression(lam):
    x, y, z, t = ridge_problem()
    learner = ridge_learner(lam)
    theta = learner.model.weight.detach().T.clone()
    phi, query_loss, meta_grad = hand_ridge(theta, x, y, z, t, lam)
    loss, _, grads = learner.task_meta_gradient(x, y, z, t)
    torch.testing.assert_close(learner.adapt_task(x, y, training=True)["weight"].T, phi,
                               rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(loss, query_loss, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grads["weight"].T, meta_grad, rtol=1e-8, atol=1e-10)


def test_the_surrogate_loss_has_the_query_loss_value_and_the_implicit_gradient():
    """Through the base's `meta_backward` (what the trainer calls), task chunks included."""
    lam, tasks = 0.7, [ridge_problem(seed) for seed in (1, 2, 3)]
    batch = TaskBatch(*(torch.stack([task[i] for task in tasks]) for i in range(4)))
    results = []
    for chunk in (None, 1):
        learner = ridge_learner(lam)
        theta = learner.model.weight.detach().T.clone()
        metrics = learner.meta_backward(batch, task_chunk=chunk)
        results.append(learner.model.weight.grad.T.clone())
        hand = [hand_ridge(theta, *task, lam) for task in tasks]
        assert metrics["loss"] == pytest.approx(sum(h[1].item() for h in hand) / 3, rel=1e-9)
        torch.testing.assert_close(results[-1], sum(h[2] for h in hand) / 3,
                                   rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(results[0], results[1], rtol=1e-12, atol=1e-14)


def test_adapt_returns_the_proximal_optimum_at_meta_test():
    x, y, z, _ = ridge_problem(seed=4)
    learner = ridge_learner(1.5)
    theta = learner.model.weight.detach().T.clone()
    phi, _, _ = hand_ridge(theta, x, y, z, torch.zeros(len(z), 1, dtype=torch.float64), 1.5)
    predicted = learner.adapt(x, y)(z)
    torch.testing.assert_close(predicted, z @ phi, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(learner.adapt(x, y, inner_steps=0)(z), z @ theta)


def test_released_variant_pulls_back_once_and_solves_the_damped_system():
    """The released code: least squares without the proximal term, one SGD step on
    ``lam/2 ||phi - theta||^2``, then ``((1 + damping) I + H/(lam + 10))^-1 grad L_q``."""
    x, y, z, t = ridge_problem(seed=5)
    lam, lr, damping = 0.5, 0.2, 1.0
    learner = ridge_learner(lam, variant="released", inner_lr=lr, cg_damping=damping)
    theta = learner.model.weight.detach().T.clone()
    n, m, d = len(x), len(z), x.shape[1]
    hessian = 2.0 / n * x.T @ x
    least_squares = torch.linalg.solve(hessian, 2.0 / n * x.T @ y)
    phi = least_squares - lr * lam * (least_squares - theta)
    system = ((1 + damping) * torch.eye(d, dtype=torch.float64)
              + hessian / (lam + RELEASED_HESSIAN_DAMPING))
    expected = torch.linalg.solve(system, 2.0 / m * z.T @ (z @ phi - t))
    _, _, grads = learner.task_meta_gradient(x, y, z, t)
    torch.testing.assert_close(grads["weight"].T, expected, rtol=1e-8, atol=1e-10)


def test_inner_adam_reaches_the_same_proximal_optimum():
    x, y, z, t = ridge_problem(seed=6)
    learner = ridge_learner(1.0, inner_optimizer="adam", inner_lr=0.05, inner_steps=1500)
    theta = learner.model.weight.detach().T.clone()
    phi, _, _ = hand_ridge(theta, x, y, z, t, 1.0)
    torch.testing.assert_close(learner.adapt_task(x, y, training=True)["weight"].T, phi,
                               rtol=1e-6, atol=1e-6)


# -- Conv4: CG approaches the exact implicit gradient ----------------------------------------
def dense_implicit_gradient(learner: IMAML, phi, support, query, lam: float) -> torch.Tensor:
    """``(I + H/lam)^-1 grad L_q(phi)`` with the dense Hessian (`torch.autograd.functional`)."""
    names = list(phi)
    shapes = [phi[n].shape for n in names]
    flat = torch.cat([phi[n].reshape(-1) for n in names])

    def as_params(vector):
        pieces = torch.split(vector, [s.numel() for s in shapes])
        return {n: p.view(s) for n, p, s in zip(names, pieces, shapes, strict=True)}

    def loss_at(vector, data):
        outputs = torch.func.functional_call(learner.model, as_params(vector), (data[0],))
        return nn.functional.cross_entropy(outputs, data[1])

    hessian = torch.autograd.functional.hessian(lambda v: loss_at(v, support), flat)
    query_grad = torch.autograd.functional.jacobian(lambda v: loss_at(v, query), flat)
    system = torch.eye(len(flat), dtype=torch.float64) + hessian / lam
    assert torch.linalg.eigvalsh(system).min() > 0  # CG's premise
    return system, torch.linalg.solve(system, query_grad)


def test_cg_meta_gradient_approaches_the_dense_solve_on_conv4_as_cg_steps_grow():
    g = torch.Generator().manual_seed(0)
    support = (torch.randn(5, 1, 16, 16, generator=g, dtype=torch.float64), torch.arange(5))
    query = (torch.randn(10, 1, 16, 16, generator=g, dtype=torch.float64),
             torch.arange(5).repeat(2))
    torch.manual_seed(0)
    lam = 10.0  # H has eigenvalues near -5 on this tiny random problem: I + H/lam must be SPD
    learner = IMAML(Conv4(hidden=2, image_size=16).double(), lam=lam, inner_lr=0.1,
                    inner_steps=5)
    phi = learner.adapt_task(*support, training=True)
    system, exact = dense_implicit_gradient(learner, phi, support, query, lam)
    errors = []
    for steps in (1, 2, 4, 8, 16, 64, 400):
        learner.cg_steps = steps
        _, _, grads = learner.task_meta_gradient(*support, *query)
        error = torch.cat([grads[n].reshape(-1) for n in phi]) - exact
        errors.append((error @ system @ error).item())  # the A-norm CG minimises
    assert all(later <= earlier * (1 + 1e-9) for earlier, later in pairwise(errors)), \
        errors
    assert errors[-1] < 1e-20 * errors[0], errors  # measured: 1.1 -> 5e-30


def test_memory_does_not_grow_with_inner_steps():
    """Peak bytes allocated (profiler allocator events) for one meta-backward."""
    from torch.profiler import ProfilerActivity, profile

    g = torch.Generator().manual_seed(0)
    batch = TaskBatch(torch.randn(1, 5, 1, 16, 16, generator=g, dtype=torch.float64),
                      torch.arange(5)[None], torch.randn(1, 5, 1, 16, 16, generator=g,
                                                         dtype=torch.float64),
                      torch.arange(5)[None], num_classes=5)

    def peak(steps):
        torch.manual_seed(0)
        learner = IMAML(Conv4(hidden=8, image_size=16).double(), inner_steps=steps)
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            learner.meta_backward(batch)
        events = sorted((e for e in prof.profiler.kineto_results.events()
                         if e.name() == "[memory]"), key=lambda e: e.start_ns())
        live = top = 0
        for event in events:
            live += event.nbytes()
            top = max(top, live)
        return top

    one, twenty = peak(1), peak(20)
    assert twenty <= 1.1 * one, (one, twenty)


# -- building runs ---------------------------------------------------------------------------
def test_imaml_is_registered():
    assert ALGORITHMS["imaml"] is IMAML


@pytest.mark.parametrize("key,value", [("first_order", "true"), ("checkpoint_steps", "true")])
def test_options_that_cannot_go_with_imaml_fail_when_the_run_is_built(key, value):
    with pytest.raises(ConfigError, match=rf"algorithm\.{key} cannot go with "
                                          r"algorithm\.name='imaml'"):
        load_config(_config_path("imaml-glyphs-5w1s"), [f"algorithm.{key}={value}"])


def test_both_incompatible_keys_are_named():
    with pytest.raises(ConfigError, match=r"algorithm\.first_order and "
                                          r"algorithm\.checkpoint_steps cannot go with"):
        load_config(_config_path("imaml-glyphs-5w1s"),
                    ["algorithm.first_order=false", "algorithm.checkpoint_steps=true"])


@pytest.mark.parametrize("override,message", [
    ("algorithm.strategy=vmap", "iMAML supports strategy='loop' only"),
    ("algorithm.lam=0", "lam must be a finite number > 0.0, got 0"),
    ("algorithm.variant=official", r"variant must be one of \['paper', 'released'\]"),
    ("algorithm.inner_optimizer=rmsprop", "inner_optimizer must be one of"),
    ("algorithm.cg_steps=0", "cg_steps must be an integer >= 1, got 0"),
])
def test_bad_values_fail_when_the_learner_is_built(override, message):
    config = load_config(_config_path("imaml-glyphs-5w1s"), [override])
    with pytest.raises(ValueError, match=message):
        build_meta_learner(config)


def _config_path(name: str):
    from metalab.cli.main import CONFIG_DIR

    return CONFIG_DIR / f"{name}.yaml"


def test_the_shipped_config_trains_and_evaluates_from_the_cli(tmp_path):
    run = tmp_path / "imaml"
    tiny = ["train.steps=2", "train.meta_batch=2", "model.hidden=8", "data.queries=2",
            "algorithm.inner_steps=2", "algorithm.eval_inner_steps=2", "algorithm.cg_steps=2",
            "train.val_every=0", "train.progress=false"]
    assert main(["train", "imaml-glyphs-5w1s", *tiny, "--out", str(run)]) == 0
    assert main(["eval", str(run), "--episodes", "4"]) == 0
    result = json.loads((run / "eval.json").read_text())
    assert result["metric"] == "accuracy" and 0 <= result["mean"] <= 1
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["algorithm"]["name"] == "imaml"


# -- the trainer's other paths: gradient combiners and resume ---------------------------------
def test_per_task_gradient_rows_for_combiners_are_the_implicit_meta_gradients():
    """`task_gradients` (PCGrad, MGDA, diagnostics, several processes) differentiates each
    task's surrogate: its rows must be each task's closed-form meta-gradient."""
    from metalab.train.combined_step import task_gradients

    lam, tasks = 0.9, [ridge_problem(seed) for seed in (7, 8)]
    batch = TaskBatch(*(torch.stack([task[i] for task in tasks]) for i in range(4)))
    learner = ridge_learner(lam)
    theta = learner.model.weight.detach().T.clone()
    rows = task_gradients(learner, batch, [learner.model.weight])
    for row, task in zip(rows.grads, tasks, strict=True):
        _, query_loss, meta_grad = hand_ridge(theta, *task, lam)
        torch.testing.assert_close(row, meta_grad.reshape(-1), rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(rows.losses, torch.stack([hand_ridge(theta, *t, lam)[1]
                                                         for t in tasks]), rtol=1e-9, atol=0)


TINY_SINUSOID = {
    "algorithm": {"name": "imaml", "lam": 1.0, "inner_lr": 0.01, "inner_steps": 3,
                  "cg_steps": 2},
    "model": {"name": "mlp", "hidden": [8]},
    "data": {"name": "sinusoid", "shots": 5, "queries": 5},
    "train": {"steps": 10, "meta_batch": 3, "val_every": 0, "checkpoint_every": 4,
              "log_every": 2, "progress": False, "combiner": "pcgrad"},
    "eval": {"episodes": 6, "batch_size": 3},
}


def test_an_interrupted_run_with_a_combiner_resumes_bit_identically(tmp_path):
    from helpers import interrupted_then_resumed

    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(TINY_SINUSOID))
    straight, resumed = interrupted_then_resumed(load_config(path), tmp_path, interrupt_at=7)
    for name, value in straight.learner.state_dict().items():
        assert torch.equal(resumed.learner.state_dict()[name], value), name
