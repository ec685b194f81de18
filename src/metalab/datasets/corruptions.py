"""Image corruptions at five severities and corruption groups for group shift.

The corruptions follow Hendrycks & Dietterich, "Benchmarking Neural Network Robustness to
Common Corruptions and Perturbations" (ICLR 2019), with the parameters of their CIFAR-10-C
generator (32x32 images, the closest to the small images used here); the weather ones
(snow, frost, fog, spatter), which need texture files or ImageMagick, are left out. Each
function takes float images ``[C, H, W]`` or ``[N, C, H, W]`` in ``[0, 1]``, a severity in
``1..5`` and a ``torch.Generator`` for its randomness, and returns images of the same shape
and dtype in ``[0, 1]`` (computed in float32):

=================== ================================================================
gaussian_noise      ``x + N(0, s^2)``, s = .04 .06 .08 .09 .10
shot_noise          ``Poisson(x c) / c``, c = 500 250 100 75 50
impulse_noise       salt-and-pepper on a fraction .01 .02 .03 .05 .07 of the values
speckle_noise       ``x + x N(0, s^2)``, s = .06 .10 .12 .16 .20
gaussian_blur       Gaussian filter, sigma = .4 .6 .7 .8 1 (edge mode "nearest")
glass_blur          blur, local pixel swaps (max offset 1, 1 or 2 passes), blur again
defocus_blur        anti-aliased disk filter, radius .3 .4 .5 1 1.5
motion_blur         one-sided Gaussian line kernel (radius 6 6 6 8 9, sigma 1 1.5 2 2 2.5)
                    at a random angle in [-45, 45] degrees (ImageMagick's motion blur)
zoom_blur           mean of the image and its central zooms by 1.00, 1.01, ... up to
                    1.06 1.11 1.15 1.20 1.25
brightness          HSV value ``+ .05 .1 .15 .2 .3``
contrast            ``(x - mean) c + mean`` per channel, c = .75 .5 .4 .3 .15
saturate            HSV saturation ``S a + b``, (a, b) = (.3, 0) (.1, 0) (1.5, 0) (2, .1)
                    (2.5, .2); the identity on images without 3 channels
pixelate            box down-sampling to a fraction .95 .9 .85 .75 .65 of the side and
                    box up-sampling back (Pillow)
jpeg_compression    JPEG at quality 80 65 58 50 40 (Pillow)
elastic_transform   random affine jitter of three points by up to (.08 .07 .06 .05 .03) x
                    side, then a smooth displacement field (amplitude 0 .05 .08 .1 .1 x
                    side, smoothing sigma 0 .2 .06 .04 .03 x side)
=================== ================================================================

Differences from the reference generator: the blurs and warps run in torch on the float
image (no uint8 round trips, except glass blur's, kept because its swaps act on it);
motion blur skips ImageMagick's PNG round trip; zoom blur zooms about the centre with
bilinear sampling (the reference crops, zooms with scipy and trims); the elastic transform
samples the composed affine and displacement map once with reflection at the border (the
reference resamples twice). The severities are calibrated by the reference authors for
accuracy drop, not pixel distance: saturate's, in particular, is not monotone in distance.

Groups (ARM, Zhang, Marklund et al. 2021): every (corruption, severity) pair is one group.
ARM's CIFAR-10-C split, which :func:`corruption_groups` follows, is: train = gaussian and
shot noise, defocus, glass and zoom blur, snow, frost, brightness, contrast, pixelate (all
severities) + spatter and JPEG at severities 1-3 (56 groups); val = speckle noise,
gaussian blur, saturate + spatter 4, JPEG 5 (17 groups); test = impulse noise, motion
blur, fog, elastic transform + spatter 5, JPEG 4 (22 groups). Without the weather
corruptions this becomes 43 train, 16 val and 16 test groups (11 val groups on
single-channel images, where saturate is the identity and is dropped).
"""

from __future__ import annotations

import io
import math
import zlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from .base import ImageDataset, to_float
from .groups import GroupDataset

