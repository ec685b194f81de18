"""scikit-learn's bundled handwritten digits (UCI optdigits test set), no download needed.

1,797 images of 8x8 pixels with values 0..16, ten classes (0-9), written by 13 people. A
stand-in for MNIST when no files are at hand. ``image_size`` other than 8 resizes with
bilinear interpolation (e.g. 28 to match MNIST-shaped models).

Splits: ``"all"``; ``"train"`` and ``"test"`` take every fourth image of the file order as
test (449 images) and the others as train (1,348), a fixed, class-balanced interleaving.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import ImageDataset, check_no_root, check_split

SPLITS = ("all", "train", "test")
TEST_EVERY = 4


class Digits(ImageDataset):
    """Handwritten digits from :func:`sklearn.datasets.load_digits` as ``[1, S, S]`` images.

    Args:
        split: ``"all"``, ``"train"`` or ``"test"`` (module docstring).
        root: must be None (embedded).
        image_size: side of the (bilinearly resized) images.
    """

    splits = SPLITS
    description = "scikit-learn's bundled 8x8 handwritten digits (no download)"

    def __init__(self, split: str = "all", root: None = None, image_size: int = 8) -> None:
        check_split(split, SPLITS, "Digits")
        check_no_root(root, "digits")
        if image_size < 1:
            raise ValueError(f"image_size must be a positive int, got {image_size}")
        from sklearn.datasets import load_digits

        bunch = load_digits()
        images = torch.as_tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
        labels = torch.as_tensor(bunch.target, dtype=torch.long)
        if split != "all":
            is_test = torch.arange(len(labels)) % TEST_EVERY == TEST_EVERY - 1
            keep = is_test if split == "test" else ~is_test
            images, labels = images[keep], labels[keep]
        if image_size != images.shape[-1]:
            images = F.interpolate(images, size=image_size, mode="bilinear", align_corners=False)
        images = (images.clamp(0, 1) * 255).round().to(torch.uint8)
        names = [str(d) for d in range(10)]
        super().__init__(images, labels, names, split)
