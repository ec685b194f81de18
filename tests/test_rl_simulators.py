"""Simulator task families (rl/mujoco_tasks.py, rl/metaworld_tasks.py) and their collector
(rl/gym_collector.py).

The first part runs everywhere: argument errors, task sampling, the missing-extra error, and
the collector's bookkeeping on a tiny pure-Python environment with gymnasium's API. The rest
needs the simulators and skips without them:
``pip install -e ".[dev,mujoco,metaworld]"`` (docs/meta-rl.md).
"""

from __future__ import annotations

import pickle
import sys

import numpy as np
import pytest
import torch

from metalab.rl import GaussianMLPPolicy, gaussian_log_prob
from metalab.rl.gym_collector import EnvPool, collect_gym_episodes, collect_gym_rollouts
from metalab.rl.metaworld_tasks import MetaWorldTasks, build_benchmark
from metalab.rl.mujoco_tasks import (
    AntDirection,
    HalfCheetahDirection,
    HalfCheetahVelocity,
    LocomotionEnv,
)
from metalab.rl.process_pool import ProcessEnvPool

MUJOCO_SKIP = 'needs the mujoco extra: pip install -e ".[mujoco]"'
METAWORLD_SKIP = 'needs the metaworld extra: pip install -e ".[metaworld]"'


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- without the extras


@pytest.mark.parametrize("kwargs, message", [
    ({"horizon": 0}, "horizon must be an integer >= 1"),
    ({"velocity_range": (2.0, 1.0)}, "velocity_range must be a \\(low, high\\) pair"),
])
def test_half_cheetah_velocity_refuses_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        HalfCheetahVelocity(**kwargs)


def test_velocity_tasks_are_uniform_in_the_range_and_seeded():
    family = HalfCheetahVelocity()
    tasks = family.sample_tasks(2000, generator(0))
    assert tasks.dtype == torch.float64 and tasks.shape == (2000,)
    assert 0.0 <= tasks.min() < 0.05 and 1.95 < tasks.max() <= 2.0
    assert abs(tasks.mean().item() - 1.0) < 0.05
    assert torch.equal(tasks, family.sample_tasks(2000, generator(0)))
    assert not torch.equal(tasks, family.sample_tasks(2000, generator(1)))
    shifted = HalfCheetahVelocity(velocity_range=(1.0, 3.0)).sample_tasks(500, generator(0))
    assert 1.0 <= shifted.min() and shifted.max() <= 3.0


def test_direction_tasks_are_plus_or_minus_one_about_equally_often():
    tasks = HalfCheetahDirection().sample_tasks(1000, generator(0))
    assert set(tasks.tolist()) == {-1.0, 1.0}
    assert abs((tasks == 1).double().mean().item() - 0.5) < 0.05
    assert torch.equal(tasks, AntDirection().sample_tasks(1000, generator(0)))


def test_set_task_checks_the_task_and_the_environment():
    direction = HalfCheetahDirection()
    env = LocomotionEnv(None, direction)  # set_task does not touch the simulator
    direction.set_task(env, torch.tensor(-1.0))
    assert env.task == -1.0
    with pytest.raises(ValueError, match="task \\(a direction\\) must be -1 or \\+1, got 0.5"):
        direction.set_task(env, 0.5)
    with pytest.raises(ValueError, match="task \\(a target velocity\\) must be one number"):
        HalfCheetahVelocity().set_task(LocomotionEnv(None, HalfCheetahVelocity()),
                                       torch.zeros(2))
    with pytest.raises(ValueError, match="env must be an environment made by "
                                         "HalfCheetahVelocity.make_env\\(\\)"):
        HalfCheetahVelocity().set_task(env, 1.0)
    with pytest.raises(RuntimeError, match="set a task first"):
        LocomotionEnv(None, direction).step(np.zeros(6))


def test_a_missing_extra_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "gymnasium", None)  # import gymnasium now fails
    with pytest.raises(ImportError, match='pip install "metalab\\[mujoco\\]"'):
        HalfCheetahVelocity().make_env()
    monkeypatch.setitem(sys.modules, "metaworld", None)
    with pytest.raises(ImportError, match='pip install "metalab\\[metaworld\\]"'):
        MetaWorldTasks(seed=987654).sample_tasks(1)  # a seed no other test built (cache)


