"""MAML-RL, RL² and PEARL on half-cheetah velocity: meta-test return against environment
steps, one figure from the three results files (nothing is re-measured here).

    python benchmarks/meta_rl_cheetah_plot.py --out benchmarks/results/meta_rl_cheetah_vel.png

Reads ``benchmarks/results/{maml_rl_cheetah_vel_curve,rl2_cheetah_vel,pearl_cheetah_vel}.json``
(written by maml_rl_cheetah_curve.py / meta_rl_cheetah_curve.py): the mean over seeds with
its ``t_{0.975, n-1} sd / sqrt(n)`` band, MAML-RL before and after one inner step, RL² per
episode of a trial, PEARL per meta-test episode (1: z from the prior, 2-3: posterior
sampling); the random and goal-blind references of the PEARL file as horizontal lines.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def env_steps(row: dict) -> float:
    """The environment steps of a results row (a number, or one per seed: their maximum)."""
    steps = row["env_steps"]
    return float(max(steps)) if isinstance(steps, list) else float(steps)


def series(path: Path) -> dict[str, list[tuple[float, float, float]]]:
    """``{label: [(env steps, mean, half-width), ...]}`` of one results file."""
    rows = json.loads(path.read_text())["meta_test"]
    curves: dict[str, list[tuple[float, float, float]]] = {}
    for row in rows:
        if "episodes" in row:
            points = {f"episode {k.removeprefix('return_episode')}": v
                      for k, v in row["episodes"].items()}
        else:
            points = {"before adaptation": row["return_pre"],
                      "after one step": row["return_post"]}
        for label, (mean, ci) in points.items():
            curves.setdefault(label, []).append((env_steps(row), mean, ci))
    return curves


def plot(out: Path, results: Path = RESULTS) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = (("MAML-RL", "maml_rl_cheetah_vel_curve", "tab:blue"),
             ("RL²", "rl2_cheetah_vel", "tab:orange"),
             ("PEARL", "pearl_cheetah_vel", "tab:green"))
    figure, ax = plt.subplots(figsize=(8, 5))
    for name, stem, color in files:
        for i, (label, points) in enumerate(series(results / f"{stem}.json").items()):
            x, y, ci = zip(*points, strict=True)
            style = ("-", "--", ":")[i % 3]
            ax.plot(x, y, style, color=color, marker="o", markersize=3,
                    label=f"{name}, {label}")
            ax.fill_between(x, [a - c for a, c in zip(y, ci, strict=True)],
                            [a + c for a, c in zip(y, ci, strict=True)], color=color,
                            alpha=0.08)
    floors = json.loads((results / "pearl_cheetah_vel.json").read_text())
    for value, label in ((floors["random_policy"]["mean"], "uniform random actions"),
                         (floors["goal_blind"]["standing"], "standing still"),
                         (floors["goal_blind"]["best_constant"], "best goal-blind velocity")):
        ax.axhline(value, color="grey", linewidth=0.8, linestyle="-.")
        ax.annotate(label, (1e4, value), fontsize=7, color="grey", va="bottom")
    ax.set_xscale("symlog", linthresh=1e4)  # linear up to 10k, logarithmic above
    ax.set_xlim(left=0)
    ax.set_xlabel("environment steps (training)")
    ax.set_ylabel("meta-test return (20 held-out velocities)")
    ax.set_title("half-cheetah velocity, 3 seeds (mean ± 95% CI over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    figure.tight_layout()
    figure.savefig(out, dpi=120)
    plt.close(figure)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=RESULTS / "meta_rl_cheetah_vel.png")
    print(plot(parser.parse_args().out))


if __name__ == "__main__":
    main()
