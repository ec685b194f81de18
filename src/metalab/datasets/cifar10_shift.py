"""ARM's CIFAR-10-C group-shift benchmark (Zhang, Marklund et al., "Adaptive Risk
Minimization", NeurIPS 2021): CIFAR-10 under corruption x severity groups, disjoint across
splits; the test groups read from Hendrycks' CIFAR-10-C files (see
:mod:`metalab.datasets.cifar10` for both file layouts) or generated when they are absent.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from metalab.validation import check_choice

from .base import ImageDataset, check_split
from .cifar10 import (
    C_ARCHIVE,
    C_FOLDER,
    C_URL,
    CIFAR10,
    CIFAR10C,
    CLASS_NAMES,
    file_groups,
    find_cifar10c,
    missing_cifar10c,
)
from .corrupted import CorruptedDataset
from .corruption_groups import corruption_groups
from .corruptions import CORRUPTIONS, SEVERITIES
from .errors import CorruptDatasetError, MissingDatasetError
from .groups import GroupDataset
from .paths import resolve_root

SPLITS = ("train", "val", "test")
TEST_SOURCES = ("auto", "files", "generated")
# ARM's test split also holds these groups, which only the CIFAR-10-C files provide (the
# library cannot generate the weather corruptions): corruption_groups("test") +
# list(WEATHER_TEST_GROUPS) are ARM's 22 test groups.
WEATHER_TEST_GROUPS = tuple(("fog", s) for s in SEVERITIES) + (("spatter", 5),)


class CIFAR10CShift(GroupDataset):
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

    splits = SPLITS
    needs_files = True
    description = ("group shift: CIFAR-10 under ARM's corruption x severity groups; test "
                   "groups from the CIFAR-10-C .npy files")
    source: str
    seed: int
    split_groups: list[int]

    def __init__(self, split: str = "train", root: str | os.PathLike[str] | None = None,
                 seed: int = 0, images_per_group: int | None = 1000, val_fraction: float = 0.1,
                 test_images_per_group: int | None = None, test_source: str = "auto",
                 test_groups: Sequence[str | tuple[str, int]] | None = None) -> None:
        check_split(split, SPLITS, "CIFAR-10-C")
        check_choice("test_source", test_source, TEST_SOURCES)
        local, self.source = _split_groups(split, resolve_root(root, "cifar10-c"), seed,
                                           images_per_group, val_fraction,
                                           test_images_per_group, test_source, test_groups)
        all_groups = _all_groups(test_groups)
        index = {f"{name}-{severity}": group for group, (name, severity) in enumerate(all_groups)}
        mapping = torch.tensor([index[name] for name in local.group_names], dtype=torch.long)
        super().__init__(
            local.images, local.labels, local.class_names, split, mapping[local.groups],
            list(index),
            group_info=[{"corruption": name, "severity": severity}
                        for name, severity in all_groups],
        )
        self.seed = int(seed)
        self.split_groups = mapping.tolist()


cifar10_c = CIFAR10CShift  # the old builder's name; same (split, root=None, **options) shape


def _groups_by_split(test_groups: Sequence[str | tuple[str, int]] | None
                     ) -> dict[str, list[tuple[str, int]]]:
    """ARM's train and val groups, and the requested (default: ARM's) test groups."""
    return {
        "train": corruption_groups("train", channels=3),
        "val": corruption_groups("val", channels=3),
        "test": (corruption_groups("test", channels=3) if test_groups is None
                 else file_groups(test_groups)),
    }


def _all_groups(test_groups: Sequence[str | tuple[str, int]] | None) -> list[tuple[str, int]]:
    """Every split's groups, train then val then test (each once): the shared group ids."""
    groups = _groups_by_split(test_groups)
    return list(dict.fromkeys(groups["train"] + groups["val"] + groups["test"]))


def _split_groups(split: str, root_path: Path, seed: int, images_per_group: int | None,
                  val_fraction: float, test_images_per_group: int | None, test_source: str,
                  test_groups: Sequence[str | tuple[str, int]] | None
                  ) -> tuple[GroupDataset, str]:
    """The images of ``split`` in its own groups (local ids), and where they came from."""
    groups = _groups_by_split(test_groups)
    if split == "test":
        return _test_groups(root_path, groups["test"], seed, test_images_per_group,
                            test_source)
    base = _cifar10(root_path, "train")
    pool = train_val_pool(len(base), split, val_fraction, seed)
    images = ImageDataset(base.images[pool], base.labels[pool], base.class_names, split)
    local = CorruptedDataset(images, groups[split], seed=seed,
                             images_per_group=images_per_group)
    return local, "generated"


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


def _cifar10(root: Path, split: str) -> CIFAR10:
    """CIFAR-10 whose classes must be CIFAR-10's, in order (CIFAR-10-C's labels index them)."""
    base = CIFAR10(split, root=root)
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
        data = CIFAR10C("test", root=folder, corruptions=groups,
                        images_per_group=images_per_group, seed=seed)
        return data, "files"
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
        base = _cifar10(root, "test")
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