@pytest.mark.parametrize("kwargs, message", [
    ({"benchmark": "ML45"}, "benchmark must be one of \\['ML1', 'ML10'\\], got 'ML45'"),
    ({"env_name": None}, "env_name must name a Meta-World environment"),
    ({"benchmark": "ML10"}, "env_name must be None for ML10"),
    ({"split": "valid"}, "split must be one of \\['train', 'test'\\]"),
    ({"horizon": 501}, "horizon must be at most 500"),
    ({"seed": -1}, "seed must be an integer >= 0"),
])
def test_meta_world_refuses_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MetaWorldTasks(**kwargs)


class Box:
    def __init__(self, low, high):
        self.low, self.high = np.array([low]), np.array([high])


class DriftEnv:
    """1-D: x0 ~ U[0, 1) from the reset seed; x' = x + a; reward -|x' - goal|; the episode
    terminates when x' > 2. gymnasium's API, no simulator."""

    action_space = Box(-0.5, 0.5)

    def __init__(self):
        self.goal, self.x = None, None

    def reset(self, *, seed=None):
        self.x = np.random.default_rng(seed).uniform()
        return np.array([self.x]), {}

    def step(self, action):
        assert -0.5 <= action[0] <= 0.5, "the collector must clip to the action space"
        self.x = self.x + action[0]
        return np.array([self.x]), -abs(self.x - self.goal), self.x > 2.0, False, {
            "above_one": float(self.x > 1.0)}

    def close(self):
        pass


class DriftTasks:
    observation_dim = action_dim = 1
    horizon = 12

    def __init__(self):
        self.made = 0

    def make_env(self, task):
        self.made += 1
        return DriftEnv()

    def env_key(self, task):
        return "drift"

    def set_task(self, env, task):
        env.goal = float(task)


def drift_policy(mean: float, log_std: float = 0.0):
    policy = GaussianMLPPolicy(1, 1, hidden=())
    with torch.no_grad():
        policy.mean[0].weight.zero_()
        policy.mean[0].bias.fill_(mean)
        policy.log_std.fill_(log_std)
    return policy, {name: p.double() for name, p in policy.named_parameters()}


def test_collector_records_the_observation_each_action_was_taken_in_and_masks_after_the_end():
    family = DriftTasks()
    policy, params = drift_policy(0.3, log_std=np.log(0.4))
    goals = torch.tensor([0.5, 1.5], dtype=torch.float64)
    batch, infos = collect_gym_rollouts(family, policy, params, goals, 3, generator=generator(0),
                                        info_keys=("above_one",))
    assert batch.observations.shape == (2, 3, 12, 1) and batch.actions.shape == (2, 3, 12, 1)
    assert batch.rewards.shape == batch.masks.shape == infos["above_one"].shape == (2, 3, 12)
    assert batch.task_ids.tolist() == [0, 1]
    clipped_seen = False
    for task in range(2):
        for episode in range(3):  # replay every episode by hand from its first observation
            x, alive = batch.observations[task, episode, 0, 0].item(), True
            for t in range(12):
                action = batch.actions[task, episode, t, 0].item()
                assert batch.masks[task, episode, t].item() == float(alive)
                if not alive:
                    assert batch.rewards[task, episode, t].item() == 0.0
                    continue
                assert batch.observations[task, episode, t, 0].item() == pytest.approx(x, abs=0)
                clipped_seen |= abs(action) > 0.5
                x = x + min(max(action, -0.5), 0.5)
                assert batch.rewards[task, episode, t].item() == pytest.approx(
                    -abs(x - goals[task].item()), rel=1e-12)
                assert infos["above_one"][task, episode, t].item() == float(x > 1.0)
                alive = x <= 2.0
    assert clipped_seen, "the test needs an action outside the bounds"
    assert batch.masks[..., -1].sum() < 6, "the test needs an episode that terminated"
    mean, log_std = params["mean.0.bias"], params["log_std"]  # 0.3 and log 0.4 in float32
    expected = gaussian_log_prob(batch.actions, mean.expand_as(batch.actions),
                                 log_std.expand_as(batch.actions))
    assert torch.allclose(batch.log_probs, expected, rtol=1e-12, atol=0)


