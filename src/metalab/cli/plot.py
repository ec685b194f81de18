"""``metalab plot``: training and validation curves of a run, or per-group results of runs.

``metalab plot RUN_DIR`` draws the curves of ``metrics.jsonl``; ``metalab plot --groups
RUN_DIR [RUN_DIR ...]`` draws, side by side, the per-group (or per-task) metric of each
run's ``eval.json`` with its 95% CI, for comparing methods under group shift;
``metalab plot --support-sizes RUN_DIR [...]`` draws each run's average and worst-group
metric against the number of unlabelled examples per test batch (the
``eval-test-support<N>.json`` files of ``metalab eval --support-size N``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from metalab.datasets.atomic import atomic_file


def read_metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{str(path)!r} does not exist; train the run first")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out: Path) -> Path:
    with atomic_file(out) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    fig.clf()
    return out


def read_group_results(run_dir: Path) -> dict:
    path = run_dir / "eval.json"
    if not path.is_file():
        raise FileNotFoundError(f"{str(path)!r} does not exist; run `metalab eval` first")
    result = json.loads(path.read_text())
    if "per_group" not in result:
        raise ValueError(f"{str(path)!r} has no per-group results: its evaluation batches "
                         f"carry no group or task ids")
    return result


def plot_groups(run_dirs: list[Path], out: Path) -> Path:
    """Grouped bars: one group of bars per group id, one bar per run, with 95% CIs."""
    plt = _pyplot()
    results = [read_group_results(run) for run in run_dirs]
    metric = results[0]["metric"]
    groups = sorted({int(g) for r in results for g in r["per_group"]})
    width = 0.8 / len(results)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.5 * len(groups) * len(results) + 2), 4))
    for i, (run, result) in enumerate(zip(run_dirs, results, strict=True)):
        table = {int(g): v for g, v in result["per_group"].items()}
        xs = [g + (i - (len(results) - 1) / 2) * width for g in groups]
        means = [table[g]["mean"] if g in table else float("nan") for g in groups]
        errors = [table[g]["ci95"] if g in table else 0.0 for g in groups]
        label = (f"{run.name} (avg {result[f'average_{metric}']:.3f}, "
                 f"worst {result[f'worst_group_{metric}']:.3f})")
        ax.bar(xs, means, width, yerr=errors, capsize=2, label=label)
    names = {int(g): v.get("name", g) for r in results for g, v in r["per_group"].items()}
    ax.set_xticks(groups, [str(names[g]) for g in groups], rotation=60 if len(groups) > 8
                  else 0, ha="right" if len(groups) > 8 else "center", fontsize=8)
    ax.set_xlabel("group")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, out)
    plt.close(fig)
    return out


def plot_curves(run_dir: Path, out: Path | None = None) -> Path:
    """Draw loss and metric per step for the train and val records of ``run_dir``."""
    plt = _pyplot()
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
    out = _save(fig, out or run_dir / "curves.png")
    plt.close(fig)
    return out


def read_support_size_results(run_dir: Path) -> list[tuple[int, dict]]:
    """``(support size, eval result)`` of a run's ablation files, by increasing size."""
    results = []
    for path in run_dir.glob("eval-test-support*.json"):
        match = re.fullmatch(r"eval-test-support(\d+)\.json", path.name)
        if match:
            results.append((int(match.group(1)), json.loads(path.read_text())))
    if not results:
        raise FileNotFoundError(f"{str(run_dir)!r} has no eval-test-support<N>.json; run "
                                f"`metalab eval {run_dir} --support-size N` first")
    return sorted(results, key=lambda item: item[0])


def plot_support_sizes(run_dirs: list[Path], out: Path) -> Path:
    """Average (solid) and worst-group (dashed) metric against the test batch size."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for index, run in enumerate(run_dirs):
        rows = read_support_size_results(run)
        metric = rows[0][1]["metric"]
        sizes = [size for size, _ in rows]
        for kind, style in (("average", "-o"), ("worst_group", "--s")):
            means = [r[f"{kind}_{metric}"] for _, r in rows]
            errors = [r[f"{kind}_ci95"] for _, r in rows]
            ax.errorbar(sizes, means, yerr=errors, fmt=style, capsize=2, markersize=4,
                        color=colors[index % len(colors)],
                        label=f"{run.name} ({kind.replace('_', ' ')})")
    ax.set_xscale("log")
    ax.set_xlabel("unlabelled examples per test batch")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    _save(fig, out)
    plt.close(fig)
    return out
