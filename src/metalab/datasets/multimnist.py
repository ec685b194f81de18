"""MultiMNIST: two overlapping digits, a left and a right label (Sener & Koltun, NeurIPS 2018).

The construction of Sener & Koltun's MultiMNIST (their released data loader), generalised
to any single-channel digit dataset of square images of side ``S``:

1. every image of the source split is the *left* digit of ``copies`` composites; each
   composite draws its *right* digit uniformly from the whole split (it may be the same
   image, as in the original);
2. on a ``canvas`` x ``canvas`` black canvas (36 for 28x28 MNIST) the left digit is put at
   the top-left corner and the right digit ``offset`` pixels (6) down and to the right;
   where they overlap the brighter pixel wins (``max``);
3. the canvas is resized to ``image_size`` (28) by nearest-neighbour sampling (pixel
   centres, as PIL's ``NEAREST``).

The labels are ``[N, 2]``: column 0 the left digit's class, column 1 the right one's. The
composites are deterministic for ``seed``. :class:`MultiMNIST` builds them from MNIST when
its files are present and otherwise from the embedded scikit-learn digits (upsampled to
28x28), so the benchmark runs anywhere; :class:`OverlaidDigits` builds them from any given
digit dataset.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from metalab.validation import check_choice

from .base import DatasetFacts, check_split, to_float
from .digits import Digits
from .errors import MissingDatasetError
from .mnist import MNIST

TASK_NAMES = ("left", "right")
CHUNK = 4096
SOURCES = ("auto", "mnist", "digits")
SPLITS = ("train", "test")


def overlay(left: Tensor, right: Tensor, offset: int, canvas: int) -> Tensor:
    """Left image at the top-left corner, right image ``offset`` down-right, ``max`` blend.

    ``left`` and ``right`` are ``[..., S, S]`` with non-negative values; returns
    ``[..., canvas, canvas]``.
    """
    side = left.shape[-1]
    if right.shape != left.shape or left.shape[-2] != side:
        raise ValueError(f"left and right must be square images of the same shape, got "
                         f"{tuple(left.shape)} and {tuple(right.shape)}")
    if offset < 0 or side + offset > canvas:
        raise ValueError(f"offset={offset} places a {side}x{side} image outside a "
                         f"{canvas}x{canvas} canvas (need 0 <= offset <= canvas - {side})")
    placed_left = F.pad(left, (0, canvas - side, 0, canvas - side))
    placed_right = F.pad(right, (offset, canvas - side - offset, offset, canvas - side - offset))
    return torch.maximum(placed_left, placed_right)


def nearest_indices(size_in: int, size_out: int) -> Tensor:
    """Source row of every output row under pixel-centre nearest-neighbour resizing."""
    centres = (torch.arange(size_out, dtype=torch.float64) + 0.5) * (size_in / size_out)
    return centres.floor().long().clamp_(max=size_in - 1)


def resize_nearest(images: Tensor, size: int) -> Tensor:
    """Resize ``[..., H, W]`` square images to ``size`` x ``size`` (any dtype, exact)."""
    index = nearest_indices(images.shape[-1], size)
    return images.index_select(-2, index).index_select(-1, index)


class OverlaidDigits(DatasetFacts, Dataset):
    """Composites of two digits from ``digits`` (an image dataset with 1-D labels): the
    adapter :class:`MultiMNIST` builds on, for any digit source.

    Args:
        digits: the source split: ``images`` uint8 ``[N, 1, S, S]`` and ``labels`` ``[N]``
            (MNIST, `Digits` with ``image_size=28``, ...).
        seed: seed of the right-digit draws.
        copies: composites per source image (each with its own right digit).
        offset, canvas, image_size: the geometry (module docstring); 6, 36, 28 as in
            Sener & Koltun for 28x28 digits.

    Attributes: ``images`` uint8 ``[M, 1, image_size, image_size]``, ``labels`` long
    ``[M, 2]`` (left, right), ``left_index`` and ``right_index`` (the source images of
    every composite), ``task_names`` ``("left", "right")``, ``classes_per_task``.
    ``dataset[i]`` is ``(x, labels[i])`` with ``x`` float in ``[0, 1]``.
    """

    images: Tensor
    labels: Tensor
    left_index: Tensor
    right_index: Tensor
    task_names: tuple[str, ...]
    classes_per_task: list[int]
    class_names: list[str]
    split: str | None
    seed: int
    source: str | None = None  # which digits were used (set by MultiMNIST)

    def __init__(self, digits: Any, seed: int = 0, copies: int = 1, offset: int = 6,
                 canvas: int = 36, image_size: int = 28) -> None:
        images, labels = _source_tensors(digits)
        for name, value in (("copies", copies), ("image_size", image_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        count = images.shape[0]
        generator = torch.Generator().manual_seed(int(seed))
        self.left_index = torch.arange(count).repeat(copies)
        self.right_index = torch.randint(count, (count * copies,), generator=generator)
        parts = []
        for start in range(0, len(self.left_index), CHUNK):
            left = images[self.left_index[start:start + CHUNK]]
            right = images[self.right_index[start:start + CHUNK]]
            parts.append(resize_nearest(overlay(left, right, offset, canvas), image_size))
        self.images = torch.cat(parts)
        self.labels = torch.stack([labels[self.left_index], labels[self.right_index]], dim=1)
        self.task_names = TASK_NAMES
        classes = len(getattr(digits, "class_names", [])) or int(labels.max()) + 1
        self.classes_per_task = [classes, classes]
        self.class_names = list(getattr(digits, "class_names", [str(c) for c in range(classes)]))
        self.split = getattr(digits, "split", None)
        self.seed = int(seed)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return to_float(self.images[index]), self.labels[index]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def gather(self, indices: Sequence[int] | Tensor) -> Tensor:
        """Float images ``[B, 1, H, W]`` of many composites in one gather."""
        return to_float(self.images[torch.as_tensor(indices, dtype=torch.long)])

    def summary(self) -> dict:
        """Counts that describe the dataset (used by ``metalab data info``)."""
        return {"split": self.split, "images": len(self), "image_shape": list(self.image_shape),
                "tasks": list(self.task_names), "classes_per_task": list(self.classes_per_task),
                "source": self.source}

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(split={self.split!r}, images={len(self)}, "
                f"shape={list(self.image_shape)}, tasks={list(self.task_names)})")


def _source_tensors(digits) -> tuple[Tensor, Tensor]:
    images = getattr(digits, "images", None)
    if not isinstance(images, Tensor) or images.dtype != torch.uint8 or images.dim() != 4 \
            or images.shape[1] != 1 or images.shape[2] != images.shape[3]:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"digits must have uint8 images [N, 1, S, S] (square, one channel), "
                         f"got {shape}")
    labels = torch.as_tensor(digits.labels, dtype=torch.long)
    if labels.shape != (images.shape[0],):
        raise ValueError(f"digits.labels must have one class per image ({images.shape[0]}), "
                         f"got shape {tuple(labels.shape)}")
    if images.shape[0] == 0:
        raise ValueError("digits has no images")
    return images, labels


class MultiMNIST(OverlaidDigits):
    """MultiMNIST of ``split`` (``"train"`` or ``"test"``) from MNIST or the embedded digits.

    Args:
        split: ``"train"`` or ``"test"``: the digit split the composites are made of.
        root: where the MNIST IDX files are looked for (default: the metalab data folder).
        source: ``"auto"`` uses MNIST when its files are found and the scikit-learn digits
            (upsampled to 28x28) otherwise; ``"mnist"`` requires the files; ``"digits"``
            always uses the embedded digits. ``source`` on the dataset says which was used.
        seed, copies: as for :class:`OverlaidDigits` (the geometry is Sener & Koltun's).
    """

    splits: ClassVar[tuple[str, ...]] = SPLITS
    optional_files = True
    description = ("multi-task: two overlapping digits, labels [N, 2] (MNIST files if found "
                   "under root, else the embedded digits)")

    def __init__(self, split: str = "train", root: str | os.PathLike[str] | None = None,
                 source: str = "auto", seed: int = 0, copies: int = 1) -> None:
        check_split(split, SPLITS, "MultiMNIST")
        check_choice("source", source, SOURCES)
        digits, used = None, "digits"
        if source in ("auto", "mnist"):
            try:
                digits, used = MNIST(split, root=root), "mnist"
            except MissingDatasetError:
                if source == "mnist":
                    raise
        if digits is None:
            digits = Digits(split, image_size=28)
        self.source = used
        super().__init__(digits, seed=seed, copies=copies)


multimnist = MultiMNIST  # the old builder's name; same (split, root=None, **options) shape
