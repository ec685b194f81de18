"""The learned value-function baseline (`ValueFunctionBaseline`, ``algorithm.baseline: mlp``):
the fit recovers returns that are an exact (linear) function of the garage features, on the
valid steps only (masked steps are left out of the fit and get value zero), it warm-starts
(two fits of k Adam steps are one fit of 2k), no gradient flows through its values, the
option is validated, and MAML-RL and RL² runs with it train and resume bit-identically
(its weights and Adam state are checkpointed), meta-test leaving it unchanged."""

import pytest
import torch

from helpers import interrupted_then_resumed, logged_records
from metalab.algorithms.maml_rl import MAMLRL
from metalab.algorithms.rl2 import RL2
from metalab.cli.main import resolve_config_path
from metalab.rl import (
    EnvironmentTaskSource,
    GaussianMLPPolicy,
    GRUGaussianPolicy,
    Navigation2D,
    ValueFunctionBaseline,
    linear_features,
)
from metalab.train import load_config


def baseline(steps=1500, hidden=(16,), lr=1e-2):
    torch.manual_seed(0)
    return ValueFunctionBaseline(2, hidden, steps, lr).double()


def episodes():
    """Observations ``[2, 3, 5, 2]`` whose episode 2 repeats episode 0, its last three
    steps masked; returns an exact linear function of the features on the valid steps and
    ``garbage`` on the masked ones (the same features as valid steps of episode 0)."""
    generator = torch.Generator().manual_seed(1)
    observations = torch.rand(2, 3, 5, 2, generator=generator, dtype=torch.float64) * 2 - 1
    observations[:, 2] = observations[:, 0]
    masks = torch.ones(2, 3, 5, dtype=torch.float64)
    masks[:, 2, 2:] = 0.0
    weights = torch.tensor([1.0, -2.0, 0.5, 1.5, -3.0, 2.0, 1.0, 0.5], dtype=torch.float64)
    returns = linear_features(observations) @ weights
    return observations, returns, masks


def with_garbage(returns, masks, value):
    return torch.where(masks > 0, returns, torch.full_like(returns, value))


def test_the_fit_recovers_returns_linear_in_the_features_on_the_valid_steps():
    observations, returns, masks = episodes()
    values = baseline()(observations, with_garbage(returns, masks, 50.0), masks)
    valid = masks > 0
    error = (values - returns)[valid].abs().max()
    assert error < 0.02 * returns[valid].std(), error
    assert torch.equal(values[~valid], torch.zeros_like(values[~valid]))


def test_masked_steps_are_left_out_of_the_fit():
    """Fitting the masked steps would pull the values of episode 0 (the same features)
    towards the garbage: the fit must not depend on it at all."""
    observations, returns, masks = episodes()
    first = baseline(steps=50)(observations, with_garbage(returns, masks, 50.0), masks)
    second = baseline(steps=50)(observations, with_garbage(returns, masks, -7.0), masks)
    assert torch.equal(first, second)


def test_the_fit_is_warm_started_with_adam_s_state():
    observations, returns, masks = episodes()
    twice = baseline(steps=20)
    twice(observations, returns, masks)
    values_twice = twice(observations, returns, masks)
    once = baseline(steps=40)(observations, returns, masks)
    torch.testing.assert_close(values_twice, once, rtol=1e-12, atol=1e-12)
    fresh_optimizer = baseline(steps=20)
    fresh_optimizer(observations, returns, masks)
    fresh_optimizer.optimizer = torch.optim.Adam(fresh_optimizer.network.parameters(), lr=1e-2)
    assert not torch.allclose(fresh_optimizer(observations, returns, masks), once)


def test_values_carry_no_gradient_and_leave_no_grad_on_the_network():
    observations, returns, masks = episodes()
    scale = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
    fitted = baseline(steps=3)
    values = fitted(observations * scale, returns * scale, masks)
    assert not values.requires_grad and values.grad_fn is None
    assert all(p.grad is None for p in fitted.parameters())


