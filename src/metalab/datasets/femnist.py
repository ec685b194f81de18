"""FEMNIST from LEAF's JSON files, one group per writer (user).

LEAF (Caldas et al. 2018, "LEAF: A Benchmark for Federated Settings") stores FEMNIST as JSON
files, each ``{"users": [...], "num_samples": [...], "user_data": {user: {"x": [...],
"y": [...]}}}`` where ``x`` holds flattened 28x28 images as floats in ``[0, 1]`` (1 is the
white background) and ``y`` labels in ``0..61`` (digits, then upper-case, then lower-case
letters, EMNIST "byclass" order).

ARM (Zhang, Marklund et al. 2021) treats every user as a group and evaluates on users not
seen in training. Its official code reads three folders of such files, ``train/``,
``val/`` and ``test/``, each holding whole users (the split the ARM authors published as a
download), takes the users in sorted order and inverts the images (``1 - x``) so that ink
is bright. This reader does the same:

* ``root/{train,val,test}/*.json`` (or under ``root/femnist/``): a published user
  split, read as it is;
* otherwise ``root/all_data/*.json`` (or ``root/data/all_data``, LEAF's output folder):
  all users, divided into train/val/test by a seeded permutation of the sorted user ids
  with ``user_fractions`` (default 0.8/0.1/0.1; this is metalab's choice, not ARM's,
  whose own division is only available as its published files).

Images are stored as uint8 (``round((1 - x) * 255)``); ``group_names`` are the user ids.
A malformed file raises :class:`CorruptDatasetError` naming it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .base import check_split
from .errors import CorruptDatasetError, MissingDatasetError
from .groups import GroupDataset
from .paths import resolve_root

SPLITS = ("train", "val", "test")
CLASS_NAMES = [str(d) for d in range(10)] + [chr(c) for c in range(ord("A"), ord("Z") + 1)] + [
    chr(c) for c in range(ord("a"), ord("z") + 1)
]
SIDE = 28


def read_leaf_file(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Users of one LEAF JSON file: ``{user: (uint8 images [n, 28, 28], labels [n])}``."""
    try:
        content = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptDatasetError(path, f"is not readable JSON ({exc})") from exc
    if not isinstance(content, dict) or not isinstance(content.get("user_data"), dict):
        raise CorruptDatasetError(path, "has no 'user_data' object (not a LEAF file?)")
    users = content.get("users", list(content["user_data"]))
    counts = content.get("num_samples")
    if not isinstance(users, list) or (counts is not None and len(counts) != len(users)):
        raise CorruptDatasetError(path, "'users' and 'num_samples' must be lists of equal length")
    result = {}
    for position, user in enumerate(users):
        data = content["user_data"].get(user)
        if not isinstance(data, dict) or "x" not in data or "y" not in data:
            raise CorruptDatasetError(path, f"user {user!r} has no 'x' and 'y' in 'user_data'")
        expected = None if counts is None else counts[position]
        result[str(user)] = _user_arrays(path, str(user), data["x"], data["y"], expected)
    return result


