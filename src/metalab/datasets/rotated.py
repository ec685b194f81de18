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
import os

import torch
import torch.nn.functional as F
from torch import Tensor

from metalab.validation import check_choice, check_positive_int

from .base import ImageDataset, check_no_root, check_split
from .digits import Digits
from .groups import GroupDataset
from .mnist import MNIST

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
    check_choice("interpolation", interpolation, INTERPOLATIONS)
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
    """The ARM rotation groups built from given base images (an adapter: the registered
    datasets :class:`RotatedDigits` and :class:`RotatedMNIST` build their bases and call it).

    Args:
        train_base: labelled images the training and validation splits come from (may be
            None for ``split="test"``).
        test_base: labelled images of the test split (may be None for the other splits).
        split: ``"train"`` (skewed), ``"val"`` or ``"test"`` (every image at every angle).
        seed: seed of the 90/10 division and the training draws.
        interpolation: ``"nearest"`` (ARM) or ``"bilinear"``.
        chunk: images rotated at once.

    ``group_info`` holds each group's ``angle``; ``source_index`` the index in the base
    set of every image.
    """

    splits = SPLITS
    source_index: Tensor
    seed: int
    interpolation: str

    def __init__(self, train_base: ImageDataset | None, test_base: ImageDataset | None,
                 split: str, seed: int = 0, interpolation: str = "nearest",
                 chunk: int = 4096) -> None:
        check_split(split, SPLITS, "rotated")
        check_choice("interpolation", interpolation, INTERPOLATIONS)
        base = test_base if split == "test" else train_base
        if base is None:
            raise ValueError(f"split {split!r} needs a "
                             f"{'test_base' if split == 'test' else 'train_base'}, got None")
        generator = torch.Generator().manual_seed(int(seed))
        pool = self._pool(len(base), split, generator) if split != "test" else (
            torch.arange(len(base)))
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


class RotatedDigits(RotatedDataset):
    """Embedded rotated digits: scikit-learn's 8x8 digits under the ARM rotation groups.

    Each digit is resized to ``digit_size`` and centred on a ``image_size`` black canvas
    (MNIST's 20-in-28 layout, so rotations keep the strokes inside the frame). Training and
    validation come from the digits' ``"train"`` split (1,348 images: pools of 1,213 and
    135; the training groups then hold 169 images each at 0-20 degrees down to 2 at
    120-130), the test split from ``"test"`` (449 images, 6,286 with the 14 angles).
    ``root`` must be None (embedded).
    """

    description = "group shift: embedded digits in 14 rotation groups, ARM's skewed training mix"

    def __init__(self, split: str = "train", root: None = None, seed: int = 0,
                 digit_size: int = 20, image_size: int = 28,
                 interpolation: str = "nearest") -> None:
        check_split(split, SPLITS, "rotated")
        check_no_root(root, "rotated digits")
        if digit_size < 1 or image_size < digit_size:
            raise ValueError(
                f"need 1 <= digit_size <= image_size, got digit_size={digit_size}, "
                f"image_size={image_size}"
            )
        train_base = None if split == "test" else _framed_digits("train", digit_size, image_size)
        test_base = _framed_digits("test", digit_size, image_size) if split == "test" else None
        super().__init__(train_base, test_base, split, seed, interpolation)


def _framed_digits(split: str, digit_size: int, image_size: int) -> ImageDataset:
    """The digits of ``split`` resized to ``digit_size``, centred on an ``image_size`` canvas."""
    digits = Digits(split, image_size=digit_size)
    before = (image_size - digit_size) // 2
    after = image_size - digit_size - before
    canvas = F.pad(digits.images, (before, after, before, after))
    return ImageDataset(canvas, digits.labels, digits.class_names, split)


IMAGE_SOURCES = ("official", "test-set")
TEST_SET_SEED_OFFSET = 0x5EED  # the test-set division has its own stream, apart from the draws


