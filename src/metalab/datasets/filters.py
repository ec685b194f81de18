"""Image-processing primitives the corruptions are built from (float images ``[N, C, H, W]``).

Separable and 2-D filters with scipy's/OpenCV's border modes, bilinear resampling at pixel
coordinates, Pillow round trips, and seeded uniform draws; each is checked through the
corruptions that use it (tests/test_corruptions.py compares them with scipy and Pillow).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor


def fold_index(index: Tensor, size: int, mode: str) -> Tensor:
    """Map out-of-range indices into ``[0, size)``.

    ``nearest`` repeats the edge; ``reflect`` mirrors about the edge (``c b a | a b c``,
    scipy's "reflect"); ``mirror`` mirrors about the edge pixel (``c b | a b c``, OpenCV's
    default border).
    """
    if mode == "nearest" or size == 1:
        return index.clamp(0, size - 1)
    if mode == "reflect":
        index = index.remainder(2 * size)
        return torch.where(index >= size, 2 * size - 1 - index, index)
    index = index.remainder(2 * size - 2)
    return torch.where(index >= size, 2 * size - 2 - index, index)


def filter_matrix(size: int, weights: Tensor, mode: str) -> Tensor:
    """``[size, size]`` matrix applying the centred 1-D filter ``weights`` with ``mode`` edges."""
    radius = (len(weights) - 1) // 2
    rows = torch.arange(size).repeat_interleave(len(weights))
    offsets = torch.arange(-radius, radius + 1).repeat(size)
    cols = fold_index(rows + offsets, size, mode)
    matrix = torch.zeros(size, size, dtype=torch.float64)
    matrix.index_put_((rows, cols), weights.double().repeat(size), accumulate=True)
    return matrix


def gaussian_weights(sigma: float, truncate: float) -> Tensor:
    """Normalised 1-D Gaussian taps out to ``int(truncate * sigma + 0.5)`` (scipy's radius)."""
    radius = int(truncate * sigma + 0.5)
    if sigma <= 0 or radius == 0:
        return torch.ones(1, dtype=torch.float64)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    weights = torch.exp(-(x**2) / (2 * sigma**2))
    return weights / weights.sum()


def separable_filter(images: Tensor, weights: Tensor, mode: str) -> Tensor:
    """Filter ``[..., H, W]`` images along both axes with the 1-D ``weights``."""
    rows = filter_matrix(images.shape[-2], weights, mode).to(images.dtype)
    cols = filter_matrix(images.shape[-1], weights, mode).to(images.dtype)
    return rows @ images @ cols.T


def gaussian_filter(images: Tensor, sigma: float, mode: str = "nearest",
                   truncate: float = 4.0) -> Tensor:
    return separable_filter(images, gaussian_weights(sigma, truncate), mode)


def filter2d(images: Tensor, kernel: Tensor, mode: str) -> Tensor:
    """Correlate each channel of ``[N, C, H, W]`` with an odd square ``kernel``."""
    n, c, h, w = images.shape
    radius = kernel.shape[-1] // 2
    rows = fold_index(torch.arange(-radius, h + radius), h, mode)
    cols = fold_index(torch.arange(-radius, w + radius), w, mode)
    padded = images[:, :, rows][:, :, :, cols].reshape(n * c, 1, h + 2 * radius, w + 2 * radius)
    out = F.conv2d(padded, kernel.to(images.dtype).view(1, 1, *kernel.shape))
    return out.reshape(n, c, h, w)


def pixel_grid(n: int, h: int, w: int) -> tuple[Tensor, Tensor]:
    """Column and row coordinates ``[n, h, w]`` of every pixel (float64)."""
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64),
                            torch.arange(w, dtype=torch.float64), indexing="ij")
    return xs.expand(n, h, w), ys.expand(n, h, w)


def bilinear_sample(images: Tensor, xs: Tensor, ys: Tensor, padding: str) -> Tensor:
    """Bilinear samples of ``images`` at pixel coordinates ``xs, ys`` ``[N, H, W]``."""
    h, w = images.shape[-2:]
    grid = torch.stack([(2 * xs + 1) / w - 1, (2 * ys + 1) / h - 1], -1).to(images.dtype)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode=padding,
                         align_corners=False)


def through_pil(images: Tensor, convert: Callable[[Image.Image], Image.Image],
                        mode: str) -> Tensor:
    """Apply a Pillow operation to every image (``mode`` "F": each channel as a float plane;
    "8bit": uint8 images, RGB for 3 channels, each channel as "L" otherwise)."""
    n, c, h, w = images.shape
    if mode == "F":
        planes = images.reshape(n * c, h, w).numpy()
        out = [np.asarray(convert(Image.fromarray(p, mode="F")), dtype=np.float32)
               for p in planes]
        return torch.from_numpy(np.stack(out)).reshape(n, c, h, w)
    data = (images * 255).round().to(torch.uint8)
    if c == 3:
        pictures = [Image.fromarray(img.permute(1, 2, 0).numpy(), mode="RGB") for img in data]
        out = np.stack([np.asarray(convert(p).convert("RGB")) for p in pictures])
        return torch.from_numpy(out).permute(0, 3, 1, 2).float().div_(255)
    planes = data.reshape(n * c, h, w).numpy()
    out = np.stack([np.asarray(convert(Image.fromarray(p, mode="L")).convert("L"))
                    for p in planes])
    return torch.from_numpy(out).reshape(n, c, h, w).float().div_(255)


def uniform(shape: tuple[int, ...], low: float, high: float,
             generator: torch.Generator | None) -> Tensor:
    return low + (high - low) * torch.rand(shape, generator=generator, dtype=torch.float64)
