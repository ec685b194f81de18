"""PEARL's and RL²'s learning curves on half-cheetah velocity over seeds (the runs come from
benchmarks/maml_rl_cheetah_curve.sh with CONFIG=pearl-cheetah-vel / rl2-cheetah-vel), with a
uniformly random policy and each seed's untrained learner as floors.

    CONFIG=pearl-cheetah-vel OMP_NUM_THREADS=1 PYTHONPATH=src nice -n 5 \\
        bash benchmarks/maml_rl_cheetah_curve.sh RUN_DIR SEED 2000 6000 STOP_AT
    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/meta_rl_cheetah_curve.py \\
        RUN_DIR_SEED0 RUN_DIR_SEED1 RUN_DIR_SEED2 --out benchmarks/results/NAME

Every RUN_DIR/eval-step<K>.json is a `metalab eval` of the checkpoint at trainer step K (20
held-out velocities, ``eval.seed``): the mean return of each episode (PEARL: episode 1 with
z from the prior, then posterior sampling on the task's transitions so far; RL²: the
episodes of a trial, the hidden state carried across them). Step 0 is each seed's initial
learner meta-tested the same way (`maml_rl_cheetah_curve.floor`, written as
eval-step0.json when missing). The random floor: actions uniform in the action space on
the same velocities, 3 episodes each; and two goal-blind bounds (`blind_floors`).
Environment steps at K: PEARL's own count (the
training log's ``env_steps``); RL²: K x meta_batch x trials x episodes per trial x horizon.
The across-seed interval is ``t_{0.975, n-1} sd / sqrt(n)`` over the seeds' means.
"""

from __future__ import annotations

import argparse
import json
import math
import re
from pathlib import Path

import torch
from maml_rl_cheetah_curve import across, evaluations_by_step, floor, training_seconds

from metalab.rl.gym_collector import EnvPool, run_steps
from metalab.train.build import build_task_source
from metalab.train.config import EvalConfig, TrainConfig
from metalab.train.run import read_run_config


def test_tasks(config: dict):
    """The batch `metalab eval` meta-tests on (its test source, ``eval.seed``)."""
    evaluation = EvalConfig.of(config)
    source = build_task_source(config, "test", evaluation.batch_size, seed=evaluation.seed,
                               queries=evaluation.queries)
    return source.sample()


def random_floor(config: dict, episodes: int = 3, seed: int = 0) -> dict:
    """Mean return (± 95% CI over the test velocities) of uniformly random actions."""
    batch = test_tasks(config)
    family = batch.family
    simulator = family.simulator
    generator = torch.Generator().manual_seed(seed)
    with EnvPool(simulator) as pool:
        low, high = pool.assign(family.specifications(batch.tasks), episodes)
        low_t, high_t = torch.as_tensor(low), torch.as_tensor(high)

        def act(observations, alive, records):
            u = torch.rand(observations.shape[:2] + low_t.shape, generator=generator,
                           dtype=torch.float64)
            action = low_t + (high_t - low_t) * u
            return action, action

        steps = run_steps(pool, (low, high), act, (len(batch.tasks), episodes),
                          simulator.horizon, (torch.float64, torch.device("cpu")), generator)
    per_task = (steps["rewards"] * steps["masks"]).sum(-1).mean(-1)
    ci = 1.96 * per_task.std().item() / math.sqrt(len(per_task))
    return {"mean": per_task.mean().item(), "ci95": ci, "tasks": batch.tasks.tolist()}


def blind_floors(tasks: list[float], horizon: int) -> dict:
    """Goal-blind references, the velocity cost only (no control cost, no acceleration
    from rest, so upper bounds): standing still, ``-H mean_i v_i``; running at the one
    velocity best for all tasks (their median), ``-H mean_i |v_i - median|``."""
    velocities = torch.tensor(tasks, dtype=torch.float64)
    median = velocities.median().item()
    return {"standing": -horizon * velocities.mean().item(),
            "best_constant_velocity": median,
            "best_constant": -horizon * (velocities - median).abs().mean().item()}


def env_steps_at(run_dir: Path, config: dict) -> dict[int, float]:
    """Environment steps at each logged training step."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    records = [r for r in records if r.get("split") == "train"]
    if records and "env_steps" in records[0]:
        return {r["step"]: r["env_steps"] for r in records}
    train, data = TrainConfig.of(config), config["data"]
    per_step = (train.meta_batch * data["episodes"] * config["algorithm"]["episodes_per_trial"]
                * data["horizon"])
    return {r["step"]: r["step"] * per_step for r in records}


def episode_keys(result: dict) -> list[str]:
    return sorted((k for k in result if re.fullmatch(r"return_episode\d+", k)),
                  key=lambda k: int(k.removeprefix("return_episode")))


def table(run_dirs: list[Path], out: Path | None) -> str:
    config = read_run_config(run_dirs[0])
    for run_dir in run_dirs:
        if not (run_dir / "eval-step0.json").is_file():
            floor(run_dir)
    evals = evaluations_by_step(run_dirs)
    seconds = {d: training_seconds(d) for d in run_dirs}
    env_steps = {d: env_steps_at(d, read_run_config(d)) for d in run_dirs}
    keys = episode_keys(evals[0][0][1])
    rows, records = [], []
    for step in sorted(evals):
        runs = evals[step]
        episodes = [across([r[k] for _, r in runs]) for k in keys]
        gain = across([r[keys[-1]] - r[keys[0]] for _, r in runs])
        walls = [seconds[d].get(step, 0.0) for d, _ in runs]
        steps = [env_steps[d].get(step, 0.0) for d, _ in runs]
        per_seed = "; ".join(" / ".join(f"{r[k]:.1f} ± {r[k + '_ci95']:.1f}" for k in keys)
                             for _, r in runs)
        cells = " | ".join(f"{m:.1f} ± {c:.1f}" for m, c in episodes)
        rows.append(f"| {step} | {max(steps) / 1e3:.0f} | {max(walls) / 60:.1f} | {len(runs)} | "
                    f"{cells} | {gain[0]:+.1f} ± {gain[1]:.1f} | {per_seed} |")
        records.append({"step": step, "env_steps": steps, "wall_seconds": walls,
                        "seeds": len(runs), "episodes": dict(zip(keys, episodes, strict=True)),
                        "gain_last_minus_first": gain,
                        "runs": [{"run": str(d), **r} for d, r in runs]})
    random = random_floor(config)
    blind = blind_floors(random["tasks"], config["data"]["horizon"])
    header = " | ".join(f"episode {k.removeprefix('return_episode')}" for k in keys)
    text = "\n".join([
        f"| trainer step | env steps (k, max over seeds) | train wall (min, slowest seed) | "
        f"seeds | {header} | last - first | per seed: {' / '.join(keys)} "
        f"(± 95% CI over test velocities) |",
        "|" + "---|" * (6 + len(keys)), *rows, "",
        f"Uniformly random actions on the same {len(random['tasks'])} test velocities "
        f"(3 episodes each): {random['mean']:.1f} ± {random['ci95']:.1f}. Goal-blind upper "
        f"bounds (velocity cost only): standing still {blind['standing']:.1f}, running at "
        f"{blind['best_constant_velocity']:.2f} (the median velocity) "
        f"{blind['best_constant']:.1f}."])
    if out is not None:
        out.with_suffix(".md").write_text(text + "\n")
        out.with_suffix(".json").write_text(json.dumps(
            {"meta_test": records, "random_policy": random, "goal_blind": blind}, indent=2) + "\n")
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", nargs="+", type=Path)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(table(args.run_dirs, args.out))


if __name__ == "__main__":
    main()
