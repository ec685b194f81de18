"""Does PEARL on half-cheetah velocity use the task? The speed it runs at against the target,
per meta-test episode (1: z from the prior; 2, 3: posterior sampling), for each seed's
untrained and last checkpoint.

    OMP_NUM_THREADS=1 PYTHONPATH=src:benchmarks \\
        python benchmarks/pearl_cheetah_velocity_tracking.py RUN_DIR_SEED0 RUN_DIR_SEED1 \\
        RUN_DIR_SEED2 --trials 2 --out benchmarks/results/NAME

The runs come from benchmarks/maml_rl_cheetah_curve.sh with CONFIG=pearl-cheetah-vel. The
episodes are the ones `metalab eval` plays (`PEARL.meta_test`: ``--trials`` independent runs
of ``eval_episodes`` consecutive episodes per held-out velocity, ``eval.seed``), recorded on
their way through the family; an episode's speed is the mean observed root x-velocity
(``qvel[0]``, observation index 8 of HalfCheetah-v5) over its valid steps, averaged over the
runs. The slope, r and errors are rl2_cheetah_velocity_tracking's (slope 1: it runs at the
target; 0: goal-blind).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from rl2_cheetah_velocity_tracking import VELOCITY, table
from torch import Tensor


class RecordingFamily:
    """``family`` whose ``collect_latent`` also keeps every batch of episodes it returns."""

    def __init__(self, family) -> None:
        self.family = family
        self.episodes: list[dict[str, Tensor]] = []

    def collect_latent(self, *args, **kwargs) -> dict[str, Tensor]:
        episodes = self.family.collect_latent(*args, **kwargs)
        self.episodes.append(episodes)
        return episodes

    def __getattr__(self, name: str):
        return getattr(self.family, name)


def mean_speed(episodes: dict[str, Tensor], index: int = VELOCITY) -> Tensor:
    """``[T]``: observation ``index`` averaged over each episode's valid steps (``masks``),
    then over the episodes of a task (fields ``[T, E, H, ...]``)."""
    masks = episodes["masks"].to(torch.float64)
    values = episodes["observations"][..., index].to(torch.float64)
    return ((values * masks).sum(-1) / masks.sum(-1)).mean(-1)


def episode_speeds(learner, batch, trials: int, index: int = VELOCITY) -> Tensor:
    """``[tasks, K]``: the mean root x-velocity (observation ``index``) of each meta-test
    episode, over ``trials``."""
    family = RecordingFamily(batch.family)
    learner.meta_test(family, batch.tasks, trials, batch.generator())
    return torch.stack([mean_speed(e, index) for e in family.episodes], dim=-1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", nargs="+", type=Path)
    parser.add_argument("--trials", type=int, default=2)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(table(args.run_dirs, args.trials, args.out, speeds_of=episode_speeds))


if __name__ == "__main__":
    main()