def test_collector_is_seeded_and_its_log_probs_depend_on_the_parameters():
    family = DriftTasks()
    policy, params = drift_policy(0.1)
    params = {name: p.requires_grad_() for name, p in params.items()}
    goals = torch.tensor([1.0], dtype=torch.float64)
    first = collect_gym_episodes(family, policy, params, goals, 4, generator=generator(3))
    again = collect_gym_episodes(family, policy, params, goals, 4, generator=generator(3))
    other = collect_gym_episodes(family, policy, params, goals, 4, generator=generator(4))
    assert torch.equal(first.observations, again.observations)
    assert torch.equal(first.actions, again.actions)
    assert not torch.equal(first.observations[..., 0, :], other.observations[..., 0, :])
    grad = torch.autograd.grad(first.log_probs.sum(), params["mean.0.bias"])[0]
    assert grad.abs().item() > 0


def test_the_pool_reuses_environments_and_per_task_parameters_are_checked():
    family = DriftTasks()
    policy, params = drift_policy(0.0)
    goals = torch.tensor([0.5, 1.0], dtype=torch.float64)
    with EnvPool(family) as pool:
        collect_gym_episodes(family, policy, params, goals, 2, pool=pool)
        collect_gym_episodes(family, policy, params, goals, 2, pool=pool)
    assert family.made == 4
    with pytest.raises(ValueError, match="leading task dimension of 2"):
        collect_gym_episodes(family, policy, params, goals, 2, per_task=True)
    with pytest.raises(ValueError, match="policy.action_dim must equal the family's action "
                                         "dimension 1, got 2"):
        collect_gym_episodes(family, GaussianMLPPolicy(1, 2), params, goals, 2)
    with pytest.raises(ValueError, match="episodes_per_task must be an integer >= 1"):
        collect_gym_episodes(family, policy, params, goals, 0)
    with pytest.raises(ValueError, match="pool must be an environment pool built for this "
                                         "family, got one for DriftTasks"):
        collect_gym_episodes(DriftTasks(), policy, params, goals, 1, pool=EnvPool(family))


class BrokenTasks(DriftTasks):
    def make_env(self, task):
        raise OSError("no simulator here")


def test_worker_processes_give_the_same_batch_as_the_in_process_pool():
    family = DriftTasks()
    policy, params = drift_policy(0.3, log_std=np.log(0.4))
    goals = torch.tensor([0.5, 1.5, 1.0], dtype=torch.float64)
    expected, expected_info = collect_gym_rollouts(family, policy, params, goals, 3,
                                                   generator=generator(5),
                                                   info_keys=("above_one",))
    assert expected.masks[..., -1].sum() < 9, "the test needs an episode that terminated"
    for workers in (2, 4):
        with ProcessEnvPool(family, workers=workers, context="fork") as pool:
            batch, info = collect_gym_rollouts(family, policy, params, goals, 3, pool=pool,
                                               generator=generator(5), info_keys=("above_one",))
        for name in ("observations", "actions", "rewards", "masks", "log_probs"):
            assert torch.equal(getattr(batch, name), getattr(expected, name)), (workers, name)
        assert torch.equal(info["above_one"], expected_info["above_one"])


def test_a_failing_worker_raises_with_its_traceback_and_bad_options_are_refused():
    with ProcessEnvPool(BrokenTasks(), workers=2, context="fork") as pool:
        with pytest.raises(RuntimeError, match="(?s)environment worker 0 failed.*no simulator"):
            pool.assign([0.0], 2)
    with pytest.raises(ValueError, match="workers must be an integer >= 1, got 0"):
        ProcessEnvPool(DriftTasks(), workers=0)
    with pytest.raises(ValueError, match="context must be one of"):
        ProcessEnvPool(DriftTasks(), context="threads")


# ---------------------------------------------------------------- MuJoCo (the extra)


def mujoco_env(family, task, seed=0):
    pytest.importorskip("gymnasium", reason=MUJOCO_SKIP)
    pytest.importorskip("mujoco", reason=MUJOCO_SKIP)
    env = family.make_env()
    assert env.observation_space.shape == (family.observation_dim,)
    assert env.action_space.shape == (family.action_dim,)
    family.set_task(env, task)
    env.reset(seed=seed)
    return env


def step_by_hand(env, action):
    """Step and return the reward, the root's x-velocity and the action's squared norm, read
    from the simulator: dt from the model's own timestep and frame skip."""
    data, model = env.unwrapped.data, env.unwrapped.model
    dt = model.opt.timestep * env.unwrapped.frame_skip
    x_before = float(data.qpos[0])
    _, reward, terminated, _, info = env.step(action)
    velocity = (float(data.qpos[0]) - x_before) / dt
    return reward, velocity, float(np.sum(np.asarray(action, dtype=np.float64) ** 2)), info