SEVERITIES = (1, 2, 3, 4, 5)
Corruption = Callable[[Tensor, int, "torch.Generator | None"], Tensor]
CORRUPTIONS: dict[str, Corruption] = {}


def _register(function: Callable[[Tensor, int, torch.Generator | None], Tensor]):
    """Register ``function`` (working on ``[N, C, H, W]``) under its name, with checks."""

    def corruption(images: Tensor, severity: int = 1,
                   generator: torch.Generator | None = None) -> Tensor:
        batch = _check_images(images)
        _check_severity(severity)
        out = function(batch.to(torch.float32), int(severity), generator)
        out = out.clamp_(0.0, 1.0).to(images.dtype)
        return out if images.dim() == 4 else out[0]

    corruption.__name__ = function.__name__
    corruption.__qualname__ = function.__name__
    corruption.__doc__ = function.__doc__
    CORRUPTIONS[function.__name__] = corruption
    return corruption


def available_corruptions() -> list[str]:
    """Names accepted by :func:`corrupt`."""
    return list(CORRUPTIONS)


def corrupt(images: Tensor, name: str, severity: int,
            generator: torch.Generator | None = None) -> Tensor:
    """Apply corruption ``name`` at ``severity`` (1..5) to float images in ``[0, 1]``."""
    if name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r}; available: {available_corruptions()}")
    return CORRUPTIONS[name](images, severity, generator)


def _check_images(images: Tensor) -> Tensor:
    if not isinstance(images, Tensor) or not images.is_floating_point():
        kind = images.dtype if isinstance(images, Tensor) else type(images).__name__
        raise TypeError(
            f"images must be a float tensor in [0, 1] (uint8 images: divide by 255), got {kind}"
        )
    if images.dim() not in (3, 4) or images.numel() == 0:
        raise ValueError(
            f"images must have shape [C, H, W] or [N, C, H, W], got {tuple(images.shape)}"
        )
    low, high = float(images.min()), float(images.max())
    if low < 0.0 or high > 1.0:
        raise ValueError(f"images must lie in [0, 1], got values in [{low:.4g}, {high:.4g}]")
    return images if images.dim() == 4 else images.unsqueeze(0)


def _check_severity(severity: int) -> None:
    if isinstance(severity, bool) or not isinstance(severity, int) or severity not in SEVERITIES:
        raise ValueError(f"severity must be an integer in 1..5, got {severity!r}")


# ----------------------------------------------------------------------------- helpers


def _fold(index: Tensor, size: int, mode: str) -> Tensor:
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


def _filter_matrix(size: int, weights: Tensor, mode: str) -> Tensor:
    """``[size, size]`` matrix applying the centred 1-D filter ``weights`` with ``mode`` edges."""
    radius = (len(weights) - 1) // 2
    rows = torch.arange(size).repeat_interleave(len(weights))
    offsets = torch.arange(-radius, radius + 1).repeat(size)
    cols = _fold(rows + offsets, size, mode)
    matrix = torch.zeros(size, size, dtype=torch.float64)
    matrix.index_put_((rows, cols), weights.double().repeat(size), accumulate=True)
    return matrix


def _gaussian_weights(sigma: float, truncate: float) -> Tensor:
    """Normalised 1-D Gaussian taps out to ``int(truncate * sigma + 0.5)`` (scipy's radius)."""
    radius = int(truncate * sigma + 0.5)
    if sigma <= 0 or radius == 0:
        return torch.ones(1, dtype=torch.float64)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    weights = torch.exp(-(x**2) / (2 * sigma**2))
    return weights / weights.sum()


def _separable(images: Tensor, weights: Tensor, mode: str) -> Tensor:
    """Filter ``[..., H, W]`` images along both axes with the 1-D ``weights``."""
    rows = _filter_matrix(images.shape[-2], weights, mode).to(images.dtype)
    cols = _filter_matrix(images.shape[-1], weights, mode).to(images.dtype)
    return rows @ images @ cols.T


