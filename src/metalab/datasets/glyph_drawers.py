"""Simulated "drawers" for rendered glyphs: random affine distortion and stroke width.

A clean glyph rendering (float ``[N, 1, H, H]``, ink 1 on 0, at a resolution a few times
the output's) is warped by a random rotation, shear, anisotropic scale and shift plus a
smooth random elastic displacement (a wobbly hand), its
strokes are thickened or thinned by blurring and re-thresholding at a random level
(relative to each image's peak, so hairline faces keep their strokes), and it is
downsampled with area averaging to the output size. Everything is batched in torch and
driven by an explicit ``torch.Generator``, so it is deterministic for a seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class DrawerStyle:
    """Ranges of the random per-image distortions (uniform within each range)."""

    rotation_deg: float = 12.0
    shear: float = 0.22
    scale: tuple[float, float] = (0.82, 1.08)
    aspect: float = 0.12
    translate: float = 0.08
    threshold: tuple[float, float] = (0.15, 0.6)
    blur: float = 0.022
    edge: float = 0.08
    elastic: float = 0.08
    elastic_cells: int = 4


def random_thetas(n: int, generator: torch.Generator, style: DrawerStyle) -> Tensor:
    """``[n, 2, 3]`` sampling matrices for ``F.affine_grid`` (output -> input coordinates)."""

    def uniform(lo: float, hi: float) -> Tensor:
        return lo + (hi - lo) * torch.rand(n, generator=generator, dtype=torch.float64)

    angle = uniform(-style.rotation_deg, style.rotation_deg) * math.pi / 180
    shear = uniform(-style.shear, style.shear)
    scale = uniform(*style.scale)
    aspect = torch.exp(uniform(-style.aspect, style.aspect))
    shift = torch.stack([uniform(-style.translate, style.translate) for _ in range(2)], 1)
    cos, sin = torch.cos(angle), torch.sin(angle)
    rotate = torch.stack([torch.stack([cos, -sin], 1), torch.stack([sin, cos], 1)], 1)
    shear_m = torch.eye(2, dtype=torch.float64).repeat(n, 1, 1)
    shear_m[:, 0, 1] = shear
    stretch = torch.diag_embed(torch.stack([scale * aspect, scale / aspect], 1))
    forward = rotate @ shear_m @ stretch
    inverse = torch.linalg.inv(forward)
    offset = -(inverse @ shift.unsqueeze(-1))
    return torch.cat([inverse, offset], 2).to(torch.float32)


def blur_matrix(size: int, sigma: float) -> Tensor:
    """``[size, size]`` matrix that applies a 1-D Gaussian blur (zero padding) to a row."""
    position = torch.arange(size, dtype=torch.float32)
    distance = position.view(-1, 1) - position.view(1, -1)
    radius = max(1, math.ceil(3 * sigma))
    weights = torch.exp(-(distance**2) / (2 * sigma**2)) * (distance.abs() <= radius)
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    return weights / torch.exp(-(x**2) / (2 * sigma**2)).sum()


def gaussian_blur(images: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of ``[N, C, H, W]`` images (zero padding).

    Written as two small matrix products, which on CPU is far faster than a
    single-channel ``conv2d``.
    """
    rows = blur_matrix(images.shape[-2], sigma)
    cols = blur_matrix(images.shape[-1], sigma)
    return rows @ images @ cols


def elastic_field(n: int, side: int, generator: torch.Generator, style: DrawerStyle) -> Tensor:
    """Smooth random displacements ``[n, side, side, 2]`` (a wobbly "hand")."""
    cells = style.elastic_cells
    coarse = torch.randn(n, 2, cells, cells, generator=generator) * style.elastic
    field = F.interpolate(coarse, size=(side, side), mode="bicubic", align_corners=True)
    return field.permute(0, 2, 3, 1)


def affine_grid(thetas: Tensor, side: int) -> Tensor:
    """Same as ``F.affine_grid(thetas, [N, 1, side, side], align_corners=False)``, faster."""
    coords = (torch.arange(side, dtype=torch.float32) * 2 + 1) / side - 1
    ys, xs = torch.meshgrid(coords, coords, indexing="ij")
    t = thetas.view(-1, 6, 1, 1)
    grid_x = t[:, 0] * xs + t[:, 1] * ys + t[:, 2]
    grid_y = t[:, 3] * xs + t[:, 4] * ys + t[:, 5]
    return torch.stack([grid_x, grid_y], -1)


def draw(
    clean: Tensor, out_size: int, generator: torch.Generator, style: DrawerStyle | None = None
) -> Tensor:
    """Distort clean renderings ``[N, 1, H, H]`` (float, 0..1) into uint8 ``[N, 1, S, S]``.

    ``H`` must be a multiple of ``out_size``.
    """
    style = style or DrawerStyle()
    n, _, side, _ = clean.shape
    if side % out_size:
        raise ValueError(f"render size {side} must be a multiple of out_size {out_size}")
    thetas = random_thetas(n, generator, style)
    grid = affine_grid(thetas, side) + elastic_field(n, side, generator, style)
    warped = F.grid_sample(clean, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    blurred = gaussian_blur(warped, style.blur * side)
    peak = blurred.amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-6)
    lo, hi = style.threshold
    level = lo + (hi - lo) * torch.rand(n, 1, 1, 1, generator=generator)
    inked = ((blurred / peak - level) / (2 * style.edge) + 0.5).clamp_(0, 1)
    small = F.avg_pool2d(inked, side // out_size)
    return (small * 255).round_().to(torch.uint8)
