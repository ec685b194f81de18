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

ARM's grouping of these corruptions into disjoint train/val/test groups is in
:mod:`metalab.datasets.corruption_groups`; a labelled dataset under corruptions is
:class:`metalab.datasets.corrupted.CorruptedDataset`.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable

import torch
from PIL import Image
from torch import Tensor

from .filters import (
    bilinear_sample,
    filter2d,
    gaussian_filter,
    pixel_grid,
    separable_filter,
    through_pil,
    uniform,
)

SEVERITIES = (1, 2, 3, 4, 5)
Corruption = Callable[[Tensor, int, "torch.Generator | None"], Tensor]
CORRUPTIONS: dict[str, Corruption] = {}


def _register(function: Callable[[Tensor, int, torch.Generator | None], Tensor]):
    """Register ``function`` (working on ``[N, C, H, W]``) under its name, with checks."""

    def corruption(images: Tensor, severity: int = 1,
                   generator: torch.Generator | None = None) -> Tensor:
        batch = _check_images(images)
        check_severity(severity)
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


def check_severity(severity: int) -> None:
    if isinstance(severity, bool) or not isinstance(severity, int) or severity not in SEVERITIES:
        raise ValueError(f"severity must be an integer in 1..5, got {severity!r}")



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
    return gaussian_filter(images, sigma)


@_register
def glass_blur(images: Tensor, severity: int, generator: torch.Generator | None) -> Tensor:
    """Frosted glass: blur, quantise to uint8, swap pixels with random neighbours, blur.

    The swaps visit the pixels from the bottom-right corner inwards, each exchanged with
    the pixel at an offset drawn from ``[-d, d)`` in both axes, as in the reference.
    """
    sigma, delta, passes = ((0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2),
                            (0.4, 1, 2))[severity - 1]
    n, c, h, w = images.shape
    x = (gaussian_filter(images, sigma) * 255).floor_().div_(255).reshape(n, c, h * w)
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
    return gaussian_filter(x.reshape(n, c, h, w), sigma)


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
    kernel = separable_filter(disk, smooth, "mirror")
    keep = math.ceil(radius) + taps // 2
    centre = extent
    return kernel[centre - keep:centre + keep + 1, centre - keep:centre + keep + 1]


@_register
def defocus_blur(images: Tensor, severity: int, generator: torch.Generator | None) -> Tensor:
    """Out-of-focus lens: correlation with an anti-aliased disk (mirrored edges)."""
    radius, alias = ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1.0, 0.2), (1.5, 0.1))[severity - 1]
    return filter2d(images, disk_kernel(radius, alias), "mirror")


@_register
def motion_blur(images: Tensor, severity: int, generator: torch.Generator | None) -> Tensor:
    """Camera shake: a one-sided line of ``2 ceil(r) + 1`` taps weighted ``exp(-i^2 / 2s^2)``
    along a random direction in [-45, 45] degrees per image (edge pixels repeated)."""
    radius, sigma = ((6, 1.0), (6, 1.5), (6, 2.0), (8, 2.0), (9, 2.5))[severity - 1]
    n, _, h, w = images.shape
    taps = torch.arange(2 * radius + 1, dtype=torch.float64)
    weights = torch.exp(-(taps**2) / (2 * sigma**2))
    weights = (weights / weights.sum()).to(images.dtype)
    angle = uniform((n,), -45.0, 45.0, generator) * math.pi / 180
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
    xs, ys = pixel_grid(n, h, w)
    cx, cy = (w - 1) / 2, (h - 1) / 2
    out = images.clone()
    for k in range(zooms):
        factor = 1.0 + 0.01 * k
        out += bilinear_sample(images, cx + (xs - cx) / factor, cy + (ys - cy) / factor, "border")
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

    return through_pil(images, convert, "F")


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

    return through_pil(images, convert, "8bit")


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
    target = source + uniform((n, 3, 2), -jitter, jitter, generator)
    inverse = _affine_from_points(target, source)  # output pixel -> input pixel
    field = uniform((n, 2, h, w), -1.0, 1.0, generator)
    field = gaussian_filter(field, sigma, mode="reflect", truncate=3.0) * alpha
    xs, ys = pixel_grid(n, h, w)
    xs, ys = xs + field[:, 0], ys + field[:, 1]
    src_x = inverse[:, 0, 0, None, None] * xs + inverse[:, 0, 1, None, None] * ys
    src_y = inverse[:, 1, 0, None, None] * xs + inverse[:, 1, 1, None, None] * ys
    src_x = src_x + inverse[:, 0, 2, None, None]
    src_y = src_y + inverse[:, 1, 2, None, None]
    return bilinear_sample(images, src_x, src_y, "reflection")
