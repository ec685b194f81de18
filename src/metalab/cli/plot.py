"""``metalab plot RUN_DIR``: training and validation curves as a PNG."""

from __future__ import annotations

import json
from pathlib import Path

from metalab.datasets.atomic import atomic_file


def read_metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{str(path)!r} does not exist; train the run first")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_curves(run_dir: Path, out: Path | None = None) -> Path:
    """Draw loss and metric per step for the train and val records of ``run_dir``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(run_dir)
    metrics = sorted({k for r in records for k in r} - {"step", "split", "seconds", "ci95"},
                     key=lambda k: (k != "loss", k))
    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 3.6), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        for split, style in (("train", "-"), ("val", "o-")):
            rows = [r for r in records if r["split"] == split and metric in r]
            if not rows:
                continue
            steps = [r["step"] for r in rows]
            values = [r[metric] for r in rows]
            ax.plot(steps, values, style, label=split, markersize=3)
            if split == "val" and "ci95" in rows[0] and metric != "loss":
                ci = [r["ci95"] for r in rows]
                ax.fill_between(steps, [v - c for v, c in zip(values, ci, strict=True)],
                                [v + c for v, c in zip(values, ci, strict=True)], alpha=0.2)
        ax.set_xlabel("meta-iteration")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(run_dir.name)
    fig.tight_layout()
    out = out or run_dir / "curves.png"
    with atomic_file(out) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return out
