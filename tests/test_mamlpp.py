"""MAML++ (Antoniou, Edwards & Storkey 2019) as options of `MAML`, against hand computations.

The expected side is a plain second-order MAML loop written out here in float64, on a
small regression network ``Linear(3, 4) -> batch norm -> tanh -> Linear(4, 1)`` whose
forward pass (including the per-task batch norm) is also written out by hand:

- the multi-step loss is ``sum_k w_k L_query(theta^k)`` with the weights of the paper's
  schedule computed by hand at a given meta-iteration;
- LSLR is ``theta_l^{k+1} = theta_l^k - alpha_{l,k} grad_l L_support(theta^k)``;
- per-step batch norm: step ``k``'s support pass and the query pass after step ``k`` use the
  ``k``-th (weight, bias) pair, which does not adapt;
- first-order annealing gives FOMAML's meta-gradient before the switch, MAML's after;
- the outer learning-rate schedules are checked against numbers computed by hand.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from helpers import interrupted_then_resumed
from metalab.algorithms import MAML, MetaSGD
from metalab.nn import MLP
from metalab.nn.norm import TaskBatchNorm
from metalab.tasks import TaskBatch
from metalab.train import ConfigError, Trainer, load_config
from metalab.train.config import TrainConfig
from metalab.train.trainer import scheduled_lr

DIM, SHOTS, QUERIES, TASKS, EPS = 3, 6, 5, 3, 1e-5
LINEAR = ["0.weight", "0.bias", "3.weight", "3.bias"]
NORM = ["1.weight", "1.bias"]


# -- the hand-written side ------------------------------------------------------------------
def network(seed: int = 0) -> nn.Sequential:
    """The model under test; its batch-norm pair is moved away from (1, 0)."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(DIM, 4), TaskBatchNorm(4), nn.Tanh(), nn.Linear(4, 1))
    model = model.double()
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([0.7, 1.3, -0.9, 1.1]))
        model[1].bias.copy_(torch.tensor([0.2, -0.4, 0.1, 0.3]))
    return model


