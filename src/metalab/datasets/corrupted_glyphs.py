"""Corrupted glyphs: the embedded corruption-shift benchmark (fixed glyph classes under ARM's
disjoint train/val/test corruption groups; nothing is downloaded)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .base import ImageDataset, check_no_root, check_split
from .corrupted import CorruptedDataset
from .corruption_groups import corruption_groups
from .glyphs import Glyphs

GLYPH_SPLIT_FRACTIONS = {"train": (0.0, 0.6), "val": (0.6, 0.8), "test": (0.8, 1.0)}


def glyph_classification_set(split: str, alphabets: Sequence[str] = ("Latin",),
                             images_per_class: int = 30, image_size: int = 28,
                             drawer_seed: int = 0) -> ImageDataset:
    """A fixed-class glyph dataset: every class of ``alphabets``, its drawings divided
    60/20/20 into train/val/test (by drawing index), so all splits share the classes."""
    check_split(split, tuple(GLYPH_SPLIT_FRACTIONS), "glyph classification")
    glyphs = Glyphs("all", alphabets=list(alphabets), images_per_class=images_per_class,
                    image_size=image_size, seed=drawer_seed)
    low, high = GLYPH_SPLIT_FRACTIONS[split]
    first, last = round(low * images_per_class), round(high * images_per_class)
    if last <= first:
        raise ValueError(
            f"images_per_class={images_per_class} leaves split {split!r} without drawings; "
            f"use at least 5"
        )
    position = _rank_within_class(glyphs.labels)
    keep = (position >= first) & (position < last)
    return ImageDataset(glyphs.images[keep], glyphs.labels[keep], glyphs.class_names, split,
                        glyphs.class_info)


def _rank_within_class(labels: Tensor) -> Tensor:
    """For each item, how many items of its class come before it."""
    order = torch.argsort(labels, stable=True)
    ordered = labels[order]
    rank = torch.arange(len(labels)) - torch.searchsorted(ordered, ordered, side="left")
    position = torch.empty_like(rank)
    position[order] = rank
    return position


class CorruptedGlyphs(CorruptedDataset):
    """Embedded corruption-shift benchmark: glyphs of fixed classes under corruptions.

    The classes are the characters of ``alphabets`` (default the Latin letters that survive
    the glyph builder's look-alike filter: 49 of A-Z, a-z), so one classifier serves every
    split; the drawings are split 60/20/20 (:func:`glyph_classification_set`). The groups
    are ARM's disjoint train/val/test corruption groups for single-channel images
    (:func:`~metalab.datasets.corruption_groups.corruption_groups`): 43 train, 11 val and
    16 test groups. ``root`` must be None: nothing is downloaded.
    """

    splits = tuple(GLYPH_SPLIT_FRACTIONS)
    description = ("group shift: embedded glyphs under corruption x severity groups "
                   "(disjoint train/test)")

    def __init__(self, split: str = "train", root: None = None, seed: int = 0,
                 alphabets: Sequence[str] = ("Latin",), images_per_class: int = 30,
                 image_size: int = 28, images_per_group: int | None = None) -> None:
        check_split(split, self.splits, "corrupted glyphs")
        check_no_root(root, "corrupted glyphs")
        base = glyph_classification_set(split, alphabets, images_per_class, image_size)
        super().__init__(base, corruption_groups(split, channels=base.images.shape[1]),
                         seed=seed, images_per_group=images_per_group)


corrupted_glyphs = CorruptedGlyphs  # the old builder's name; same (split, root=None, ...) shape
