"""``metalab plot --adaptation RUN [RUN ...]``: meta-test return against adaptation.

The adaptation curve of a meta-RL evaluation: the return after each inner step (MAML-RL's
``return_step0 .. K``, or ``return_pre`` and ``return`` for one step) or in each episode of a
trial (RL² and PEARL's ``return_episode1 .. K``). Each argument is an evaluation JSON that
``metalab eval`` wrote, or a run directory (its ``eval.json``). One file: its points with the
95% interval over test tasks; several (seeds of one config): their mean with a Student-t 95%
interval over the files.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from metalab.cli.plot import _pyplot, _save
from metalab.train.report import over_seeds


def read_evaluation(path: Path) -> dict:
    """The evaluation JSON at ``path``, or ``path/eval.json`` for a run directory."""
    file = path / "eval.json" if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"{str(file)!r} does not exist; run `metalab eval "
                                f"{path}` first (or name an eval-*.json file)")
    return json.loads(file.read_text())


def _numbered(result: dict, prefix: str) -> list[int]:
    pattern = re.compile(rf"^{prefix}(\d+)$")
    return sorted(int(m.group(1)) for m in map(pattern.match, result) if m)


def adaptation_curve(result: dict) -> tuple[str, list[int], list[float], list[float]]:
    """``(x label, points, returns, 95% intervals over tasks)`` of one evaluation."""
    episodes = _numbered(result, "return_episode")
    if episodes:
        points, label = episodes, "episode of the trial"
        keys = [f"return_episode{k}" for k in points]
    elif _numbered(result, "return_step"):
        points = _numbered(result, "return_step")
        keys, label = [f"return_step{k}" for k in points], "inner steps"
    elif "return_pre" in result:
        points = [0, int(result.get("inner_steps", 1))]
        keys, label = ["return_pre", "mean"], "inner steps"
    else:
        raise ValueError("the evaluation has no adaptation curve: it needs return_episode<K> "
                         "(RL², PEARL), return_step<K> or return_pre (MAML-RL) entries")
    returns = [float(result[k]) for k in keys]
    intervals = [float(result.get("ci95" if k == "mean" else f"{k}_ci95", 0.0)) for k in keys]
    return label, points, returns, intervals


def mean_curve(results: list[dict]) -> tuple[str, list[int], list[float], list[float]]:
    """One evaluation's curve, or the mean over several with a Student-t interval."""
    curves = [adaptation_curve(r) for r in results]
    label, points = curves[0][0], curves[0][1]
    if any(c[1] != points for c in curves):
        raise ValueError(f"the evaluations' adaptation points differ: "
                         f"{[c[1] for c in curves]}; compare evaluations of one protocol")
    if len(curves) == 1:
        return curves[0]
    stats = [over_seeds([c[2][i] for c in curves]) for i in range(len(points))]
    return label, points, [s["mean"] for s in stats], [s["ci95"] for s in stats]


def plot_adaptation(paths: list[Path], out: Path) -> Path:
    """The adaptation curve of the evaluations at ``paths`` (see the module doc)."""
    results = [read_evaluation(p) for p in paths]
    label, points, returns, intervals = mean_curve(results)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    name = paths[0].name if len(paths) == 1 else f"mean of {len(paths)} evaluations"
    ax.errorbar(points, returns, yerr=intervals, marker="o", capsize=3, label=name)
    ax.set_xlabel(label)
    ax.set_ylabel("meta-test return")
    ax.set_xticks(points)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return _save(fig, out)
