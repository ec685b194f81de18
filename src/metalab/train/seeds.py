"""One config, several seeds: a run per seed in ``OUT/seed<N>/``, each evaluated.

This is what ``metalab train CONFIG --seeds 0,1,2 --out OUT`` calls, and what the
benchmarks use; `metalab.train.report.summarise_runs` then gives mean ± 95% CI over the
seeds.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from metalab.train import distributed
from metalab.train.run import CONFIG_FILE, evaluate_run, train_run


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` -> ``[0, 1, 2]``; ``"0-4"`` -> ``[0, 1, 2, 3, 4]`` (distinct integers)."""
    seeds: list[int] = []
    try:
        for part in text.split(","):
            first, dash, last = part.strip().partition("-")
            seeds += list(range(int(first), int(last) + 1)) if dash else [int(first)]
    except ValueError:
        raise ValueError(f"--seeds must be integers separated by commas (0,1,2) or a range "
                         f"(0-4), got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds must name distinct seeds, got {text!r}")
    return seeds


def seed_run_dir(out: str | Path, seed: int) -> Path:
    return Path(out) / f"seed{seed}"


def with_seed(config: dict[str, Any], seed: int) -> dict[str, Any]:
    """A copy of ``config`` with ``train.seed`` set (the initial parameters and the training
    tasks; the test episodes keep ``eval.seed``, so every seed is tested on the same tasks)."""
    config = copy.deepcopy(config)
    config["train"]["seed"] = int(seed)
    return config


def train_seeds(config: dict[str, Any], out: str | Path, seeds: Sequence[int],
                resume: bool = False, evaluate: bool = True,
                eval_options: dict[str, Any] | None = None) -> list[Path]:
    """Train ``config`` once per seed into ``out/seed<N>/`` and evaluate each run
    (`evaluate_run` with ``eval_options``: its ``eval.json``); returns the run directories.

    With ``resume``, a seed whose directory already holds a run is continued and the others
    are started.
    """
    run_dirs = []
    for seed in seeds:
        run_dir = seed_run_dir(out, seed)
        train_run(with_seed(config, seed), run_dir,
                  resume=resume and (run_dir / CONFIG_FILE).is_file())
        online = config.get("online") is not None  # scored along its stream instead
        if evaluate and not online and distributed.is_main_process():
            evaluate_run(run_dir, **(eval_options or {}))
        run_dirs.append(run_dir)
    return run_dirs