def actions(count, dim, seed=0):
    return np.random.default_rng(seed).uniform(-1.0, 1.0, size=(count, dim))


def test_half_cheetah_velocity_reward_is_the_papers_formula():
    env = mujoco_env(HalfCheetahVelocity(), 1.3)
    assert env.unwrapped.dt == pytest.approx(0.05)
    for action in actions(20, 6):
        reward, velocity, square, _ = step_by_hand(env, action)
        assert reward == pytest.approx(-abs(velocity - 1.3) - 0.05 * square, rel=1e-12)
    assert abs(velocity) > 0.05, "the test needs the cheetah to move"


def test_half_cheetah_direction_reward_is_the_papers_formula():
    env = mujoco_env(HalfCheetahDirection(), -1.0)
    for action in actions(20, 6, seed=1):
        reward, velocity, square, _ = step_by_hand(env, action)
        assert reward == pytest.approx(-velocity - 0.05 * square, rel=1e-12)


def test_ant_direction_reward_is_the_papers_formula():
    env = mujoco_env(AntDirection(), -1.0)
    data = env.unwrapped.data
    for action in actions(10, 8, seed=2):
        reward, velocity, square, _ = step_by_hand(env, action)
        contact = 5e-4 * float(np.sum(np.clip(data.cfrc_ext, -1.0, 1.0) ** 2))
        healthy = float(0.2 <= data.qpos[2] <= 1.0)
        assert reward == pytest.approx(-velocity - 0.5 * square - contact + healthy, rel=1e-12)


def test_set_task_changes_the_reward_and_not_the_dynamics():
    family = HalfCheetahVelocity()
    slow, fast = mujoco_env(family, 0.5, seed=7), mujoco_env(family, 1.5, seed=7)
    for action in actions(15, 6, seed=3):
        r_slow, v_slow, square, _ = step_by_hand(slow, action)
        r_fast, v_fast, _, _ = step_by_hand(fast, action)
        assert v_slow == v_fast
        assert r_slow - r_fast == pytest.approx(abs(v_fast - 1.5) - abs(v_slow - 0.5), abs=1e-12)
    assert r_slow != r_fast
    family.set_task(slow, 1.5)  # the same environment, switched
    r_switched, _, _, _ = step_by_hand(slow, actions(1, 6)[0])
    r_reference, _, _, _ = step_by_hand(fast, actions(1, 6)[0])
    assert r_switched == r_reference


def test_half_cheetah_collector_shapes_horizon_and_seed():
    pytest.importorskip("gymnasium", reason=MUJOCO_SKIP)
    pytest.importorskip("mujoco", reason=MUJOCO_SKIP)
    family = HalfCheetahVelocity(horizon=30)
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(17, 6)
    params = dict(policy.named_parameters())
    tasks = family.sample_tasks(2, generator(0))
    with EnvPool(family) as pool:
        batch = collect_gym_episodes(family, policy, params, tasks, 3, pool=pool,
                                     generator=generator(1))
        again = collect_gym_episodes(family, policy, params, tasks, 3, pool=pool,
                                     generator=generator(1))
    assert batch.observations.shape == (2, 3, 30, 17) and batch.actions.shape == (2, 3, 30, 6)
    assert batch.rewards.shape == (2, 3, 30) and batch.masks.eq(1).all()  # never terminates
    assert batch.observations.dtype == torch.float32
    assert torch.equal(batch.observations, again.observations)
    assert torch.equal(batch.rewards, again.rewards)
    with ProcessEnvPool(family, workers=2, context="fork") as pool:
        parallel = collect_gym_episodes(family, policy, params, tasks, 3, pool=pool,
                                        generator=generator(1))
    assert torch.equal(parallel.observations, batch.observations)
    assert torch.equal(parallel.rewards, batch.rewards)
    assert HalfCheetahVelocity().horizon == 200
    # each step's reward is at most its task's part: -|v - goal| <= 0, minus the control cost
    control = 0.05 * batch.actions.double().clamp(-1, 1).pow(2).sum(-1)
    assert (batch.rewards.double() + control <= 1e-5).all()


# ---------------------------------------------------------------- Meta-World (the extra)


