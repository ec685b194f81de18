"""benchmarks/pearl_cheetah_velocity_tracking.py: the speed of each meta-test episode, read
from the episodes `PEARL.meta_test` collects (recorded on their way through the family)."""

from __future__ import annotations

import torch

from helpers import load_benchmark

tracking = load_benchmark("pearl_cheetah_velocity_tracking")


def episodes_of(speeds, masks):
    """Episodes ``[T, E, H, obs]`` whose observation 1 is ``speeds`` (observation 0: noise
    that must not be read)."""
    speeds = torch.tensor(speeds, dtype=torch.float64)
    observations = torch.stack([torch.full_like(speeds, 99.0), speeds], dim=-1)
    return {"observations": observations, "masks": torch.tensor(masks, dtype=torch.float64)}


def test_mean_speed_averages_the_valid_steps_then_the_episodes_by_hand():
    # task 0: episodes (1 + 3) / 2 and 5 (its last step masked); task 1: 2 and (0 + 4) / 2
    episodes = episodes_of([[[1.0, 3.0], [5.0, 40.0]], [[2.0, 2.0], [0.0, 4.0]]],
                           [[[1, 1], [1, 0]], [[1, 1], [1, 1]]])
    speed = tracking.mean_speed(episodes, index=1)
    assert torch.allclose(speed, torch.tensor([(2.0 + 5.0) / 2, (2.0 + 2.0) / 2],
                                              dtype=torch.float64))


class Family:
    name = "fake"

    def __init__(self, speeds):
        self.speeds = list(speeds)

    def collect_latent(self, policy, z, tasks, generator=None, deterministic=False):
        return episodes_of(self.speeds.pop(0), torch.ones(len(tasks), 1, 2).tolist())


class Learner:
    """Plays ``K`` consecutive episodes through ``family`` as `PEARL.meta_test` does."""

    def meta_test(self, family, tasks, runs, generator):
        assert family.name == "fake"  # other attributes reach the wrapped family
        for _ in range(3):
            family.collect_latent(None, None, tasks, generator=generator)


def test_episode_speeds_stack_the_recorded_episodes_in_order():
    per_episode = [[[[0.5, 0.5]], [[1.0, 1.0]]], [[[0.0, 1.0]], [[2.0, 2.0]]],
                   [[[3.0, 3.0]], [[1.0, 0.0]]]]

    class Batch:
        family = Family(per_episode)
        tasks = torch.tensor([0.3, 1.2])

        def generator(self):
            return torch.Generator().manual_seed(0)

    speeds = tracking.episode_speeds(Learner(), Batch(), trials=1, index=1)
    assert torch.allclose(speeds, torch.tensor([[0.5, 0.5, 3.0], [1.0, 2.0, 0.5]],
                                               dtype=torch.float64))