def test_the_option_is_validated():
    policy = GaussianMLPPolicy(2, 2, hidden=(3,))
    with pytest.raises(ValueError, match=r"baseline must be one of \['linear', 'mlp'\], "
                                         r"got 'quadratic'"):
        MAMLRL(policy, baseline="quadratic")
    with pytest.raises(ValueError, match=r"baseline must be one of"):
        RL2(GRUGaussianPolicy(2, 2, hidden=3), baseline="value")
    with pytest.raises(ValueError, match="baseline_steps must be an integer >= 1"):
        MAMLRL(policy, baseline="mlp", baseline_steps=0)
    with pytest.raises(ValueError, match="baseline_lr must be a finite number > 0"):
        MAMLRL(policy, baseline="mlp", baseline_lr=0.0)
    with pytest.raises(ValueError, match="baseline_hidden must be a list"):
        MAMLRL(policy, baseline="mlp", baseline_hidden=8)
    assert MAMLRL(policy).value_baseline is None  # the default stays the linear baseline
    assert not any("value_baseline" in key for key in MAMLRL(policy).state_dict())


def test_maml_rl_uses_one_fit_per_batch_and_meta_test_leaves_the_baseline_unchanged():
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(2, 2, hidden=(3,), init_log_std=-1.0).double()
    learner = MAMLRL(policy, inner_lr=0.3, baseline="mlp", baseline_hidden=(4,),
                     baseline_steps=3).double()
    source = EnvironmentTaskSource(Navigation2D(horizon=4, dtype="float64"), 2, 2, seed=0)
    batch = source.sample()
    rollouts = learner.collect_rollouts(batch)
    params = dict(learner.policy.named_parameters())
    first = learner.surrogate_and_kl(params, rollouts)[0]
    before = {k: v.clone() for k, v in learner.value_baseline.state_dict().items()
              if isinstance(v, torch.Tensor)}
    assert first == learner.surrogate_and_kl(params, rollouts)[0]  # no refit in between
    learner.task_losses(batch, training=False)
    for name, value in learner.value_baseline.state_dict().items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, before[name]), name
    first.backward()
    assert all(p.grad is None for p in learner.value_baseline.parameters())


def assert_same_learner_state(a, b):
    state_a, state_b = a.learner.state_dict(), b.learner.state_dict()
    assert state_a.keys() == state_b.keys()
    for name, value in state_a.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, state_b[name]), name
    adam_a = state_a["value_baseline._extra_state"]["optimizer"]["state"]
    adam_b = state_b["value_baseline._extra_state"]["optimizer"]["state"]
    assert adam_a.keys() == adam_b.keys() and adam_a
    for index, moments in adam_a.items():
        for key, value in moments.items():
            assert torch.equal(value, adam_b[index][key]), (index, key)


MLP = ["algorithm.baseline=mlp", "algorithm.baseline_hidden=[8]", "algorithm.baseline_steps=5",
       "algorithm.baseline_lr=0.01"]


@pytest.mark.slow  # two short runs each
@pytest.mark.parametrize(("config", "overrides"), [
    ("maml-rl-nav2d", ["algorithm.inner_lr=0.05", "model.hidden=[8]", "data.episodes=2",
                       "train.meta_batch=3", "algorithm.fisher_tasks=2"]),
    ("rl2-nav2d", ["model.hidden=4", "data.episodes=2", "train.meta_batch=2"]),
])
def test_runs_with_the_mlp_baseline_resume_bit_identically(tmp_path, config, overrides):
    config = load_config(resolve_config_path(config), [
        *overrides, *MLP, "data.horizon=6", "train.steps=4", "train.checkpoint_every=2",
        "train.progress=false"])
    straight, resumed = interrupted_then_resumed(config, tmp_path, interrupt_at=4)
    assert_same_learner_state(straight, resumed)
    records = logged_records(tmp_path / "straight")
    assert len(records) == 4 and records == logged_records(tmp_path / "broken")
    assert straight.learner.value_baseline is not None
