"""``metalab plot --stream RUN_DIR [RUN_DIR ...]``: online meta-learning against the task
index (Finn et al. 2019, Fig. 3).

Each run's ``stream.json`` (written at the end of an online run) gives, per task index, the
examples to the proficiency threshold, the accuracy after a fixed small number of examples
and the cumulative held-out loss. Runs are grouped by protocol and stream (their
``config.yaml``); each group is drawn as its mean over runs (seeds) with a Student-t 95%
band. A task that never reaches the threshold counts as its examples + 1.
"""

from __future__ import annotations

import json
from pathlib import Path

from metalab.cli.plot import _pyplot, _save
from metalab.train.online import STREAM_FILE
from metalab.train.report import over_seeds
from metalab.train.run import read_run_config


def read_stream(run_dir: Path) -> dict:
    path = run_dir / STREAM_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{str(path)!r} does not exist; it is written at the end of "
                                f"an online run (metalab train ftml-rainbow-digits)")
    return json.loads(path.read_text())


def stream_curves(summary: dict) -> dict[str, list[float]]:
    """The three curves of one run against the task index."""
    tasks = summary["tasks"]
    return {
        "examples_to_threshold": [float(t["examples"] + 1 if t["examples_to_threshold"] is None
                                        else t["examples_to_threshold"]) for t in tasks],
        "accuracy_at_budget": [float("nan") if t["accuracy_at_budget"] is None
                               else t["accuracy_at_budget"] for t in tasks],
        "cumulative_loss": list(summary["cumulative_loss"])}


def _groups(run_dirs: list[Path]) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = {}
    for run in run_dirs:
        config = read_run_config(run)
        label = f"{config['online']['protocol']} ({config['data']['name']})"
        groups.setdefault(label, []).append(read_stream(run))
    return groups


def plot_stream(run_dirs: list[Path], out: Path) -> Path:
    plt = _pyplot()
    groups = _groups(run_dirs)
    first = next(iter(groups.values()))[0]
    titles = {"examples_to_threshold": f"examples to {first['threshold']:.0%} accuracy",
              "accuracy_at_budget": f"accuracy after {first['budget']} examples",
              "cumulative_loss": "cumulative held-out loss"}
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for label, summaries in groups.items():
        curves = [stream_curves(s) for s in summaries]
        for ax, key in zip(axes, titles, strict=True):
            length = min(len(c[key]) for c in curves)
            stats = [over_seeds([c[key][t] for c in curves]) for t in range(length)]
            means = [s["mean"] for s in stats]
            index = list(range(length))
            ax.plot(index, means, marker="o", markersize=3, label=f"{label}, n={len(curves)}")
            ax.fill_between(index, [s["mean"] - s["ci95"] for s in stats],
                            [s["mean"] + s["ci95"] for s in stats], alpha=0.2)
    for ax, title in zip(axes, titles.values(), strict=True):
        ax.set_xlabel("task index")
        ax.set_ylabel(title)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    _save(fig, out)
    plt.close(fig)
    return out