def forward(p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """The network by hand: batch statistics of ``x`` (biased variance), then the pair."""
    h = x @ p["0.weight"].T + p["0.bias"]
    h = (h - h.mean(0)) / torch.sqrt(h.var(0, unbiased=False) + EPS)
    h = torch.tanh(h * p["1.weight"] + p["1.bias"])
    return h @ p["3.weight"].T + p["3.bias"]


def mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return ((a - b) ** 2).mean()


def hand_query_losses(params, task, steps, rate, adapted, pair=lambda k: {},
                      second_order=True) -> list[torch.Tensor]:
    """Query losses after each of ``steps`` plain gradient steps.

    ``rate(name, k)``: step ``k``'s rate of parameter ``name``; ``pair(k)``: parameters that
    replace ``params``' in step ``k``'s passes (the per-step batch-norm pair).
    """
    sx, sy, qx, qy = task
    w = dict(params)
    losses = []
    for k in range(steps):
        loss = mse(forward({**w, **pair(k)}, sx), sy)
        grads = torch.autograd.grad(loss, [w[n] for n in adapted], create_graph=second_order)
        w = {**w, **{n: w[n] - rate(n, k) * g for n, g in zip(adapted, grads, strict=True)}}
        losses.append(mse(forward({**w, **pair(k)}, qx), qy))
    return losses


def batch(seed: int = 0) -> TaskBatch:
    g = torch.Generator().manual_seed(seed)

    def draw(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    return TaskBatch(draw(TASKS, SHOTS, DIM), draw(TASKS, SHOTS, 1), draw(TASKS, QUERIES, DIM),
                     draw(TASKS, QUERIES, 1))


def tasks_of(b: TaskBatch):
    return [(b.support_x[t], b.support_y[t], b.query_x[t], b.query_y[t]) for t in range(len(b))]


def meta_gradient(loss: torch.Tensor, params: list[torch.Tensor]) -> list[torch.Tensor]:
    return torch.autograd.grad(loss, params)


def assert_all_close(actual, expected):
    for a, e in zip(actual, expected, strict=True):
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-12)


# -- MSL weights ---------------------------------------------------------------------------
@pytest.mark.parametrize("iteration, expected", [
    (0, [1 / 3, 1 / 3, 1 / 3]),      # uniform at the start
    (4, [0.2, 0.2, 0.6]),            # 1/3 - 4/30 and 1/3 + 4 * 2/30
    (99, None),                      # E = 10 is over: the last step's loss alone
])
def test_step_weights_follow_the_papers_schedule(iteration, expected):
    learner = MAML(network(), inner_lr=0.1, inner_steps=3, multi_step_loss=True,
                   msl_anneal_steps=10, loss="mse")
    learner.set_training_progress(iteration, 1000)
    weights = learner.step_loss_weights()
    assert weights == expected if expected is None else weights == pytest.approx(expected)


def test_step_weights_stop_at_their_floor_and_ceiling():
    """N = 3, E = 100, i = 99: 1/3 - 0.33 is below the floor 0.03/3 = 0.01, and
    1/3 + 99 * 2/300 above the ceiling 1 - 2 * 0.01 = 0.98."""
    learner = MAML(network(), inner_steps=3, multi_step_loss=True, msl_anneal_steps=100,
                   loss="mse")
    learner.set_training_progress(99, 1000)
    assert learner.step_loss_weights() == pytest.approx([0.01, 0.01, 0.98])


# -- every option off, and each one against the hand loop -----------------------------------
def test_options_off_is_plain_maml():
    """Defaults, MSL past its annealing, and LSLR with every rate at inner_lr: all three are
    the hand-written second-order MAML (every parameter adapts, one rate)."""
    b = batch()
    model = network()
    params = dict(model.named_parameters())
    expected_loss = torch.stack([
        hand_query_losses(params, task, 2, lambda n, k: 0.3, list(params))[-1]
        for task in tasks_of(b)]).mean()
    expected = meta_gradient(expected_loss, list(params.values()))
    learners = [MAML(model, inner_lr=0.3, inner_steps=2, loss="mse"),
                MAML(model, inner_lr=0.3, inner_steps=2, loss="mse", multi_step_loss=True,
                     msl_anneal_steps=5),
                MAML(model, inner_lr=0.3, inner_steps=2, loss="mse", per_step_lrs=True,
                     first_order_until=3)]
    for learner in learners:
        learner.double().set_training_progress(5, 10)
        loss, _ = learner.meta_loss(b)
        torch.testing.assert_close(loss, expected_loss, rtol=1e-12, atol=0)
        assert_all_close(meta_gradient(loss, list(params.values())), expected)


def test_multi_step_loss_is_the_hand_weighted_sum_of_the_step_losses():
    b = batch(1)
    model = network(1)
    learner = MAML(model, inner_lr=0.2, inner_steps=3, multi_step_loss=True,
                   msl_anneal_steps=10, loss="mse")
    learner.set_training_progress(4, 100)
    params = dict(model.named_parameters())
    per_task = [hand_query_losses(params, task, 3, lambda n, k: 0.2, list(params))
                for task in tasks_of(b)]
    expected_loss = torch.stack([0.2 * l1 + 0.2 * l2 + 0.6 * l3 for l1, l2, l3 in per_task]
                                ).mean()
    loss, metrics = learner.meta_loss(b)
    torch.testing.assert_close(loss, expected_loss, rtol=1e-12, atol=0)
    assert_all_close(meta_gradient(loss, list(params.values())),
                     meta_gradient(expected_loss, list(params.values())))
    # the logged metric is the last step's query MSE
    last = torch.stack([losses[-1] for losses in per_task]).mean().item()
    assert metrics["mse"] == pytest.approx(last, rel=1e-12)


def test_per_step_rates_equal_a_hand_unrolled_two_step_update():
    b = batch(2)
    model = network(2)
    learner = MAML(model, inner_lr=0.3, inner_steps=2, per_step_lrs=True, loss="mse").double()
    rates = {"0.weight": (0.3, 0.1), "0.bias": (0.05, 0.4), "1.weight": (0.2, 0.25),
             "1.bias": (0.15, 0.0), "3.weight": (0.5, 0.35), "3.bias": (0.12, 0.6)}
    with torch.no_grad():
        for name, values in rates.items():
            learner.update_rule.rates[name.replace(".", "__")].copy_(
                torch.tensor(values, dtype=torch.float64))
    params = dict(model.named_parameters())
    leaves = {n: learner.update_rule.rates[n.replace(".", "__")] for n in params}

    def rate(name, k):  # the test's own table, read through the leaf for its gradient
        assert leaves[name][k].item() == rates[name][k]
        return leaves[name][k]

    expected_loss = torch.stack([hand_query_losses(params, task, 2, rate, list(params))[-1]
                                 for task in tasks_of(b)]).mean()
    wrt = [*params.values(), *leaves.values()]
    loss, _ = learner.meta_loss(b)
    torch.testing.assert_close(loss, expected_loss, rtol=1e-12, atol=0)
    assert_all_close(meta_gradient(loss, wrt), meta_gradient(expected_loss, wrt))


def test_per_step_rates_start_at_the_inner_lr_and_reuse_the_last_rate_past_it():
    learner = MAML(network(), inner_lr=0.3, inner_steps=2, per_step_lrs=True, loss="mse")
    assert set(learner.update_rule.rates) == {n.replace(".", "__") for n in LINEAR + NORM}
    assert all(r.shape == (2,) and torch.all(r == 0.3)
               for r in learner.update_rule.rates.values())
    assert learner.update_rule.rate("0.bias", 5) is not None
    with torch.no_grad():
        learner.update_rule.rates["0__bias"].copy_(torch.tensor([0.1, 0.7], dtype=torch.float64))
    assert learner.update_rule.rate("0.bias", 5).item() == 0.7
    assert learner.update_rule.rate("0.bias", torch.tensor(9)).item() == 0.7


def _set_step_pairs(learner: MAML) -> dict[int, dict[str, torch.Tensor]]:
    """Give step 1 and 2 pairs of their own; returns every step's pair as the test sees it."""
    model = learner.model
    own = {"1.weight": model[1].weight, "1.bias": model[1].bias}
    values = {1: (torch.tensor([1.5, 0.4, 0.8, -1.2]), torch.tensor([-0.3, 0.5, 0.0, 0.2])),
              2: (torch.tensor([0.9, -0.6, 1.7, 0.5]), torch.tensor([0.4, 0.1, -0.5, -0.2]))}
    with torch.no_grad():
        for k, (weight, bias) in values.items():
            learner.step_norms["1__weight"][k - 1].copy_(weight)
            learner.step_norms["1__bias"][k - 1].copy_(bias)
    pairs = {0: own}
    for k in values:
        pairs[k] = {"1.weight": learner.step_norms["1__weight"][k - 1],
                    "1.bias": learner.step_norms["1__bias"][k - 1]}
    return pairs


def test_per_step_batch_norm_uses_step_k_pair_in_step_k():
    b = batch(3)
    learner = MAML(network(3), inner_lr=0.2, inner_steps=3, per_step_bn=True, loss="mse")
    learner.double()
    assert learner.adapt_names == LINEAR  # the pairs do not adapt
    assert learner.step_norms["1__weight"].shape == (2, 4)
    pairs = _set_step_pairs(learner)
    params = dict(learner.model.named_parameters())
    wrt = [*params.values(), *learner.step_norms.values()]
    expected_loss = torch.stack([
        hand_query_losses(params, task, 3, lambda n, k: 0.2, LINEAR, pair=pairs.__getitem__)[-1]
        for task in tasks_of(b)]).mean()
    loss, _ = learner.meta_loss(b)
    torch.testing.assert_close(loss, expected_loss, rtol=1e-12, atol=0)
    assert_all_close(meta_gradient(loss, wrt), meta_gradient(expected_loss, wrt))
    step0_throughout = torch.stack([
        hand_query_losses(params, task, 3, lambda n, k: 0.2, LINEAR)[-1]
        for task in tasks_of(b)]).mean()
    assert not torch.allclose(loss, step0_throughout)


def test_per_step_batch_norm_at_meta_test_reuses_the_last_pair_past_the_last_step():
    b = batch(4)
    learner = MAML(network(4), inner_lr=0.2, inner_steps=3, eval_inner_steps=4,
                   per_step_bn=True, loss="mse").double()
    pairs = _set_step_pairs(learner)
    params = {n: p.detach().requires_grad_(True) for n, p in learner.model.named_parameters()}
    sx, sy, qx, qy = tasks_of(b)[0]
    predictor = learner.adapt(sx, sy)
    hand = hand_query_losses(params, (sx, sy, qx, qy), 4, lambda n, k: 0.2, LINEAR,
                             pair=lambda k: {n: p.detach() for n, p in pairs[min(k, 2)].items()})
    torch.testing.assert_close(mse(predictor(qx), qy), hand[-1].detach(), rtol=1e-10, atol=0)


@pytest.mark.parametrize("strategy, checkpoint_steps", [("loop", False), ("vmap", False),
                                                        ("loop", True)])
def test_every_option_together_equals_the_hand_loop(strategy, checkpoint_steps):
    """MSL weights (0.2, 0.2, 0.6) at i = 4 of E = 10, per-step rates, per-step pairs: the
    query after step k uses pair k, as does step k's support pass."""
    b = batch(5)
    learner = MAML(network(5), inner_lr=0.25, inner_steps=3, per_step_bn=True,
                   per_step_lrs=True, multi_step_loss=True, msl_anneal_steps=10, loss="mse",
                   strategy=strategy, checkpoint_steps=checkpoint_steps).double()
    learner.set_training_progress(4, 100)
    pairs = _set_step_pairs(learner)
    with torch.no_grad():
        for i, rates in enumerate(learner.update_rule.rates.values()):
            rates.copy_(torch.tensor([0.1, 0.2, 0.3]) + 0.05 * i)
    params = dict(learner.model.named_parameters())
    leaves = {n: learner.update_rule.rates[n.replace(".", "__")] for n in LINEAR}
    per_task = [hand_query_losses(params, task, 3, lambda n, k: leaves[n][k], LINEAR,
                                  pair=pairs.__getitem__) for task in tasks_of(b)]
    expected_loss = torch.stack([0.2 * l1 + 0.2 * l2 + 0.6 * l3 for l1, l2, l3 in per_task]
                                ).mean()
    wrt = [*params.values(), *leaves.values(), *learner.step_norms.values()]
    loss, _ = learner.meta_loss(b)
    torch.testing.assert_close(loss, expected_loss, rtol=1e-12, atol=0)
    assert_all_close(meta_gradient(loss, wrt), meta_gradient(expected_loss, wrt))


@pytest.mark.parametrize("iteration, second_order", [(0, False), (4, False), (5, True),
                                                     (40, True)])
def test_first_order_annealing_switches_at_first_order_until(iteration, second_order):
    b = batch(6)
    model = network(6)
    learner = MAML(model, inner_lr=0.3, inner_steps=2, first_order_until=5, loss="mse")
    learner.set_training_progress(iteration, 100)
    params = dict(model.named_parameters())
    expected_loss = torch.stack([
        hand_query_losses(params, task, 2, lambda n, k: 0.3, list(params),
                          second_order=second_order)[-1] for task in tasks_of(b)]).mean()
    other_loss = torch.stack([
        hand_query_losses(params, task, 2, lambda n, k: 0.3, list(params),
                          second_order=not second_order)[-1] for task in tasks_of(b)]).mean()
    loss, _ = learner.meta_loss(b)
    grads = meta_gradient(loss, list(params.values()))
    assert_all_close(grads, meta_gradient(expected_loss, list(params.values())))
    other = meta_gradient(other_loss, list(params.values()))
    assert not all(torch.allclose(g, o) for g, o in zip(grads, other, strict=True))


# -- bad input ---------------------------------------------------------------------------------
def test_options_that_cannot_apply_fail_when_built():
    with pytest.raises(ValueError, match="per_step_bn=True needs TaskBatchNorm layers"):
        MAML(MLP(1, (8,), 1), per_step_bn=True, loss="mse")
    with pytest.raises(ValueError, match="give either per_step_lrs or update_rule"):
        from metalab.functional import SGD
        MAML(network(), per_step_lrs=True, update_rule=SGD(0.1))
    with pytest.raises(ValueError, match="need inner_steps >= 1"):
        MAML(network(), inner_steps=0, per_step_lrs=True)
    with pytest.raises(ValueError, match="Meta-SGD learns its own rates"):
        MetaSGD(network(), per_step_lrs=True)
    with pytest.raises(ValueError, match="msl_anneal_steps must be"):
        MAML(network(), multi_step_loss=True, msl_anneal_steps=0)


# -- outer learning-rate schedules ----------------------------------------------------------
def test_cosine_schedule_by_hand():
    """lr 0.1 -> 0.01 over T = 4: 0.01 + 0.09 (1 + cos(pi t / 4)) / 2."""
    config = TrainConfig(steps=4, meta_batch=1, lr=0.1, lr_schedule="cosine", lr_final=0.01)
    expected = [0.1, 0.01 + 0.09 * (1 + math.sqrt(0.5)) / 2, 0.055,
                0.01 + 0.09 * (1 - math.sqrt(0.5)) / 2]
    assert [scheduled_lr(config, t) for t in range(4)] == pytest.approx(expected, rel=1e-12)
    assert expected[1] == pytest.approx(0.08681980515)


def test_step_schedule_by_hand():
    config = TrainConfig(steps=10, meta_batch=1, lr=0.1, lr_schedule="step", lr_step_every=3,
                         lr_gamma=0.5)
    assert [scheduled_lr(config, t) for t in range(8)] == pytest.approx(
        [0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.025, 0.025], rel=1e-12)


def test_step_schedule_without_a_period_is_a_config_error(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(TINY))
    with pytest.raises(ConfigError, match="lr_schedule: step needs train.lr_step_every"):
        load_config(path, ["train.lr_schedule=step"])
    load_config(path, ["train.lr_schedule=step", "train.lr_step_every=2"])


# -- through the trainer -------------------------------------------------------------------
TINY = {
    "algorithm": {"name": "maml", "inner_lr": 0.01, "inner_steps": 2, "strategy": "loop",
                  "multi_step_loss": True, "msl_anneal_steps": 6, "per_step_lrs": True,
                  "first_order_until": 4},
    "model": {"name": "mlp", "hidden": [8]},
    "data": {"name": "sinusoid", "shots": 5, "queries": 5},
    "train": {"steps": 10, "meta_batch": 2, "val_every": 0, "checkpoint_every": 4,
              "log_every": 5, "progress": False, "dtype": "float64", "lr": 0.01,
              "lr_schedule": "cosine", "lr_final": 0.001},
    "eval": {"episodes": 4, "batch_size": 2},
}


def test_the_trainer_tells_the_learner_each_step_and_the_total(tmp_path):
    from metalab.tasks import Sinusoid

    learner = MAML(MLP(1, (4,), 1), inner_lr=0.01, loss="mse")
    seen = []
    learner.set_training_progress = lambda step, total: seen.append((step, total))
    Trainer(learner, Sinusoid(5, 5, tasks_per_batch=2, seed=0), tmp_path, steps=3,
            val_every=0, progress=False, lr_schedule="cosine").fit()
    assert seen == [(0, 3), (1, 3), (2, 3)]


def test_resume_in_the_middle_of_the_annealing_is_exact(tmp_path):
    """Interrupted at step 7 (after the first-order phase, inside the MSL annealing, with a
    cosine outer rate) and resumed from the checkpoint at step 4: the same parameters."""
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    straight, resumed = interrupted_then_resumed(load_config(path), tmp_path, interrupt_at=7)
    for name, value in straight.learner.state_dict().items():
        assert torch.equal(resumed.learner.state_dict()[name], value), name
    assert resumed.learner.meta_iteration == 9
    assert resumed.optimizer.param_groups[0]["lr"] == pytest.approx(
        0.001 + 0.009 * (1 + math.cos(math.pi * 9 / 10)) / 2)


# -- the shipped configs -------------------------------------------------------------------
TINY_IMAGE_RUN = ["train.steps=3", "train.meta_batch=2", "model.hidden=8", "data.queries=2",
                  "train.val_every=2", "train.val_episodes=4", "train.progress=false",
                  "algorithm.inner_steps=2", "algorithm.eval_inner_steps=3",
                  "algorithm.msl_anneal_steps=2"]
SHARED_OMNIGLOT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "omniglot"


@pytest.mark.slow
def test_the_glyph_config_trains_and_evaluates_from_the_cli(tmp_path):
    from metalab.cli.main import main
    from metalab.datasets import Glyphs
    from metalab.tasks import EpisodeSampler
    from metalab.train.run import load_run

    run = tmp_path / "mamlpp"
    assert main(["train", "mamlpp-glyphs-5w1s", *TINY_IMAGE_RUN, "--out", str(run)]) == 0
    assert main(["eval", str(run), "--episodes", "4"]) == 0
    learner = load_run(run)
    assert learner.per_step_bn and learner.per_step_lrs and learner.multi_step_loss
    assert learner.step_norms["body__0__1__weight"].shape == (1, 8)
    task = EpisodeSampler(Glyphs("test"), 5, 1, 2, seed=0).sample()[0]
    assert learner.adapt(task.support_x, task.support_y)(task.query_x).shape == (10, 5)


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_OMNIGLOT.is_dir(),
                    reason=f"real Omniglot subsets not found at {SHARED_OMNIGLOT}")
def test_the_20_way_subset_config_on_the_real_subsets(tmp_path):
    from metalab.cli.main import main

    run = tmp_path / "omniglot"
    overrides = [f"data.root={SHARED_OMNIGLOT}", *TINY_IMAGE_RUN]
    assert main(["train", "mamlpp-omniglot-small-20w1s", *overrides, "--out", str(run)]) == 0
    assert main(["eval", str(run), "--episodes", "2"]) == 0
