"""Optional simulator dependencies: import them on first use, with an error that names the
extra to install (``pip install "metalab[mujoco]"``) instead of a bare ModuleNotFoundError."""

from __future__ import annotations

import importlib
from types import ModuleType


def require(module: str, extra: str) -> ModuleType:
    """Import ``module``, or raise ImportError naming the metalab extra that provides it."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(f"{module} is needed here and is not installed: it comes with "
                          f"metalab's {extra!r} extra, pip install \"metalab[{extra}]\"") from error
