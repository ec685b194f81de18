"""``metalab plot --optimizers CURVES.json``: the learned-optimizer comparison.

Loss against optimizee step, one line per optimizer (the mean over seeds) with a band
from the lowest to the highest seed, one panel per setting (problem, horizon,
architecture). ``CURVES.json`` is what ``benchmarks/learned_optimizer.py`` writes:

    {"settings": [{"title": "...", "optimizers": {"Adam (lr=0.1)":
        {"mean": [...], "low": [...], "high": [...]}, ...}}, ...]}
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from metalab.cli.plot import _pyplot, _save


def read_optimizer_curves(path: Path) -> list[dict]:
    if not path.is_file():
        raise FileNotFoundError(f"{str(path)!r} does not exist; run "
                                f"benchmarks/learned_optimizer.py first")
    data = json.loads(path.read_text())
    if "settings" not in data:
        raise ValueError(f"{str(path)!r} has no 'settings': not a learned-optimizer curves file")
    return data["settings"]


def plot_optimizer_curves(settings: list[dict], out: Path) -> Path:
    """One panel per setting: each optimizer's mean loss per step, seed band shaded, log y."""
    plt = _pyplot()
    columns = min(3, len(settings))
    rows = math.ceil(len(settings) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(5.2 * columns, 3.8 * rows), squeeze=False)
    for ax, setting in zip(axes.flat, settings, strict=False):
        for name, curve in setting["optimizers"].items():
            steps = range(len(curve["mean"]))
            style = {"linewidth": 2.2, "color": "black"} if name.startswith("LSTM") else {}
            (line,) = ax.plot(steps, curve["mean"], label=name, **style)
            ax.fill_between(steps, curve["low"], curve["high"], alpha=0.2,
                            color=line.get_color())
        ax.set_yscale("log")
        ax.set_title(setting["title"], fontsize=9)
        ax.set_xlabel("optimizee step")
        ax.set_ylabel("loss")
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(settings):]:
        ax.axis("off")
    fig.tight_layout()
    return _save(fig, out)


def plot_optimizers_file(path: Path, out: Path | None = None) -> Path:
    """`plot_optimizer_curves` of a curves file, to ``out`` (default: beside it, .png)."""
    return plot_optimizer_curves(read_optimizer_curves(path), out or path.with_suffix(".png"))