def divide_test_set(size: int, seed: int, test_fraction: float) -> tuple[Tensor, Tensor]:
    """The seeded division of ``size`` images into (training + validation, test) indices.

    A permutation from a generator seeded with ``seed + TEST_SET_SEED_OFFSET``; its first
    ``round(test_fraction * size)`` entries are the test images, the rest the base that
    `RotatedDataset` divides 90/10 into the training and validation pools. The two parts
    never overlap and are the same for every split built with the same ``seed``.
    """
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must lie strictly between 0 and 1, got {test_fraction}")
    generator = torch.Generator().manual_seed(int(seed) + TEST_SET_SEED_OFFSET)
    order = torch.randperm(size, generator=generator)
    cut = round(test_fraction * size)
    if cut == 0 or cut == size:
        raise ValueError(f"test_fraction={test_fraction} of {size} images leaves an empty part")
    return order[cut:], order[:cut]


def _subset(base: ImageDataset, indices: Tensor, split: str, image_size: int) -> ImageDataset:
    """``base``'s images at ``indices``, resized to ``image_size`` (area averaging)."""
    images = base.images[indices]
    if image_size != images.shape[-1]:
        images = F.interpolate(images.float(), size=(image_size, image_size), mode="area")
        images = images.round_().clamp_(0, 255).to(torch.uint8)
    return ImageDataset(images, base.labels[indices], base.class_names, split)


class RotatedMNIST(RotatedDataset):
    """Rotated MNIST as in ARM, from the MNIST IDX files under ``root``.

    ``images="official"`` (the paper): training and validation pools from the 60,000
    training images (54,000 / 6,000: training groups of 7,560 images at 0-20 degrees,
    2,160, 648, 324 and 108 at 120-130 degrees, 32,292 in all), the test split from the
    10,000 test images, 14 angles each.

    ``images="test-set"``: only the 10,000 official test images (``t10k-*`` files) are
    read. A seeded permutation (`divide_test_set`) puts ``test_fraction`` of them (3,000 by
    default) in the test split; the other 7,000 are divided 90/10 into a training pool of
    6,300 and a validation pool of 700 as the paper divides its training set, and the
    training groups are drawn from the pool by ARM's skewed rule (882 images at 0-20
    degrees, 252, 75, 37 and 12 at 120-130; 3,762 in all). Train, val and test images never
    overlap for one ``seed``. ``file_index`` gives every item's index in the file it came
    from. ``image_size`` (test-set images only) resizes the 28x28 digits by area averaging
    before they are rotated (14: a quarter of the compute, for CPU benchmarks).
    """

    needs_files = True
    description = ("group shift: MNIST in 14 rotation groups (0-130 degrees), ARM's skewed "
                   "training mix")
    file_index: Tensor

    def __init__(self, split: str = "train", root: str | os.PathLike[str] | None = None,
                 seed: int = 0, interpolation: str = "nearest", images: str = "official",
                 test_fraction: float = 0.3, image_size: int = 28) -> None:
        check_split(split, SPLITS, "rotated")
        check_choice("images", images, IMAGE_SOURCES)
        check_positive_int("image_size", image_size)
        if images == "official":
            if image_size != 28:
                raise ValueError(f"image_size={image_size} needs images='test-set'; the "
                                 f"official images are 28x28")
            train_base = None if split == "test" else MNIST("train", root=root)
            test_base = MNIST("test", root=root) if split == "test" else None
            super().__init__(train_base, test_base, split, seed, interpolation)
            self.file_index = self.source_index
            return
        everything = MNIST("test", root=root)
        rest, test = divide_test_set(len(everything), seed, test_fraction)
        part = test if split == "test" else rest
        base = _subset(everything, part, split, image_size)
        super().__init__(None if split == "test" else base, base if split == "test" else None,
                         split, seed, interpolation)
        self.file_index = part[self.source_index]


# The old builders' names: the same (split, root=None, **options) shape.
rotated_digits = RotatedDigits
rotated_mnist = RotatedMNIST
