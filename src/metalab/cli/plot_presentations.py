"""``metalab plot --presentations RUN_DIR [RUN_DIR ...]``: accuracy per presentation number.

Santoro et al. (2016, Figure 2): in an episode shown as a sequence, the accuracy on the k-th
presentation of a class, one curve per run (MANN against its LSTM baseline), with 95%
intervals over episodes. Each run's ``presentations.json`` is written by
``benchmarks/mann_presentations.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

from metalab.cli.plot import _pyplot, _save

RESULT_FILE = "presentations.json"


def read_presentations(run_dir: Path) -> dict:
    path = run_dir / RESULT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{str(path)!r} does not exist; run "
                                f"`python benchmarks/mann_presentations.py {run_dir}` first")
    return json.loads(path.read_text())


def plot_presentation_results(results: list[dict], out: Path) -> Path:
    """One accuracy-vs-presentation curve per result (``label``, ``numbers``,
    ``accuracy``, ``ci95``)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for result in results:
        ax.errorbar(result["numbers"], result["accuracy"], yerr=result["ci95"], marker="o",
                    capsize=3, label=result["label"])
    ax.set_xlabel("presentation of the class within the episode")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    ax.set_xticks(results[0]["numbers"])
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return _save(fig, out)


def plot_presentations(run_dirs: list[Path], out: Path) -> Path:
    """The curves of the runs' ``presentations.json`` in one PNG."""
    return plot_presentation_results([read_presentations(run) for run in run_dirs], out)
