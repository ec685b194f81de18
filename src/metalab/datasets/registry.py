"""Dataset registry: the name of every dataset and its class; :func:`build` makes one.

Every registered class has the constructor ``Dataset(split, root=None, **options)`` and
declares its splits, whether it reads files and a one-line description as class attributes
(:class:`~metalab.datasets.base.DatasetFacts`), so this module is a plain mapping: adding a
dataset is one line here. The dataset modules never import this one back.
"""

from __future__ import annotations

import inspect
from typing import Any

from torch.utils.data import Dataset

from .cifar10 import CIFAR10
from .cifar10_shift import CIFAR10CShift
from .cifar_fs import CIFARFS
from .corrupted_glyphs import CorruptedGlyphs
from .digits import Digits
from .femnist import FEMNIST
from .glyphs import Glyphs
from .mini_imagenet import MiniImageNet
from .mnist import MNIST
from .multimnist import MultiMNIST
from .omniglot import Omniglot
from .rotated import RotatedDigits, RotatedMNIST

REGISTRY: dict[str, type[Dataset]] = {
    "omniglot": Omniglot,
    "glyphs": Glyphs,
    "digits": Digits,
    "mini-imagenet": MiniImageNet,
    "cifar-fs": CIFARFS,
    "mnist": MNIST,
    "rotated-digits": RotatedDigits,
    "rotated-mnist": RotatedMNIST,
    "femnist": FEMNIST,
    "corrupted-glyphs": CorruptedGlyphs,
    "multimnist": MultiMNIST,
    "cifar10": CIFAR10,
    "cifar10-c": CIFAR10CShift,
}


def available() -> list[str]:
    """Names accepted by :func:`build`."""
    return list(REGISTRY)


def entry(name: str) -> type[Dataset]:
    """The class registered under ``name``; a ValueError lists the valid names otherwise."""
    if name not in REGISTRY:
        raise ValueError(f"unknown dataset {name!r}; available datasets: {available()}")
    return REGISTRY[name]


def options(name: str) -> list[str]:
    """The keyword options dataset ``name`` accepts besides ``split`` and ``root``."""
    parameters = inspect.signature(entry(name).__init__).parameters
    return [p for p in parameters if p not in ("self", "split", "root")]


def build(name: str, split: str, root: str | None = None, **options_: Any) -> Dataset:
    """Construct dataset ``name`` for ``split``: ``REGISTRY[name](split, root, **options)``.

    Raises ValueError naming the valid choices for an unknown name, split or option, and
    when a ``root`` is given to a dataset that reads no files.
    """
    cls = entry(name)
    if split not in cls.splits:
        raise ValueError(
            f"unknown split {split!r} for dataset {name!r}; valid splits: {list(cls.splits)}"
        )
    if root is not None and not (cls.needs_files or cls.optional_files):
        raise ValueError(f"dataset {name!r} is embedded and takes no root (got root={root!r})")
    known = options(name)
    unknown = sorted(set(options_) - set(known))
    if unknown:
        raise ValueError(f"unknown option{'s' if len(unknown) > 1 else ''} {unknown} for "
                         f"dataset {name!r}; its options are {known}")
    return cls(split, root=root, **options_)
