"""RL²: the trial's inputs by hand, the hidden state kept across the episodes of a trial and
reset between trials, the collected log-probabilities equal to the recomputed ones, and one
trainer step through the CLI with the per-episode returns reported."""

import dataclasses
import json

import pytest
import torch

from helpers import interrupted_then_resumed, logged_records
from metalab.algorithms.rl2 import RL2
from metalab.cli.main import main, resolve_config_path
from metalab.rl import (
    EnvironmentTaskSource,
    GRUGaussianPolicy,
    Navigation2D,
    PointNavigation,
    collect_trials,
    discounted_returns,
    trial_inputs,
    trial_log_probs,
)
from metalab.rl.ppo import clipped_surrogate, minibatch_rows
from metalab.rl.recurrent import trial_returns_and_advantages
from metalab.train import load_config


def tiny_policy():
    torch.manual_seed(0)
    return GRUGaussianPolicy(2, 2, hidden=5).double()


def test_trial_inputs_by_hand():
    observations = torch.arange(8, dtype=torch.float64).reshape(1, 4, 2)
    actions = -torch.arange(8, dtype=torch.float64).reshape(1, 4, 2)
    rewards = torch.tensor([[0.5, 0.6, 0.7, 0.8]], dtype=torch.float64)
    inputs = trial_inputs(observations, actions, rewards, horizon=2)
    expected = torch.tensor([[[0, 1, 0, 0, 0.0, 1], [2, 3, 0, -1, 0.5, 0],
                              [4, 5, -2, -3, 0.6, 1], [6, 7, -4, -5, 0.7, 0]]],
                            dtype=torch.float64)
    torch.testing.assert_close(inputs, expected)


def test_hidden_state_is_kept_across_episodes_of_a_trial_and_reset_between_trials():
    policy = tiny_policy()
    env = PointNavigation(horizon=3, goal_tolerance=None)
    goals = torch.tensor([[0.3, -0.2]], dtype=torch.float64)
    params = dict(policy.named_parameters())
    batch = collect_trials(env, policy, params, goals, trials_per_task=2, episodes_per_trial=2,
                           generator=torch.Generator().manual_seed(0))
    assert batch.rewards.shape == (1, 2, 6)
    log_probs, mean, log_std = trial_log_probs(policy, params, batch, horizon=3)
    torch.testing.assert_close(batch.log_probs, log_probs)
    # the actions were sampled from the recomputed (carried-state) policy: redraw the noise
    generator = torch.Generator().manual_seed(0)
    noise = torch.stack([torch.randn(1, 2, 2, generator=generator, dtype=torch.float64)
                         for _ in range(6)], dim=2)
    torch.testing.assert_close(batch.actions, mean + log_std.exp() * noise)
    # the second episode's actions depend on the first episode (carried hidden state) ...
    changed = batch.actions.clone()
    changed[0, 0, 0] += 0.5
    perturbed = type(batch)(batch.observations, changed, batch.rewards, batch.log_probs,
                            batch.masks, batch.task_ids)
    _, mean_changed, _ = trial_log_probs(policy, params, perturbed, horizon=3)
    assert not torch.allclose(mean_changed[0, 0, 3:], mean[0, 0, 3:])
    # ... but not the other trial's (each trial starts from the zero state)
    torch.testing.assert_close(mean_changed[0, 1], mean[0, 1])
    # the first step of each trial is the policy at the zero state on its first input
    inputs = trial_inputs(batch.observations, batch.actions, batch.rewards, 3)
    zero = torch.zeros(5, dtype=torch.float64)
    first, _, _ = policy.step(inputs[0, 1, 0], zero)
    torch.testing.assert_close(mean[0, 1, 0], first)
    # a step of episode 2 is NOT the policy restarted at the episode's start
    restarted, _, _ = policy(inputs[0, 0, 3:], batch.masks[0, 0, 3:])
    assert not torch.allclose(restarted, mean[0, 0, 3:])


