"""miniImageNet (Vinyals et al. 2016) with the Ravi & Larochelle class split.

Two on-disk forms are read, looked for in this order in ``root``:

1. ``mini-imagenet-cache-{train,val,test}.pkl``: pickled dicts with ``image_data``
   (uint8 ``[N, 84, 84, 3]``) and ``class_dict`` (class id -> list of row indices);
2. ``{train,val,test}.csv`` (columns ``filename,label``) with the images in ``images/``;
   decoded images are resized to ``image_size`` and cached per split.

64 train, 16 val and 20 test classes of 600 images each in the standard files. Pickles are
trusted input: only load files you obtained from a source you trust.
"""

from __future__ import annotations

import csv
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .base import ImageDataset, check_split
from .cache import cache_key, cache_path, file_fingerprint, load_or_build
from .errors import CorruptDatasetError, MissingDatasetError
from .paths import resolve_root

SPLITS = ("train", "val", "test")
DECODE_VERSION = 1


class MiniImageNet(ImageDataset):
    """miniImageNet split ``split`` as ``[3, image_size, image_size]`` images in ``[0, 1]``.

    ``root``: the folder with the cache pickles or the CSV files and ``images/`` (default:
    the metalab data folder for "mini-imagenet"); ``cache`` keeps the decoded CSV form.
    """

    splits = SPLITS
    needs_files = True
    description = "miniImageNet, Ravi & Larochelle split (cache pickles or images + CSV)"
    root: Path
    files: list[Path]

    def __init__(
        self,
        split: str = "train",
        root: str | os.PathLike[str] | None = None,
        image_size: int = 84,
        cache: bool = True,
    ) -> None:
        check_split(split, SPLITS, "miniImageNet")
        self.root = resolve_root(root, "mini-imagenet")
        pickle_path = self.root / f"mini-imagenet-cache-{split}.pkl"
        csv_path = self.root / f"{split}.csv"
        if pickle_path.is_file():
            images, labels, names = read_cache_pickle(pickle_path)
            if image_size != images.shape[-1]:
                images = _resize(images, image_size)
            self.files = [pickle_path]
        elif csv_path.is_file():
            key = cache_key(csv=file_fingerprint(csv_path), size=image_size, v=DECODE_VERSION)
            content = load_or_build(
                cache_path("mini-imagenet", split, key),
                lambda: read_csv_split(csv_path, self.root / "images", image_size),
                cache,
            )
            images, labels, names = content["images"], content["labels"], content["classes"]
            self.files = [csv_path, self.root / "images"]
        else:
            raise MissingDatasetError(
                self.root,
                f"no miniImageNet {split!r} split found: expected {pickle_path.name} "
                f"or {csv_path.name} with an images/ folder in {self.root}",
            )
        super().__init__(images, labels, names, split)


def read_cache_pickle(path: Path) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Images ``[N, 3, 84, 84]``, labels and class ids from a ``mini-imagenet-cache`` pickle."""
    data = _load_pickle(path)
    if not isinstance(data, dict) or "image_data" not in data or "class_dict" not in data:
        raise CorruptDatasetError(path, "expected a dict with 'image_data' and 'class_dict'")
    array = np.asarray(data["image_data"])
    if array.dtype != np.uint8 or array.ndim != 4 or array.shape[-1] != 3:
        raise CorruptDatasetError(
            path, f"image_data must be uint8 [N, H, W, 3], got {array.dtype} {array.shape}"
        )
    names = sorted(data["class_dict"])
    labels = np.full(len(array), -1, dtype=np.int64)
    for label, name in enumerate(names):
        rows = np.asarray(data["class_dict"][name], dtype=np.int64)
        if rows.size == 0:
            raise CorruptDatasetError(path, f"class {name!r} has no images")
        if rows.min() < 0 or rows.max() >= len(array):
            raise CorruptDatasetError(path, f"class {name!r} indexes rows outside image_data")
        labels[rows] = label
    keep = labels >= 0
    images = torch.from_numpy(array[keep]).permute(0, 3, 1, 2).contiguous()
    return images, torch.from_numpy(labels[keep]), [str(n) for n in names]


def _load_pickle(path: Path) -> Any:
    try:
        with open(path, "rb") as handle:
            try:
                return pickle.load(handle)  # noqa: S301 - documented: trusted files only
            except UnicodeDecodeError:
                handle.seek(0)
                return pickle.load(handle, encoding="latin1")  # noqa: S301
    except (pickle.UnpicklingError, EOFError, ValueError, OSError) as exc:
        raise CorruptDatasetError(
            path, f"cannot be unpickled: truncated or corrupt ({exc})"
        ) from exc


def read_csv_split(csv_path: Path, image_dir: Path, image_size: int) -> dict[str, Any]:
    """Decode the images listed in a ``filename,label`` CSV into one uint8 tensor."""
    from PIL import Image, UnidentifiedImageError

    rows = _read_rows(csv_path)
    names = sorted({label for _, label in rows})
    index = {name: i for i, name in enumerate(names)}
    if not image_dir.is_dir():
        raise MissingDatasetError(image_dir, f"images folder for {csv_path.name} not found")
    images = []
    for filename, _ in rows:
        path = image_dir / filename
        if not path.is_file():
            raise MissingDatasetError(path, f"image listed in {csv_path} not found")
        try:
            with Image.open(path) as image:
                rgb = image.convert("RGB")
                if rgb.size != (image_size, image_size):
                    rgb = rgb.resize((image_size, image_size), Image.Resampling.BILINEAR)
                images.append(torch.from_numpy(np.array(rgb, dtype=np.uint8)))
        except (UnidentifiedImageError, OSError, SyntaxError) as exc:
            raise CorruptDatasetError(path, f"is not a readable image ({exc})") from exc
    return {
        "images": torch.stack(images).permute(0, 3, 1, 2).contiguous(),
        "labels": torch.tensor([index[label] for _, label in rows], dtype=torch.long),
        "classes": names,
    }


def _read_rows(csv_path: Path) -> list[tuple[str, str]]:
    with open(csv_path, newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None or [h.strip() for h in header[:2]] != ["filename", "label"]:
            raise CorruptDatasetError(csv_path, f"expected header 'filename,label', got {header}")
        rows = [(r[0], r[1]) for r in reader if r]
    if not rows:
        raise CorruptDatasetError(csv_path, "lists no images")
    return rows


def _resize(images: torch.Tensor, size: int) -> torch.Tensor:
    resized = torch.nn.functional.interpolate(
        images.float(), size=size, mode="bilinear", antialias=True, align_corners=False
    )
    return resized.round().clamp(0, 255).to(torch.uint8)
