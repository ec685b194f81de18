"""Tests written to kill the mutants that survived the suite (benchmarks/results/mutation.md).

Each test checks one behaviour that a surviving mutant changed, against a hand computation
in float64 (no library code on the expected side): the evaluator's per-group summary, the
objectives' scores and metric directions, composed update rules, a stream's example count,
and the argument names that the constructors' errors carry.
"""

from __future__ import annotations

import math
import statistics

import pytest
import torch

from metalab.algorithms import ERM
from metalab.functional import inner_loop
from metalab.functional.update_rules import SGD, Chain, LearnedRates
from metalab.tasks.objective import (
    CLASSIFICATION,
    REGRESSION,
    lower_is_better,
    objective_for,
)
from metalab.train.evaluator import group_summary

# -- the evaluator's per-group summary --------------------------------------------------------

VALUES = [0.5, 0.7, 0.2, 0.4, 0.9, 0.6, 0.8]
GROUPS = [0, 0, 1, 1, 2, 2, 2]


def _mean_ci_by_hand(values: list[float]) -> tuple[float, float]:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return statistics.fmean(values), 1.96 * sd / math.sqrt(len(values))


@pytest.mark.parametrize("metric, worst", [("accuracy", 1), ("mse", 2), ("loss", 2)])
def test_group_summary_is_the_hand_computed_average_and_worst_group(metric, worst):
    summary = group_summary(torch.tensor(VALUES, dtype=torch.float64),
                            torch.tensor(GROUPS), metric, names=["a", "b", "c"])
    mean, ci95 = _mean_ci_by_hand(VALUES)
    assert summary[f"average_{metric}"] == pytest.approx(mean, rel=1e-12)
    assert summary["average_ci95"] == pytest.approx(ci95, rel=1e-12)
    by_group = {g: [v for v, h in zip(VALUES, GROUPS, strict=True) if h == g] for g in (0, 1, 2)}
    assert summary["worst_group"] == worst
    worst_mean, worst_ci = _mean_ci_by_hand(by_group[worst])
    assert summary[f"worst_group_{metric}"] == pytest.approx(worst_mean, rel=1e-12)
    assert summary["worst_group_ci95"] == pytest.approx(worst_ci, rel=1e-12)
    assert sorted(summary["per_group"]) == [0, 1, 2]
    for g, members in by_group.items():
        g_mean, g_ci = _mean_ci_by_hand(members)
        entry = summary["per_group"][g]
        assert entry["mean"] == pytest.approx(g_mean, rel=1e-12)
        assert entry["ci95"] == pytest.approx(g_ci, rel=1e-12)
        assert entry["batches"] == len(members)
        assert entry["name"] == "abc"[g]


def test_group_summary_without_names_has_no_name_and_one_batch_has_zero_ci():
    summary = group_summary(torch.tensor([0.25, 0.75]), torch.tensor([3, 5]))
    assert summary["per_group"] == {3: {"mean": 0.25, "ci95": 0.0, "batches": 1},
                                    5: {"mean": 0.75, "ci95": 0.0, "batches": 1}}
    assert summary["worst_group"] == 3


@pytest.mark.parametrize("values, groups", [([0.1, 0.2], [0]), ([[0.1]], [[0]])])
def test_group_summary_rejects_mismatched_or_non_vector_inputs(values, groups):
    with pytest.raises(ValueError, match="values and groups must be 1-D of the same length"):
        group_summary(torch.tensor(values), torch.tensor(groups))


def test_group_summary_rejects_no_batches():
    with pytest.raises(ValueError, match="at least one evaluation batch"):
        group_summary(torch.zeros(0), torch.zeros(0, dtype=torch.long))


# -- objectives -------------------------------------------------------------------------------

def test_regression_score_is_the_mean_squared_error_twice():
    outputs = torch.tensor([[1.0], [2.0], [4.0]], dtype=torch.float64)
    targets = torch.tensor([[0.0], [2.5], [1.0]], dtype=torch.float64)
    loss, metric = REGRESSION.score(outputs, targets)
    expected = (1.0 + 0.25 + 9.0) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    assert metric.item() == pytest.approx(expected, rel=1e-12)


def test_classification_score_is_cross_entropy_and_accuracy_by_hand():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 1.0]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 0])
    loss, metric = CLASSIFICATION.score(logits, labels)
    nll = [-(row[0] - math.log(sum(math.exp(v) for v in row))) for row in logits.tolist()]
    assert loss.item() == pytest.approx(sum(nll) / 3, rel=1e-12)
    assert metric.item() == pytest.approx(2 / 3, rel=1e-12)
    assert metric.dtype == torch.float64


@pytest.mark.parametrize("name, lower", [("loss", True), ("mse", True), ("accuracy", False),
                                         ("unknown", False)])
def test_metric_directions(name, lower):
    assert lower_is_better(name) is lower


def test_objective_for_names_the_loss_argument():
    assert objective_for("mse") is REGRESSION
    assert objective_for("cross_entropy") is CLASSIFICATION
    with pytest.raises(ValueError, match="loss"):
        objective_for("hinge")


# -- update rules -----------------------------------------------------------------------------

