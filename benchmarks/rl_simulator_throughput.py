"""Rollout throughput on the simulators (environment steps per second, one thread): the raw
gymnasium environment alone (one environment, fixed random actions), the task-reward
environment of rl/mujoco_tasks.py, and ``collect_gym_episodes`` with the paper's policy
(Gaussian MLP, tanh 100-100) for T tasks x E episodes (shared parameters).

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/rl_simulator_throughput.py

Needs the mujoco extra (and metaworld for ``--meta-world``). Every setting steps the same
number of environment steps per timing (``--steps``, rounded up to whole rollouts of
``--horizon``); each is timed ``--repeats`` times after a warm-up, best and median printed.
The pool of environments is built before the timings (building is not stepping).
``--workers 1 2 4`` adds the largest collection with the environments spread over that many
worker processes (``ProcessEnvPool``, asynchronous stepping).
"""

from __future__ import annotations

import argparse
import statistics

import numpy as np
import torch

from metalab.profiling import timings
from metalab.rl import GaussianMLPPolicy
from metalab.rl.gym_collector import EnvPool, collect_gym_episodes
from metalab.rl.metaworld_tasks import MetaWorldTasks
from metalab.rl.mujoco_tasks import HalfCheetahVelocity, LocomotionEnv
from metalab.rl.process_pool import ProcessEnvPool


def raw_steps(env, steps: int, horizon: int) -> None:
    """``steps`` steps of one environment, reset every ``horizon`` steps."""
    actions = np.random.default_rng(0).uniform(-1, 1, (horizon, env.action_space.shape[0]))
    for start in range(0, steps, horizon):
        env.reset(seed=start)
        for action in actions:
            env.step(action)


def collect_rows(name, family, policy, tasks_episodes, steps, horizon, repeats, make_pool,
                 label):
    params = dict(policy.named_parameters())
    rows = []
    for tasks, episodes in tasks_episodes:
        goals = family.sample_tasks(tasks, torch.Generator().manual_seed(0))
        per_rollout = tasks * episodes * horizon
        rollouts = max(1, -(-steps // per_rollout))
        generator = torch.Generator().manual_seed(0)
        with make_pool() as pool:
            pool.assign(goals, episodes)

            def collect(goals=goals, episodes=episodes, pool=pool, rollouts=rollouts,
                        generator=generator):
                for _ in range(rollouts):
                    collect_gym_episodes(family, policy, params, goals, episodes, pool=pool,
                                         generator=generator)

            times = timings(collect, repeats)
        rows.append((name, f"{label}, {tasks} x {episodes}", rollouts * per_rollout, times))
    return rows


def rows_for(name, family, policy, tasks_episodes, steps, horizon, repeats):
    sample = family.sample_tasks(1, torch.Generator().manual_seed(0))
    env = family.make_env(sample[0])
    family.set_task(env, sample[0])
    # the MuJoCo families wrap gymnasium's environment; Meta-World's is gymnasium's already
    targets = {"raw gymnasium env, 1 env": env.env if isinstance(env, LocomotionEnv) else env}
    if isinstance(env, LocomotionEnv):
        targets["task-reward env, 1 env"] = env
    rows = []
    rollouts = -(-steps // horizon)
    for label, target in targets.items():
        times = timings(lambda t=target: raw_steps(t, rollouts * horizon, horizon), repeats)
        rows.append((name, label, rollouts * horizon, times))
    env.close()
    return rows + collect_rows(name, family, policy, tasks_episodes, steps, horizon, repeats,
                               lambda: EnvPool(family), "collect_gym_episodes")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8000)
    parser.add_argument("--horizon", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--meta-world", action="store_true")
    parser.add_argument("--workers", type=int, nargs="*", default=[])
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    shapes = [(1, 1), (5, 4), (20, 2)]
    family = HalfCheetahVelocity(horizon=args.horizon)
    rows = rows_for("half-cheetah-vel", family, GaussianMLPPolicy(17, 6), shapes, args.steps,
                    args.horizon, args.repeats)
    for workers in args.workers:
        rows += collect_rows("half-cheetah-vel", family, GaussianMLPPolicy(17, 6), shapes[-1:],
                             args.steps, args.horizon, args.repeats,
                             lambda w=workers: ProcessEnvPool(family, workers=w),
                             f"ProcessEnvPool, {workers} workers")
    if args.meta_world:
        family = MetaWorldTasks(horizon=args.horizon)
        rows += rows_for("meta-world ML1 reach", family, GaussianMLPPolicy(39, 4), shapes[:2],
                         args.steps, args.horizon, args.repeats)
    print("| family | setting | steps timed | best steps/s | median steps/s |")
    print("|---|---|---|---|---|")
    for name, label, steps, times in rows:
        print(f"| {name} | {label} | {steps} | {steps / min(times):,.0f} "
              f"| {steps / statistics.median(times):,.0f} |")


if __name__ == "__main__":
    main()
