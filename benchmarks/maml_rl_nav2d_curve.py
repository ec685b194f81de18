"""MAML-RL's learning curve on 2-D navigation from `metalab train maml-rl-nav2d` runs: the
mean return of the pre-update and the post-update (one inner step) episodes at every
meta-iteration, per seed, as the MAML paper's figure (its nav2d curve: the adapted return
rises well above the pre-update one). The runs are trained by the one trainer:

    OMP_NUM_THREADS=1 metalab train maml-rl-nav2d --out runs/maml-rl-nav2d/seed0 train.seed=0
    OMP_NUM_THREADS=1 metalab train maml-rl-nav2d --out runs/maml-rl-nav2d/seed1 train.seed=1
    python benchmarks/maml_rl_nav2d_curve.py runs/maml-rl-nav2d/seed0 runs/maml-rl-nav2d/seed1 \\
        --out benchmarks/results/maml_rl_nav2d_trpo

It writes OUT.png (the curves, a 10-iteration moving average over the raw points), OUT.md
and OUT.json (per run: iterations, environment steps, seconds, the pre/post means over the
first and the last 10 iterations, and each run's `eval.json` when it has one).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

from metalab.train.checkpoint import atomic_write_text


def read_records(run: Path) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, filter(str.strip, lines)) if r["split"] == "train"]


def steps_per_iteration(run: Path) -> int:
    """Environment steps per meta-iteration at most (pre + post: 2 x tasks x episodes x
    horizon; an episode that reaches the goal ends earlier)."""
    config = yaml.safe_load((run / "config.yaml").read_text())
    data = config["data"]
    return 2 * config["train"]["meta_batch"] * data["episodes"] * data.get("horizon", 100)


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def summary(run: Path) -> dict:
    records = read_records(run)
    first, last = records[:10], records[-10:]
    result = {"run": str(run), "iterations": records[-1]["step"],
              "env_steps_at_most": records[-1]["step"] * steps_per_iteration(run),
              "seconds": records[-1]["seconds"],
              "first10_pre": mean([r["return_pre"] for r in first]),
              "first10_post": mean([r["return"] for r in first]),
              "last10_pre": mean([r["return_pre"] for r in last]),
              "last10_post": mean([r["return"] for r in last]),
              "iterations_post_above_pre": sum(r["return"] > r["return_pre"] for r in records)}
    if (run / "eval.json").is_file():
        result["eval"] = json.loads((run / "eval.json").read_text())
    return result


def moving_average(values: list[float], window: int = 10) -> list[float]:
    return [mean(values[max(0, i - window + 1):i + 1]) for i in range(len(values))]


def plot(runs: list[Path], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for index, run in enumerate(runs):
        records = read_records(run)
        steps = [r["step"] for r in records]
        for key, label, style in (("return_pre", "pre-update", "--"),
                                  ("return", "after 1 step", "-")):
            values = [r[key] for r in records]
            color = f"C{2 * index + (key == 'return')}"
            ax.plot(steps, values, style, color=color, alpha=0.25, linewidth=0.8)
            ax.plot(steps, moving_average(values), style, color=color,
                    label=f"{run.name}: {label}")
    ax.set_xlabel("meta-iteration (TRPO step; 80k environment steps each at most)")
    ax.set_ylabel("mean return (20 tasks x 20 episodes)")
    ax.set_title("MAML-RL (DiCE inner step, TRPO outer step) on 2-D navigation")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=110)


def markdown(rows: list[dict]) -> str:
    lines = ["| run | iterations | env steps (at most) | wall s | pre / post, first 10 it. "
             "| pre / post, last 10 it. | it. with post > pre | eval: pre / after 1 step "
             "(mean ± 95% CI over test tasks) |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        evaluation = r.get("eval")
        cell = "-" if evaluation is None else (
            f"{evaluation['return_pre']:.1f} ± {evaluation['return_pre_ci95']:.1f} / "
            f"{evaluation['mean']:.1f} ± {evaluation['ci95']:.1f} "
            f"({evaluation['episodes']} tasks)")
        lines.append(f"| {r['run']} | {r['iterations']} | {r['env_steps_at_most']:,} | "
                     f"{r['seconds']:.0f} | {r['first10_pre']:.1f} / {r['first10_post']:.1f} | "
                     f"{r['last10_pre']:.1f} / {r['last10_post']:.1f} | "
                     f"{r['iterations_post_above_pre']} / {r['iterations']} | {cell} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, required=True, help="path without suffix")
    args = parser.parse_args()
    rows = [summary(run) for run in args.runs]
    plot(args.runs, args.out)
    atomic_write_text(args.out.with_suffix(".md"), markdown(rows))
    atomic_write_text(args.out.with_suffix(".json"), json.dumps(rows, indent=2) + "\n")
    print(markdown(rows), end="")


if __name__ == "__main__":
    main()
