"""Omniglot class splits.

Classes are ``(alphabet, character)`` pairs taken from an ordered pool of sources, sorted by
alphabet then character within each source; a character present in several sources (the
small subsets repeat Greek and Latin, and are subsets of ``background``) counts once, at
its first occurrence.

``split_by="character"`` (Vinyals et al. 2016): the pool is the train sources followed by
the test sources. The first ``round(n * 1200 / 1623)`` characters are "trainval" (1200 of
the full 1623) and the rest are "test" (423). "val" is carved out of the trainval
characters as their last ``round(n * 100 / 1623)`` (100 of 1623, at least one), "train" is
the remainder (1100). With ``shuffle_seed`` the pool is shuffled first (MAML's protocol).
The proportions make the split meaningful on the small subsets too (136 characters: 93
train, 8 val, 35 test).

``split_by="alphabet"`` (Lake et al. 2015): "trainval" is every alphabet of the train
sources (``background``: 30 alphabets), "test" every alphabet of the test sources that is
not also a train alphabet (``evaluation``: 20; ``small1`` -> ``small2``: the 3 alphabets not
in small1). "val" is ``val_alphabets`` when given, else the last ``round(k / 6)``
(at least one) of the ``k`` sorted train alphabets (5 of 30); "train" is the rest.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

SPLITS = ("train", "val", "test", "trainval")
SPLIT_BY = ("character", "alphabet")
VINYALS_TOTAL, VINYALS_TRAINVAL, VINYALS_VAL = 1623, 1200, 100
VAL_ALPHABET_FRACTION = 1 / 6

ClassKey = tuple[str, str]


def check_split(split: str, split_by: str) -> None:
    """Raise a ValueError naming ``split``/``split_by`` when either is not valid."""
    if split not in SPLITS:
        raise ValueError(f"unknown Omniglot split {split!r}; expected one of {list(SPLITS)}")
    if split_by not in SPLIT_BY:
        raise ValueError(f"split_by must be one of {list(SPLIT_BY)}, got {split_by!r}")


def unique_in_order(groups: Sequence[Sequence[ClassKey]]) -> list[ClassKey]:
    """Concatenate class lists, keeping each class at its first occurrence."""
    seen: set[ClassKey] = set()
    out = []
    for group in groups:
        for key in group:
            if key not in seen:
                seen.add(key)
                out.append(key)
    return out


def split_by_character(
    pool: Sequence[ClassKey], split: str, shuffle_seed: int | None = None
) -> list[ClassKey]:
    """Select ``split`` from ``pool`` with Vinyals' proportions (see module docstring)."""
    pool = list(pool)
    if shuffle_seed is not None:
        order = torch.randperm(len(pool), generator=torch.Generator().manual_seed(shuffle_seed))
        pool = [pool[i] for i in order.tolist()]
    n = len(pool)
    n_trainval = round(n * VINYALS_TRAINVAL / VINYALS_TOTAL)
    n_val = max(1, round(n * VINYALS_VAL / VINYALS_TOTAL)) if n_trainval >= 2 else 0
    parts = {
        "trainval": pool[:n_trainval],
        "train": pool[: n_trainval - n_val],
        "val": pool[n_trainval - n_val : n_trainval],
        "test": pool[n_trainval:],
    }
    return parts[split]


def split_by_alphabet(
    train_pool: Sequence[ClassKey],
    test_pool: Sequence[ClassKey],
    split: str,
    val_alphabets: Sequence[str] | None = None,
) -> list[ClassKey]:
    """Select ``split`` by alphabet (see module docstring)."""
    train_alphabets = sorted({alphabet for alphabet, _ in train_pool})
    if split == "test":
        held_out = set(train_alphabets)
        return [key for key in test_pool if key[0] not in held_out]
    val = _val_alphabets(train_alphabets, val_alphabets)
    if split == "trainval":
        return list(train_pool)
    if split == "val":
        return [key for key in train_pool if key[0] in val]
    return [key for key in train_pool if key[0] not in val]


def _val_alphabets(train_alphabets: list[str], chosen: Sequence[str] | None) -> set[str]:
    if chosen is not None:
        unknown = sorted(set(chosen) - set(train_alphabets))
        if unknown:
            raise ValueError(
                f"val_alphabets {unknown} are not train alphabets; choose from {train_alphabets}"
            )
        return set(chosen)
    k = len(train_alphabets)
    n_val = max(1, round(k * VAL_ALPHABET_FRACTION)) if k >= 2 else 0
    return set(train_alphabets[k - n_val :])
