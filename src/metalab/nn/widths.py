"""Channel widths of a backbone's stages, scaled by a width multiplier."""

from __future__ import annotations

from collections.abc import Sequence


def stage_channels(base: Sequence[int], width: float, channels: Sequence[int] | None,
                   what: str) -> list[int]:
    """``channels`` if given, else ``base`` scaled by ``width`` (at least 1 each); it must
    have as many entries as ``base`` (``what`` names them in the error)."""
    if channels is None:
        if width <= 0:
            raise ValueError(f"width must be positive, got {width}")
        channels = [max(1, round(c * width)) for c in base]
    if len(channels) != len(base):
        raise ValueError(f"channels must give {len(base)} {what} widths, got {list(channels)}")
    return list(channels)