def _gaussian_blur(images: Tensor, sigma: float, mode: str = "nearest",
                   truncate: float = 4.0) -> Tensor:
    return _separable(images, _gaussian_weights(sigma, truncate), mode)


def _filter2d(images: Tensor, kernel: Tensor, mode: str) -> Tensor:
    """Correlate each channel of ``[N, C, H, W]`` with an odd square ``kernel``."""
    n, c, h, w = images.shape
    radius = kernel.shape[-1] // 2
    rows = _fold(torch.arange(-radius, h + radius), h, mode)
    cols = _fold(torch.arange(-radius, w + radius), w, mode)
    padded = images[:, :, rows][:, :, :, cols].reshape(n * c, 1, h + 2 * radius, w + 2 * radius)
    out = F.conv2d(padded, kernel.to(images.dtype).view(1, 1, *kernel.shape))
    return out.reshape(n, c, h, w)


def _pixel_grid(n: int, h: int, w: int) -> tuple[Tensor, Tensor]:
    """Column and row coordinates ``[n, h, w]`` of every pixel (float64)."""
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64),
                            torch.arange(w, dtype=torch.float64), indexing="ij")
    return xs.expand(n, h, w), ys.expand(n, h, w)


def _sample(images: Tensor, xs: Tensor, ys: Tensor, padding: str) -> Tensor:
    """Bilinear samples of ``images`` at pixel coordinates ``xs, ys`` ``[N, H, W]``."""
    h, w = images.shape[-2:]
    grid = torch.stack([(2 * xs + 1) / w - 1, (2 * ys + 1) / h - 1], -1).to(images.dtype)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode=padding,
                         align_corners=False)


