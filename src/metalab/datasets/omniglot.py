"""Omniglot (Lake, Salakhutdinov & Tenenbaum 2015) from the official files.

Example — the Vinyals character split of the full dataset, 28x28, with rotations::

    Omniglot("data/omniglot", "train", download=True, rotations=True)

Example — train on the alphabets of ``images_background_small1``, test on the held-out
alphabets of ``images_background_small2``::

    Omniglot(root, "train", split_by="alphabet", train_sources=["small1"],
             test_sources=["small2"])

See :mod:`metalab.datasets.omniglot_split` for exactly how train/val/test are formed.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .base import ImageDataset, to_float
from .base import check_split as check_split_name
from .cache import cache_key, cache_path, file_fingerprint, load_or_build
from .omniglot_files import (
    OmniglotSource,
    locate_source,
    open_source,
    png_from_bytes,
    source_paths,
)
from .omniglot_split import (
    SPLITS,
    check_split,
    split_by_alphabet,
    split_by_character,
    unique_in_order,
)
from .paths import resolve_root

ROTATIONS = (0, 90, 180, 270)
PREPROCESS_VERSION = 1


def omniglot_uint8(image: Any, image_size: int = 28) -> Tensor:
    """Omniglot preprocessing to uint8: strokes 255 on background 0, ``[1, S, S]``.

    ``image`` is a PIL image, a path to an image file, or a 2-D array (black strokes on
    white, as in the official 105x105 PNGs). It is converted to grayscale, inverted and
    resized to ``image_size`` with Lanczos filtering (antialiased).
    """
    from PIL import Image

    if isinstance(image, str | os.PathLike):
        with Image.open(image) as opened:
            image = opened.convert("L")
    elif isinstance(image, np.ndarray | Tensor):
        array = np.asarray(image)
        if array.dtype == bool:
            array = array.astype(np.uint8) * 255
        image = Image.fromarray(array.astype(np.uint8), mode="L")
    if image_size < 1:
        raise ValueError(f"image_size must be a positive int, got {image_size}")
    gray = image.convert("L")
    if gray.size != (image_size, image_size):
        gray = gray.resize((image_size, image_size), Image.Resampling.LANCZOS)
    # Inverting after the (clipped, symmetric) Lanczos resize equals inverting before it.
    strokes = 255 - np.asarray(gray, dtype=np.uint8)
    return torch.from_numpy(strokes.copy()).unsqueeze(0)


def preprocess_omniglot(image: Any, image_size: int = 28) -> Tensor:
    """Prepare an image exactly as :class:`Omniglot` items are prepared.

    Returns a float tensor ``[1, image_size, image_size]`` in ``[0, 1]`` with strokes
    near 1 on a background of 0 (see :func:`omniglot_uint8` for accepted inputs).
    """
    return to_float(omniglot_uint8(image, image_size))


class Omniglot(ImageDataset):
    """Omniglot characters as classes, read from the official folders or zip archives.

    Args:
        split: ``"train"``, ``"val"``, ``"test"`` or ``"trainval"`` (train + val).
        root: folder holding the archives (``images_background.zip`` …) or their extracted
            folders; ``None`` means ``<cache>/data/omniglot``.
        download: fetch missing archives from the official repository (sha256-verified,
            extracted atomically).
        image_size: side of the square output images (105 keeps the originals).
        rotations: add the 90/180/270-degree rotations of every character as new classes.
        split_by: ``"character"`` (Vinyals: 1200 trainval characters, the rest test) or
            ``"alphabet"`` (Lake: train-source alphabets vs held-out test-source alphabets).
        train_sources / test_sources: which of ``background``, ``evaluation``, ``small1``,
            ``small2`` form the train and test pools.
        val_alphabets: with ``split_by="alphabet"``, the train alphabets used for "val".
        shuffle_seed: with ``split_by="character"``, shuffle characters before splitting.
        cache: keep decoded images in a versioned tensor file under the cache directory.

    Each class has ``class_info`` with ``alphabet``, ``character``, ``rotation`` and
    ``source``; ``alphabets`` lists the alphabets present.
    """

    splits = SPLITS
    needs_files = True
    description = ("Omniglot handwritten characters (official archives; download=True "
                   "fetches them)")
    root: Path
    split_by: str
    image_size: int
    alphabets: list[str]
    rotations: bool

    def __init__(
        self,
        split: str = "train",
        root: str | os.PathLike[str] | None = None,
        download: bool = False,
        image_size: int = 28,
        rotations: bool = False,
        split_by: str = "character",
        train_sources: Sequence[str] = ("background",),
        test_sources: Sequence[str] = ("evaluation",),
        val_alphabets: Sequence[str] | None = None,
        shuffle_seed: int | None = None,
        cache: bool = True,
    ) -> None:
        check_split_name(split, SPLITS, "Omniglot")
        check_split(split, split_by)
        if int(image_size) < 1:
            raise ValueError(f"image_size must be a positive int, got {image_size}")
        if isinstance(train_sources, str) or isinstance(test_sources, str):
            raise ValueError("train_sources and test_sources must be sequences of source names")
        self.root = resolve_root(root, "omniglot")
        self.split_by = split_by
        self.image_size = int(image_size)
        sources = _needed_sources(split, split_by, list(train_sources), list(test_sources))
        options = {
            "split": split,
            "split_by": split_by,
            "train_sources": list(train_sources),
            "test_sources": list(test_sources),
            "val_alphabets": sorted(val_alphabets) if val_alphabets is not None else None,
            "shuffle_seed": shuffle_seed,
            "image_size": self.image_size,
            "preprocess": PREPROCESS_VERSION,
        }

        def build() -> dict[str, Any]:
            opened = {name: open_source(self.root, name, download) for name in sources}
            try:
                keys = _select_classes(opened, options)
                return _decode(opened, keys, self.image_size)
            finally:
                for source in opened.values():
                    source.close()

        _fetch_missing(self.root, sources, download)
        content = load_or_build(_cache_file(self.root, sources, options), build, enabled=cache)
        images, labels, classes = content["images"], content["labels"], content["classes"]
        if rotations:
            images, labels, classes = _rotate(images, labels, classes)
        names = ["/".join(c[:2]) + (f"/rot{c[3]:03d}" if rotations else "") for c in classes]
        info = [
            {"alphabet": c[0], "character": c[1], "source": c[2], "rotation": c[3]} for c in classes
        ]
        super().__init__(images, labels, names, split, info)
        self.alphabets = sorted({c[0] for c in classes})
        self.rotations = rotations


def _fetch_missing(root: Path, sources: Sequence[str], download: bool) -> None:
    """Download absent sources (or raise the error saying where to place them)."""
    for name, path in zip(sources, source_paths(root, sources), strict=True):
        if not path.exists():
            locate_source(root, name, download)


def _needed_sources(split: str, split_by: str, train: list[str], test: list[str]) -> list[str]:
    if split_by == "alphabet" and split != "test":
        needed = train
    else:
        needed = train + test
    if not needed:
        raise ValueError(f"no Omniglot sources to read for split {split!r}: sources are empty")
    return list(dict.fromkeys(needed))


def _cache_file(root: Path, sources: Sequence[str], options: dict[str, Any]) -> Path:
    prints = [file_fingerprint(path) for path in source_paths(root, sources)]
    return cache_path("omniglot", options["split"], cache_key(sources=prints, **options))


def _select_classes(
    opened: dict[str, OmniglotSource], options: dict[str, Any]
) -> list[tuple[str, str, str]]:
    """Ordered ``(alphabet, character, source)`` of the requested split."""
    origin: dict[tuple[str, str], str] = {}
    for name, source in opened.items():
        for key in source.characters:
            origin.setdefault(key, name)

    def pool(names: Sequence[str]) -> list[tuple[str, str]]:
        return unique_in_order([list(opened[n].characters) for n in names if n in opened])

    split = options["split"]
    if options["split_by"] == "character":
        all_sources = options["train_sources"] + options["test_sources"]
        keys = split_by_character(pool(all_sources), split, options["shuffle_seed"])
    else:
        keys = split_by_alphabet(
            pool(options["train_sources"]),
            pool(options["test_sources"]),
            split,
            options["val_alphabets"],
        )
    if not keys:
        raise ValueError(
            f"Omniglot split {split!r} (split_by={options['split_by']!r}) has no classes with "
            f"train_sources={options['train_sources']} and test_sources={options['test_sources']}"
        )
    return [(alphabet, character, origin[(alphabet, character)]) for alphabet, character in keys]


def _decode(
    opened: dict[str, OmniglotSource], keys: list[tuple[str, str, str]], image_size: int
) -> dict[str, Any]:
    images, labels = [], []
    for label, (alphabet, character, source) in enumerate(keys):
        for location, data in opened[source].read_drawings((alphabet, character)):
            image = png_from_bytes(data, location)
            images.append(omniglot_uint8(image, image_size))
            labels.append(label)
    return {
        "images": torch.stack(images),
        "labels": torch.tensor(labels, dtype=torch.long),
        "classes": [[a, c, s, 0] for a, c, s in keys],
    }


def _rotate(images: Tensor, labels: Tensor, classes: list) -> tuple[Tensor, Tensor, list]:
    """Every class four times: rotated by 0, 90, 180 and 270 degrees (counter-clockwise)."""
    n_classes = len(classes)
    rotated = [torch.rot90(images, k, dims=(-2, -1)) for k in range(len(ROTATIONS))]
    new_labels = [labels + k * n_classes for k in range(len(ROTATIONS))]
    new_classes = [[*c[:3], angle] for angle in ROTATIONS for c in classes]
    return torch.cat(rotated), torch.cat(new_labels), new_classes
