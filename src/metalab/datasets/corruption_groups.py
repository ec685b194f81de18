"""Corruption groups for group shift: every (corruption, severity) pair is one group.

ARM (Zhang, Marklund et al. 2021) groups corruptions this way.
ARM's CIFAR-10-C split, which :func:`corruption_groups` follows, is: train = gaussian and
shot noise, defocus, glass and zoom blur, snow, frost, brightness, contrast, pixelate (all
severities) + spatter and JPEG at severities 1-3 (56 groups); val = speckle noise,
gaussian blur, saturate + spatter 4, JPEG 5 (17 groups); test = impulse noise, motion
blur, fog, elastic transform + spatter 5, JPEG 4 (22 groups). Without the weather
corruptions this becomes 43 train, 16 val and 16 test groups (11 val groups on
single-channel images, where saturate is the identity and is dropped).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from typing import Any

from .corruptions import CORRUPTIONS, SEVERITIES, available_corruptions, check_severity

ARM_SPLIT: dict[str, tuple[tuple[str, ...], tuple[tuple[str, int], ...]]] = {
    "train": (
        ("gaussian_noise", "shot_noise", "defocus_blur", "glass_blur", "zoom_blur",
         "brightness", "contrast", "pixelate"),
        (("jpeg_compression", 1), ("jpeg_compression", 2), ("jpeg_compression", 3)),
    ),
    "val": (("speckle_noise", "gaussian_blur", "saturate"), (("jpeg_compression", 5),)),
    "test": (("impulse_noise", "motion_blur", "elastic_transform"), (("jpeg_compression", 4),)),
}
COLOUR_ONLY = ("saturate",)


def corruption_groups(split: str, channels: int = 3) -> list[tuple[str, int]]:
    """The (corruption, severity) groups of ``split`` in ARM's CIFAR-10-C split (see module
    docstring), without the weather corruptions; ``channels != 3`` drops saturate."""
    if split not in ARM_SPLIT:
        raise ValueError(f"unknown corruption split {split!r}; expected one of {list(ARM_SPLIT)}")
    names, extra = ARM_SPLIT[split]
    groups = [(name, s) for name in names for s in SEVERITIES] + list(extra)
    if channels != 3:
        groups = [(name, s) for name, s in groups if name not in COLOUR_ONLY]
    return groups


def group_list(corruptions: Sequence[str | tuple[str, int]], severities: Sequence[int],
               check_name: Callable[[Any], None] | None = None) -> list[tuple[str, int]]:
    """Distinct ``(corruption, severity)`` groups: each name at every one of ``severities``,
    pairs as given. ``check_name`` validates a name (default: one of the library's
    corruptions)."""
    if isinstance(corruptions, str) or not len(corruptions):
        raise ValueError(
            "corruptions must be a non-empty list of names or (name, severity) pairs, "
            f"got {corruptions!r}"
        )
    groups = []
    for item in corruptions:
        pairs = [(item, s) for s in severities] if isinstance(item, str) else [tuple(item)]
        for name, severity in pairs:
            (check_name or _check_known)(name)
            check_severity(severity)
            groups.append((name, int(severity)))
    if len(set(groups)) != len(groups):
        raise ValueError(f"corruption groups must be distinct, got {groups}")
    return groups


def _check_known(name: Any) -> None:
    if name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r}; available: {available_corruptions()}")


def group_seed(seed: int, name: str, severity: int) -> int:
    """Seed of one group's randomness: independent of which other groups are built."""
    return (int(seed) * 1_000_003 + zlib.crc32(name.encode()) * 7 + severity) % (2**63)
