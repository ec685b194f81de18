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

:func:`cifar10_c` is the group-shift benchmark of ARM (Zhang, Marklund et al., "Adaptive Risk
Minimization", NeurIPS 2021) on CIFAR-10-C; see its docstring.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .base import ImageDataset
from .cifar_fs import _unpickle, extract_tar
from .corruptions import (
    CORRUPTIONS,
    SEVERITIES,
    CorruptedDataset,
    corruption_groups,
    group_list,
    group_seed,
)
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
SPLITS = ("train", "val", "test")
TEST_SOURCES = ("auto", "files", "generated")
# ARM's test split also holds these groups, which only the CIFAR-10-C files provide (the
# library cannot generate the weather corruptions): corruption_groups("test") +
# list(WEATHER_TEST_GROUPS) are ARM's 22 test groups.
WEATHER_TEST_GROUPS = tuple(("fog", s) for s in SEVERITIES) + (("spatter", 5),)

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
    """CIFAR-10 as ``[3, 32, 32]`` images: the 50,000 training images (``train=True``, the five
    data batches in order) or the 10,000 test images; ``class_names`` from ``batches.meta``.

    ``root``: the ``cifar-10-batches-py`` folder, a folder holding it or the
    ``cifar-10-python.tar.gz`` archive (default: the metalab data folder for "cifar10").
    """

    def __init__(self, root: str | os.PathLike[str] | None = None, train: bool = True) -> None:
        self.root = resolve_root(root, "cifar10")
        folder = locate_cifar10(self.root)
        names = TRAIN_BATCHES if train else (TEST_BATCH,)
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
        super().__init__(images, labels, class_names, "train" if train else "test")
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
        root: the ``CIFAR-10-C`` folder, a folder holding it or ``CIFAR-10-C.tar``
            (default: the metalab data folder for "cifar10-c").
        corruptions: names (each taken at every severity of ``severities``) and/or
            ``(name, severity)`` pairs; default every ``<name>.npy`` present, sorted.
        severities: severities of the names given alone.
        images_per_group: each group holds this many of its 10,000 images (a seeded subset,
            in order), or all of them (``None``).
        seed: seed of those subsets (:func:`~metalab.datasets.corruptions.group_seed`).
        split: the split name recorded on the dataset.
        class_names: the classes ``labels.npy`` indexes (CIFAR-10's).

    Group names are ``"<corruption>-<severity>"`` in the order requested; ``group_info``
    holds ``corruption`` and ``severity``; ``source_index`` is the index of every image in
    the CIFAR-10 test set; ``files`` the folder read. Files are memory-mapped: only the
    requested severities are read.
    """

    def __init__(self, root: str | os.PathLike[str] | None = None,
                 corruptions: Sequence[str | tuple[str, int]] | None = None,
                 severities: Sequence[int] = SEVERITIES, images_per_group: int | None = None,
                 seed: int = 0, split: str = "test",
                 class_names: Sequence[str] = CLASS_NAMES) -> None:
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


# -------------------------------------------------------------------- ARM's benchmark


def cifar10_c(split: str, root: str | os.PathLike[str] | None = None, seed: int = 0,
              images_per_group: int | None = 1000, val_fraction: float = 0.1,
              test_images_per_group: int | None = None, test_source: str = "auto",
              test_groups: Sequence[str | tuple[str, int]] | None = None) -> GroupDataset:
    """CIFAR-10-C group shift as in ARM: corruption x severity groups, disjoint across splits.

    Expected layout (``root``, default the metalab data folder for "cifar10-c")::

        root/cifar-10-batches-py/   data_batch_1..5, test_batch, batches.meta
                                    (or root/cifar-10-python.tar.gz, extracted on first use)
        root/CIFAR-10-C/            <corruption>.npy, labels.npy
                                    (or root/CIFAR-10-C.tar, extracted on first use)

    * ``train``: CIFAR-10 training images (those not held out for ``val``) under ARM's
      training groups, made with the library's corruptions (``corruption_groups("train")``:
      43 groups; ARM's snow, frost and spatter 1-3 need textures the library lacks). Each
      group holds ``images_per_group`` images (a seeded subset of the pool; ARM's 1,000 by
      default, ``None`` for all), as in ARM's generated training data.
    * ``val``: the held-out ``val_fraction`` of the CIFAR-10 training images (a division
      seeded by ``seed``) under ARM's validation groups (``corruption_groups("val")``, 16
      groups), ``images_per_group`` each, as ``corrupted-glyphs`` does on held-out drawings.
    * ``test``: the CIFAR-10-C files for ``test_groups`` (default
      ``corruption_groups("test")``: impulse noise, motion blur and elastic transform at
      severities 1-5 and JPEG at 4; add :data:`WEATHER_TEST_GROUPS` for ARM's fog and
      spatter 5), all 10,000 images per group unless ``test_images_per_group``. Every
      requested file must be in ``CIFAR-10-C/``. When there is no CIFAR-10-C folder (nor its
      archive), ``test_source="auto"`` instead applies the library's own corruptions to the
      CIFAR-10 test batch (not Hendrycks' images: see :mod:`metalab.datasets.corruptions`
      for the differences); ``"files"`` requires the files, ``"generated"`` always
      generates. The dataset's ``source`` says which was used (``"files"``/``"generated"``).

    Every split has the same ``group_names`` and ``group_info`` (train groups, then val
    groups, then test groups; names ``"<corruption>-<severity>"``), so a group id means the
    same group in every split; a split holds images only in its own groups, whose ids are
    ``split_groups``. Corruptions and subsets are deterministic for ``seed``.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown CIFAR-10-C split {split!r}; expected one of {list(SPLITS)}")
    if test_source not in TEST_SOURCES:
        raise ValueError(f"test_source must be one of {list(TEST_SOURCES)}, got {test_source!r}")
    root_path = resolve_root(root, "cifar10-c")
    groups = {
        "train": corruption_groups("train", channels=3),
        "val": corruption_groups("val", channels=3),
        "test": (corruption_groups("test", channels=3) if test_groups is None
                 else file_groups(test_groups)),
    }
    all_groups = list(dict.fromkeys(groups["train"] + groups["val"] + groups["test"]))
    if split == "test":
        local, source = _test_groups(root_path, groups["test"], seed, test_images_per_group,
                                     test_source)
    else:
        base = _cifar10(root_path, train=True)
        pool = train_val_pool(len(base), split, val_fraction, seed)
        images = ImageDataset(base.images[pool], base.labels[pool], base.class_names, split)
        local = CorruptedDataset(images, groups[split], seed=seed,
                                 images_per_group=images_per_group)
        source = "generated"
    index = {f"{name}-{severity}": group for group, (name, severity) in enumerate(all_groups)}
    mapping = torch.tensor([index[name] for name in local.group_names], dtype=torch.long)
    dataset = GroupDataset(
        local.images, local.labels, local.class_names, split, mapping[local.groups], list(index),
        group_info=[{"corruption": name, "severity": severity} for name, severity in all_groups],
    )
    dataset.source = source
    dataset.seed = int(seed)
    dataset.split_groups = mapping.tolist()
    return dataset


def train_val_pool(size: int, split: str, val_fraction: float, seed: int) -> Tensor:
    """Sorted indices of the training or validation part of ``size`` training images: the
    last ``round(val_fraction * size)`` of a permutation seeded by ``seed`` are validation."""
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must lie in (0, 1), got {val_fraction!r}")
    held_out = round(val_fraction * size)
    if held_out in (0, size):
        raise ValueError(
            f"val_fraction={val_fraction} of {size} training images leaves no "
            f"{'validation' if held_out == 0 else 'training'} images"
        )
    order = torch.randperm(size, generator=torch.Generator().manual_seed(int(seed)))
    chosen = order[:size - held_out] if split == "train" else order[size - held_out:]
    return chosen.sort().values


def _cifar10(root: Path, train: bool) -> CIFAR10:
    """CIFAR-10 whose classes must be CIFAR-10's, in order (CIFAR-10-C's labels index them)."""
    base = CIFAR10(root, train=train)
    if tuple(base.class_names) != CLASS_NAMES:
        raise CorruptDatasetError(
            base.files[-1], f"label_names {base.class_names} are not CIFAR-10's {list(CLASS_NAMES)}"
        )
    return base


def _test_groups(root: Path, groups: list[tuple[str, int]], seed: int,
                 images_per_group: int | None, test_source: str) -> tuple[GroupDataset, str]:
    """The test groups from the CIFAR-10-C files, or generated on the CIFAR-10 test batch."""
    folder = None if test_source == "generated" else find_cifar10c(root)
    if folder is not None:
        return CIFAR10C(folder, groups, images_per_group=images_per_group, seed=seed), "files"
    if test_source == "files":
        raise missing_cifar10c(root)
    unknown = sorted({name for name, _ in groups if name not in CORRUPTIONS})
    if unknown:
        raise MissingDatasetError(
            root / C_FOLDER,
            f"not found; test corruptions {unknown} can only be read from the CIFAR-10-C files "
            f"(the library cannot generate them): place {C_ARCHIVE} (from {C_URL}) in {root}",
        )
    try:
        base = _cifar10(root, train=False)
    except MissingDatasetError as exc:
        if test_source == "generated":
            raise
        raise MissingDatasetError(
            root / C_FOLDER,
            f"not found (place {C_ARCHIVE} from {C_URL} in {root}, or its {C_FOLDER}/ folder); "
            f"the fallback, CIFAR-10's test batch under generated corruptions, failed too: "
            f"{exc}",
        ) from exc
    generated = CorruptedDataset(base, groups, seed=seed, images_per_group=images_per_group)
    return generated, "generated"

