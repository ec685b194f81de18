"""Where metalab keeps downloaded data and caches.

The cache directory is ``$METALAB_CACHE`` when set, else ``$XDG_CACHE_HOME/metalab``,
else ``~/.cache/metalab``. Dataset files fetched with ``download=True`` and no explicit
``root`` go to ``<cache>/data/<name>``.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """Return the user cache directory for metalab (not created here)."""
    explicit = os.environ.get("METALAB_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "metalab"


def default_root(name: str) -> Path:
    """Default data folder for the dataset ``name`` when the user gives no ``root``."""
    return cache_dir() / "data" / name


def resolve_root(root: str | os.PathLike[str] | None, name: str) -> Path:
    """Turn a user-supplied ``root`` (or None) into an absolute path."""
    path = default_root(name) if root is None else Path(root).expanduser()
    return path.resolve()
