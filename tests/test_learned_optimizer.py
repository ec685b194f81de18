"""The learned optimizer (Andrychowicz et al. 2016): the LSTM rule, its torch.optim wrapper,
the ``l2o`` learner's truncated meta-gradient, and a short training run (float64).

Expected sides are written out by hand: the paper's preprocessing formula, an LSTM with
hand-set weights evaluated with scalar math, and the closed-form trajectory of a
constant-step rule on a quadratic.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from metalab.algorithms import MAML
from metalab.algorithms.l2o import L2O, minibatch
from metalab.functional import LearnedOptimizer, LSTMOptimizer, preprocess_gradients
from metalab.nn import OptimizeeMLP
from metalab.tasks import RandomQuadratics, TaskBatch
from metalab.train.trainer import Trainer

DTYPE = torch.float64


def zero_rule(hidden_size: int = 20, **options) -> LSTMOptimizer:
    rule = LSTMOptimizer(hidden_size, **options).to(DTYPE)
    with torch.no_grad():
        for p in rule.parameters():
            p.zero_()
    return rule


def sigmoid(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v))


# -- preprocessing ------------------------------------------------------------------------
def paper_preprocessing(x: float, p: float) -> tuple[float, float]:
    """Appendix A: (log|x|/p, sgn x) if |x| >= e^-p, else (-1, e^p x)."""
    if abs(x) >= math.exp(-p):
        return math.log(abs(x)) / p, math.copysign(1.0, x)
    return -1.0, math.exp(p) * x


@pytest.mark.parametrize("p", [10.0, 3.0])
def test_preprocessing_is_the_papers_formula_for_large_and_small_gradients(p):
    values = [0.5, -3.0, 250.0, 1e-6, -1e-5, 0.0, math.exp(-p), -0.9 * math.exp(-p)]
    got = preprocess_gradients(torch.tensor(values, dtype=DTYPE), p)
    expected = torch.tensor([paper_preprocessing(v, p) for v in values], dtype=DTYPE)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


# -- the rule with hand-set weights -------------------------------------------------------
def test_an_lstm_with_only_an_output_bias_steps_by_scale_times_bias():
    rule = zero_rule()
    with torch.no_grad():
        rule.output.bias.fill_(0.7)
    params = {"w": torch.tensor([[1.0, -2.0]], dtype=DTYPE), "b": torch.tensor([3.0],
                                                                                dtype=DTYPE)}
    grads = {"w": torch.tensor([[0.3, -4.0]], dtype=DTYPE), "b": torch.tensor([1e-7],
                                                                               dtype=DTYPE)}
    new, _ = rule.update(grads, rule.init(params), params)
    # theta + 0.1 * 0.7: zero LSTM weights give h = o * tanh(c) = 0.5 * tanh(0) = 0
    torch.testing.assert_close(new["w"], torch.tensor([[1.07, -1.93]], dtype=DTYPE))
    torch.testing.assert_close(new["b"], torch.tensor([3.07], dtype=DTYPE))


def test_a_hand_set_two_layer_lstm_gives_the_hand_computed_steps():
    """Hidden size 1; only the cell-candidate rows (PyTorch's gate order i, f, g, o) carry
    input weights, so every gate is sigmoid(0) = 1/2 and two steps are scalar formulas."""
    a_log, a_sign, u, v, bias = 0.8, -1.3, 2.0, 1.5, 0.2
    rule = zero_rule(hidden_size=1)
    with torch.no_grad():
        rule.layer1.weight_ih[2] = torch.tensor([a_log, a_sign], dtype=DTYPE)
        rule.layer2.weight_ih[2, 0] = u
        rule.output.weight[0, 0] = v
        rule.output.bias[0] = bias
    theta = [0.4, -1.0]
    gradients = [[0.02, -5e-6], [-3.0, 0.5]]  # step 1, step 2 (one small gradient)

    expected = []
    c1 = [0.0, 0.0]
    c2 = [0.0, 0.0]
    current = list(theta)
    for step_grads in gradients:
        for k, g in enumerate(step_grads):
            x_log, x_sign = paper_preprocessing(g, 10.0)
            c1[k] = 0.5 * c1[k] + 0.5 * math.tanh(a_log * x_log + a_sign * x_sign)
            h1 = 0.5 * math.tanh(c1[k])
            c2[k] = 0.5 * c2[k] + 0.5 * math.tanh(u * h1)
            h2 = 0.5 * math.tanh(c2[k])
            current[k] = current[k] + 0.1 * (v * h2 + bias)
        expected.append(list(current))

    params = {"theta": torch.tensor(theta, dtype=DTYPE)}
    state = rule.init(params)
    for step_grads, want in zip(gradients, expected, strict=True):
        params, state = rule.update({"theta": torch.tensor(step_grads, dtype=DTYPE)}, state,
                                    params)
        torch.testing.assert_close(params["theta"], torch.tensor(want, dtype=DTYPE),
                                   rtol=1e-12, atol=1e-12)
    assert sigmoid(0.0) == 0.5


def test_a_rule_refuses_state_of_other_parameters():
    rule = zero_rule()
    state = rule.init({"a": torch.zeros(3, dtype=DTYPE)})
    with pytest.raises(ValueError, match="state has 3 coordinates but the gradients have 4"):
        rule.update({"a": torch.zeros(4, dtype=DTYPE)}, state, {"a": torch.zeros(4, dtype=DTYPE)})


# -- the torch.optim wrapper -----------------------------------------------------------------
def test_the_torch_optimizer_gives_the_functional_rules_parameters():
    torch.manual_seed(0)
    rule = LSTMOptimizer().to(DTYPE)
    model = OptimizeeMLP(4, (3,), 2).to(DTYPE)
    x, y = torch.randn(6, 4, dtype=DTYPE), torch.tensor([0, 1, 1, 0, 1, 0])
    params = {n: p.detach().clone() for n, p in model.named_parameters()}

    optimizer = LearnedOptimizer(model.parameters(), rule=rule)
    for _ in range(3):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()

    state = rule.init(params)
    for _ in range(3):
        leaves = {n: p.requires_grad_(True) for n, p in params.items()}
        loss = nn.functional.cross_entropy(torch.func.functional_call(model, leaves, (x,)), y)
        grads = dict(zip(leaves, torch.autograd.grad(loss, list(leaves.values())), strict=True))
        with torch.no_grad():
            params, state = rule.update(grads, state, leaves)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), params[name], rtol=1e-12, atol=1e-12)
    assert any((p.detach() - q).abs().max() > 0 for p, q in
               zip(model.parameters(), OptimizeeMLP(4, (3,), 2).parameters(), strict=True))


def test_maml_takes_the_lstm_rule_as_its_inner_rule():
    rule = zero_rule()
    with torch.no_grad():
        rule.output.bias.fill_(-0.5)
    model = nn.Linear(2, 1).to(DTYPE)
    learner = MAML(model, inner_steps=3, loss="mse", update_rule=rule)
    adapted = learner.adapt_task(torch.ones(4, 2, dtype=DTYPE), torch.zeros(4, 1, dtype=DTYPE),
                                 training=True)
    torch.testing.assert_close(adapted["weight"], model.weight - 3 * 0.05)
    torch.testing.assert_close(adapted["bias"], model.bias - 3 * 0.05)


@pytest.mark.parametrize("detach", [True, False])
def test_gradients_are_inputs_only_so_one_inner_step_has_the_first_order_meta_gradient(detach):
    """With the gradient an input only (detach_gradients), theta' = theta - d(g) has
    d theta'/d theta = I for one step from a zero state, so MAML's second-order
    meta-gradient is the query gradient at theta' itself; without it, it is not."""
    torch.manual_seed(0)
    rule = LSTMOptimizer(detach_gradients=detach).to(DTYPE)
    model = nn.Linear(3, 1).to(DTYPE)
    learner = MAML(model, inner_steps=1, loss="mse", update_rule=rule)
    sx, sy = torch.randn(5, 3, dtype=DTYPE), torch.randn(5, 1, dtype=DTYPE)
    qx, qy = torch.randn(4, 3, dtype=DTYPE), torch.randn(4, 1, dtype=DTYPE)
    adapted = learner.adapt_task(sx, sy, training=True)
    nn.functional.mse_loss(learner.predict(adapted, qx), qy).backward()
    at = {n: p.detach().requires_grad_(True) for n, p in adapted.items()}
    query_loss = nn.functional.mse_loss(torch.func.functional_call(model, at, (qx,)), qy)
    expected = torch.autograd.grad(query_loss, list(at.values()))
    close = all(torch.allclose(p.grad, e, rtol=1e-10, atol=1e-12)
                for p, e in zip(model.parameters(), expected, strict=True))
    assert close == detach


# -- the l2o learner: truncated meta-gradient -----------------------------------------------
def quadratic_learner(horizon: int, truncation: int, bias: float) -> L2O:
    model = OptimizeeMLP(3, (), 1, bias=False, init_std=0.0)  # theta_0 = 0
    learner = L2O(model, horizon=horizon, truncation=truncation).to(DTYPE)
    with torch.no_grad():
        for p in learner.rule.parameters():
            p.zero_()
        learner.rule.output.bias.fill_(bias)
    return learner


def hand_meta_gradient(w, y, horizon: int, truncation: int, bias: float) -> float:
    """d/db of (1/T) sum_{t=1}^T f(theta_t), f = ||W theta - y||^2 / d, when the rule's step
    is the constant 0.1 b on every coordinate: theta_t = 0.1 b t 1, and after truncation
    the graph of theta_t reaches only the steps since the last boundary, t - K floor((t-1)/K)."""
    d = w.shape[0]
    total = 0.0
    for t in range(1, horizon + 1):
        theta = torch.full((d,), 0.1 * bias * t, dtype=DTYPE)
        grad_f = 2.0 / d * w.T @ (w @ theta - y)
        steps_in_graph = t - truncation * ((t - 1) // truncation)
        total += 0.1 * steps_in_graph * grad_f.sum().item() / horizon
    return total


@pytest.mark.parametrize("horizon,truncation", [(5, 2), (5, 5), (6, 3), (4, 1)])
def test_truncation_stops_the_meta_gradient_at_its_boundaries(horizon, truncation):
    w = torch.tensor([[1.0, 0.5, -0.2], [0.3, -1.0, 0.4], [0.0, 0.7, 1.2]], dtype=DTYPE)
    y = torch.tensor([0.5, -1.0, 2.0], dtype=DTYPE)
    batch = TaskBatch(w[None], y[None, :, None], w[None], y[None, :, None])
    learner = quadratic_learner(horizon, truncation, bias=0.3)
    learner.meta_backward(batch)
    got = learner.rule.output.bias.grad.item()
    assert got == pytest.approx(hand_meta_gradient(w, y, horizon, truncation, 0.3),
                                rel=1e-10, abs=1e-12)
    if truncation < horizon:  # the untruncated gradient differs: the test can tell them apart
        assert got != pytest.approx(hand_meta_gradient(w, y, horizon, horizon, 0.3), rel=1e-3)


def test_segment_by_segment_backward_equals_the_whole_truncated_graph():
    torch.manual_seed(3)
    batch = RandomQuadratics(dim=4, tasks_per_batch=3, seed=1).sample().to(DTYPE)
    learner = L2O(OptimizeeMLP(4, (), 1, bias=False, init_std=0.01), horizon=7,
                  truncation=3).to(DTYPE)
    torch.manual_seed(5)
    learner.meta_backward(batch, task_chunk=2)
    segmented = [p.grad.clone() for p in learner.rule.parameters()]
    learner.zero_grad()
    torch.manual_seed(5)
    losses, _ = learner.training_task_losses(batch)
    losses.mean().backward()
    for p, g in zip(learner.rule.parameters(), segmented, strict=True):
        torch.testing.assert_close(p.grad, g, rtol=1e-10, atol=1e-12)
    assert all(p.grad is None for p in learner.model.parameters())


def test_minibatches_are_taken_in_turn_and_wrap_around():
    x = torch.arange(5.0)[None, :, None]
    y = torch.arange(5)[None]
    assert minibatch(0, x, y, 2)[1].tolist() == [[0, 1]]
    assert minibatch(2, x, y, 2)[1].tolist() == [[4, 0]]
    assert minibatch(7, x, y, None)[1].tolist() == [[0, 1, 2, 3, 4]]


def test_bad_options_name_the_argument():
    model = OptimizeeMLP(3, (), 1)
    with pytest.raises(ValueError, match="truncation must be an integer >= 1, got 0"):
        L2O(model, truncation=0)
    with pytest.raises(ValueError, match="l2o supports strategy='loop' only"):
        L2O(model, strategy="vmap")


# -- it learns ------------------------------------------------------------------------------
def final_losses(step_rule, problems: TaskBatch, steps: int, model: nn.Module) -> torch.Tensor:
    """Mean f(theta_T) over the problems for a rule applied through the l2o unroll."""
    learner = L2O(model, horizon=steps, truncation=steps).to(DTYPE)
    learner.rule = step_rule
    record = {}
    with torch.no_grad():
        learner.unroll(problems.support_x, problems.support_y, steps, training=False,
                       on_step=lambda t, losses: record.__setitem__(t, losses))
    return record[steps].mean()


def sgd_final_losses(problems: TaskBatch, steps: int, lr: float) -> torch.Tensor:
    w, y = problems.support_x, problems.support_y[..., 0]
    torch.manual_seed(11)
    theta = 0.01 * torch.randn(w.shape[0], w.shape[2], dtype=DTYPE)
    for _ in range(steps):
        grad = 2.0 / w.shape[1] * torch.einsum("tij,ti->tj", w, torch.einsum(
            "tij,tj->ti", w, theta) - y)
        theta = theta - lr * grad
    return ((torch.einsum("tij,tj->ti", w, theta) - y) ** 2).mean(1).mean()


@pytest.mark.learning
def test_a_briefly_trained_rule_beats_untrained_and_badly_tuned_sgd_on_held_out_quadratics(
        tmp_path):
    torch.manual_seed(0)
    model = OptimizeeMLP(10, (), 1, bias=False, init_std=0.01)
    learner = L2O(model, horizon=20, truncation=10)
    Trainer(learner, RandomQuadratics(10, tasks_per_batch=16, seed=0), tmp_path, steps=60,
            lr=0.01, val_every=0, progress=False, dtype="float64").fit()
    held_out = RandomQuadratics(10, tasks_per_batch=64, seed=99).sample().to(DTYPE)
    torch.manual_seed(1)
    trained = final_losses(learner.rule, held_out, 20, model)
    untrained = final_losses(LSTMOptimizer().to(DTYPE), held_out, 20, model)
    bad_sgd = sgd_final_losses(held_out, 20, lr=0.003)
    tuned_sgd = sgd_final_losses(held_out, 20, lr=0.1)  # the benchmark's tuned rate
    start = (held_out.support_y ** 2).mean()  # f(0): where every optimizer starts (about)
    # measured (torch 2.13, CPU): trained 0.128, untrained 1.35, SGD 0.83 (lr 0.003) and
    # 0.235 (lr 0.1), start 1.0
    assert trained < 0.5 * start
    assert trained < untrained
    assert trained < bad_sgd
    assert trained < tuned_sgd


# -- the product: configs, CLI and plot ------------------------------------------------------
def test_the_quadratic_config_trains_evaluates_and_plots_from_the_cli(tmp_path):
    import json

    from metalab.cli.main import main

    run = tmp_path / "run"
    assert main(["train", "l2o-quadratic", "--out", str(run), "train.steps=2",
                 "train.meta_batch=2", "train.val_every=0", "train.progress=false",
                 "algorithm.horizon=6", "algorithm.truncation=3", "eval.episodes=4",
                 "eval.batch_size=2"]) == 0
    assert main(["eval", str(run), "--inner-steps", "12"]) == 0
    result = json.loads((run / "eval.json").read_text())
    assert result["metric"] == "mse" and math.isfinite(result["mean"])
    curves = {"settings": [{"title": "t", "optimizers": {
        "SGD (lr=0.1)": {"mean": [1.0, 0.5], "low": [0.9, 0.4], "high": [1.1, 0.6]},
        "LSTM (learned)": {"mean": [1.0, 0.2], "low": [0.9, 0.1], "high": [1.1, 0.3]}}}]}
    (tmp_path / "curves.json").write_text(json.dumps(curves))
    assert main(["plot", "--optimizers", str(tmp_path / "curves.json")]) == 0
    assert (tmp_path / "curves.png").stat().st_size > 1000


def test_classifier_training_problems_draw_disjoint_support_and_queries_from_fixed_pools():
    from metalab.datasets import ImageDataset
    from metalab.tasks import ClassifierTrainingProblems

    images = torch.arange(50, dtype=torch.uint8).reshape(50, 1, 1, 1).expand(50, 1, 2, 2)
    dataset = ImageDataset(images.contiguous(), torch.arange(50) % 5, list("abcde"), "test")
    pools = {pool: ClassifierTrainingProblems(dataset, pool, examples=4, queries=3,
                                              tasks_per_batch=2, seed=0)
             for pool in ("train", "val", "test")}
    ids = {pool: set((source.inputs[:, 0] * 255).round().long().tolist())
           for pool, source in pools.items()}
    assert [len(ids[p]) for p in ("train", "val", "test")] == [30, 10, 10]
    assert not (ids["train"] & ids["val"]) and not (ids["train"] & ids["test"])
    batch = pools["train"].sample()
    assert batch.support_x.shape == (2, 4, 4) and batch.query_x.shape == (2, 3, 4)
    for t in range(2):
        support = set((batch.support_x[t, :, 0] * 255).round().long().tolist())
        query = set((batch.query_x[t, :, 0] * 255).round().long().tolist())
        assert not support & query and support | query <= ids["train"]
    with pytest.raises(ValueError, match="examples \\+ queries = 40 but the val pool has 10"):
        ClassifierTrainingProblems(dataset, "val", examples=30, queries=10)
