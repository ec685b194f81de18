"""Dataset registry: build any dataset by name.

``build(name, split, root=None, **kwargs)`` constructs the dataset class registered under
``name`` (see :func:`available`). ``root`` is passed to datasets that read files and must
be omitted (None) for the embedded ones, which need no files.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch.utils.data import Dataset


@dataclass(frozen=True)
class Entry:
    """How to build one registered dataset."""

    factory: Callable[..., Dataset]
    splits: tuple[str, ...]
    needs_files: bool
    description: str
    optional_files: bool = False  # embedded, but reads files from ``root`` when given


def _omniglot(split: str, root: Any, **kwargs: Any) -> Dataset:
    from .omniglot import Omniglot

    return Omniglot(root, split, **kwargs)


def _glyphs(split: str, root: Any, **kwargs: Any) -> Dataset:
    from .glyphs import Glyphs

    return Glyphs(split, **kwargs)


def _digits(split: str, root: Any, **kwargs: Any) -> Dataset:
    from .digits import Digits

    return Digits(split, **kwargs)


def _mini_imagenet(split: str, root: Any, **kwargs: Any) -> Dataset:
    from .mini_imagenet import MiniImageNet

    return MiniImageNet(root, split, **kwargs)


def _cifar_fs(split: str, root: Any, **kwargs: Any) -> Dataset:
    from .cifar_fs import CIFARFS

    return CIFARFS(root, split, **kwargs)


def _mnist(split: str, root: Any, **kwargs: Any) -> Dataset:
    from .mnist import MNIST

    return MNIST(root, train=split == "train", **kwargs)


def _rotated_digits(split: str, root: Any, **kwargs: Any) -> Dataset:
    from .rotated import rotated_digits

    return rotated_digits(split, root, **kwargs)


def _rotated_mnist(split: str, root: Any, **kwargs: Any) -> Dataset:
    from .rotated import rotated_mnist

    return rotated_mnist(split, root, **kwargs)


def _femnist(split: str, root: Any, **kwargs: Any) -> Dataset:
    from .femnist import femnist

    return femnist(split, root, **kwargs)


def _corrupted_glyphs(split: str, root: Any, **kwargs: Any) -> Dataset:
    from .corruptions import corrupted_glyphs

    return corrupted_glyphs(split, root, **kwargs)


def _multimnist(split: str, root: Any, **kwargs: Any) -> Dataset:
    from .multimnist import multimnist

    return multimnist(split, root, **kwargs)


def _cifar10(split: str, root: Any, **kwargs: Any) -> Dataset:
    from .cifar10 import CIFAR10

    return CIFAR10(root, train=split == "train", **kwargs)


def _cifar10_c(split: str, root: Any, **kwargs: Any) -> Dataset:
    from .cifar10 import cifar10_c

    return cifar10_c(split, root, **kwargs)


REGISTRY: dict[str, Entry] = {
    "omniglot": Entry(
        _omniglot,
        ("train", "val", "test", "trainval"),
        True,
        "Omniglot handwritten characters (official archives; download=True fetches them)",
    ),
    "glyphs": Entry(
        _glyphs,
        ("train", "val", "test", "all"),
        False,
        "embedded Omniglot-like glyphs rendered from matplotlib's fonts (no download)",
    ),
    "digits": Entry(
        _digits,
        ("all", "train", "test"),
        False,
        "scikit-learn's bundled 8x8 handwritten digits (no download)",
    ),
    "mini-imagenet": Entry(
        _mini_imagenet,
        ("train", "val", "test"),
        True,
        "miniImageNet, Ravi & Larochelle split (cache pickles or images + CSV)",
    ),
    "cifar-fs": Entry(
        _cifar_fs,
        ("train", "val", "test"),
        True,
        "CIFAR-FS: CIFAR-100 python pickles with the Bertinetto et al. class split",
    ),
    "mnist": Entry(
        _mnist,
        ("train", "test"),
        True,
        "MNIST handwritten digits from the IDX files (gzipped or not)",
    ),
    "rotated-digits": Entry(
        _rotated_digits,
        ("train", "val", "test"),
        False,
        "group shift: embedded digits in 14 rotation groups, ARM's skewed training mix",
    ),
    "rotated-mnist": Entry(
        _rotated_mnist,
        ("train", "val", "test"),
        True,
        "group shift: MNIST in 14 rotation groups (0-130 degrees), ARM's skewed training mix",
    ),
    "femnist": Entry(
        _femnist,
        ("train", "val", "test"),
        True,
        "group shift: LEAF FEMNIST JSON, one group per writer (62 classes)",
    ),
    "corrupted-glyphs": Entry(
        _corrupted_glyphs,
        ("train", "val", "test"),
        False,
        "group shift: embedded glyphs under corruption x severity groups (disjoint train/test)",
    ),
    "multimnist": Entry(
        _multimnist,
        ("train", "test"),
        False,
        "multi-task: two overlapping digits, labels [N, 2] (MNIST files if found under root, "
        "else the embedded digits)",
        optional_files=True,
    ),
    "cifar10": Entry(
        _cifar10,
        ("train", "test"),
        True,
        "CIFAR-10 python pickles (cifar-10-batches-py/ or cifar-10-python.tar.gz)",
    ),
    "cifar10-c": Entry(
        _cifar10_c,
        ("train", "val", "test"),
        True,
        "group shift: CIFAR-10 under ARM's corruption x severity groups; test groups from "
        "the CIFAR-10-C .npy files",
    ),
}


def available() -> list[str]:
    """Names accepted by :func:`build`."""
    return list(REGISTRY)


def entry(name: str) -> Entry:
    """The registry entry of ``name``; a ValueError lists the valid names otherwise."""
    if name not in REGISTRY:
        raise ValueError(f"unknown dataset {name!r}; available datasets: {available()}")
    return REGISTRY[name]


def build(name: str, split: str, root: str | None = None, **kwargs: Any) -> Dataset:
    """Construct dataset ``name`` for ``split``.

    Raises ValueError for an unknown name or split (naming the valid ones), and when a
    ``root`` is given to a dataset that reads no files.
    """
    spec = entry(name)
    if split not in spec.splits:
        raise ValueError(
            f"unknown split {split!r} for dataset {name!r}; valid splits: {list(spec.splits)}"
        )
    if root is not None and not (spec.needs_files or spec.optional_files):
        raise ValueError(f"dataset {name!r} is embedded and takes no root (got root={root!r})")
    return spec.factory(split, root, **kwargs)
