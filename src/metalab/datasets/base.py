"""The in-memory labelled image dataset every metalab dataset is built on.

All images live in one uint8 tensor ``images`` of shape ``[N, C, H, W]``; an item is
converted to float in ``[0, 1]`` when it is read. Samplers can therefore gather a whole
episode with one indexing operation (``dataset.batch(indices)``) instead of ``N`` calls.

Every dataset the registry builds has one constructor shape, ``Dataset(split, root=None,
**options)``, and declares what the registry and ``metalab data`` need to know as class
attributes (:class:`DatasetFacts`: its splits, whether it reads files, a one-line
description). Its metadata (``class_names``, ``group_names``, ``source`` …) are fields
declared on the class and set by its constructor, never attributes patched on afterwards.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor
from torch.utils.data import Dataset


def to_float(images: Tensor) -> Tensor:
    """Convert uint8 images (any shape) to float32 in ``[0, 1]``."""
    return images.to(torch.float32).div_(255.0)


class DatasetFacts:
    """Class-level facts every registered dataset declares (read without building it).

    ``splits``: the split names its constructor accepts (the first is the default shown by
    ``metalab data show``); ``needs_files``: it reads files from ``root`` (else it is
    embedded and refuses a ``root``); ``optional_files``: embedded, but reads files from
    ``root`` when they are there; ``description``: one line for ``metalab data list``.
    """

    splits: ClassVar[tuple[str, ...]] = ()
    needs_files: ClassVar[bool] = False
    optional_files: ClassVar[bool] = False
    description: ClassVar[str] = ""


def check_split(split: Any, splits: Sequence[str], what: str) -> str:
    """``split`` if it is one of ``splits``; ``what`` names the dataset in the error.

    A non-string split is almost always the old ``Dataset(root, split)`` argument order, so
    the error says the shape to use.
    """
    if not isinstance(split, str):
        raise TypeError(
            f"split must be a split name (one of {list(splits)}), got {split!r}; datasets "
            f"take (split, root=None, **options), so pass a folder as root=..."
        )
    if split not in splits:
        raise ValueError(f"unknown {what} split {split!r}; expected one of {list(splits)}")
    return split


def check_no_root(root: Any, what: str) -> None:
    """Embedded datasets read no files: refuse a ``root`` (naming it) instead of ignoring it."""
    if root is not None:
        raise ValueError(f"{what} are embedded and take no root (got root={root!r})")


class ImageDataset(DatasetFacts, Dataset):
    """Labelled images held in memory.

    Args:
        images: uint8 tensor ``[N, C, H, W]``.
        labels: int class per image (``N`` entries, each in ``[0, len(class_names))``).
        class_names: one name per class; index is the label.
        split: the split these images form (``"train"``, ``"val"``, ``"test"``, …).
        class_info: optional per-class metadata dicts (alphabet, source, …).

    ``dataset[i]`` returns ``(x, y)`` with ``x`` a float tensor ``[C, H, W]`` in ``[0, 1]``
    and ``y`` an int. ``labels`` is a 1-D LongTensor.
    """

    images: Tensor
    labels: Tensor
    class_names: list[str]
    class_info: list[dict[str, Any]] | None
    split: str

    def __init__(
        self,
        images: Tensor,
        labels: Sequence[int] | Tensor,
        class_names: Sequence[str],
        split: str,
        class_info: Sequence[dict[str, Any]] | None = None,
    ) -> None:
        labels = torch.as_tensor(labels, dtype=torch.long)
        _check_images(images, labels)
        names = list(class_names)
        if labels.numel() and (labels.min() < 0 or labels.max() >= len(names)):
            raise ValueError(
                f"labels must lie in [0, {len(names)}) (one per class name), "
                f"got range [{int(labels.min())}, {int(labels.max())}]"
            )
        if class_info is not None and len(class_info) != len(names):
            raise ValueError(
                f"class_info has {len(class_info)} entries but there are {len(names)} classes"
            )
        self.images = images
        self.labels = labels
        self.class_names = names
        self.class_info = [dict(info) for info in class_info] if class_info else None
        self.split = split

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return to_float(self.images[index]), int(self.labels[index])

    @property
    def num_classes(self) -> int:
        """Number of classes (``len(class_names)``)."""
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of every image."""
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def batch(self, indices: Sequence[int] | Tensor) -> tuple[Tensor, Tensor]:
        """Images (float, ``[B, C, H, W]``) and labels for many items in one gather."""
        index = torch.as_tensor(indices, dtype=torch.long)
        return to_float(self.images[index]), self.labels[index]

    def gather(self, indices: Sequence[int] | Tensor) -> Tensor:
        """Float images ``[B, C, H, W]`` of many items in one gather (no labels)."""
        return to_float(self.images[torch.as_tensor(indices, dtype=torch.long)])

    def class_counts(self) -> Tensor:
        """Number of images of each class (LongTensor ``[num_classes]``)."""
        return torch.bincount(self.labels, minlength=self.num_classes)

    def summary(self) -> dict[str, Any]:
        """Counts that describe the dataset (used by ``metalab data info``)."""
        counts = self.class_counts()
        return {
            "split": self.split,
            "classes": self.num_classes,
            "images": len(self),
            "image_shape": list(self.image_shape),
            "images_per_class": [int(counts.min()), int(counts.max())] if len(counts) else [],
        }

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(split={self.split!r}, classes={self.num_classes}, "
            f"images={len(self)}, shape={list(self.image_shape)})"
        )


def _check_images(images: Tensor, labels: Tensor) -> None:
    if not isinstance(images, Tensor) or images.dtype != torch.uint8 or images.dim() != 4:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        dtype = images.dtype if isinstance(images, Tensor) else None
        raise ValueError(f"images must be a uint8 tensor [N, C, H, W], got {dtype} {shape}")
    if labels.dim() != 1 or labels.shape[0] != images.shape[0]:
        raise ValueError(
            f"labels must be 1-D with one entry per image ({images.shape[0]}), "
            f"got shape {tuple(labels.shape)}"
        )