def _user_arrays(path: Path, user: str, xs: Any, ys: Any,
                 expected: int | None) -> tuple[np.ndarray, np.ndarray]:
    try:
        pixels = np.asarray(xs, dtype=np.float32)
        labels = np.asarray(ys, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise CorruptDatasetError(path, f"user {user!r}: x or y is not numeric ({exc})") from exc
    if labels.ndim != 1 or len(labels) != len(pixels):
        raise CorruptDatasetError(
            path, f"user {user!r} has {len(pixels)} images but {labels.size} labels"
        )
    if expected is not None and expected != len(labels):
        raise CorruptDatasetError(
            path, f"user {user!r}: num_samples says {expected} but x holds {len(labels)}"
        )
    if len(labels) == 0:
        return np.zeros((0, SIDE, SIDE), np.uint8), np.zeros(0, np.int64)
    if pixels.ndim != 2 or pixels.shape[1] != SIDE * SIDE:
        raise CorruptDatasetError(
            path, f"user {user!r}: images must be flattened 28x28 (784 values), got shape "
                  f"{pixels.shape}"
        )
    if not np.isfinite(pixels).all() or pixels.min() < 0 or pixels.max() > 1:
        raise CorruptDatasetError(path, f"user {user!r}: pixel values must lie in [0, 1]")
    if (labels != np.round(labels)).any() or labels.min() < 0 or labels.max() >= len(CLASS_NAMES):
        raise CorruptDatasetError(
            path, f"user {user!r}: labels must be integers in [0, {len(CLASS_NAMES)})"
        )
    images = np.round((1.0 - pixels) * 255).astype(np.uint8).reshape(-1, SIDE, SIDE)
    return images, labels.astype(np.int64)


def read_leaf_folder(folder: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """All users of the ``*.json`` files in ``folder``; a user in two files is an error."""
    files = sorted(folder.glob("*.json"))
    if not files:
        raise MissingDatasetError(folder, "holds no LEAF *.json files")
    users: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    origin: dict[str, Path] = {}
    for path in files:
        for user, arrays in read_leaf_file(path).items():
            if user in users:
                raise CorruptDatasetError(path, f"user {user!r} also appears in {origin[user]}")
            users[user], origin[user] = arrays, path
    return users


def find_layout(root: Path, split: str) -> tuple[Path, bool]:
    """The folder to read for ``split`` and whether it is a published split (else all data).

    A published split needs all three of ``train/``, ``val/`` and ``test/``: LEAF's own
    ``train/`` and ``test/`` folders divide each user's samples, not the users, and mixing
    them with a seeded division of ``all_data`` would put users in two splits.
    """
    for base in (root, root / "femnist"):
        if all((base / s).is_dir() and any((base / s).glob("*.json")) for s in SPLITS):
            return base / split, True
    for folder in (root / "all_data", root / "data" / "all_data", root / "femnist" / "all_data"):
        if folder.is_dir() and any(folder.glob("*.json")):
            return folder, False
    raise MissingDatasetError(
        root,
        f"no FEMNIST LEAF files: expected a published user split {root}/{{train,val,test}}/"
        f"*.json (as ARM's download) or {root / 'all_data'}/*.json (LEAF's preprocessing "
        f"output)",
    )


def split_users(users: list[str], split: str, fractions: tuple[float, float, float],
                seed: int) -> list[str]:
    """The users of ``split`` in a seeded division of the sorted ``users``."""
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-9:
        raise ValueError(
            f"user_fractions must be three non-negative fractions (train, val, test) summing "
            f"to 1, got {fractions!r}"
        )
    ordered = sorted(users)
    order = torch.randperm(len(ordered), generator=torch.Generator().manual_seed(int(seed)))
    cut_train = round(fractions[0] * len(ordered))
    cut_val = cut_train + round(fractions[1] * len(ordered))
    bounds = {"train": (0, cut_train), "val": (cut_train, cut_val),
              "test": (cut_val, len(ordered))}
    low, high = bounds[split]
    chosen = sorted(ordered[i] for i in order[low:high].tolist())
    if not chosen:
        raise ValueError(
            f"user_fractions={fractions!r} leaves split {split!r} without users "
            f"({len(ordered)} users in all)"
        )
    return chosen


class FEMNIST(GroupDataset):
    """FEMNIST with one group per user (see module docstring for the file layouts).

    Args:
        split: ``"train"``, ``"val"`` or ``"test"``.
        root: folder with the LEAF files (default: the metalab data folder for "femnist").
        user_fractions: (train, val, test) fractions of users when only ``all_data`` exists.
        seed: seed of that division.

    ``user_split`` is ``"published"`` or ``"seeded"``; ``files`` the folder read.
    """

    splits = SPLITS
    needs_files = True
    description = "group shift: LEAF FEMNIST JSON, one group per writer (62 classes)"
    root: Path
    user_split: str
    files: Path

    def __init__(self, split: str = "train", root: str | os.PathLike[str] | None = None,
                 user_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
                 seed: int = 0) -> None:
        check_split(split, SPLITS, "FEMNIST")
        self.root = resolve_root(root, "femnist")
        folder, published = find_layout(self.root, split)
        users = read_leaf_folder(folder)
        names = sorted(users) if published else split_users(
            list(users), split, tuple(user_fractions), seed)
        images = [users[name][0] for name in names]
        labels = [users[name][1] for name in names]
        sizes = [len(y) for y in labels]
        super().__init__(
            torch.from_numpy(np.concatenate(images)).unsqueeze(1),
            torch.from_numpy(np.concatenate(labels)),
            CLASS_NAMES,
            split,
            torch.arange(len(names)).repeat_interleave(torch.tensor(sizes)),
            names,
        )
        self.user_split = "published" if published else "seeded"
        self.files = folder


femnist = FEMNIST  # the old builder's name; same (split, root=None, **options) shape
