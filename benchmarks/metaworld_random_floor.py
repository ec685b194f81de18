"""The random-policy floor of a Meta-World ML1 benchmark: success rate and return of actions
drawn uniformly from the action space (every episode the full 500 steps), per task of a split.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/metaworld_random_floor.py \
        --env reach-v3 --split test --episodes 1 --out benchmarks/results/metaworld_reach_random

Success, as in `metalab eval`: an episode in which the environment reported
``info["success"]`` at some step; per task the fraction of its episodes, then mean and 95%
interval over the tasks (`mean_ci95`). Seeded: reset seeds and actions from ``--seed``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from metalab.rl.metaworld_tasks import MetaWorldTasks
from metalab.train.checkpoint import atomic_write_text
from metalab.train.evaluator import mean_ci95


def random_episode(env, seed: int, rng: np.random.Generator, horizon: int) -> tuple[float, bool]:
    """One episode of uniform random actions: (return, success at some step)."""
    env.reset(seed=seed)
    space, total, success = env.action_space, 0.0, False
    for _ in range(horizon):
        action = rng.uniform(space.low, space.high)
        _, reward, terminated, truncated, info = env.step(action)
        total += float(reward)
        success |= bool(info["success"])
        if terminated or truncated:
            break
    return total, success


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="reach-v3")
    parser.add_argument("--split", default="test", choices=("train", "test"))
    parser.add_argument("--episodes", type=int, default=1, help="episodes per task")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True, help="writes OUT.json and OUT.md")
    args = parser.parse_args()
    family = MetaWorldTasks("ML1", args.env, args.split)
    rng, start = np.random.default_rng(args.seed), time.time()
    returns, successes = [], []
    for task in family.tasks:
        env = family.make_env(task)
        family.set_task(env, task)
        runs = [random_episode(env, int(rng.integers(2**31 - 1)), rng, family.horizon)
                for _ in range(args.episodes)]
        env.close()
        returns.append(np.mean([r for r, _ in runs]))
        successes.append(np.mean([s for _, s in runs]))
    success, success_ci = mean_ci95(torch.tensor(successes, dtype=torch.float64))
    ret, ret_ci = mean_ci95(torch.tensor(returns, dtype=torch.float64))
    result = {"env": args.env, "split": args.split, "tasks": len(returns),
              "episodes_per_task": args.episodes, "horizon": family.horizon,
              "environment_steps": len(returns) * args.episodes * family.horizon,
              "success": success, "success_ci95": success_ci, "return": ret,
              "return_ci95": ret_ci, "seconds": round(time.time() - start, 1), "seed": args.seed}
    atomic_write_text(args.out.with_suffix(".json"), json.dumps(result, indent=2) + "\n")
    atomic_write_text(args.out.with_suffix(".md"), (
        f"# Uniform random actions on Meta-World ML1 {args.env}, {args.split} tasks\n\n"
        f"{len(returns)} tasks x {args.episodes} episode(s) of {family.horizon} steps, seed "
        f"{args.seed}: success {success:.3f} ± {success_ci:.3f}, return {ret:.1f} ± "
        f"{ret_ci:.1f} (mean ± 95% CI over tasks; {result['seconds']} s wall on the shared "
        f"machine).\n"))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