def _planes_through_pil(images: Tensor, convert: Callable[[Image.Image], Image.Image],
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


def _uniform(shape: tuple[int, ...], low: float, high: float,
             generator: torch.Generator | None) -> Tensor:
    return low + (high - low) * torch.rand(shape, generator=generator, dtype=torch.float64)


# -------------------------------------------------------------------------------- noise


@_register
def gaussian_noise(images: Tensor, severity: int, generator: torch.Generator | None) -> Tensor:
    """Additive Gaussian noise ``x + N(0, s^2)`` per value."""
    scale = (0.04, 0.06, 0.08, 0.09, 0.10)[severity - 1]
    return images + scale * torch.randn(images.shape, generator=generator)


@_register
def shot_noise(images: Tensor, severity: int, generator: torch.Generator | None) -> Tensor:
    """Poisson (photon) noise ``Poisson(x c) / c``: fewer photons, more noise."""
    photons = (500, 250, 100, 75, 50)[severity - 1]
    return torch.poisson(images * photons, generator=generator) / photons


@_register
def impulse_noise(images: Tensor, severity: int, generator: torch.Generator | None) -> Tensor:
    """Salt-and-pepper noise: a fraction of the values set to 0 or 1 with equal odds."""
    amount = (0.01, 0.02, 0.03, 0.05, 0.07)[severity - 1]
    flipped = torch.rand(images.shape, generator=generator) < amount
    salt = torch.rand(images.shape, generator=generator) < 0.5
    return torch.where(flipped, salt.to(images.dtype), images)


@_register
def speckle_noise(images: Tensor, severity: int, generator: torch.Generator | None) -> Tensor:
    """Multiplicative noise ``x + x N(0, s^2)``."""
    scale = (0.06, 0.10, 0.12, 0.16, 0.20)[severity - 1]
    return images + images * scale * torch.randn(images.shape, generator=generator)


# -------------------------------------------------------------------------------- blur


@_register
def gaussian_blur(images: Tensor, severity: int, generator: torch.Generator | None) -> Tensor:
    """Gaussian filter (truncated at 4 sigma, edge pixels repeated)."""
    sigma = (0.4, 0.6, 0.7, 0.8, 1.0)[severity - 1]
    return _gaussian_blur(images, sigma)


@_register
def glass_blur(images: Tensor, severity: int, generator: torch.Generator | None) -> Tensor:
    """Frosted glass: blur, quantise to uint8, swap pixels with random neighbours, blur.

    The swaps visit the pixels from the bottom-right corner inwards, each exchanged with
    the pixel at an offset drawn from ``[-d, d)`` in both axes, as in the reference.
    """
    sigma, delta, passes = ((0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2),
                            (0.4, 1, 2))[severity - 1]
    n, c, h, w = images.shape
    x = (_gaussian_blur(images, sigma) * 255).floor_().div_(255).reshape(n, c, h * w)
    rows = range(h - delta, delta, -1)
    cols = range(w - delta, delta, -1)
    offsets = torch.randint(-delta, delta, (passes, len(rows) * len(cols), n, 2),
                            generator=generator)
    batch = torch.arange(n)
    for sweep in range(passes):
        step = 0
        for row in rows:
            for col in cols:
                dx, dy = offsets[sweep, step].unbind(-1)
                step += 1
                here = row * w + col
                there = (row + dy) * w + (col + dx)
                a, b = x[batch, :, here], x[batch, :, there]
                x[batch, :, here] = b
                x[batch, :, there] = a
    return _gaussian_blur(x.reshape(n, c, h, w), sigma)


def disk_kernel(radius: float, alias_blur: float) -> Tensor:
    """The reference's defocus kernel: a normalised disk smoothed by a small Gaussian."""
    extent = 8 if radius <= 8 else math.ceil(radius)
    taps = 3 if radius <= 8 else 5
    grid = torch.arange(-extent, extent + 1, dtype=torch.float64)
    disk = ((grid.view(-1, 1) ** 2 + grid.view(1, -1) ** 2) <= radius**2).double()
    disk /= disk.sum()
    x = torch.arange(taps, dtype=torch.float64) - (taps - 1) / 2
    smooth = torch.exp(-(x**2) / (2 * alias_blur**2))
    smooth /= smooth.sum()
    kernel = _separable(disk, smooth, "mirror")
    keep = math.ceil(radius) + taps // 2
    centre = extent
    return kernel[centre - keep:centre + keep + 1, centre - keep:centre + keep + 1]


@_register
def defocus_blur(images: Tensor, severity: int, generator: torch.Generator | None) -> Tensor:
    """Out-of-focus lens: correlation with an anti-aliased disk (mirrored edges)."""
    radius, alias = ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1.0, 0.2), (1.5, 0.1))[severity - 1]
    return _filter2d(images, disk_kernel(radius, alias), "mirror")


@_register
def motion_blur(images: Tensor, severity: int, generator: torch.Generator | None) -> Tensor:
    """Camera shake: a one-sided line of ``2 ceil(r) + 1`` taps weighted ``exp(-i^2 / 2s^2)``
    along a random direction in [-45, 45] degrees per image (edge pixels repeated)."""
    radius, sigma = ((6, 1.0), (6, 1.5), (6, 2.0), (8, 2.0), (9, 2.5))[severity - 1]
    n, _, h, w = images.shape
    taps = torch.arange(2 * radius + 1, dtype=torch.float64)
    weights = torch.exp(-(taps**2) / (2 * sigma**2))
    weights = (weights / weights.sum()).to(images.dtype)
    angle = _uniform((n,), -45.0, 45.0, generator) * math.pi / 180
    dx = torch.ceil(taps.view(1, -1) * torch.cos(angle).view(-1, 1) - 0.5).long()
    dy = torch.ceil(taps.view(1, -1) * torch.sin(angle).view(-1, 1) - 0.5).long()
    ys = torch.arange(h).view(1, h, 1)
    xs = torch.arange(w).view(1, 1, w)
    batch = torch.arange(n).view(n, 1, 1)
    out = torch.zeros_like(images)
    for tap in range(len(taps)):
        rows = (ys + dy[:, tap].view(n, 1, 1)).clamp(0, h - 1).expand(n, h, w)
        cols = (xs + dx[:, tap].view(n, 1, 1)).clamp(0, w - 1).expand(n, h, w)
        out += weights[tap] * images[batch, :, rows, cols].permute(0, 3, 1, 2)
    return out


