"""CIFAR-10 (Krizhevsky 2009) and CIFAR-10-C (Hendrycks & Dietterich 2019) for group shift.

Files:

* CIFAR-10, python version (https://www.cs.toronto.edu/~kriz/cifar.html): the folder
  ``cifar-10-batches-py/`` with ``data_batch_1`` ... ``data_batch_5`` (training),
  ``test_batch`` and ``batches.meta``. Each batch is a pickled dict with ``b"data"``, uint8
  ``[n, 3072]`` (per image the 1024 red values, then green, then blue, each plane row by
  row) and ``b"labels"`` (n ints); ``batches.meta`` holds ``b"label_names"``. ``root`` may
  be that folder, or a folder holding it or the ``cifar-10-python.tar.gz`` archive, which is
  then extracted atomically next to itself.
* CIFAR-10-C (https://zenodo.org/records/2535967): the folder ``CIFAR-10-C/`` with one
  ``<corruption>.npy`` per corruption, uint8 ``[50000, 32, 32, 3]``: the 10,000 CIFAR-10 test
  images at severity 1, then at severity 2, ..., 5, and ``labels.npy`` ``[50000]`` (the label
  of every row). ``root`` may be that folder, or a folder holding it or the ``CIFAR-10-C.tar``
  archive (extracted atomically).

The group-shift benchmark of ARM (Zhang, Marklund et al., "Adaptive Risk Minimization",
NeurIPS 2021) on CIFAR-10-C is :class:`metalab.datasets.cifar10_shift.CIFAR10CShift`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .base import ImageDataset, check_split
from .cifar_fs import _unpickle, extract_tar
from .corruption_groups import group_list, group_seed
from .corruptions import SEVERITIES
from .errors import CorruptDatasetError, MissingDatasetError
from .groups import GroupDataset
from .paths import resolve_root

FOLDER = "cifar-10-batches-py"
ARCHIVE = "cifar-10-python.tar.gz"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
META = "batches.meta"
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"
C_FOLDER = "CIFAR-10-C"
C_ARCHIVE = "CIFAR-10-C.tar"
C_LABELS = "labels.npy"
C_URL = "https://zenodo.org/records/2535967"
CLASS_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
               "truck")
SIDE = 32
SPLITS = ("train", "test")

_LAYOUT = (f"the python version of CIFAR-10 ({FOLDER}/ with data_batch_1..5, test_batch and "
           f"{META}, from {CIFAR10_URL})")


# ------------------------------------------------------------------------------ CIFAR-10


def locate_cifar10(root: Path) -> Path:
    """The CIFAR-10 python folder under ``root`` (or ``root`` itself); extracts the archive
    ``root/cifar-10-python.tar.gz`` when there is no folder."""
    if (root / FOLDER).is_dir():
        return root / FOLDER
    if root.name == FOLDER and root.is_dir():
        return root
    if any((root / name).is_file() for name in (META, TEST_BATCH, *TRAIN_BATCHES)):
        return root
    archive = root / ARCHIVE
    if archive.is_file():
        return extract_tar(archive, root / FOLDER)
    raise MissingDatasetError(
        root / FOLDER,
        f"CIFAR-10 python files not found; place {ARCHIVE} (from {CIFAR10_URL}) in {root}, "
        f"or its extracted {FOLDER}/ folder with data_batch_1..5, test_batch and {META}",
    )


def read_label_names(path: Path) -> list[str]:
    """The class names (``label_names``) of a CIFAR-10 ``batches.meta``."""
    names = _unpickle(path).get("label_names")
    if not isinstance(names, list | tuple) or not names:
        raise CorruptDatasetError(path, "has no 'label_names' list (not CIFAR-10's batches.meta?)")
    return [n.decode() if isinstance(n, bytes) else str(n) for n in names]


def read_batch(path: Path, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 ``[n, 3, 32, 32]`` and labels int64 ``[n]`` of one CIFAR-10 batch file."""
    part = _unpickle(path)
    if "data" not in part or "labels" not in part:
        raise CorruptDatasetError(path, "needs 'data' and 'labels' entries (a CIFAR-10 batch)")
    data, labels = np.asarray(part["data"]), np.asarray(part["labels"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * SIDE * SIDE:
        raise CorruptDatasetError(
            path, f"expected uint8 data [N, 3072] (red, green and blue 32x32 planes per image), "
                  f"got {data.dtype} {data.shape}"
        )
    if labels.ndim != 1 or len(labels) != len(data):
        raise CorruptDatasetError(
            path, f"has {labels.size} labels for {len(data)} images (one label per image)"
        )
    if labels.size and (not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0
                        or labels.max() >= num_classes):
        raise CorruptDatasetError(
            path, f"labels must be integers in [0, {num_classes}) (one per label name in {META})"
        )
    return data.reshape(-1, 3, SIDE, SIDE), labels.astype(np.int64)


class CIFAR10(ImageDataset):
    """CIFAR-10 as ``[3, 32, 32]`` images: the 50,000 training images (``"train"``, the five
    data batches in order) or the 10,000 ``"test"`` images; ``class_names`` from
    ``batches.meta``.

    ``root``: the ``cifar-10-batches-py`` folder, a folder holding it or the
    ``cifar-10-python.tar.gz`` archive (default: the metalab data folder for "cifar10").
    """

    splits = SPLITS
    needs_files = True
    description = "CIFAR-10 python pickles (cifar-10-batches-py/ or cifar-10-python.tar.gz)"
    root: Path
    files: list[Path]

    def __init__(self, split: str = "train", root: str | os.PathLike[str] | None = None
                 ) -> None:
        check_split(split, SPLITS, "CIFAR-10")
        self.root = resolve_root(root, "cifar10")
        folder = locate_cifar10(self.root)
        names = TRAIN_BATCHES if split == "train" else (TEST_BATCH,)
        missing = [n for n in (*names, META) if not (folder / n).is_file()]
        if missing:
            raise MissingDatasetError(
                folder / missing[0],
                f"not found: {folder} lacks {missing}; expected {_LAYOUT}",
            )
        class_names = read_label_names(folder / META)
        parts = [read_batch(folder / n, len(class_names)) for n in names]
        images = torch.from_numpy(np.concatenate([p[0] for p in parts]))
        labels = torch.from_numpy(np.concatenate([p[1] for p in parts]))
        super().__init__(images, labels, class_names, split)
        self.files = [folder / n for n in (*names, META)]


# ---------------------------------------------------------------------------- CIFAR-10-C


def find_cifar10c(root: Path) -> Path | None:
    """The CIFAR-10-C folder under ``root`` (or ``root`` itself), extracting
    ``root/CIFAR-10-C.tar`` if that is all there is; ``None`` when there is neither."""
    for folder in (root / C_FOLDER, root):
        if (folder / C_LABELS).is_file():
            return folder
    if (root / C_FOLDER).is_dir():
        return root / C_FOLDER  # incomplete: CIFAR10C names the missing file
    if (root / C_ARCHIVE).is_file():
        return extract_tar(root / C_ARCHIVE, root / C_FOLDER)
    if root.name == C_FOLDER and root.is_dir():
        return root
    return None


def missing_cifar10c(root: Path) -> MissingDatasetError:
    """The error for a ``root`` without CIFAR-10-C, saying where to place it."""
    return MissingDatasetError(
        root / C_FOLDER,
        f"CIFAR-10-C not found; place {C_ARCHIVE} (from {C_URL}) in {root}, or its "
        f"extracted {C_FOLDER}/ folder with <corruption>.npy files and {C_LABELS}",
    )


def cifar10c_corruptions(folder: Path) -> list[str]:
    """Corruption names of the ``<corruption>.npy`` files in ``folder`` (sorted)."""
    return sorted(p.stem for p in folder.glob("*.npy") if p.name != C_LABELS)


def file_groups(corruptions: Sequence[str | tuple[str, int]],
                severities: Sequence[int] = SEVERITIES) -> list[tuple[str, int]]:
    """``(corruption, severity)`` groups: each name at every one of ``severities``, pairs as
    given. Any file name is a valid corruption (CIFAR-10-C has fog, snow, ...)."""
    return group_list(corruptions, severities, check_name=_check_file_name)


def _check_file_name(name: Any) -> None:
    if not isinstance(name, str) or not name or "/" in name or name == "labels":
        raise ValueError(f"not a CIFAR-10-C corruption name: {name!r}")


def _load_npy(path: Path, mmap: bool) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise CorruptDatasetError(path, f"is not a readable .npy array: truncated or corrupt "
                                        f"({exc})") from exc


class CIFAR10C(GroupDataset):
    """CIFAR-10-C: one group per (corruption, severity) read from Hendrycks' ``.npy`` files.

    Args:
        split: the split name recorded on the dataset (any name: the files have no splits).
        root: the ``CIFAR-10-C`` folder, a folder holding it or ``CIFAR-10-C.tar``
            (default: the metalab data folder for "cifar10-c").
        corruptions: names (each taken at every severity of ``severities``) and/or
            ``(name, severity)`` pairs; default every ``<name>.npy`` present, sorted.
        severities: severities of the names given alone.
        images_per_group: each group holds this many of its 10,000 images (a seeded subset,
            in order), or all of them (``None``).
        seed: seed of those subsets (:func:`~metalab.datasets.corruption_groups.group_seed`).
        class_names: the classes ``labels.npy`` indexes (CIFAR-10's).

    Group names are ``"<corruption>-<severity>"`` in the order requested; ``group_info``
    holds ``corruption`` and ``severity``; ``source_index`` is the index of every image in
    the CIFAR-10 test set; ``files`` the folder read. Files are memory-mapped: only the
    requested severities are read.
    """

    needs_files = True
    root: Path
    source_index: Tensor
    files: Path

    def __init__(self, split: str = "test", root: str | os.PathLike[str] | None = None,
                 corruptions: Sequence[str | tuple[str, int]] | None = None,
                 severities: Sequence[int] = SEVERITIES, images_per_group: int | None = None,
                 seed: int = 0, class_names: Sequence[str] = CLASS_NAMES) -> None:
        self.root = resolve_root(root, "cifar10-c")
        folder = find_cifar10c(self.root)
        if folder is None:
            raise missing_cifar10c(self.root)
        labels_path = folder / C_LABELS
        if not labels_path.is_file():
            raise MissingDatasetError(
                labels_path, f"not found: CIFAR-10-C's {C_LABELS} (one label per row of every "
                             f"<corruption>.npy) is missing from {folder}"
            )
        present = cifar10c_corruptions(folder)
        if corruptions is None:
            if not present:
                raise MissingDatasetError(folder, "holds no <corruption>.npy files (CIFAR-10-C)")
            corruptions = present
        groups = file_groups(corruptions, severities)
        labels = _check_labels(_load_npy(labels_path, mmap=False), labels_path, len(class_names))
        per_severity = len(labels) // len(SEVERITIES)
        if images_per_group is not None and not 1 <= images_per_group <= per_severity:
            raise ValueError(
                f"images_per_group must be in [1, {per_severity}] (the images per severity) "
                f"or None, got {images_per_group!r}"
            )
        arrays: dict[str, np.ndarray] = {}
        images, group_labels, group_ids, source = [], [], [], []
        for group, (name, severity) in enumerate(groups):
            if name not in arrays:
                arrays[name] = self._array(folder, name, present, len(labels), arrays)
            if images_per_group is None:
                chosen = torch.arange(per_severity)
            else:
                generator = torch.Generator().manual_seed(group_seed(seed, name, severity))
                chosen = torch.randperm(per_severity, generator=generator)[:images_per_group]
                chosen = chosen.sort().values
            rows = chosen.numpy() + (severity - 1) * per_severity
            block = np.ascontiguousarray(arrays[name][rows].transpose(0, 3, 1, 2))
            images.append(torch.from_numpy(block))
            group_labels.append(torch.from_numpy(labels[rows]))
            group_ids.append(torch.full((len(chosen),), group, dtype=torch.long))
            source.append(chosen)
        super().__init__(
            torch.cat(images), torch.cat(group_labels), class_names, split, torch.cat(group_ids),
            [f"{name}-{severity}" for name, severity in groups],
            group_info=[{"corruption": name, "severity": severity} for name, severity in groups],
        )
        self.source_index = torch.cat(source)
        self.files = folder

    @staticmethod
    def _array(folder: Path, name: str, present: list[str], rows: int,
               loaded: dict[str, np.ndarray]) -> np.ndarray:
        path = folder / f"{name}.npy"
        if not path.is_file():
            raise MissingDatasetError(
                path, f"not found: corruption {name!r} was requested but {folder} has no "
                      f"{path.name}; its corruptions are {present}"
            )
        array = _load_npy(path, mmap=True)
        if array.dtype != np.uint8 or array.ndim != 4 or array.shape[3] != 3:
            raise CorruptDatasetError(
                path, f"expected uint8 images [N, H, W, 3] (CIFAR-10-C), got {array.dtype} "
                      f"{array.shape}"
            )
        if array.shape[0] != rows:
            raise CorruptDatasetError(
                path, f"has {array.shape[0]} images but {C_LABELS} has {rows} labels; each "
                      f"<corruption>.npy holds 5 severities x the same test images, severity 1 "
                      f"first, with one label per row in {C_LABELS}"
            )
        for other_name, other in loaded.items():
            if other.shape[1:] != array.shape[1:]:
                raise CorruptDatasetError(
                    path, f"images are {array.shape[1:]} but {other_name}.npy's are "
                          f"{other.shape[1:]}"
                )
        return array


def _check_labels(labels: np.ndarray, path: Path, num_classes: int) -> np.ndarray:
    if labels.ndim != 1 or not labels.size or len(labels) % len(SEVERITIES):
        raise CorruptDatasetError(
            path, f"expected a 1-D array of 5 x N labels (5 severities of N test images), got "
                  f"shape {labels.shape}"
        )
    if not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0 \
            or labels.max() >= num_classes:
        raise CorruptDatasetError(path, f"labels must be integers in [0, {num_classes})")
    return labels.astype(np.int64)
