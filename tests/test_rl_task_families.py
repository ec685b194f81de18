"""The sparse-goal 2-D navigation family, the simulator families as trainable task families
(success per episode, Meta-World's train / test split through the task source) and the
success rates MAML-RL's meta-test reports."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from metalab.algorithms.maml_rl import MAMLRL
from metalab.rl import GaussianMLPPolicy, PointNavigation, build_family
from metalab.rl.gym_collector import collect_gym_rollouts
from metalab.rl.simulator_family import SimulatorFamily
from metalab.rl.task_source import EnvironmentTaskSource
from metalab.train.sources import build_task_source
from test_rl_simulators import DriftTasks, drift_policy

HAS_METAWORLD = importlib.util.find_spec("metaworld") is not None


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_sparse_reward_is_one_minus_the_distance_inside_the_radius_and_zero_outside():
    env = PointNavigation(goal_tolerance=None, sparse_radius=0.2)
    goals = torch.tensor([[0.0, 0.0]], dtype=torch.float64)
    positions = torch.tensor([[[0.1, 0.0], [0.3, 0.0], [0.05, 0.0], [0.0, 0.0]]],
                             dtype=torch.float64)
    actions = torch.tensor([[[0.0, 0.05], [-0.05, 0.0], [0.0, 0.0], [0.0, 0.0]]],
                           dtype=torch.float64)
    _, rewards, done = env.step(positions, actions, goals)
    # distances after the step: sqrt(0.1^2 + 0.05^2), 0.25 (outside), 0.05, 0 (at the goal)
    expected = [1 - np.hypot(0.1, 0.05), 0.0, 0.95, 1.0]
    assert rewards[0].tolist() == pytest.approx(expected, abs=1e-12)
    assert not done.any(), "a sparse goal does not end the episode"
    dense = PointNavigation(goal_tolerance=None).step(positions, actions, goals)[1]
    assert dense[0, 1].item() == pytest.approx(-0.25, abs=1e-12)  # the dense reward unchanged


def test_nav2d_sparse_success_is_reaching_the_radius_replayed_by_hand():
    family = build_family("nav2d-sparse", goal_range=2.0, radius=0.2, dtype="float64")
    policy = GaussianMLPPolicy(2, 2, hidden=(8,)).double()
    params = {name: p.detach() for name, p in policy.named_parameters()}
    goals = torch.tensor([[0.3, 0.0], [1.8, -1.8], [-0.2, 0.25]], dtype=torch.float64)
    batch = family.collect(policy, params, goals, 6, generator=generator(0))
    positions = batch.actions.clamp(-0.1, 0.1).cumsum(dim=2)  # from the origin
    distance = (positions - goals[:, None, None, :]).norm(dim=-1)
    expected = (distance <= 0.2).any(dim=-1).double()
    assert batch.success is not None and torch.equal(batch.success, expected)
    assert 0 < expected.sum() < expected.numel(), "the test needs hits and misses"
    assert batch.masks.eq(1).all()
    assert build_family("nav2d").collect(policy, params, goals, 2).success is None


class ScoredDrift(DriftTasks):
    success_key = "above_one"


def test_a_simulator_family_marks_an_episode_successful_when_any_step_reports_success():
    simulator = ScoredDrift()
    family = SimulatorFamily(simulator)
    policy, params = drift_policy(0.1, log_std=np.log(0.4))
    goals = torch.tensor([0.5, 1.5], dtype=torch.float64)
    batch = family.collect(policy, params, goals, 4, generator=generator(1))
    _, infos = collect_gym_rollouts(simulator, policy, params, goals, 4,
                                    generator=generator(1), info_keys=("above_one",))
    by_hand = [[float(max(infos["above_one"][t, e].tolist()) > 0) for e in range(4)]
                for t in range(2)]
    assert batch.success.tolist() == by_hand
    # the episodes that terminated (x > 2) read 0 at their last, masked step: any step counts
    assert 0 < sum(map(sum, by_hand)) < 8, "the test needs successes and failures"
    assert SimulatorFamily(DriftTasks()).collect(policy, params, goals, 1).success is None


def test_maml_rl_meta_test_reports_success_before_and_after_adaptation():
    family = build_family("nav2d-sparse", goal_range=0.5, radius=0.2)
    policy = GaussianMLPPolicy(2, 2, hidden=(16,))
    learner = MAMLRL(policy, inner_lr=1e-3)
    batch = EnvironmentTaskSource(family, 4, 5, seed=3).sample()
    _, metrics = learner.task_losses(batch, training=False)
    assert set(metrics) == {"return", "return_pre", "success", "success_pre"}
    params = {name: p.detach() for name, p in policy.named_parameters()}
    first = family.collect(policy, params, batch.tasks, 5, generator=batch.generator())
    assert torch.equal(metrics["success_pre"], first.success.mean(dim=-1))
    assert torch.equal(metrics["return_pre"], first.total_returns().mean(dim=-1))
    assert not torch.equal(metrics["success"], metrics["success_pre"])


def metaworld_config(**data) -> dict:
    return {"data": {"name": "metaworld", "benchmark": "ML1", "env_name": "reach-v3",
                     "episodes": 1, **data}}


def test_meta_world_trains_on_train_tasks_and_meta_tests_on_test_tasks():
    splits = {split: build_task_source(metaworld_config(), split, 2, seed=0).family.simulator
              .split for split in ("train", "val", "test")}
    assert splits == {"train": "train", "val": "test", "test": "test"}
    with pytest.raises(ValueError, match="data.split must not be set for 'metaworld'"):
        build_task_source(metaworld_config(split="train"), "test", 2, seed=0)


@pytest.mark.slow
@pytest.mark.skipif(not HAS_METAWORLD, reason='needs the metaworld extra: '
                                              'pip install -e ".[metaworld]"')
def test_meta_world_tasks_travel_as_distinct_indices_of_their_split():
    train = build_family("metaworld", env_name="reach-v3", split="train", horizon=5)
    test = build_family("metaworld", env_name="reach-v3", split="test", horizon=5)
    indices = train.sample_tasks(50, generator(0))
    assert indices.dtype == torch.int64 and sorted(indices.tolist()) == list(range(50))
    assert torch.equal(indices, train.sample_tasks(50, generator(0)))
    assert train.specifications(indices[:3]) == [train.simulator.tasks[i]
                                                 for i in indices[:3].tolist()]
    assert test.specifications(torch.tensor([0]))[0] is test.simulator.tasks[0]
    with pytest.raises(ValueError, match="tasks must index the 50 test tasks, got \\[50\\]"):
        test.specifications(torch.tensor([50]))
    with pytest.raises(ValueError, match="tasks must be a 1-D integer tensor"):
        test.specifications(torch.tensor([0.0]))
    policy = GaussianMLPPolicy(39, 4, hidden=(8,))
    params = {name: p.detach() for name, p in policy.named_parameters()}
    batch = test.collect(policy, params, torch.tensor([3, 7]), 2, generator=generator(0))
    assert batch.rewards.shape == (2, 2, 5) and batch.success.shape == (2, 2)
    test.close()


def test_locomotion_families_take_their_options_from_the_config():
    family = build_family("half-cheetah-vel", horizon=50, velocity_range=[0.0, 3.0])
    assert family.horizon == 50 and family.simulator.velocity_range == (0.0, 3.0)
    velocities = family.sample_tasks(200, generator(0))
    assert velocities.max() > 2.0, "velocity_range must reach the simulator (default [0, 2])"
    assert build_family("ant-dir", horizon=30).simulator.horizon == 30
    with pytest.raises(TypeError, match="velocity_range"):
        build_family("half-cheetah-dir", velocity_range=[0.0, 1.0])
