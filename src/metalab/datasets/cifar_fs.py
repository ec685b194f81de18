"""CIFAR-FS (Bertinetto et al. 2019): CIFAR-100 with a 64/16/20 few-shot class split.

Reads the CIFAR-100 python version: ``root/cifar-100-python/{train,test,meta}`` (or those
files directly in ``root``), or the ``cifar-100-python.tar.gz`` archive in ``root``, which
is extracted atomically next to itself. Both CIFAR-100 sets are pooled, so each class has
600 images of 32x32 RGB.
"""

from __future__ import annotations

import os
import pickle
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .atomic import atomic_extraction
from .base import ImageDataset, check_split
from .errors import CorruptDatasetError, MissingDatasetError
from .paths import resolve_root

SPLITS = ("train", "val", "test")
FOLDER = "cifar-100-python"
ARCHIVE = "cifar-100-python.tar.gz"

# Bertinetto et al., "Meta-learning with differentiable closed-form solvers" (ICLR 2019).
CLASSES: dict[str, tuple[str, ...]] = {
    "train": (
        "dolphin", "seal", "aquarium_fish", "ray", "trout", "orchid", "sunflower", "tulip",
        "bottle", "bowl", "can", "cup", "plate", "apple", "mushroom", "orange", "pear",
        "clock", "keyboard", "chair", "couch", "bee", "caterpillar", "cockroach", "bear",
        "lion", "tiger", "wolf", "bridge", "castle", "house", "road", "skyscraper", "cloud",
        "forest", "mountain", "elephant", "kangaroo", "porcupine", "possum", "raccoon",
        "skunk", "lobster", "spider", "boy", "girl", "dinosaur", "lizard", "snake", "turtle",
        "hamster", "mouse", "rabbit", "shrew", "squirrel", "oak_tree", "palm_tree",
        "pine_tree", "willow_tree", "bus", "train", "lawn_mower", "streetcar", "tank",
    ),
    "val": (
        "beaver", "otter", "flatfish", "shark", "lamp", "television", "beetle", "butterfly",
        "sea", "camel", "cattle", "crab", "crocodile", "maple_tree", "motorcycle", "tractor",
    ),
    "test": (
        "whale", "poppy", "rose", "sweet_pepper", "telephone", "bed", "table", "wardrobe",
        "leopard", "plain", "chimpanzee", "fox", "snail", "worm", "baby", "man", "woman",
        "bicycle", "pickup_truck", "rocket",
    ),
}  # fmt: skip


class CIFARFS(ImageDataset):
    """CIFAR-FS split ``split`` as ``[3, 32, 32]`` images; labels follow ``CLASSES[split]``.

    ``root``: the folder with ``cifar-100-python/`` or its archive (default: the metalab
    data folder for "cifar-fs").
    """

    splits = SPLITS
    needs_files = True
    description = "CIFAR-FS: CIFAR-100 python pickles with the Bertinetto et al. class split"
    root: Path
    files: list[Path]

    def __init__(self, split: str = "train", root: str | os.PathLike[str] | None = None
                 ) -> None:
        check_split(split, SPLITS, "CIFAR-FS")
        self.root = resolve_root(root, "cifar-fs")
        folder = locate_cifar100(self.root)
        names = _fine_label_names(folder / "meta")
        images, fine = [], []
        for part in ("train", "test"):
            data, labels = _read_part(folder / part)
            images.append(data)
            fine.append(labels)
        all_images, all_fine = np.concatenate(images), np.concatenate(fine)
        wanted = CLASSES[split]
        missing = [c for c in wanted if c not in names]
        if missing:
            raise CorruptDatasetError(folder / "meta", f"lacks CIFAR-100 classes {missing}")
        fine_to_label = np.full(len(names), -1, dtype=np.int64)
        for label, name in enumerate(wanted):
            fine_to_label[names.index(name)] = label
        labels = fine_to_label[all_fine]
        keep = labels >= 0
        tensor = torch.from_numpy(all_images[keep].reshape(-1, 3, 32, 32).copy())
        super().__init__(tensor, torch.from_numpy(labels[keep]), list(wanted), split)
        self.files = [folder]


def locate_cifar100(root: Path) -> Path:
    """Folder holding ``train``, ``test`` and ``meta``; extracts the archive if needed."""
    for folder in (root / FOLDER, root):
        if all((folder / part).is_file() for part in ("train", "test", "meta")):
            return folder
    archive = root / ARCHIVE
    if archive.is_file():
        return extract_tar(archive, root / FOLDER)
    raise MissingDatasetError(
        root / FOLDER,
        f"CIFAR-100 python files not found; place {ARCHIVE} (from "
        "https://www.cs.toronto.edu/~kriz/cifar.html) in "
        f"{root}, or its extracted {FOLDER}/ folder with train, test and meta",
    )


def extract_tar(archive: Path, dest: Path) -> Path:
    """Extract a tar archive whose top folder is ``dest.name``, atomically."""
    with atomic_extraction(dest) as tmp:
        try:
            with tarfile.open(archive) as tar:
                if hasattr(tarfile, "data_filter"):
                    tar.extractall(tmp, filter="data")
                else:  # Python without extraction filters: refuse unsafe member paths
                    _check_members(tar, archive)
                    tar.extractall(tmp)  # noqa: S202
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise CorruptDatasetError(archive, f"is truncated or corrupt ({exc})") from exc
        if not (tmp / dest.name).is_dir():
            raise CorruptDatasetError(archive, f"holds no top-level folder {dest.name!r}")
    return dest


def _check_members(tar: tarfile.TarFile, archive: Path) -> None:
    for member in tar.getmembers():
        parts = Path(member.name).parts
        if member.name.startswith("/") or ".." in parts or member.issym() or member.islnk():
            raise CorruptDatasetError(archive, f"unsafe member {member.name!r}")


def _unpickle(path: Path) -> dict[Any, Any]:
    try:
        with open(path, "rb") as handle:
            data = pickle.load(handle, encoding="bytes")  # noqa: S301 - CIFAR's own format
    except (pickle.UnpicklingError, EOFError, ValueError, OSError) as exc:
        raise CorruptDatasetError(
            path, f"cannot be unpickled: truncated or corrupt ({exc})"
        ) from exc
    if not isinstance(data, dict):
        raise CorruptDatasetError(path, "expected a pickled dict")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in data.items()}


def _fine_label_names(path: Path) -> list[str]:
    meta = _unpickle(path)
    if "fine_label_names" not in meta:
        raise CorruptDatasetError(path, "has no 'fine_label_names'")
    return [n.decode() if isinstance(n, bytes) else str(n) for n in meta["fine_label_names"]]


def _read_part(path: Path) -> tuple[np.ndarray, np.ndarray]:
    part = _unpickle(path)
    if "data" not in part or "fine_labels" not in part:
        raise CorruptDatasetError(path, "needs 'data' and 'fine_labels' entries")
    data = np.asarray(part["data"], dtype=np.uint8)
    labels = np.asarray(part["fine_labels"], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(labels) != len(data):
        raise CorruptDatasetError(
            path, f"expected data [N, 3072] with N labels, got {data.shape} and {labels.shape}"
        )
    return data, labels
