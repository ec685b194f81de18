"""Rotated digits: group shift over 14 rotation angles (the MNIST setup of ARM).

Zhang, Marklund et al., "Adaptive Risk Minimization" (NeurIPS 2021), rotated MNIST, as the
official code (henrikmarklund/arm) builds it:

* 14 groups, rotations 0, 10, ..., 130 degrees (counter-clockwise; nearest-neighbour
  resampling, like ``scipy.ndimage.rotate(order=0, reshape=False)`` there).
* The training pool (90% of the base training set; the other 10% is validation) has ``N``
  images. Training group ``g`` holds ``int(p_g * N / 5)`` images drawn uniformly *with
  replacement* from the pool, independently for each group, with ``p_g`` = 70/100 for
  0-20 degrees, 20/100 for 30-50, 6/100 for 60-80, 3/100 for 90-110 and 1/100 for 120-130.
  The training proportions are thus ``p_g / sum(p)`` (sum 2.99): 23.4% for each of the
  three most common angles and 0.33% for each of the two rarest.
* Validation and test hold every image of their pool at every angle (no skew).

Rotations are applied once, at construction, with ``F.grid_sample`` about the image centre
(exact for multiples of 90 degrees: 90 equals ``torch.rot90``). Everything is deterministic
for ``seed``: the 90/10 division of the training set and the training draws.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import ImageDataset
from .groups import GroupDataset

ROTATIONS = tuple(range(0, 140, 10))
# ARM's per-angle weights, written as the official code computes them (70/100, ...).
ARM_WEIGHTS = (70 / 100,) * 3 + (20 / 100,) * 3 + (6 / 100,) * 3 + (3 / 100,) * 3 + (1 / 100,) * 2
ARM_DIVISOR = 5
VAL_FRACTION = 0.1
SPLITS = ("train", "val", "test")
INTERPOLATIONS = ("nearest", "bilinear")


def arm_group_sizes(pool_size: int) -> list[int]:
    """Training images per rotation group for a pool of ``pool_size`` images (ARM's rule)."""
    return [int(weight * pool_size / ARM_DIVISOR) for weight in ARM_WEIGHTS]


def rotate_images(images: Tensor, degrees: float, interpolation: str = "nearest") -> Tensor:
    """Rotate ``[N, C, H, W]`` images counter-clockwise by ``degrees`` about their centre.

    Pixels that come from outside the image are 0. uint8 input gives uint8 output
    (rounded); float input gives float output.
    """
    if interpolation not in INTERPOLATIONS:
        raise ValueError(
            f"interpolation must be one of {list(INTERPOLATIONS)}, got {interpolation!r}"
        )
    if images.dim() != 4:
        raise ValueError(f"images must have shape [N, C, H, W], got {tuple(images.shape)}")
    if degrees % 360 == 0:
        return images.clone()
    n, _, h, w = images.shape
    angle = math.radians(degrees)
    cos, sin = math.cos(angle), math.sin(angle)
    # output pixel (x, y) (pixel units about the centre, y down) samples the input at
    # (x cos - y sin, x sin + y cos); in grid_sample's [-1, 1] coordinates the axes are
    # scaled by 2/W and 2/H.
    theta = torch.tensor([[cos, -sin * h / w, 0.0], [sin * w / h, cos, 0.0]],
                         dtype=torch.float64)
    grid = F.affine_grid(theta.expand(n, 2, 3), [n, 1, h, w], align_corners=False)
    source = images.to(torch.float64)
    rotated = F.grid_sample(source, grid, mode=interpolation, padding_mode="zeros",
                            align_corners=False)
    if images.dtype == torch.uint8:
        return rotated.round_().clamp_(0, 255).to(torch.uint8)
    return rotated.to(images.dtype)


class RotatedDataset(GroupDataset):
    """The ARM rotation groups built from a base training set and a base test set.

    Args:
        train_base: labelled images the training and validation splits come from.
        test_base: labelled images of the test split.
        split: ``"train"`` (skewed), ``"val"`` or ``"test"`` (every image at every angle).
        seed: seed of the 90/10 division and the training draws.
        interpolation: ``"nearest"`` (ARM) or ``"bilinear"``.
        chunk: images rotated at once.

    ``group_info`` holds each group's ``angle``; ``source_index`` the index in the base
    set of every image.
    """

    def __init__(self, train_base: ImageDataset, test_base: ImageDataset, split: str,
                 seed: int = 0, interpolation: str = "nearest", chunk: int = 4096) -> None:
        if split not in SPLITS:
            raise ValueError(f"unknown rotated split {split!r}; expected one of {list(SPLITS)}")
        if interpolation not in INTERPOLATIONS:
            raise ValueError(
                f"interpolation must be one of {list(INTERPOLATIONS)}, got {interpolation!r}"
            )
        generator = torch.Generator().manual_seed(int(seed))
        base = test_base if split == "test" else train_base
        pool = self._pool(len(train_base), split, generator) if split != "test" else (
            torch.arange(len(test_base)))
        if split == "train":
            picks = [pool[torch.randint(len(pool), (size,), generator=generator)]
                     for size in arm_group_sizes(len(pool))]
        else:
            picks = [pool for _ in ROTATIONS]
        images, groups = [], []
        for group, (angle, chosen) in enumerate(zip(ROTATIONS, picks, strict=True)):
            for start in range(0, len(chosen), chunk):
                block = base.images[chosen[start:start + chunk]]
                images.append(rotate_images(block, angle, interpolation))
            groups.append(torch.full((len(chosen),), group, dtype=torch.long))
        source = torch.cat(picks)
        super().__init__(
            torch.cat(images), base.labels[source], base.class_names, split, torch.cat(groups),
            [f"rot{angle}" for angle in ROTATIONS], class_info=base.class_info,
            group_info=[{"angle": angle} for angle in ROTATIONS],
        )
        self.source_index = source
        self.seed = int(seed)
        self.interpolation = interpolation

    @staticmethod
    def _pool(size: int, split: str, generator: torch.Generator) -> Tensor:
        """Indices of the training (first 90% of a seeded permutation) or validation pool."""
        order = torch.randperm(size, generator=generator)
        cut = int(size * (1 - VAL_FRACTION))
        if cut == 0 or cut == size:
            raise ValueError(
                f"the base training set has {size} images; too few to divide 90/10 into "
                f"training and validation pools"
            )
        return order[:cut] if split == "train" else order[cut:]


def rotated_digits(split: str, root: Any = None, seed: int = 0, digit_size: int = 20,
                   image_size: int = 28, interpolation: str = "nearest") -> RotatedDataset:
    """Embedded rotated digits: scikit-learn's 8x8 digits under the ARM rotation groups.

    Each digit is resized to ``digit_size`` and centred on a ``image_size`` black canvas
    (MNIST's 20-in-28 layout, so rotations keep the strokes inside the frame). Training and
    validation come from the digits' ``"train"`` split (1,348 images: pools of 1,213 and
    135; the training groups then hold 169 images each at 0-20 degrees down to 2 at
    120-130), the test split from ``"test"`` (449 images, 6,286 with the 14 angles).
    """
    from .registry import build

    if root is not None:
        raise ValueError(f"rotated digits are embedded and take no root (got root={root!r})")
    if digit_size < 1 or image_size < digit_size:
        raise ValueError(
            f"need 1 <= digit_size <= image_size, got digit_size={digit_size}, "
            f"image_size={image_size}"
        )

    def base(name: str) -> ImageDataset:
        digits = build("digits", name, image_size=digit_size)
        before = (image_size - digit_size) // 2
        after = image_size - digit_size - before
        canvas = F.pad(digits.images, (before, after, before, after))
        return ImageDataset(canvas, digits.labels, digits.class_names, name)

    return RotatedDataset(base("train"), base("test"), split, seed, interpolation)


def rotated_mnist(split: str, root: Any = None, seed: int = 0,
                  interpolation: str = "nearest") -> RotatedDataset:
    """Rotated MNIST as in ARM, from the MNIST IDX files under ``root``.

    Training pool 54,000 images (training groups of 7,560 images at 0-20 degrees, 2,160,
    648, 324 and 108 at 120-130 degrees: 32,292 in all); validation 6,000 x 14 angles;
    test 10,000 x 14 angles.
    """
    from .registry import build

    if split not in SPLITS:
        raise ValueError(f"unknown rotated split {split!r}; expected one of {list(SPLITS)}")
    test_base = build("mnist", "test", root=root)
    train_base = test_base if split == "test" else build("mnist", "train", root=root)
    return RotatedDataset(train_base, test_base, split, seed, interpolation)