def test_chain_of_learned_rates_and_sgd_steps_by_their_product():
    """``Chain(rates, SGD(lr))``: ``w <- w - lr * (rate o g)``; on ``0.5 * sum(w^2)`` g = w."""
    w = torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64)
    rates = LearnedRates({"w": w}, init=2.0).double()
    with torch.no_grad():
        rates.rate("w").copy_(torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64))
    rule = Chain(rates, SGD(0.1))
    assert rule.init({"w": w}) == ((), ())
    adapted = inner_loop(lambda p: 0.5 * (p["w"] ** 2).sum(), {"w": w.requires_grad_()}, rule,
                         steps=2, first_order=True)
    factor = torch.tensor([1 - 0.1 * 1.0, 1 - 0.1 * 2.0, 1 - 0.1 * 0.5], dtype=torch.float64)
    torch.testing.assert_close(adapted["w"], w.detach() * factor ** 2, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("rules", [(), (SGD(0.1), 0.1)])
def test_chain_needs_update_rules(rules):
    with pytest.raises(TypeError, match="Chain needs one or more UpdateRule instances"):
        Chain(*rules)


# -- streams ----------------------------------------------------------------------------------

def test_a_stream_counts_every_example_of_every_batch():
    learner = ERM(torch.nn.Linear(2, 3)).double()
    stream = learner.stream()
    for size in (3, 4, 2):
        stream.update(torch.randn(size, 2, dtype=torch.float64))
    assert stream.count == 9
    assert stream.inputs.shape == (9, 2)


# -- errors name the argument -----------------------------------------------------------------

def _maml():
    from metalab.algorithms import MAML

    return MAML(torch.nn.Linear(1, 1), inner_lr=0.1, loss="mse")


def _constructor_errors():
    from metalab.algorithms import MAML
    from metalab.combiners.gradnorm import GradNorm
    from metalab.combiners.weighting import UncertaintyWeighting
    from metalab.functional.tasks import check_strategy
    from metalab.tasks import EpisodeSampler, Sinusoid
    from metalab.tasks.groups import GroupEvalSampler

    linear = torch.nn.Linear(1, 1)
    x = torch.zeros(2, 1)
    y = torch.zeros(2, 1)
    erm = ERM(torch.nn.Linear(1, 1))
    return [
        ("num_tasks", lambda: GradNorm(0)),
        ("alpha", lambda: GradNorm(2, alpha=float("nan"))),
        ("reduction", lambda: UncertaintyWeighting(2, reduction="median")),
        ("strategy", lambda: check_strategy("threads")),
        ("groups_per_batch", lambda: GroupEvalSampler(None, batch_size=2, groups_per_batch=0)),
        ("ways", lambda: EpisodeSampler(None, ways=0, shots=1, queries=1)),
        ("shots", lambda: EpisodeSampler(None, ways=2, shots=0, queries=1)),
        ("queries", lambda: EpisodeSampler(None, ways=2, shots=1, queries=0)),
        ("shots", lambda: Sinusoid(0, 5)),
        ("queries", lambda: Sinusoid(5, 0)),
        ("phase", lambda: Sinusoid(5, 5, phase=(1.0,))),
        ("x_range", lambda: Sinusoid(5, 5, x_range=(1.0,))),
        ("inner_steps", lambda: MAML(linear, inner_steps=-1)),
        ("eval_inner_steps", lambda: MAML(linear, eval_inner_steps=-1)),
        ("inner_steps", lambda: _maml().adapt(x, y, inner_steps=-1)),
        ("support_x", lambda: erm.adapt_task([1.0], training=False)),
        ("x", lambda: erm.predict(None, [1.0])),
        ("x_batch", lambda: erm.stream().update([1.0])),
        ("x", lambda: erm.stream()([1.0])),
    ]


@pytest.mark.parametrize("index", range(len(_constructor_errors())))
def test_errors_start_with_the_argument_name(index):
    name, call = _constructor_errors()[index]
    with pytest.raises((ValueError, TypeError)) as error:
        call()
    assert str(error.value).startswith(f"{name} must"), str(error.value)


# -- the inner loop ---------------------------------------------------------------------------

ALPHA, CURVATURE = 0.1, 3.0


def _quadratic(p):
    """``0.5 * c * w^2``: one SGD step maps ``w`` to ``(1 - alpha * c) * w``."""
    return 0.5 * CURVATURE * (p["w"] ** 2).sum()


@pytest.mark.parametrize("steps", [1, 2])
@pytest.mark.parametrize("checkpoint_steps", [False, True])
def test_the_inner_loop_is_second_order_by_default(steps, checkpoint_steps):
    """``d w_K / d w_0 = (1 - alpha c)^K`` through the steps (first order would give 1)."""
    w = torch.tensor([2.0], dtype=torch.float64, requires_grad=True)
    adapted = inner_loop(_quadratic, {"w": w}, ALPHA, steps=steps,
                         checkpoint_steps=checkpoint_steps)
    factor = 1 - ALPHA * CURVATURE
    assert adapted["w"].item() == pytest.approx(2.0 * factor ** steps, rel=1e-12)
    (grad,) = torch.autograd.grad(adapted["w"].sum(), w)
    assert grad.item() == pytest.approx(factor ** steps, rel=1e-12)


def test_the_first_order_inner_loop_treats_the_gradient_as_a_constant():
    w = torch.tensor([2.0], dtype=torch.float64, requires_grad=True)
    adapted = inner_loop(_quadratic, {"w": w}, ALPHA, steps=2, first_order=True)
    (grad,) = torch.autograd.grad(adapted["w"].sum(), w)
    assert grad.item() == pytest.approx(1.0, rel=1e-12)


def test_a_parameter_the_loss_does_not_use_gets_a_zero_step():
    w = torch.tensor([2.0], dtype=torch.float64, requires_grad=True)
    unused = torch.tensor([5.0], dtype=torch.float64, requires_grad=True)
    adapted = inner_loop(_quadratic, {"w": w, "unused": unused}, ALPHA, steps=1)
    assert adapted["unused"].item() == 5.0
    assert adapted["w"].item() == pytest.approx(2.0 * (1 - ALPHA * CURVATURE), rel=1e-12)


def test_learned_rates_name_the_parameters_they_lack():
    rates = LearnedRates({"w": torch.zeros(2)}, init=0.1)
    with pytest.raises(KeyError, match=r"no rates for \['v'\]"):
        rates.transform({"v": torch.ones(2)}, (), {"v": torch.zeros(2)})


@pytest.mark.parametrize("rule", ["0.1", True, None])
def test_a_step_size_must_be_a_number(rule):
    from metalab.functional.update_rules import as_update_rule

    with pytest.raises(TypeError, match="update rule must be an UpdateRule or a step size"):
        as_update_rule(rule)


# -- execution strategies ---------------------------------------------------------------------

def test_map_tasks_loops_by_default_over_one_tensor_with_one_output():
    from metalab.functional.tasks import map_tasks

    x = torch.arange(6, dtype=torch.float64).view(3, 2)
    torch.testing.assert_close(map_tasks(lambda row: row * row.sum(), x),
                               torch.tensor([[0.0, 1.0], [10.0, 15.0], [36.0, 45.0]],
                                            dtype=torch.float64))


def test_map_tasks_under_vmap_batches_and_draws_different_noise_per_task():
    from metalab.functional.tasks import map_tasks

    seen = []

    def fn(row):
        seen.append(torch._C._functorch.is_batchedtensor(row))
        return row + torch.rand(())

    out = map_tasks(fn, torch.zeros(4, 1, dtype=torch.float64), strategy="vmap")
    assert seen == [True]
    assert out.shape == (4, 1) and len(set(out.flatten().tolist())) == 4


# -- task families and samplers ---------------------------------------------------------------

class _LabelledPoints(torch.utils.data.Dataset):
    """``per_class`` scalar inputs per class; item ``i`` is ``(float(i), label)``."""

    def __init__(self, classes: int, per_class: int, labels=None) -> None:
        self.labels = labels if labels is not None else [
            c for c in range(classes) for _ in range(per_class)]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return torch.tensor([float(i)]), self.labels[i]


def test_an_episode_may_use_every_class_and_every_example_of_a_class():
    """ways == classes and shots + queries == class size are allowed (the bounds are <=)."""
    from metalab.tasks import EpisodeSampler

    sampler = EpisodeSampler(_LabelledPoints(classes=3, per_class=4), ways=3, shots=1,
                             queries=3, seed=0)
    batch = sampler.sample()
    assert len(batch) == 1  # one task per batch by default
    assert batch.support_x.shape == (1, 3, 1) and batch.query_x.shape == (1, 9, 1)
    drawn = torch.cat([batch.support_x, batch.query_x], dim=1).flatten().tolist()
    assert sorted(drawn) == [float(i) for i in range(12)]


@pytest.mark.parametrize("ways, shots, queries", [(4, 1, 1), (2, 2, 3)])
def test_an_episode_larger_than_the_data_is_refused(ways, shots, queries):
    from metalab.tasks import EpisodeSampler

    with pytest.raises(ValueError, match="ways=4 but the dataset has 3 classes|shots\\+queries=5"):
        EpisodeSampler(_LabelledPoints(classes=3, per_class=4), ways=ways, shots=shots,
                       queries=queries)


def test_labels_must_be_one_flat_int_per_item():
    from metalab.tasks import EpisodeSampler

    with pytest.raises(ValueError, match="flat sequence of 4 ints"):
        EpisodeSampler(_LabelledPoints(0, 0, labels=[[0], [0], [1], [1]]), ways=2, shots=1,
                       queries=1)


@pytest.mark.parametrize("shuffle_labels", [True, False])
def test_a_seeded_episode_sampler_repeats_itself_whatever_the_global_seed(shuffle_labels):
    from metalab.tasks import EpisodeSampler

    def draw(global_seed):
        torch.manual_seed(global_seed)
        sampler = EpisodeSampler(_LabelledPoints(classes=8, per_class=5), ways=3, shots=1,
                                 queries=2, tasks_per_batch=4, shuffle_labels=shuffle_labels,
                                 seed=7)
        torch.manual_seed(global_seed + 1)
        return sampler.sample()

    first, second = draw(1), draw(2)
    torch.testing.assert_close(first.support_x, second.support_x)
    torch.testing.assert_close(first.query_x, second.query_x)


def test_sinusoid_defaults_to_25_tasks_and_accepts_fixed_amplitude_and_phase():
    from metalab.tasks import Sinusoid

    batch = Sinusoid(5, 5, amplitude=(2.0, 2.0), phase=(0.5, 0.5), x_range=(1.0, 1.0),
                     seed=0).sample()
    assert len(batch) == 25
    assert batch.support_x.flatten().tolist() == [1.0] * 125
    expected = 2.0 * math.sin(1.0 - 0.5)  # A sin(x - phase)
    assert batch.support_y.flatten().tolist() == pytest.approx([expected] * 125, rel=1e-6)
    assert batch.query_y.flatten().tolist() == pytest.approx([expected] * 125, rel=1e-6)


# -- the evaluator's defaults -----------------------------------------------------------------

def test_the_evaluator_scores_600_episodes_by_default_and_accepts_one():
    from metalab.train.evaluator import Evaluator, mean_ci95

    assert Evaluator().episodes == 600
    assert Evaluator(episodes=1).episodes == 1
    with pytest.raises(ValueError, match="episodes must be >= 1, got 0"):
        Evaluator(episodes=0)
    assert mean_ci95(torch.tensor([0.25])) == (0.25, 0.0)
    mean, ci95 = mean_ci95(torch.tensor([0.25, 0.75]))
    assert mean == 0.5 and ci95 == pytest.approx(1.96 * math.sqrt(0.125) / math.sqrt(2))


# -- the simplex QP under MGDA and CAGrad -----------------------------------------------------

def _qp_by_enumerating_faces(hessian, linear):
    """``argmin_{w >= 0, sum w = 1} linear.w + w^T H w / 2`` by trying every support set.

    On a support ``S`` the minimiser of the equality-constrained problem solves
    ``[H_SS 1; 1^T 0] [w_S; -nu] = [-linear_S; 1]``; the best feasible one over all ``S``
    is the global minimum of the strictly convex problem.
    """
    import itertools

    import numpy as np

    tasks = len(linear)
    best, best_value = None, math.inf
    for size in range(1, tasks + 1):
        for support in itertools.combinations(range(tasks), size):
            s = list(support)
            kkt = np.zeros((size + 1, size + 1))
            kkt[:size, :size] = hessian[np.ix_(s, s)]
            kkt[:size, size] = 1.0
            kkt[size, :size] = 1.0
            solution = np.linalg.solve(kkt, np.concatenate([-linear[s], [1.0]]))
            if (solution[:size] < -1e-13).any():
                continue
            w = np.zeros(tasks)
            w[s] = solution[:size]
            value = float(linear @ w + 0.5 * w @ hessian @ w)
            if value < best_value:
                best, best_value = w, value
    return best


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("start", ["vertex", "interior"])
def test_simplex_qp_is_the_minimum_over_every_face(seed, start):
    import numpy as np

    from metalab.combiners.simplex import simplex_qp

    rng = np.random.default_rng(seed)
    tasks = 3 + seed % 4
    a = rng.standard_normal((tasks, tasks - seed % 2))  # rank-deficient every other seed
    hessian = a @ a.T + 1e-3 * np.eye(tasks)
    linear = rng.standard_normal(tasks) * (0.1 + seed % 3)
    first = None if start == "vertex" else rng.dirichlet(np.ones(tasks))
    w = simplex_qp(hessian, linear, first)
    expected = _qp_by_enumerating_faces(hessian, linear)
    np.testing.assert_allclose(w, expected, atol=1e-9, rtol=0)
    assert (w >= 0).all() and w.sum() == pytest.approx(1.0, abs=1e-15)


def test_host_gram_definite_and_to_weights_do_what_they_say():
    import numpy as np

    from metalab.combiners.simplex import RIDGE, definite, host_gram, to_weights

    gram = torch.tensor([[4.0, 1.0], [3.0, 2.0]], dtype=torch.float32)
    host = host_gram(gram)
    assert host.dtype == np.float64
    np.testing.assert_array_equal(host, [[4.0, 2.0], [2.0, 2.0]])
    np.testing.assert_array_equal(definite(host), host + 4.0 * RIDGE * np.eye(2))
    weights = to_weights(np.array([0.25, 0.75]), gram)
    assert weights.dtype == torch.float32 and weights.tolist() == [0.25, 0.75]


# -- steps at meta-test: ARM-LL and MAML ------------------------------------------------------

@pytest.mark.parametrize("eval_steps", [0, 2])
def test_arm_ll_adapts_with_eval_inner_steps_at_meta_test(eval_steps):
    from metalab.algorithms import ARMLL
    from test_reference_protonet_arm import DIM, SquaredSumLoss, group_batch, ll_reference

    torch.manual_seed(0)
    learner = ARMLL(torch.nn.Linear(DIM, 3), loss_net=SquaredSumLoss(), inner_lr=0.05,
                    inner_steps=1, eval_inner_steps=eval_steps).double()
    batch = group_batch(tasks=1, seed=5, same=False)
    support = batch.support_x[0]
    other = torch.randn(4, DIM, dtype=torch.float64)
    _, (W, b) = ll_reference(learner, support, batch.query_x[0], batch.query_y[0], eval_steps)
    torch.testing.assert_close(learner.adapt(support)(other), (other @ W.T + b).detach(),
                               rtol=1e-10, atol=1e-12)
    # an explicit number of steps overrides both defaults
    _, (W3, b3) = ll_reference(learner, support, batch.query_x[0], batch.query_y[0], 3)
    adapted, _ = learner.adapt_task(support, training=False, inner_steps=3)
    torch.testing.assert_close(adapted["weight"].detach(), W3.detach(), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(adapted["bias"].detach(), b3.detach(), rtol=1e-10, atol=1e-12)


def test_zero_inner_steps_are_allowed_and_leave_the_parameters():
    from metalab.algorithms import ARMLL, MAML

    maml = MAML(torch.nn.Linear(2, 1), inner_lr=0.1, loss="mse", inner_steps=0,
                eval_inner_steps=0).double()
    x, y = torch.randn(5, 2, dtype=torch.float64), torch.randn(5, 1, dtype=torch.float64)
    probe = torch.randn(3, 2, dtype=torch.float64)
    torch.testing.assert_close(maml.adapt(x, y)(probe), maml.model(probe).detach())
    assert ARMLL(torch.nn.Linear(2, 3), num_classes=3, inner_steps=0).eval_inner_steps == 0


# -- the learner base class -------------------------------------------------------------------

def _regression_batch(tasks=4, seed=0):
    from metalab.tasks import TaskBatch

    g = torch.Generator().manual_seed(seed)

    def draw(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    return TaskBatch(draw(tasks, 3, 1), draw(tasks, 3, 1), draw(tasks, 5, 1), draw(tasks, 5, 1))


@pytest.mark.parametrize("task_chunk", [None, 1, 3])
def test_meta_backward_returns_the_task_mean_and_accumulates_its_gradient(task_chunk):
    """With no inner step MAML's task loss is the query MSE of ``w x + b``, by hand."""
    from metalab.algorithms import MAML

    torch.manual_seed(0)
    learner = MAML(torch.nn.Linear(1, 1), inner_lr=0.1, inner_steps=0, loss="mse").double()
    batch = _regression_batch()
    w = learner.model.weight.detach().clone().requires_grad_()
    b = learner.model.bias.detach().clone().requires_grad_()
    per_task = ((batch.query_x * w.squeeze() + b - batch.query_y) ** 2).mean(dim=(1, 2))
    expected = per_task.mean()
    grad_w, grad_b = torch.autograd.grad(expected, (w, b))
    metrics = learner.meta_backward(batch, task_chunk=task_chunk)
    assert metrics["loss"] == pytest.approx(expected.item(), rel=1e-12)
    assert metrics["mse"] == pytest.approx(expected.item(), rel=1e-12)
    torch.testing.assert_close(learner.model.weight.grad, grad_w, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(learner.model.bias.grad, grad_b, rtol=1e-12, atol=1e-14)


def test_an_adaptation_option_the_method_lacks_is_named_with_the_accepted_ones():
    from metalab.algorithms import ProtoNet

    x = torch.randn(4, 2, dtype=torch.float64)
    y = torch.tensor([0, 1, 0, 1])
    with pytest.raises(ValueError, match=r"\['inner_steps'\]; it accepts: \['ways'\]"):
        ProtoNet(torch.nn.Linear(2, 2)).double().adapt(x, y, inner_steps=1)
    with pytest.raises(ValueError, match=r"\['ways'\]; it accepts: none"):
        ERM(torch.nn.Linear(2, 2)).double().adapt(x, y, ways=2)


def test_a_maml_predictor_holds_no_graph():
    x, y = torch.randn(5, 1, dtype=torch.float64), torch.randn(5, 1, dtype=torch.float64)
    predictor = _maml().double().adapt(x, y)
    assert not predictor(torch.randn(2, 1, dtype=torch.float64)).requires_grad


def test_a_method_name_taken_by_another_class_is_refused_and_names_register():
    from metalab.algorithms.base import REGISTRY, MetaLearner
    from metalab.algorithms.maml import MAML

    assert REGISTRY["maml"] is MAML and MAML.extra_input_channels({}) == 0
    with pytest.raises(ValueError, match="algorithm name 'maml' is taken by MAML"):
        type("Impostor", (MetaLearner,), {}, name="maml")


class _RecordsBatching(torch.nn.Module):
    """A linear map that records whether each call saw a vmap-batched tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(2, 2)
        self.batched: list[bool] = []

    def forward(self, x):
        self.batched.append(torch._C._functorch.is_batchedtensor(x))
        return self.linear(x)


@pytest.mark.parametrize("method", ["protonet", "maml"])
def test_the_vmap_strategy_runs_the_tasks_under_vmap(method):
    from metalab.algorithms import MAML, ProtoNet

    model = _RecordsBatching().double()
    learner = (ProtoNet(model, strategy="vmap") if method == "protonet"
               else MAML(model, inner_lr=0.1, strategy="vmap"))
    batch = _regression_batch(tasks=3)
    from metalab.tasks import TaskBatch

    labels = torch.tensor([[0, 1, 0], [1, 0, 1], [0, 0, 1]])
    batch = TaskBatch(batch.support_x.expand(-1, -1, 2).contiguous(), labels,
                      batch.support_x.expand(-1, -1, 2).contiguous(), labels, num_classes=2)
    learner.meta_loss(batch)
    assert model.batched and all(model.batched)


# -- group samplers ---------------------------------------------------------------------------

class _Groups(torch.utils.data.Dataset):
    """Items ``(float(i), label)``; groups and labels given; optional size attributes."""

    def __init__(self, groups, labels, **attributes) -> None:
        self.groups, self.labels = groups, labels
        for name, value in attributes.items():
            setattr(self, name, value)

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, i: int):
        return torch.tensor([float(i)]), self.labels[i]


GROUP_IDS = [0, 0, 0, 2, 2, 0, 2, 0]  # group 1 empty; 5 items in group 0, 3 in group 2
GROUP_LABELS = [0, 1, 2, 0, 1, 2, 0, 1]


@pytest.mark.parametrize("sampling", ["frequency", "uniform"])
def test_group_probabilities_are_the_hand_computed_proportions(sampling):
    from metalab.tasks import GroupBatchSampler

    sampler = GroupBatchSampler(_Groups(GROUP_IDS, GROUP_LABELS, num_groups=4), 2, 3,
                                sampling=sampling)
    expected = [5 / 8, 0.0, 3 / 8, 0.0] if sampling == "frequency" else [0.5, 0.0, 0.5, 0.0]
    assert sampler.group_probabilities.tolist() == pytest.approx(expected, abs=1e-15)
    assert [m.tolist() for m in sampler.group_members] == [[0, 1, 2, 5, 7], [], [3, 4, 6], []]
    assert sampler.groups_with_data == 2


@pytest.mark.parametrize("attributes, classes", [({}, 3), ({"num_classes": 5}, 5)])
def test_group_batches_carry_the_number_of_classes(attributes, classes):
    from metalab.tasks import GroupBatchSampler
    from metalab.tasks.groups import GroupEvalSampler

    dataset = _Groups(GROUP_IDS, GROUP_LABELS, **attributes)
    assert GroupBatchSampler(dataset, 2, 3).sample().num_classes == classes
    assert GroupEvalSampler(dataset, batch_size=2).sample().num_classes == classes


def test_group_eval_orders_differ_between_groups_and_seeds_but_repeat_for_a_seed():
    from metalab.tasks.groups import GroupEvalSampler

    dataset = _Groups(list(range(2)) * 20, [0] * 40)

    def first_batches(seed, count=4):
        sampler = GroupEvalSampler(dataset, batch_size=20, seed=seed)
        return [sampler.sample().support_x.flatten().tolist() for _ in range(count)]

    a = first_batches(0)
    assert a == first_batches(0)
    assert a != first_batches(1)
    # within a group the order is a permutation that depends on the group
    in_group = [[int(v) // 2 for v in batch] for batch in a]
    assert in_group[0] != in_group[1]
    # the next epoch of a group is a new permutation
    assert a[0] != a[2] and sorted(a[0]) == sorted(a[2])


class _SizedGroups(_Groups):
    def __init__(self, groups, size: int) -> None:
        super().__init__(groups, [0] * max(size, 1))
        self.size = size

    def __len__(self) -> int:
        return self.size


@pytest.mark.parametrize("groups, size", [([[0], [1]], 2), ([], 0), ([0, 1, 2], 2)])
def test_group_ids_must_be_one_flat_int_per_item(groups, size):
    from metalab.tasks import GroupBatchSampler

    with pytest.raises(ValueError, match=f"non-empty flat sequence of {size} ints"):
        GroupBatchSampler(_SizedGroups(groups, size), 1, 1)


# -- Matching Networks ------------------------------------------------------------------------

def test_matching_networks_default_is_the_papers_unscaled_cosine_attention():
    from metalab.algorithms.matching import MatchingNet

    learner = MatchingNet(torch.nn.Identity()).double()
    support = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]], dtype=torch.float64)
    labels = torch.tensor([0, 1, 1])
    query = torch.tensor([[3.0, 1.0], [-1.0, 2.0]], dtype=torch.float64)
    expected = []
    for q in query.tolist():
        cosines = [(q[0] * s[0] + q[1] * s[1]) / (math.hypot(*q) * math.hypot(*s))
                   for s in support.tolist()]
        exps = [math.exp(c) for c in cosines]  # s = 1: the paper's attention
        p1 = (exps[1] + exps[2]) / sum(exps)
        expected.append([math.log(1 - p1), math.log(p1)])
    torch.testing.assert_close(learner.adapt(support, labels)(query),
                               torch.tensor(expected, dtype=torch.float64), rtol=1e-12,
                               atol=1e-12)


# -- documented defaults ----------------------------------------------------------------------

def _defaults():
    import inspect

    from metalab.algorithms import ARMLL, MAML
    from metalab.algorithms.maml import MetaSGD
    from metalab.algorithms.mr_maml import MRMAMLA, MRMAMLW
    from metalab.combiners.cagrad import CAGrad
    from metalab.combiners.gradnorm import GradNorm
    from metalab.combiners.weighting import GroupDRO

    def default(cls, name):
        return inspect.signature(cls.__init__).parameters[name].default

    from metalab.nn import BodyHead

    linear = torch.nn.Linear(1, 1)
    body_head = BodyHead(torch.nn.Sequential(torch.nn.Linear(1, 3)), torch.nn.Linear(3, 1))
    body_head2 = BodyHead(torch.nn.Sequential(torch.nn.Linear(1, 4)), torch.nn.Linear(2, 1))
    ll = ARMLL(torch.nn.Linear(2, 3), num_classes=3)
    return {
        # Finn et al. 2017 (Omniglot): alpha = 0.4; Meta-SGD initialises its rates there
        "maml inner_lr": (MAML(linear).inner_lr, 0.4),
        "meta-sgd initial rate": (MetaSGD(linear).inner_lr, 0.4),
        "maml inner_steps": (MAML(linear).inner_steps, 1),
        # ARM official code: one step of 0.1 on the learned loss
        "arm-ll inner_lr": (ll.inner_lr, 0.1),
        "arm-ll inner_steps": (ll.inner_steps, 1),
        # GradNorm (Chen et al. 2018): alpha = 1.5; weights' learning rate 0.025
        "gradnorm alpha": (GradNorm(2).alpha, 1.5),
        "gradnorm lr": (GradNorm(2).lr, 0.025),
        # group DRO (Sagawa et al. 2020): eta_q = 0.01
        "group dro step": (GroupDRO(2).step_size, 0.01),
        # CAGrad official code: c = 0.5, rescale 1
        "cagrad c": (CAGrad().c, 0.5),
        "cagrad rescale": (CAGrad().rescale, 1),
        # MR-MAML, the authors' sinusoid notebook: beta 5e-5 (W) and 5.0 (A)
        "mr-maml-w beta": (MRMAMLW(body_head, loss="mse").beta, 5e-5),
        "mr-maml-a beta": (MRMAMLA(body_head2, loss="mse").beta, 5.0),
        "mr-maml-w init_log_sigma": (default(MRMAMLW, "init_log_sigma"), -6.0),
    }


@pytest.mark.parametrize("name", sorted(_defaults()))
def test_documented_defaults(name):
    value, expected = _defaults()[name]
    assert value == expected


# -- MAML options -----------------------------------------------------------------------------

def test_maml_steps_with_the_update_rule_it_is_given():
    """``update_rule=SGD(0.05)`` replaces ``inner_lr``: one step on the support MSE of
    ``w x`` (no bias) moves ``w`` by ``-0.05 * mean(2 (w x - y) x)``."""
    from metalab.algorithms import MAML

    model = torch.nn.Linear(1, 1, bias=False).double()
    with torch.no_grad():
        model.weight.fill_(0.5)
    learner = MAML(model, inner_lr=0.4, loss="mse", update_rule=SGD(0.05))
    x = torch.tensor([[1.0], [2.0], [-1.0]], dtype=torch.float64)
    y = torch.tensor([[0.0], [3.0], [1.0]], dtype=torch.float64)
    grad = sum(2 * (0.5 * xi - yi) * xi for xi, yi in zip([1.0, 2.0, -1.0], [0.0, 3.0, 1.0],
                                                           strict=True)) / 3
    w = 0.5 - 0.05 * grad
    probe = torch.tensor([[2.0]], dtype=torch.float64)
    assert learner.adapt(x, y)(probe).item() == pytest.approx(2.0 * w, rel=1e-12)


def test_maml_checkpointing_runs_with_the_loop_and_is_refused_with_vmap():
    from metalab.algorithms import MAML

    assert MAML(torch.nn.Linear(1, 1), checkpoint_steps=True).checkpoint_steps is True
    with pytest.raises(ValueError, match="checkpoint_steps=True needs strategy='loop'"):
        MAML(torch.nn.Linear(1, 1), checkpoint_steps=True, strategy="vmap")


# -- CAGrad's dual on two tasks, by ternary search --------------------------------------------

@pytest.mark.parametrize("seed", range(10))
@pytest.mark.parametrize("c", [0.2, 1.0, 3.0])
def test_cagrad_weights_minimise_the_dual_on_two_tasks(seed, c):
    """``min_{t in [0, 1]} g_w . g0 + c |g0| |g_w|`` with ``w = (t, 1 - t)`` is a convex
    function of ``t``: a ternary search finds its minimiser to rounding."""
    import numpy as np

    from metalab.combiners.cagrad import conflict_averse_weights

    rng = np.random.default_rng(seed)
    grads = rng.standard_normal((2, 4)) * np.array([[1.0], [10.0 ** (seed % 5 - 2)]])
    gram = grads @ grads.T
    radius = c * math.sqrt(max(gram.mean(), 0.0))

    def dual(t):
        w = np.array([t, 1 - t])
        return w @ gram.mean(axis=1) + radius * math.sqrt(max(w @ gram @ w, 0.0))

    low, high = 0.0, 1.0
    for _ in range(200):
        a, b = low + (high - low) / 3, high - (high - low) / 3
        low, high = (low, b) if dual(a) <= dual(b) else (a, high)
    best = (low + high) / 2
    w = conflict_averse_weights(gram, radius)
    assert dual(w[0]) <= dual(best) + 1e-12 * (1 + abs(dual(best)))
    assert w[0] == pytest.approx(best, abs=1e-6)


@pytest.mark.parametrize("scale, c", [(1.0, 0.5), (10.0, 0.05), (10.0, 0.5)])
def test_cagrad_weights_when_two_large_gradients_cancel(scale, c):
    """Three tasks, two large gradients nearly cancelling: with a small ``c`` the root search
    starts above its root (h > 0), so lambda must shrink. The dual objective at the returned weights
    is no worse than its minimum over a fine grid of the simplex."""
    import numpy as np

    from metalab.combiners.cagrad import conflict_averse_weights

    grads = np.array([[scale, 0.0, 0.0], [-scale, 0.0, 0.3], [-0.5, 1.0, 0.0]])
    gram = grads @ grads.T
    radius = c * math.sqrt(gram.mean())
    steps = np.linspace(0.0, 1.0, 801)
    t1, t2 = np.meshgrid(steps, steps, indexing="ij")
    inside = t1 + t2 <= 1.0
    w = np.stack([t1[inside], t2[inside], 1.0 - t1[inside] - t2[inside]], axis=1)
    dual = w @ gram.mean(axis=1) + radius * np.sqrt(np.einsum("ni,ij,nj->n", w, gram, w))
    found = conflict_averse_weights(gram, radius)
    value = found @ gram.mean(axis=1) + radius * math.sqrt(found @ gram @ found)
    assert value <= dual.min() + 1e-12
    assert value >= dual.min() - 1e-3 * abs(dual.min())  # the grid is fine enough


# -- combiner inputs, streams and registration ------------------------------------------------

def test_gradnorm_refuses_a_zero_loss_and_a_zero_learning_rate():
    from metalab.combiners.gradnorm import GradNorm

    grads = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    with pytest.raises(ValueError, match="gradnorm needs positive task losses"):
        GradNorm(2).combine(grads, torch.tensor([0.0, 1.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="lr must be"):
        GradNorm(2, lr=0.0)


@pytest.mark.parametrize("losses, task_ids, error", [
    (torch.tensor([1, 2]), None, "non-empty 1-D floating tensor"),
    (torch.tensor([1.0, 2.0]), torch.tensor([True, False]), "integer tensor"),
    (torch.tensor([1.0, 2.0]), torch.tensor([0, 1, 2]), "integer tensor of shape \\[2\\]"),
])
@pytest.mark.parametrize("combiner", ["mean", "sum"])
def test_loss_combiners_check_their_inputs(losses, task_ids, error, combiner):
    from metalab.combiners.weighting import MeanLoss, SumLoss

    with pytest.raises(ValueError, match=error):
        (MeanLoss() if combiner == "mean" else SumLoss()).combine_losses(losses, task_ids)


def test_a_stream_of_a_learner_that_ignores_the_support_predicts_before_any_update():
    model = torch.nn.Linear(2, 3).double()
    stream = ERM(model).stream()
    x = torch.randn(4, 2, dtype=torch.float64)
    torch.testing.assert_close(stream(x), model(x).detach())


def test_a_new_method_name_registers_its_class():
    from metalab.algorithms.base import REGISTRY, MetaLearner

    cls = type("Fresh", (MetaLearner,), {}, name="fresh-method-for-a-test")
    try:
        assert REGISTRY["fresh-method-for-a-test"] is cls
    finally:
        REGISTRY.pop("fresh-method-for-a-test", None)


def test_group_summary_defaults_to_accuracy():
    summary = group_summary(torch.tensor([0.2, 0.4]), torch.tensor([0, 1]))
    assert summary["average_accuracy"] == pytest.approx(0.3) and summary["worst_group"] == 0


def test_arm_cml_context_defaults_follow_the_official_code():
    """Defaults checked on a built learner (a signature can hide what the code does)."""
    from metalab.algorithms import ARMCML

    layers = ARMCML(torch.nn.Conv2d(1 + 12, 2, 1)).context_net.layers
    assert (layers[0].in_channels, layers[0].out_channels, layers[-1].out_channels) == (1, 64, 12)
    assert not any(isinstance(layer, torch.nn.BatchNorm2d) for layer in layers)


def test_arm_cml_builds_the_context_net_it_is_asked_for():
    from metalab.algorithms import ARMCML

    learner = ARMCML(torch.nn.Conv2d(3 + 5, 2, 1), image_channels=3, context_channels=5,
                     context_hidden=8, context_norm="batch")
    layers = learner.context_net.layers
    assert (layers[0].in_channels, layers[0].out_channels, layers[-1].out_channels) == (3, 8, 5)
    assert isinstance(layers[1], torch.nn.BatchNorm2d)


# -- the evaluator on group data and fixed evaluation sets ------------------------------------

def _value_learner():
    """Scores task ``i`` of a batch with accuracy ``support_x[i, 0, 0]`` and loss ``1 - it``."""
    from metalab.algorithms.base import MetaLearner

    class ValueLearner(MetaLearner):
        def task_losses(self, batch, training=True, **options):
            assert training is False
            values = batch.support_x[:, 0, 0].double()
            return 1.0 - values, {"accuracy": values}

    return ValueLearner()


def _grouped_batch(values, groups):
    from metalab.tasks import TaskBatch

    x = torch.tensor(values, dtype=torch.float64).view(-1, 1, 1)
    y = torch.zeros(len(values), 1, dtype=torch.long)
    return TaskBatch(x, y, x, y, num_classes=2, task_id=torch.tensor(groups))


class _GroupSource:
    """Two batches of group-labelled tasks; ``dataset.group_names`` names the groups."""

    tasks_per_batch = 3

    def __init__(self, fixed: bool) -> None:
        self.dataset = type("D", (), {"group_names": ["north", "south"]})()
        self.batches = [_grouped_batch([0.5, 0.7, 0.2], [0, 0, 1]),
                        _grouped_batch([0.4, 0.9, 0.6], [1, 0, 1])]
        self.drawn = 0
        if fixed:
            self.evaluation_batches = lambda: iter(self.batches)

    def sample(self):
        assert not hasattr(self, "evaluation_batches"), "a fixed set is not sampled"
        batch = self.batches[self.drawn % 2]
        self.drawn += 1
        return batch


@pytest.mark.parametrize("fixed", [False, True])
def test_the_evaluator_reports_groups_by_name_and_scores_a_fixed_set_once(fixed):
    from metalab.train.evaluator import Evaluator

    learner = _value_learner()
    evaluator = Evaluator(episodes=4)
    values = evaluator.per_task(learner, _GroupSource(fixed))
    expected = [0.5, 0.7, 0.2, 0.4, 0.9, 0.6][: None if fixed else 4]
    groups = [0, 0, 1, 1, 0, 1][: None if fixed else 4]
    assert values["accuracy"].tolist() == pytest.approx(expected)
    assert values["loss"].tolist() == pytest.approx([1 - v for v in expected])
    assert values["task_id"].tolist() == groups
    result = evaluator.evaluate(learner, _GroupSource(fixed))
    assert result["episodes"] == len(expected)
    assert result["mean"] == pytest.approx(statistics.fmean(expected), rel=1e-12)
    by_group = {g: [v for v, h in zip(expected, groups, strict=True) if h == g] for g in (0, 1)}
    worst = min(by_group, key=lambda g: statistics.fmean(by_group[g]))
    assert result["worst_group"] == worst
    assert result["worst_group_accuracy"] == pytest.approx(statistics.fmean(by_group[worst]))
    assert result["per_group"][worst]["name"] == ["north", "south"][worst]


@pytest.mark.parametrize("floor", [0.1, 1.0])
def test_mr_maml_w_exp_sigma_adds_its_floor(floor):
    """``sigma = sigma_floor + exp(s)`` (the docstring's exp transform with a floor)."""
    from metalab.algorithms import MRMAMLW
    from metalab.nn import BodyHead

    torch.manual_seed(0)
    model = BodyHead(torch.nn.Sequential(torch.nn.Linear(1, 3)), torch.nn.Linear(3, 1)).double()
    learner = MRMAMLW(model, sigma_transform="exp", sigma_floor=floor, loss="mse")
    raw = learner.sigma_parameters["0__weight"].detach()
    expected = [floor + math.exp(r) for r in raw.reshape(-1).tolist()]
    assert learner.sigmas()["0.weight"].reshape(-1).tolist() == pytest.approx(expected, rel=1e-12)


def test_mr_maml_adapt_takes_the_inner_steps_it_is_given():
    """``adapt(..., inner_steps=0)`` is the head on the mean codes, by hand; the default
    (eval_inner_steps=2) moves the prediction."""
    from metalab.algorithms import MRMAMLW
    from metalab.nn import MLP, BodyHead

    torch.manual_seed(0)
    model = BodyHead(MLP(1, (4,), None), MLP(4, (), 1)).double()
    learner = MRMAMLW(model, eval_sample=False, inner_lr=0.3, inner_steps=1,
                      eval_inner_steps=2, loss="mse").double()
    x = torch.linspace(-1, 1, 6, dtype=torch.float64).unsqueeze(1)
    y = torch.sin(3 * x)
    with torch.no_grad():
        unadapted = model.head(model.body(x))
    torch.testing.assert_close(learner.adapt(x, y, inner_steps=0)(x), unadapted)
    assert not torch.allclose(learner.adapt(x, y)(x), unadapted)


def test_arm_ll_meta_training_takes_inner_steps_not_eval_inner_steps():
    """The training loss depends on ``inner_steps`` and not on ``eval_inner_steps``."""
    from metalab.algorithms import ARMLL
    from metalab.nn.arm import ARMConvNet
    from metalab.tasks import TaskBatch

    def learner(inner_steps, eval_inner_steps):
        torch.manual_seed(0)
        model = ARMConvNet(norm="task", num_classes=3, hidden=4, fc_hidden=6, kernel_size=3,
                           image_size=8, padding="same")
        return ARMLL(model, inner_lr=0.5, inner_steps=inner_steps,
                     eval_inner_steps=eval_inner_steps).double()

    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 5, 1, 8, 8, generator=g, dtype=torch.float64)
    y = torch.randint(3, (2, 5), generator=g)
    batch = TaskBatch(x, y, x, y, num_classes=3)
    one_step = learner(1, 0).task_losses(batch)[0]
    torch.testing.assert_close(learner(1, 3).task_losses(batch)[0], one_step, rtol=0, atol=0)
    assert not torch.allclose(learner(3, 0).task_losses(batch)[0], one_step)
