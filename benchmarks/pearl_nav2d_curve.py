"""PEARL's learning curve on 2-D navigation from `metalab train pearl-nav2d` runs: the
meta-test adaptation curve (return of the 1st episode, z from the prior, and of the 2nd and
3rd, z from the posterior of the task's transitions so far) at saved checkpoints, against
the environment steps spent, and a uniformly random policy on the same test tasks.

    OMP_NUM_THREADS=1 metalab train pearl-nav2d --out runs/pearl/seed0 train.seed=0 \\
        train.steps=10000 train.checkpoint_every=1000      # and seeds 1, 2
    # copies of checkpoint.pt taken as the run went: runs/pearl/seed0/ckpt-*.pt
    python benchmarks/pearl_nav2d_curve.py runs/pearl/seed0 runs/pearl/seed1 ... \\
        --out benchmarks/results/pearl_nav2d

Each checkpoint copy is evaluated by `metalab.train.evaluate_run` (the path of `metalab
eval`: 40 test tasks, ``eval.seed``) in a scratch run directory holding the run's config
and that checkpoint. Writes OUT.md, OUT.json and OUT.png.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import torch
import yaml

from metalab.train import evaluate_run
from metalab.train.checkpoint import atomic_write_text
from metalab.train.sources import build_task_source

EPISODES = ("return_episode1", "return_episode2", "return_episode3")


def read_records(run: Path) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, filter(str.strip, lines)) if r["split"] == "train"]


def evaluate_checkpoint(run: Path, checkpoint: Path) -> dict:
    """`evaluate_run` on a scratch directory with ``run``'s config and ``checkpoint``
    (kept next to it as ``.json``; an existing one is read instead)."""
    cached = checkpoint.with_suffix(".json")
    if cached.is_file():
        return json.loads(cached.read_text())
    state = torch.load(checkpoint, weights_only=False, map_location="cpu")
    with tempfile.TemporaryDirectory() as scratch:
        shutil.copy(run / "config.yaml", Path(scratch) / "config.yaml")
        shutil.copy(checkpoint, Path(scratch) / "checkpoint.pt")
        result = evaluate_run(scratch)
    result["env_steps"] = state["learner"]["_extra_state"]["env_steps"]
    atomic_write_text(cached, json.dumps(result, indent=1) + "\n")
    return result


def test_environment(config: dict, tasks: int = 40):
    """The goals `metalab eval` draws (its test source, ``eval.seed``) and the family's
    `PointNavigation` (square or half-circle goals, horizon, early end as configured)."""
    seed = config.get("eval", {}).get("seed", 1234)
    batch = build_task_source(config, "test", tasks, seed=seed).sample()
    return batch.tasks.double(), batch.family.env


def run_actions(env, goals: torch.Tensor, actions) -> torch.Tensor:
    """``[T, runs]`` returns of the episodes whose step-``t`` actions are ``actions(t,
    positions)`` (the environment's clipping, early end and reward)."""
    positions = env.initial_positions(goals, 4)
    alive, total = torch.ones(positions.shape[:2], dtype=goals.dtype), 0.0
    for step in range(env.horizon):
        moved, reward, done = env.step(positions, actions(step, positions), goals)
        total = total + reward * alive
        positions = torch.where(alive.bool().unsqueeze(-1), moved, positions)
        alive = alive * (~done).to(alive.dtype)
    return total


def mean_ci(returns: torch.Tensor) -> tuple[float, float]:
    per_task = returns.mean(dim=1)
    return per_task.mean().item(), 1.96 * per_task.std().item() / len(per_task) ** 0.5


def staying_return(config: dict) -> float:
    """The return of the goal-blind policy that stays at the origin (``-H ||g||`` without
    an early end), mean over the test goals."""
    goals, env = test_environment(config)
    return mean_ci(run_actions(env, goals, lambda t, p: torch.zeros_like(p)))[0]


def random_policy_return(config: dict, seed: int = 0) -> tuple[float, float]:
    """Mean and 95% CI over the test tasks of a uniformly random policy's return."""
    goals, env = test_environment(config)
    generator = torch.Generator().manual_seed(seed)
    return mean_ci(run_actions(env, goals, lambda t, p: (
        2 * torch.rand(p.shape, generator=generator, dtype=p.dtype) - 1) * env.max_action))


def best_blind_return(config: dict, goals_fitted: int = 4000, iterations: int = 400,
                      seed: int = 0) -> tuple[float, float]:
    """The best goal-blind policy: on a deterministic environment that starts at the
    origin a policy that does not know the goal is one fixed path, so this is the path of
    ``H`` actions (``max_action tanh(w)``) that maximises the mean return over
    ``goals_fitted`` goals of the family (Adam on ``w``, no early end), scored on the test
    goals with the environment's own rules."""
    _, env = test_environment(config)
    goals = env.sample_tasks(goals_fitted, torch.Generator().manual_seed(seed))
    w = torch.zeros(env.horizon, 2, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.Adam([w], lr=0.05)
    for _ in range(iterations):
        path = (env.max_action * torch.tanh(w)).cumsum(0)  # [H, 2] positions after each step
        loss = (path[None] - goals[:, None]).norm(dim=-1).sum(1).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    actions = (env.max_action * torch.tanh(w)).detach()
    test_goals, _ = test_environment(config)
    return mean_ci(run_actions(env, test_goals,
                               lambda t, p: actions[t].expand_as(p).to(p.dtype)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--title", default="2-D navigation")
    parser.add_argument("--evaluate-only", action="store_true",
                        help="evaluate the checkpoint copies (cached) and stop")
    args = parser.parse_args()
    if args.evaluate_only:
        for run in args.runs:
            for checkpoint in sorted(run.glob("ckpt-*.pt")):
                print(run.name, evaluate_checkpoint(run, checkpoint)["step"], flush=True)
        return
    summary = {"runs": {}, "title": args.title}
    for run in args.runs:
        checkpoints = sorted(run.glob("ckpt-*.pt"))
        evaluations = sorted((evaluate_checkpoint(run, c) for c in checkpoints),
                             key=lambda r: r["step"])
        records = read_records(run)
        summary["runs"][run.name] = {"evaluations": evaluations,
                                     "train_steps": records[-1]["step"],
                                     "seconds": records[-1]["seconds"]}
    config = yaml.safe_load((args.runs[0] / "config.yaml").read_text())
    summary["random_policy"] = dict(zip(("mean", "ci95"), random_policy_return(config),
                                        strict=True))
    summary["stay_at_origin"] = staying_return(config)
    summary["best_goal_blind"] = dict(zip(("mean", "ci95"), best_blind_return(config),
                                          strict=True))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out.with_suffix(".json"), json.dumps(summary, indent=1) + "\n")
    lines = ["| run | gradient steps | env steps | test return ep. 1 (prior) | ep. 2 "
             "(posterior) | ep. 3 (posterior) |", "|---|---|---|---|---|---|"]
    for name, run in summary["runs"].items():
        for r in run["evaluations"]:
            cells = " | ".join(f"{r[k]:.1f} ± {r[k + '_ci95']:.1f}" for k in EPISODES)
            lines.append(f"| {name} | {r['step']} | {r['env_steps']} | {cells} |")
    random = summary["random_policy"]
    lines.append(f"\nUniformly random policy on the same 40 test tasks: "
                 f"{random['mean']:.1f} ± {random['ci95']:.1f}; staying at the origin "
                 f"(goal-blind): {summary['stay_at_origin']:.1f}; the best goal-blind "
                 f"path: {summary['best_goal_blind']['mean']:.1f} ± "
                 f"{summary['best_goal_blind']['ci95']:.1f}.")
    atomic_write_text(args.out.with_suffix(".md"), "\n".join(lines) + "\n")
    plot(summary, args.out.with_suffix(".png"))
    print("\n".join(lines))


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6.5, 4))
    styles = dict(zip(EPISODES, ("o-", "s--", "^:"), strict=True))
    for index, (name, run) in enumerate(summary["runs"].items()):
        color = f"C{index}"
        for key in EPISODES:
            points = [(r["env_steps"], r[key]) for r in run["evaluations"]]
            if points:
                xs, ys = zip(*points, strict=True)
                axis.plot(xs, ys, styles[key], color=color, markersize=3,
                          label=f"{name} {key.replace('return_', '')}")
    axis.axhline(summary["random_policy"]["mean"], color="gray", lw=1, label="random policy")
    axis.axhline(summary["stay_at_origin"], color="black", lw=1, ls=":",
                 label="stay at the origin")
    if "best_goal_blind" in summary:
        axis.axhline(summary["best_goal_blind"]["mean"], color="black", lw=1, ls="--",
                     label="best goal-blind path")
    axis.set_xlabel("environment steps")
    axis.set_ylabel("meta-test return (40 tasks)")
    axis.set_title(f"PEARL, {summary.get('title', '2-D navigation')}")
    axis.legend(fontsize=6, ncol=2)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
