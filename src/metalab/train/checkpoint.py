"""Atomic file writes and training checkpoints (write to a temporary name, then rename)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from metalab.datasets.atomic import atomic_file, atomic_torch_save

__all__ = ["BEST_CHECKPOINT", "CHECKPOINT", "CHECKPOINTS", "atomic_torch_save",
           "atomic_write_text", "load_checkpoint"]

CHECKPOINT = "checkpoint.pt"  # the last state, for resuming
BEST_CHECKPOINT = "best.pt"  # the learner at its best validation (``train.keep_best``)
CHECKPOINTS = {"last": CHECKPOINT, "best": BEST_CHECKPOINT}


def atomic_write_text(path: Path, text: str) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(text)


def load_checkpoint(run_dir: Path, which: str = "last") -> dict[str, Any]:
    """The ``last`` checkpoint (``checkpoint.pt``) or the ``best`` one (``best.pt``)."""
    if which not in CHECKPOINTS:
        raise ValueError(f"checkpoint must be one of {sorted(CHECKPOINTS)}, got {which!r}")
    path = Path(run_dir) / CHECKPOINTS[which]
    if not path.is_file():
        why = ("was it trained with train.keep_best: true and validation?" if which == "best"
               else "was the run started?")
        raise FileNotFoundError(f"no checkpoint at {str(path)!r}; {why}")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # a truncated or foreign file
        raise RuntimeError(f"checkpoint {str(path)!r} could not be read: {error}") from error