@_register
def zoom_blur(images: Tensor, severity: int, generator: torch.Generator | None) -> Tensor:
    """Zooming camera: mean of the image and its central zooms by 1.00, 1.01, ..."""
    zooms = (7, 12, 16, 21, 26)[severity - 1]
    n, _, h, w = images.shape
    xs, ys = _pixel_grid(n, h, w)
    cx, cy = (w - 1) / 2, (h - 1) / 2
    out = images.clone()
    for k in range(zooms):
        factor = 1.0 + 0.01 * k
        out += _sample(images, cx + (xs - cx) / factor, cy + (ys - cy) / factor, "border")
    return out / (zooms + 1)


# ------------------------------------------------------------------------- photometric


def _value_saturation(images: Tensor) -> tuple[Tensor, Tensor]:
    """HSV value ``V = max_c x`` and saturation ``S = (V - min) / V`` (0 where V = 0)."""
    value = images.amax(1, keepdim=True)
    low = images.amin(1, keepdim=True)
    saturation = torch.where(value > 0, (value - low) / value.clamp_min(1e-12),
                             torch.zeros_like(value))
    return value, saturation


@_register
def brightness(images: Tensor, severity: int, generator: torch.Generator | None) -> Tensor:
    """Raise the HSV value by a constant (hue and saturation kept).

    With hue and saturation fixed, RGB is proportional to V, so the new image is
    ``x V' / V`` (``V'`` everywhere where ``V = 0``). Images without 3 channels are treated
    channel by channel, each its own value.
    """
    shift = (0.05, 0.1, 0.15, 0.2, 0.3)[severity - 1]
    if images.shape[1] != 3:
        return images + shift
    value, _ = _value_saturation(images)
    new_value = (value + shift).clamp(max=1.0)
    ratio = new_value / value.clamp_min(1e-12)
    return torch.where(value > 0, images * ratio, new_value.expand_as(images))


@_register
def contrast(images: Tensor, severity: int, generator: torch.Generator | None) -> Tensor:
    """Shrink every channel towards its spatial mean: ``(x - mean) c + mean``."""
    factor = (0.75, 0.5, 0.4, 0.3, 0.15)[severity - 1]
    mean = images.mean(dim=(2, 3), keepdim=True)
    return (images - mean) * factor + mean


@_register
def saturate(images: Tensor, severity: int, generator: torch.Generator | None) -> Tensor:
    """Scale and shift the HSV saturation, ``S' = clip(S a + b)``; identity unless 3 channels.

    With hue and value fixed, ``V - x`` is proportional to ``S``, so ``x' = V - (V - x) S'/S``;
    grey pixels (``S = 0``) take hue 0 (red), as in skimage's conversion.
    """
    scale, shift = ((0.3, 0.0), (0.1, 0.0), (1.5, 0.0), (2.0, 0.1), (2.5, 0.2))[severity - 1]
    if images.shape[1] != 3:
        return images.clone()
    value, sat = _value_saturation(images)
    new_sat = (sat * scale + shift).clamp(0.0, 1.0)
    ratio = new_sat / sat.clamp_min(1e-12)
    coloured = value - (value - images) * ratio
    grey = torch.cat([value, value * (1 - new_sat), value * (1 - new_sat)], 1)
    return torch.where(sat > 0, coloured, grey)


# ------------------------------------------------------------------------------ digital


@_register
def pixelate(images: Tensor, severity: int, generator: torch.Generator | None) -> Tensor:
    """Box down-sampling to a fraction of the side and box up-sampling back (Pillow)."""
    fraction = (0.95, 0.9, 0.85, 0.75, 0.65)[severity - 1]
    h, w = images.shape[-2:]
    small = (max(1, int(w * fraction)), max(1, int(h * fraction)))

    def convert(picture: Image.Image) -> Image.Image:
        return picture.resize(small, Image.Resampling.BOX).resize((w, h), Image.Resampling.BOX)

    return _planes_through_pil(images, convert, "F")