def test_masked_steps_keep_the_hidden_state():
    policy = tiny_policy()
    inputs = torch.randn(4, policy.input_dim, dtype=torch.float64)
    masks = torch.tensor([1.0, 0.0, 0.0, 1.0], dtype=torch.float64)
    mean, _, state = policy(inputs, masks)
    skipped, _, skipped_state = policy(inputs[[0, 3]], torch.ones(2, dtype=torch.float64))
    torch.testing.assert_close(mean[3], skipped[1])
    torch.testing.assert_close(state, skipped_state)


def test_rl2_trains_a_step_and_evaluates_per_episode_returns(tmp_path):
    out = tmp_path / "rl2"
    assert main(["train", "rl2-nav2d", "--out", str(out), "model.hidden=4", "data.horizon=5",
                 "data.episodes=2", "train.meta_batch=2", "train.steps=1",
                 "train.progress=false", "eval.episodes=2", "eval.batch_size=2"]) == 0
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert {"return_episode1", "return_episode2", "kl"} <= set(record)
    assert record["kl"] <= 0.01
    assert main(["eval", str(out)]) == 0
    result = json.loads((out / "eval.json").read_text())
    assert result["metric"] == "return"
    assert result["mean"] == result["return_episode2"]


def test_rl2_names_a_family_without_trials():
    source = EnvironmentTaskSource(Navigation2D(horizon=3), 1, 1, seed=0)
    batch = source.sample()

    class Feedforward:  # a family with no recurrent collector
        observation_dim, action_dim, horizon = 2, 2, 3

        def sample_tasks(self, n, generator=None):
            return torch.zeros(n, 2)

        def collect(self, *args, **kwargs):
            raise AssertionError

    learner = RL2(GRUGaussianPolicy(2, 2, hidden=3))
    with pytest.raises(TypeError, match="collect_trials"):
        learner.meta_backward(dataclasses.replace(batch, family=Feedforward()))


def test_trial_credit_runs_on_across_an_episode_that_ended_early():
    # one trial of two 2-step episodes; episode 1 ended after its first step (step 1 masked)
    rewards = torch.tensor([[[1.0, 0.0, 2.0, 3.0]]], dtype=torch.float64)
    masks = torch.tensor([[[1.0, 0.0, 1.0, 1.0]]], dtype=torch.float64)
    values = torch.tensor([[[0.5, 0.0, 0.25, -1.0]]], dtype=torch.float64)
    gamma, lam = 0.5, 0.8
    seen = []

    def values_of(returns):
        seen.append(returns)
        return values

    returns, fitted, advantages = trial_returns_and_advantages(rewards, values_of, masks,
                                                               gamma, lam)
    # by hand over the valid steps 0, 2, 3: G_3 = 3, G_2 = 2 + 0.5 * 3, G_0 = 1 + 0.5 * G_2
    g3, g2 = 3.0, 2.0 + 0.5 * 3.0
    g0 = 1.0 + 0.5 * g2
    torch.testing.assert_close(returns, torch.tensor([[[g0, 0.0, g2, g3]]], dtype=torch.float64))
    torch.testing.assert_close(seen[0], returns)
    torch.testing.assert_close(fitted, values)
    d3 = 3.0 - (-1.0)
    d2 = 2.0 + gamma * -1.0 - 0.25
    d0 = 1.0 + gamma * 0.25 - 0.5
    a3 = d3
    a2 = d2 + gamma * lam * a3
    a0 = d0 + gamma * lam * a2
    torch.testing.assert_close(advantages,
                               torch.tensor([[[a0, 0.0, a2, a3]]], dtype=torch.float64))
    # the per-episode functions alone cut the credit at the masked step
    assert discounted_returns(rewards, masks, gamma)[0, 0, 0] == 1.0


