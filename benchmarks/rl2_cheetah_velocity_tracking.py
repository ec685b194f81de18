"""Does RL² on half-cheetah velocity use the task? The speed it runs at against the target,
per episode of a trial, for each seed's untrained and last checkpoint.

    OMP_NUM_THREADS=1 PYTHONPATH=src:benchmarks \\
        python benchmarks/rl2_cheetah_velocity_tracking.py RUN_DIR_SEED0 RUN_DIR_SEED1 \\
        RUN_DIR_SEED2 --out benchmarks/results/NAME

The runs come from benchmarks/maml_rl_cheetah_curve.sh with CONFIG=rl2-cheetah-vel. On the
same 20 held-out velocities as `metalab eval` (``eval.seed``), ``--trials`` trials per
velocity; an episode's speed is the mean of the observed root x-velocity (``qvel[0]``,
observation index 8 of HalfCheetah-v5) over its 200 steps, averaged over the trials. Per
episode: the least-squares slope of that speed on the target velocity (1: it runs at the
target; 0: goal-blind), Pearson's r, the mean speed and the mean ``|speed - target|``.
A policy whose mean return only improves by running at one speed for every target (a
goal-blind policy) has slope 0; a return above the goal-blind bound needs slope > 0.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import torch
from maml_rl_cheetah_curve import across
from meta_rl_cheetah_curve import test_tasks

from metalab.train.run import initial_learner, load_run, read_run_config

VELOCITY = 8  # HalfCheetah-v5 observation: qpos[1:] (8 values), then qvel; qvel[0] is x


def episode_speeds(learner, batch, trials: int) -> torch.Tensor:
    """``[tasks, K]``: the mean root x-velocity of each episode of a trial, over trials."""
    batch = dataclasses.replace(batch, episodes=trials)
    with torch.no_grad():
        collected = learner.collect(batch)
    tasks, count, steps = collected.rewards.shape
    episodes = learner.episodes_per_trial
    speed = collected.observations[..., VELOCITY].reshape(tasks, count, episodes,
                                                          steps // episodes)
    return speed.mean(-1).mean(1)


def tracking(speeds: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    """Slope, r, mean speed and mean |speed - target| of ``speeds [tasks]``."""
    x = targets - targets.mean()
    y = speeds - speeds.mean()
    slope = (x * y).sum() / (x * x).sum()
    r = (x * y).sum() / ((x * x).sum() * (y * y).sum()).sqrt()
    return {"slope": slope.item(), "r": r.item(), "mean_speed": speeds.mean().item(),
            "mean_abs_error": (speeds - targets).abs().mean().item()}


def measure(run_dir: Path, trials: int, speeds_of=episode_speeds
            ) -> dict[str, list[dict[str, float]]]:
    """Tracking of each episode for the untrained and the last learner of ``run_dir``;
    ``speeds_of(learner, batch, trials) -> [tasks, K]`` (RL²'s trials by default)."""
    config = read_run_config(run_dir)
    batch = test_tasks(config)
    targets = batch.tasks.to(torch.float64)
    result = {}
    for name, learner in (("untrained", initial_learner(config)), ("last", load_run(run_dir))):
        speeds = speeds_of(learner.eval(), batch, trials).to(torch.float64)
        result[name] = [tracking(speeds[:, k], targets) for k in range(speeds.shape[1])]
    result["step"] = torch.load(run_dir / "checkpoint.pt", weights_only=False)["step"]
    return result


def table(run_dirs: list[Path], trials: int, out: Path | None, speeds_of=episode_speeds
          ) -> str:
    runs = {str(d): measure(d, trials, speeds_of) for d in run_dirs}
    steps = sorted({r["step"] for r in runs.values()})
    rows = []
    for name in ("untrained", "last"):
        episodes = len(next(iter(runs.values()))[name])
        for k in range(episodes):
            cells = []
            for key in ("slope", "r", "mean_speed", "mean_abs_error"):
                mean, ci = across([r[name][k][key] for r in runs.values()])
                cells.append(f"{mean:.2f} ± {ci:.2f}")
            per_seed = "; ".join(f"{r[name][k]['slope']:.2f}" for r in runs.values())
            label = "0 (untrained)" if name == "untrained" else "/".join(map(str, steps))
            rows.append(f"| {label} | {k + 1} | {' | '.join(cells)} | {per_seed} |")
    text = "\n".join([
        "| trainer step | episode | slope of speed on target | r | mean speed | "
        "mean abs(speed - target) | per seed: slope |",
        "|---|---|---|---|---|---|---|", *rows, "",
        f"{len(run_dirs)} seeds, 20 held-out target velocities, {trials} trials each; ± is "
        f"t_(0.975, n-1) sd / sqrt(n) over the seeds."])
    if out is not None:
        out.with_suffix(".md").write_text(text + "\n")
        out.with_suffix(".json").write_text(json.dumps({"trials": trials, "runs": runs},
                                                       indent=2) + "\n")
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", nargs="+", type=Path)
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(table(args.run_dirs, args.trials, args.out))


if __name__ == "__main__":
    main()