def meta_world(split="train", **kwargs):
    pytest.importorskip("metaworld", reason=METAWORLD_SKIP)
    return MetaWorldTasks(split=split, **kwargs)


def goals_of(family, tasks):
    env = family.make_env(tasks[0])
    found = []
    for task in tasks:
        family.set_task(env, task)
        env.reset(seed=0)
        found.append(family.goal(env))
    env.close()
    return np.stack(found)


@pytest.mark.slow  # building the benchmark takes 3-7 s
def test_meta_world_ml1_train_and_test_goals_are_the_benchmarks_and_differ():
    train, test = meta_world("train"), meta_world("test")
    benchmark = build_benchmark("ML1", "reach-v3", 0)
    assert len(train.tasks) == len(test.tasks) == 50
    assert [t.data for t in train.tasks] == [t.data for t in benchmark.train_tasks]
    assert [t.data for t in test.tasks] == [t.data for t in benchmark.test_tasks]
    train_goals, test_goals = goals_of(train, train.tasks), goals_of(test, test.tasks)
    # reach's goal is the last 3 entries of the variation's random vector
    expected = np.stack([pickle.loads(t.data)["rand_vec"][3:] for t in train.tasks])
    assert np.allclose(train_goals, expected, atol=1e-12)
    assert len({tuple(g) for g in train_goals.round(6)}) == 50  # every variation differs
    distances = np.linalg.norm(train_goals[:, None] - test_goals[None], axis=-1)
    assert distances.min() > 1e-6  # no test goal is a train goal


@pytest.mark.slow  # building the benchmark takes 3-7 s
def test_meta_world_sampling_is_seeded_and_distinct():
    family = meta_world()
    first = family.sample_tasks(10, generator(0))
    assert [t.data for t in first] == [t.data for t in family.sample_tasks(10, generator(0))]
    assert [t.data for t in first] != [t.data for t in family.sample_tasks(10, generator(1))]
    assert len({t.data for t in first}) == 10
    other_seed = build_benchmark("ML1", "reach-v3", 1).train_tasks  # the benchmark's own seed
    assert {t.data for t in other_seed}.isdisjoint(t.data for t in family.tasks)
    with pytest.raises(ValueError, match="n must be at most the 50 train tasks of ML1, got 51"):
        family.sample_tasks(51)
    push = build_benchmark("ML1", "push-v3", 0).train_tasks[0]
    with pytest.raises(ValueError, match="task must be one of the train environments "
                                         "\\['reach-v3'\\] of ML1, got 'push-v3'"):
        family.set_task(family.make_env(first[0]), push)


@pytest.mark.slow  # building the benchmark takes 3-7 s
def test_meta_world_collector_reports_success_with_the_shapes():
    family = meta_world(horizon=20)
    policy = GaussianMLPPolicy(39, 4)
    params = dict(policy.named_parameters())
    tasks = family.sample_tasks(2, generator(0))
    batch, infos = collect_gym_rollouts(family, policy, params, tasks, 2, generator=generator(1),
                                        info_keys=("success",))
    assert batch.observations.shape == (2, 2, 20, 39) and batch.actions.shape == (2, 2, 20, 4)
    assert infos["success"].shape == (2, 2, 20) and batch.masks.eq(1).all()
    assert set(infos["success"].unique().tolist()) <= {0.0, 1.0}
    assert batch.observations[..., -3:].eq(0).all()  # the goal is hidden
    again = collect_gym_episodes(family, policy, params, tasks, 2, generator=generator(1))
    assert torch.equal(batch.observations, again.observations)


@pytest.mark.slow
def test_meta_world_ml10_holds_out_five_environments():
    train, test = meta_world("train", benchmark="ML10", env_name=None), \
        meta_world("test", benchmark="ML10", env_name=None)
    assert len(train.classes) == 10 and len(test.classes) == 5
    assert not set(train.classes) & set(test.classes)
    assert {t.env_name for t in train.tasks} == set(train.classes)
    assert {t.env_name for t in test.tasks} == set(test.classes)
    tasks = train.sample_tasks(4, generator(0))
    policy = GaussianMLPPolicy(39, 4)
    batch = collect_gym_episodes(train, policy, dict(policy.named_parameters()), tasks, 1,
                                 generator=generator(0))
    assert batch.rewards.shape == (4, 1, 500)