def test_clipped_surrogate_by_hand():
    ratios = torch.tensor([1.5, 0.5, 1.3, 0.7], dtype=torch.float64)
    old = torch.tensor([-1.0, 0.3, 2.0, -0.4], dtype=torch.float64)
    log_probs = (old + ratios.log()).requires_grad_(True)
    advantages = torch.tensor([2.0, 2.0, -1.0, -1.0], dtype=torch.float64)
    masks = torch.tensor([1.0, 1.0, 1.0, 0.0], dtype=torch.float64)
    value = clipped_surrogate(log_probs, old, advantages, masks, clip=0.2)
    # min(r A, clip(r) A): 1.5*2 -> 1.2*2 = 2.4 (clipped); 0.5*2 = 1.0 (< 0.8*2); 1.3*-1 =
    # -1.3 (< 1.2*-1, the pessimistic unclipped term); the masked step is left out
    torch.testing.assert_close(value, torch.tensor((2.4 + 1.0 - 1.3) / 3, dtype=torch.float64))
    (grad,) = torch.autograd.grad(value, log_probs)
    # d(r A)/d log pi = r A where the unclipped term is the minimum, 0 where clipped
    torch.testing.assert_close(grad, torch.tensor([0.0, 1.0 / 3, -1.3 / 3, 0.0],
                                                  dtype=torch.float64))


def test_minibatches_partition_the_trials():
    parts = minibatch_rows(10, 4, torch.Generator().manual_seed(0))
    assert len(parts) == 4
    assert sorted(torch.cat(parts).tolist()) == list(range(10))


def test_ppo_outer_step_improves_its_surrogate_within_the_clip(tmp_path):
    out = tmp_path / "rl2-ppo"
    assert main(["train", "rl2-nav2d", "--out", str(out), "model.hidden=4", "data.horizon=5",
                 "data.episodes=4", "train.meta_batch=2", "train.steps=2",
                 "algorithm.outer_step=ppo", "train.progress=false"]) == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(r["improvement"] > 0 for r in records)
    assert all(0 < r["kl"] < 0.5 for r in records)


def test_action_scale_scales_the_mean_and_the_noise():
    torch.manual_seed(0)
    unit = GRUGaussianPolicy(2, 2, hidden=5).double()
    scaled = GRUGaussianPolicy(2, 2, hidden=5, action_scale=0.1).double()
    scaled.load_state_dict(unit.state_dict())
    inputs = torch.randn(3, 4, unit.input_dim, dtype=torch.float64)
    masks = torch.ones(3, 4, dtype=torch.float64)
    mean, log_std, _ = unit(inputs, masks)
    mean_scaled, log_std_scaled, _ = scaled(inputs, masks)
    torch.testing.assert_close(mean_scaled, 0.1 * mean)
    torch.testing.assert_close(log_std_scaled, log_std + torch.tensor(0.1).log().double())
    with pytest.raises(ValueError, match="action_scale"):
        GRUGaussianPolicy(2, 2, action_scale=0.0)


@pytest.mark.slow  # 6-9 s at load 6: a run straight through, an interrupted and resumed one
def test_ppo_run_resumed_from_a_checkpoint_is_bit_identical(tmp_path):
    """The half-cheetah curve is extended by resuming runs from their checkpoints
    (benchmarks/maml_rl_cheetah_curve.sh): an interrupted PPO run of RL² must end where one
    straight through does (weights, logged returns, KL), from a process with other RNG state."""
    config = load_config(resolve_config_path("rl2-ppo-nav2d"), [
        "model.hidden=4", "data.horizon=5", "data.episodes=2", "train.meta_batch=2",
        "train.steps=4", "train.checkpoint_every=2", "train.progress=false"])
    straight, resumed = interrupted_then_resumed(config, tmp_path, interrupt_at=4)
    for (name, value), other in zip(straight.learner.state_dict().items(),
                                    resumed.learner.state_dict().values(), strict=True):
        assert torch.equal(value, other), name
    assert len(logged_records(tmp_path / "straight")) == 4
    assert logged_records(tmp_path / "straight") == logged_records(tmp_path / "broken")
