"""Rollout throughput of the batched 2-D navigation (environment steps per second, one
thread): the raw environment step alone, and ``collect_episodes`` with the paper's policy
(Gaussian MLP, tanh 100-100) for shared and per-task (adapted, vmapped) parameters.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/rl_rollout_throughput.py

One environment step is one (task, episode, time) triple; a rollout of T tasks x E episodes
is ``T * E * 100`` steps. Each setting is timed ``--repeats`` times after one warm-up; the
best and median rates are printed.
"""

from __future__ import annotations

import argparse
import statistics

import torch

from metalab.profiling import timings
from metalab.rl import GaussianMLPPolicy, PointNavigation, collect_episodes


def raw_environment(env: PointNavigation, goals: torch.Tensor, episodes: int) -> None:
    positions = env.initial_positions(goals, episodes)
    actions = torch.full_like(positions, 0.01)
    for _ in range(env.horizon):
        positions, _, _ = env.step(positions, actions, goals)


def settings_for(env, policy, params, stacked, goals, episodes):
    """The three timed settings for one number of tasks."""
    generator = torch.Generator().manual_seed(0)
    return {
        "raw environment": lambda: raw_environment(env, goals, episodes),
        "collect, shared params": lambda: collect_episodes(
            env, policy, params, goals, episodes, generator=generator),
        "collect, per-task params": lambda: collect_episodes(
            env, policy, stacked, goals, episodes, generator=generator, per_task=True),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, nargs="+", default=[1, 20, 40])
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    args = parser.parse_args()
    torch.set_num_threads(1)
    dtype = getattr(torch, args.dtype)
    env = PointNavigation()
    policy = GaussianMLPPolicy(2, 2).to(dtype)
    params = dict(policy.named_parameters())
    print("| setting | tasks x episodes | steps per rollout | best steps/s | median steps/s |")
    print("|---|---|---|---|---|")
    for tasks in args.tasks:
        goals = env.sample_tasks(tasks, torch.Generator().manual_seed(0), dtype=dtype)
        stacked = {n: v.detach().unsqueeze(0).repeat(tasks, *[1] * v.dim()).requires_grad_()
                   for n, v in params.items()}
        steps = tasks * args.episodes * env.horizon
        settings = settings_for(env, policy, params, stacked, goals, args.episodes)
        for name, function in settings.items():
            times = timings(function, args.repeats)
            print(f"| {name} | {tasks} x {args.episodes} | {steps} | {steps / min(times):,.0f} "
                  f"| {steps / statistics.median(times):,.0f} |")


if __name__ == "__main__":
    main()
