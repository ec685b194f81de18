"""Atomic writes: files and folders appear complete under their final name or not at all.

Everything is written under a temporary name in the destination's own folder (same file
system) and moved into place with ``os.replace``; on any error the temporary is removed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch


def default_file_mode() -> int:
    """The mode ``open(path, "w")`` gives a new file: ``0o666`` less the umask."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is renamed to ``path``."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with tmp.open("rb") as written:  # on disk before the rename makes it visible
            os.fsync(written.fileno())
        os.chmod(tmp, default_file_mode())  # mkstemp's 0600, as if opened normally
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_extraction(dest: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary folder to unpack an archive into; its ``dest.name`` entry then
    becomes ``dest`` by one rename. ``dest`` must not exist (never overwritten); the
    temporary folder is removed whatever happens.
    """
    final = Path(dest)
    if final.exists():
        raise FileExistsError(f"{final}: already exists; refusing to overwrite it")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        yield tmp
        os.replace(tmp / final.name, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def atomic_torch_save(obj: Any, path: str | os.PathLike[str]) -> None:
    """``torch.save`` to ``path`` atomically."""
    with atomic_file(path) as tmp:
        torch.save(obj, tmp)
