"""Atomic file writes and training checkpoints (write to a temporary name, then rename)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from metalab.datasets.atomic import atomic_file, atomic_torch_save

__all__ = ["CHECKPOINT", "atomic_torch_save", "atomic_write_text", "load_checkpoint"]

CHECKPOINT = "checkpoint.pt"


def atomic_write_text(path: Path, text: str) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(text)


def load_checkpoint(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / CHECKPOINT
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {str(path)!r}; was the run started?")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # a truncated or foreign file
        raise RuntimeError(f"checkpoint {str(path)!r} could not be read: {error}") from error
