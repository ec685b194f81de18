"""Decoded-image caches: one versioned tensor file per dataset split.

A cache file name carries the format version and a hash of everything the content depends
on (source files' sizes and modification times, preprocessing options), so a change in
either gives a new file instead of stale data. Files are written atomically; a cache that
cannot be read is rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .atomic import atomic_torch_save
from .paths import cache_dir

CACHE_FORMAT = 1


def cache_key(**parts: Any) -> str:
    """Short stable hash of JSON-serialisable keyword arguments."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def file_fingerprint(path: Path) -> list[Any]:
    """``[path, size, mtime_ns]`` of a file or folder (folders: of the folder entry)."""
    stat = path.stat()
    return [str(path), stat.st_size, stat.st_mtime_ns]


def cache_path(dataset: str, split: str, key: str) -> Path:
    """``<cache>/<dataset>/<dataset>-<split>-v<format>-<key>.pt``."""
    return cache_dir() / dataset / f"{dataset}-{split}-v{CACHE_FORMAT}-{key}.pt"


def load_or_build(
    path: Path, build: Callable[[], dict[str, Any]], enabled: bool = True
) -> dict[str, Any]:
    """Return the cached dict at ``path``, or ``build()`` it and save it atomically."""
    if enabled and path.is_file():
        try:
            return torch.load(path, weights_only=True)
        except (OSError, RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile):
            pass  # unreadable cache: rebuild below and replace it
    content = build()
    if enabled:
        try:
            atomic_torch_save(content, path)
        except OSError:
            pass  # a read-only cache directory must not stop the dataset from loading
    return content
