"""Small argument checks shared by every layer (the bottom of the layering: imports nothing
from metalab).

Each check returns the accepted value (so ``self.order = check_choice("order", order,
ORDERS)`` reads as one line) and otherwise raises a ``ValueError`` naming the argument, the
expected value and the value it got: ``order must be one of ['random', 'fixed'], got 'x'``.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from typing import Any, TypeVar

T = TypeVar("T")


def check_choice(name: str, value: T, choices: Collection[Any]) -> T:
    """Return ``value`` if it is one of ``choices`` (a tuple, list, set or dict's keys)."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")
    return value


def check_positive_int(name: str, value: Any, minimum: int = 1) -> int:
    """Return ``value`` if it is an int (not a bool) ``>= minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def check_real(name: str, value: Any, minimum: float = 0.0, inclusive: bool = True) -> float:
    """Return ``value`` as a float if it is a finite number ``>= minimum`` (``>`` when not
    ``inclusive``); bools are refused."""
    ok = (isinstance(value, int | float) and not isinstance(value, bool)
          and math.isfinite(value) and (value >= minimum if inclusive else value > minimum))
    if not ok:
        bound = ">=" if inclusive else ">"
        raise ValueError(f"{name} must be a finite number {bound} {minimum}, got {value!r}")
    return float(value)


def check_interval(name: str, value: Any, allow_empty: bool = False) -> tuple[float, float]:
    """Return ``value`` as a ``(low, high)`` pair of floats with ``low < high`` (``low <=
    high`` when ``allow_empty``: a single point)."""
    try:
        low, high = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a (low, high) pair of numbers, got {value!r}") from None
    if not (low <= high if allow_empty else low < high):
        relation = "<=" if allow_empty else "<"
        raise ValueError(f"{name} must be a (low, high) pair with low {relation} high, "
                         f"got {value!r}")
    return low, high