@_register
def jpeg_compression(images: Tensor, severity: int,
                     generator: torch.Generator | None) -> Tensor:
    """JPEG encoding and decoding at a lower quality each severity (Pillow)."""
    quality = (80, 65, 58, 50, 40)[severity - 1]

    def convert(picture: Image.Image) -> Image.Image:
        buffer = io.BytesIO()
        picture.save(buffer, format="JPEG", quality=quality)
        buffer.seek(0)
        return Image.open(buffer)

    return _planes_through_pil(images, convert, "8bit")


def _affine_from_points(source: Tensor, target: Tensor) -> Tensor:
    """``[N, 2, 3]`` affine maps sending three points ``source [N, 3, 2]`` to ``target``."""
    ones = torch.ones(*source.shape[:2], 1, dtype=source.dtype)
    solution = torch.linalg.solve(torch.cat([source, ones], -1), target)  # [N, 3, 2]
    return solution.transpose(1, 2)


@_register
def elastic_transform(images: Tensor, severity: int,
                      generator: torch.Generator | None) -> Tensor:
    """Random affine jitter followed by a smooth random displacement field.

    Three points around the centre move by up to ``a`` pixels (uniformly); the image is
    warped by the affine map they define; each pixel is then displaced by a field of
    ``U(-1, 1)`` values smoothed with a Gaussian of width ``sigma`` (truncated at 3 sigma)
    and scaled by ``alpha``. Borders reflect.
    """
    alpha, sigma, jitter = ((0.0, 0.0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06),
                            (0.1, 0.04, 0.05), (0.1, 0.03, 0.03))[severity - 1]
    n, _, h, w = images.shape
    side = min(h, w)
    alpha, sigma, jitter = alpha * side, sigma * side, jitter * side
    centre = torch.tensor([w // 2, h // 2], dtype=torch.float64)
    half = side // 3
    source = torch.stack([centre + half, centre + torch.tensor([half, -half]), centre - half])
    source = source.expand(n, 3, 2)
    target = source + _uniform((n, 3, 2), -jitter, jitter, generator)
    inverse = _affine_from_points(target, source)  # output pixel -> input pixel
    field = _uniform((n, 2, h, w), -1.0, 1.0, generator)
    field = _gaussian_blur(field, sigma, mode="reflect", truncate=3.0) * alpha
    xs, ys = _pixel_grid(n, h, w)
    xs, ys = xs + field[:, 0], ys + field[:, 1]
    src_x = inverse[:, 0, 0, None, None] * xs + inverse[:, 0, 1, None, None] * ys
    src_y = inverse[:, 1, 0, None, None] * xs + inverse[:, 1, 1, None, None] * ys
    src_x = src_x + inverse[:, 0, 2, None, None]
    src_y = src_y + inverse[:, 1, 2, None, None]
    return _sample(images, src_x, src_y, "reflection")


# ------------------------------------------------------------------------------- groups

ARM_SPLIT: dict[str, tuple[tuple[str, ...], tuple[tuple[str, int], ...]]] = {
    "train": (
        ("gaussian_noise", "shot_noise", "defocus_blur", "glass_blur", "zoom_blur",
         "brightness", "contrast", "pixelate"),
        (("jpeg_compression", 1), ("jpeg_compression", 2), ("jpeg_compression", 3)),
    ),
    "val": (("speckle_noise", "gaussian_blur", "saturate"), (("jpeg_compression", 5),)),
    "test": (("impulse_noise", "motion_blur", "elastic_transform"), (("jpeg_compression", 4),)),
}
COLOUR_ONLY = ("saturate",)


def corruption_groups(split: str, channels: int = 3) -> list[tuple[str, int]]:
    """The (corruption, severity) groups of ``split`` in ARM's CIFAR-10-C split (see module
    docstring), without the weather corruptions; ``channels != 3`` drops saturate."""
    if split not in ARM_SPLIT:
        raise ValueError(f"unknown corruption split {split!r}; expected one of {list(ARM_SPLIT)}")
    names, extra = ARM_SPLIT[split]
    groups = [(name, s) for name in names for s in SEVERITIES] + list(extra)
    if channels != 3:
        groups = [(name, s) for name, s in groups if name not in COLOUR_ONLY]
    return groups


def group_list(corruptions: Sequence[str | tuple[str, int]], severities: Sequence[int],
               check_name: Callable[[Any], None] | None = None) -> list[tuple[str, int]]:
    """Distinct ``(corruption, severity)`` groups: each name at every one of ``severities``,
    pairs as given. ``check_name`` validates a name (default: one of the library's
    corruptions)."""
    if isinstance(corruptions, str) or not len(corruptions):
        raise ValueError(
            "corruptions must be a non-empty list of names or (name, severity) pairs, "
            f"got {corruptions!r}"
        )
    groups = []
    for item in corruptions:
        pairs = [(item, s) for s in severities] if isinstance(item, str) else [tuple(item)]
        for name, severity in pairs:
            (check_name or _check_known)(name)
            _check_severity(severity)
            groups.append((name, int(severity)))
    if len(set(groups)) != len(groups):
        raise ValueError(f"corruption groups must be distinct, got {groups}")
    return groups


def _check_known(name: Any) -> None:
    if name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r}; available: {available_corruptions()}")


def group_seed(seed: int, name: str, severity: int) -> int:
    """Seed of one group's randomness: independent of which other groups are built."""
    return (int(seed) * 1_000_003 + zlib.crc32(name.encode()) * 7 + severity) % (2**63)


class CorruptedDataset(GroupDataset):
    """A labelled image dataset under corruptions: one group per (corruption, severity).

    Args:
        dataset: an :class:`ImageDataset` (uint8 ``images``, ``labels``, ``class_names``).
        corruptions: names (each taken at every severity of ``severities``) and/or explicit
            ``(name, severity)`` pairs; see :func:`corruption_groups` for ARM's split.
        severities: severities for the names given alone.
        seed: seed of the corruptions' randomness and of the image subsets; each group
            draws from its own generator (:func:`group_seed`), so a group is the same
            whichever other groups are built.
        images_per_group: each group holds this many images of ``dataset`` (a seeded subset
            without replacement), or all of them (``None``).
        chunk: images corrupted at once (bounds memory).

    ``group_info`` holds ``corruption`` and ``severity`` per group; the group names are
    ``"<corruption>-<severity>"``.
    """

    def __init__(self, dataset: ImageDataset, corruptions: Sequence[str | tuple[str, int]],
                 severities: Sequence[int] = SEVERITIES, seed: int = 0,
                 images_per_group: int | None = None, chunk: int = 512) -> None:
        images = getattr(dataset, "images", None)
        if not isinstance(images, Tensor) or images.dtype != torch.uint8:
            raise TypeError(
                f"dataset must be an ImageDataset with uint8 images [N, C, H, W]; "
                f"{type(dataset).__name__} has none"
            )
        groups = group_list(corruptions, severities)
        size = len(dataset)
        if images_per_group is not None and not 1 <= images_per_group <= size:
            raise ValueError(
                f"images_per_group must be in [1, {size}] (the dataset's size) or None, "
                f"got {images_per_group!r}"
            )
        parts, labels, group_ids = [], [], []
        for group, (name, severity) in enumerate(groups):
            generator = torch.Generator().manual_seed(group_seed(seed, name, severity))
            if images_per_group is None:
                chosen = torch.arange(size)
            else:
                chosen = torch.randperm(size, generator=generator)[:images_per_group].sort()[0]
            for start in range(0, len(chosen), chunk):
                block = to_float(images[chosen[start:start + chunk]])
                out = corrupt(block, name, severity, generator)
                parts.append(out.mul_(255).round_().to(torch.uint8))
            labels.append(dataset.labels[chosen])
            group_ids.append(torch.full((len(chosen),), group, dtype=torch.long))
        super().__init__(
            torch.cat(parts), torch.cat(labels), dataset.class_names,
            getattr(dataset, "split", "all"), torch.cat(group_ids),
            [f"{name}-{severity}" for name, severity in groups],
            class_info=getattr(dataset, "class_info", None),
            group_info=[{"corruption": name, "severity": severity} for name, severity in groups],
        )
        self.seed = int(seed)


def corrupted(dataset: ImageDataset, corruptions: Sequence[str | tuple[str, int]],
              severities: Sequence[int] = SEVERITIES, seed: int = 0,
              images_per_group: int | None = None) -> CorruptedDataset:
    """Shorthand for :class:`CorruptedDataset`."""
    return CorruptedDataset(dataset, corruptions, severities, seed, images_per_group)


# ------------------------------------------------------------------ embedded: glyphs

GLYPH_SPLIT_FRACTIONS = {"train": (0.0, 0.6), "val": (0.6, 0.8), "test": (0.8, 1.0)}


def glyph_classification_set(split: str, alphabets: Sequence[str] = ("Latin",),
                             images_per_class: int = 30, image_size: int = 28,
                             drawer_seed: int = 0) -> ImageDataset:
    """A fixed-class glyph dataset: every class of ``alphabets``, its drawings divided
    60/20/20 into train/val/test (by drawing index), so all splits share the classes."""
    from .registry import build

    if split not in GLYPH_SPLIT_FRACTIONS:
        raise ValueError(
            f"unknown split {split!r}; expected one of {list(GLYPH_SPLIT_FRACTIONS)}"
        )
    glyphs = build("glyphs", "all", alphabets=list(alphabets), images_per_class=images_per_class,
                   image_size=image_size, seed=drawer_seed)
    low, high = GLYPH_SPLIT_FRACTIONS[split]
    first, last = round(low * images_per_class), round(high * images_per_class)
    if last <= first:
        raise ValueError(
            f"images_per_class={images_per_class} leaves split {split!r} without drawings; "
            f"use at least 5"
        )
    position = _rank_within_class(glyphs.labels)
    keep = (position >= first) & (position < last)
    return ImageDataset(glyphs.images[keep], glyphs.labels[keep], glyphs.class_names, split,
                        glyphs.class_info)


def _rank_within_class(labels: Tensor) -> Tensor:
    """For each item, how many items of its class come before it."""
    order = torch.argsort(labels, stable=True)
    ordered = labels[order]
    rank = torch.arange(len(labels)) - torch.searchsorted(ordered, ordered, side="left")
    position = torch.empty_like(rank)
    position[order] = rank
    return position


def corrupted_glyphs(split: str, root: Any = None, seed: int = 0,
                     alphabets: Sequence[str] = ("Latin",), images_per_class: int = 30,
                     image_size: int = 28, images_per_group: int | None = None
                     ) -> CorruptedDataset:
    """Embedded corruption-shift benchmark: glyphs of fixed classes under corruptions.

    The classes are the characters of ``alphabets`` (default the Latin letters that survive
    the glyph builder's look-alike filter: 49 of A-Z, a-z), so one classifier serves every
    split; the drawings are split 60/20/20 (:func:`glyph_classification_set`). The groups
    are ARM's disjoint train/val/test corruption groups for single-channel images
    (:func:`corruption_groups`): 43 train, 11 val and 16 test groups. Nothing is downloaded.
    """
    if root is not None:
        raise ValueError(f"corrupted glyphs are embedded and take no root (got root={root!r})")
    base = glyph_classification_set(split, alphabets, images_per_class, image_size)
    return CorruptedDataset(base, corruption_groups(split, channels=base.images.shape[1]),
                            seed=seed, images_per_group=images_per_group)
