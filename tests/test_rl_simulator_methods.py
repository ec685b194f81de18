"""PEARL's and RL²'s collectors on simulator families (`collect_gym_latent_episodes`,
`collect_gym_trials`, reached through `SimulatorFamily.collect_latent` / `collect_trials`).

The first part runs everywhere, on a tiny pure-Python environment with gymnasium's API whose
steps are replayed by hand: the tanh action mapped onto the action range, the terminal flag
(a termination, not the horizon's truncation), the hidden state carried across the episodes
of a trial. The last part needs the `mujoco` extra: the `pearl-cheetah-vel`, `rl2-cheetah-vel`,
`maml-rl-cheetah-vel` and `maml-rl-cheetah-dir` configs build, train one tiny step and
evaluate through the CLI.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from metalab.cli.main import main
from metalab.rl import GRUGaussianPolicy, trial_inputs, trial_log_probs
from metalab.rl.gym_collector import SEED_BOUND, EnvPool
from metalab.rl.latent_rollout import collect_gym_latent_episodes
from metalab.rl.recurrent import collect_gym_trials
from metalab.rl.sac import TanhGaussianPolicy
from metalab.rl.simulator_family import SimulatorFamily

MUJOCO_SKIP = 'needs the mujoco extra: pip install -e ".[mujoco]"'
D = torch.float64


class Box:
    def __init__(self, low, high):
        self.low, self.high = np.array([low]), np.array([high])


class SlideEnv:
    """1-D: x0 ~ U[0, 1) from the reset seed; x' = x + a with a in [0, 1]; reward x' - goal;
    terminates when x' > 2, truncated after ``limit`` steps (gymnasium's TimeLimit)."""

    action_space = Box(0.0, 1.0)

    def __init__(self, limit):
        self.goal, self.x, self.t, self.limit = None, None, 0, limit

    def reset(self, *, seed=None):
        self.x, self.t = np.random.default_rng(seed).uniform(), 0
        return np.array([self.x]), {}

    def step(self, action):
        assert 0.0 <= action[0] <= 1.0, "the collector must keep the action in the space"
        self.x, self.t = self.x + action[0], self.t + 1
        return np.array([self.x]), self.x - self.goal, self.x > 2.0, self.t >= self.limit, {}

    def close(self):
        pass


class SlideTasks:
    observation_dim = action_dim = 1

    def __init__(self, horizon=6, limit=6):
        self.horizon, self.limit = horizon, limit

    def make_env(self, task):
        return SlideEnv(self.limit)

    def env_key(self, task):
        return "slide"

    def set_task(self, env, task):
        env.goal = float(task)


def generator(seed):
    return torch.Generator().manual_seed(seed)


# -- PEARL's latent collector ------------------------------------------------------------------
def test_latent_collector_maps_tanh_onto_the_action_range_and_flags_only_terminations():
    torch.manual_seed(0)
    family = SlideTasks(horizon=6, limit=4)  # truncated after 4 steps: masked, not done
    policy = TanhGaussianPolicy(1, 1, z_dim=2, hidden=[4]).double()
    tasks = [0.5, 1.5]
    z = torch.randn(2, 3, 2, dtype=D)
    steps = collect_gym_latent_episodes(family, policy, z, tasks, generator=generator(0))
    assert set(steps) == {"observations", "actions", "rewards", "next_observations", "dones",
                          "masks"}
    assert steps["observations"].shape == steps["next_observations"].shape == (2, 3, 6, 1)
    terminated = truncated = 0
    for t_ in range(2):
        for e in range(3):  # replay each episode by hand
            x, alive = steps["observations"][t_, e, 0, 0].item(), True
            for t in range(6):
                assert steps["masks"][t_, e, t].item() == float(alive)
                if not alive:
                    assert steps["rewards"][t_, e, t].item() == 0.0
                    continue
                a = steps["actions"][t_, e, t, 0].item()
                assert -1 < a < 1
                assert steps["observations"][t_, e, t, 0].item() == pytest.approx(x, abs=0)
                x = x + (a + 1) / 2  # [-1, 1] onto the action space [0, 1]
                assert steps["next_observations"][t_, e, t, 0].item() == pytest.approx(x)
                assert steps["rewards"][t_, e, t].item() == pytest.approx(x - tasks[t_])
                done = x > 2.0
                assert steps["dones"][t_, e, t].item() == float(done)
                terminated += done
                truncated += (not done) and t == 3
                alive = not done and t < 3
    assert terminated and truncated, "the test needs both ends of an episode"
    # deterministic: tanh of the mean, no noise drawn
    mode = collect_gym_latent_episodes(family, policy, z, tasks, generator=generator(0),
                                       deterministic=True)
    expected = policy.mode(mode["observations"], z.unsqueeze(2).expand(-1, -1, 6, -1))
    live = mode["masks"].bool()
    torch.testing.assert_close(mode["actions"][live], expected[live])
    # seeded
    again = collect_gym_latent_episodes(family, policy, z, tasks, generator=generator(0))
    assert all(torch.equal(steps[k], again[k]) for k in steps)


def test_latent_collector_refuses_a_latent_of_the_wrong_shape():
    policy = TanhGaussianPolicy(1, 1, z_dim=2, hidden=[4])
    with pytest.raises(ValueError, match=r"z must have shape \[tasks \(2\), episodes, z_dim\]"):
        collect_gym_latent_episodes(SlideTasks(), policy, torch.zeros(3, 1, 2), [0.5, 1.5])


# -- RL²'s trials ------------------------------------------------------------------------------
def test_gym_trials_carry_the_hidden_state_across_episodes_and_reset_between_trials():
    torch.manual_seed(0)
    family = SlideTasks(horizon=3, limit=3)
    policy = GRUGaussianPolicy(1, 1, hidden=5).double()
    params = dict(policy.named_parameters())
    batch = collect_gym_trials(family, policy, params, [0.5, 1.5], trials_per_task=2,
                               episodes_per_trial=2, generator=generator(0))
    assert batch.observations.shape == (2, 2, 6, 1) and batch.rewards.shape == (2, 2, 6)
    log_probs, mean, log_std = trial_log_probs(policy, params, batch, horizon=3)
    torch.testing.assert_close(batch.log_probs, log_probs)
    # the actions were drawn from the recomputed policy, whose state runs over the whole
    # trial: redraw the generator (per episode: the reset seeds, then one noise per step)
    draw = generator(0)
    noise = []
    for _ in range(2):
        torch.randint(0, SEED_BOUND, (2, 2), generator=draw)
        noise += [torch.randn(2, 2, 1, generator=draw, dtype=D) for _ in range(3)]
    torch.testing.assert_close(batch.actions, mean + log_std.exp() * torch.stack(noise, 2))
    # episode 2 depends on episode 1 of its own trial only
    changed = batch.actions.clone()
    changed[0, 0, 0] += 0.5
    moved = type(batch)(batch.observations, changed, batch.rewards, batch.log_probs,
                        batch.masks, batch.task_ids)
    _, mean_moved, _ = trial_log_probs(policy, params, moved, horizon=3)
    assert not torch.allclose(mean_moved[0, 0, 3:], mean[0, 0, 3:])
    torch.testing.assert_close(mean_moved[0, 1], mean[0, 1])
    # the first step of episode 2 sees episode 1's last action and reward and the start flag
    inputs = trial_inputs(batch.observations, batch.actions, batch.rewards, 3)
    torch.testing.assert_close(inputs[..., 3, 1:], torch.cat([
        batch.actions[..., 2, :], batch.rewards[..., 2:3], torch.ones(2, 2, 1, dtype=D)], -1))


def test_gym_trials_replay_the_environment_and_refuse_a_mismatched_policy():
    torch.manual_seed(1)
    family = SlideTasks(horizon=4, limit=4)
    policy = GRUGaussianPolicy(1, 1, hidden=3).double()
    with torch.no_grad():
        policy.head.bias.fill_(0.8)  # large steps: some episodes terminate early
    params = dict(policy.named_parameters())
    batch = collect_gym_trials(family, policy, params, [1.0], trials_per_task=3,
                               episodes_per_trial=2, generator=generator(2))
    ended = 0
    for trial in range(3):
        for episode in range(2):
            span = slice(4 * episode, 4 * episode + 4)
            x, alive = batch.observations[0, trial, span][0, 0].item(), True
            for t in range(4):
                step = 4 * episode + t
                assert batch.masks[0, trial, step].item() == float(alive)
                if not alive:
                    continue
                x = x + min(max(batch.actions[0, trial, step, 0].item(), 0.0), 1.0)
                assert batch.rewards[0, trial, step].item() == pytest.approx(x - 1.0)
                alive = x <= 2.0
            ended += not alive
    assert ended, "the test needs an episode that terminated early"
    with pytest.raises(ValueError, match="observation_dim/action_dim"):
        collect_gym_trials(family, GRUGaussianPolicy(2, 1, hidden=3), params, [1.0], 1, 2)


def test_a_simulator_family_serves_both_collectors_on_its_pool():
    family = SimulatorFamily(SlideTasks())
    tasks = torch.tensor([0.5, 1.5], dtype=D)
    latent = family.collect_latent(TanhGaussianPolicy(1, 1, 2, [4]).double(),
                                   torch.zeros(2, 1, 2, dtype=D), tasks, generator=generator(0))
    assert latent["rewards"].shape == (2, 1, 6)
    policy = GRUGaussianPolicy(1, 1, hidden=3).double()
    trials = family.collect_trials(policy, dict(policy.named_parameters()), tasks, 1, 2,
                                   generator=generator(0))
    assert trials.rewards.shape == (2, 1, 12)
    assert isinstance(family.pool(), EnvPool) and len(family.pool().slots) == 2
    family.close()


# -- the configs on MuJoCo (the extra) ---------------------------------------------------------
def mujoco():
    pytest.importorskip("gymnasium", reason=MUJOCO_SKIP)
    pytest.importorskip("mujoco", reason=MUJOCO_SKIP)


@pytest.mark.parametrize(("config", "overrides"), [
    ("pearl-cheetah-vel", ["model.hidden=[8]", "model.encoder_hidden=[8]",
                           "algorithm.train_tasks=2", "algorithm.batch_size=8",
                           "algorithm.context_size=4", "algorithm.collect_tasks=1",
                           "algorithm.initial_episodes=1", "algorithm.eval_episodes=2"]),
    ("rl2-cheetah-vel", ["model.hidden=4", "algorithm.ppo_epochs=1",
                         "algorithm.ppo_minibatches=1"]),
])
def test_cheetah_velocity_configs_train_a_step_and_evaluate(tmp_path, config, overrides):
    mujoco()
    out = tmp_path / config
    assert main(["train", config, "--out", str(out), "data.horizon=5", "data.episodes=1",
                 "train.meta_batch=2", "train.steps=1", "train.progress=false",
                 "eval.episodes=2", "eval.batch_size=2", *overrides]) == 0
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert np.isfinite(record["loss"])
    assert main(["eval", str(out)]) == 0
    result = json.loads((out / "eval.json").read_text())
    assert result["metric"] == "return" and result["mean"] == result["return_episode2"]


@pytest.mark.parametrize("config", ["maml-rl-cheetah-vel", "maml-rl-cheetah-dir"])
def test_maml_rl_cheetah_configs_train_a_step_and_evaluate(tmp_path, config):
    mujoco()
    out = tmp_path / config
    assert main(["train", config, "--out", str(out), "data.horizon=5", "data.episodes=1",
                 "train.meta_batch=2", "train.steps=1", "train.progress=false",
                 "eval.episodes=2", "eval.batch_size=2", "model.hidden=[4]",
                 "algorithm.fisher_tasks=1"]) == 0
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert np.isfinite(record["loss"]) and record["kl"] <= 0.01
    assert main(["eval", str(out)]) == 0
    result = json.loads((out / "eval.json").read_text())
    assert result["metric"] == "return" and "return_pre" in result
