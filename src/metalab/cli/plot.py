"""``metalab plot``: training and validation curves of a run, or per-group results of runs.

``metalab plot RUN_DIR`` draws the curves of ``metrics.jsonl`` (``--seeds RUN_DIR ...``: the
mean over runs with a 95% band; ``--x env_steps``: against environment steps, meta-RL);
``metalab plot --groups RUN_DIR [RUN_DIR ...]`` draws, side by side, the per-group (or
per-task) metric of each run's ``eval.json`` with its 95% CI, for comparing methods under
group shift;
``metalab plot --support-sizes RUN_DIR [...]`` draws each run's average and worst-group
metric against the number of unlabelled examples per test batch (the
``eval-test-support<N>.json`` files of ``metalab eval --support-size N``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from metalab.datasets.atomic import atomic_file
from metalab.train.report import over_seeds


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


X_LABELS = {"step": "meta-iteration", "env_steps": "environment steps"}


def seed_curve(runs_records: list[list[dict]], metric: str, split: str, x: str = "step"
               ) -> tuple[list[float], list[float], list[float]]:
    """The mean of ``metric`` over runs (seeds) and its Student-t 95% half-width at every
    ``x`` value that each run logged it at (records of ``split``)."""
    per_run = [{r[x]: r[metric] for r in records
                if r["split"] == split and metric in r and x in r} for records in runs_records]
    shared = sorted(set.intersection(*(set(points) for points in per_run)))
    stats = [over_seeds([points[v] for points in per_run]) for v in shared]
    return shared, [s["mean"] for s in stats], [s["ci95"] for s in stats]


def _curve_metrics(runs_records: list[list[dict]], x: str,
                   chosen: list[str] | None = None) -> list[str]:
    """Every logged metric (loss first), or the ``chosen`` ones after checking each."""
    keys = {k for records in runs_records for r in records for k in r}
    for option, names in (("--x", [x]), ("--metrics", chosen or [])):
        for name in names:
            if name not in keys:
                raise ValueError(f"{option} {name!r}: no record of the run(s) logs it; "
                                 f"logged keys: {sorted(keys - {'split'})}")
    if chosen:
        return list(chosen)
    return sorted(keys - {"step", "split", "seconds", "val_seconds", "ci95", x},
                  key=lambda k: (k != "loss", k))


def plot_curves(run_dirs: Path | list[Path], out: Path | None = None, x: str = "step",
                metrics: list[str] | None = None) -> Path:
    """Draw each metric (every logged one, or ``metrics``) against ``x`` (``step``, or any
    logged key such as ``env_steps``) for the train and val records: one run's values (val
    with its 95% CI over episodes), or for several runs (seeds) their mean with a Student-t
    95% band."""
    runs = [run_dirs] if isinstance(run_dirs, Path) else list(run_dirs)
    plt = _pyplot()
    runs_records = [read_metrics(run) for run in runs]
    metrics = _curve_metrics(runs_records, x, metrics)
    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 3.6), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        for split, style in (("train", "-"), ("val", "o-")):
            xs, values, band = seed_curve(runs_records, metric, split, x)
            if not xs:
                continue
            if len(runs) == 1:  # one run: the val records' own interval over episodes
                own = {r[x]: r.get("ci95", 0.0) for r in runs_records[0]
                       if r["split"] == split and metric in r and x in r}
                band = [0.0 if metric == "loss" else own[v] for v in xs]
            label = split if len(runs) == 1 else f"{split} (mean of {len(runs)} runs)"
            ax.plot(xs, values, style, label=label, markersize=3)
            if any(band):
                ax.fill_between(xs, [v - c for v, c in zip(values, band, strict=True)],
                                [v + c for v, c in zip(values, band, strict=True)], alpha=0.2)
        ax.set_xlabel(X_LABELS.get(x, x))
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(runs[0].name if len(runs) == 1 else ", ".join(r.name for r in runs))
    fig.tight_layout()
    out = _save(fig, out or runs[0] / "curves.png")
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
