"""Data augmentation of training tasks: random crops, flips, affine and colour jitter.

The augmentation of the strong few-shot recipes (Chen et al. 2019; Tian et al. 2020):
every support and query image of a TRAINING task is transformed independently; labels
never change, and validation and meta-test tasks are never augmented (`build_task_source`
wraps the training source only). The random draws come from the wrapped source's own
generator, after it has drawn the batch, so the source's checkpointed state determines the
augmented batch and a resumed run sees exactly the batches of an uninterrupted one.

Transformations (each optional, applied in this order to ``[B, C, H, W]`` images):

- ``affine``: small random similarity jitter, ``x'(p) = x(A p + t)`` with a rotation of
  ``U(-rotate, rotate)`` degrees, a scale ``U(1 - scale, 1 + scale)`` and a translation of
  ``U(-translate, translate)`` times the half side, bilinear, zero outside (characters);
- ``crop_padding``: zero-pad each side by ``p`` pixels and crop a random ``H x W`` window
  (the CIFAR/miniImageNet random crop);
- ``flip``: mirror left-right with probability 1/2. Only where the mirror image is the same
  class (natural images, never characters: a mirrored letter is another letter or none);
- ``color_jitter``: brightness and contrast factors ``U(1 - j, 1 + j)`` per image and, for
  three-channel images, saturation too (torchvision's ColorJitter definitions).

Presets: ``characters`` = affine (rotate 10 degrees, scale 0.1, translate 0.1);
``images`` = crop_padding 4, flip, color_jitter 0.4.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from metalab.tasks.batch import TaskBatch
from metalab.tasks.source import TaskSource


@dataclass(frozen=True)
class ImageAugmentation:
    """Which transformations to draw, and how strong (see the module docstring)."""

    rotate: float = 0.0
    scale: float = 0.0
    translate: float = 0.0
    crop_padding: int = 0
    flip: bool = False
    color_jitter: float = 0.0

    def __post_init__(self) -> None:
        for name in ("rotate", "scale", "translate", "color_jitter"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
                raise ValueError(f"augment.{name} must be a non-negative number, got {value!r}")
        if self.scale >= 1 or self.color_jitter >= 1:
            raise ValueError(f"augment.scale and augment.color_jitter must be below 1, got "
                             f"{self.scale} and {self.color_jitter}")
        if not isinstance(self.crop_padding, int) or self.crop_padding < 0:
            raise ValueError(f"augment.crop_padding must be a non-negative integer, got "
                             f"{self.crop_padding!r}")
        if not isinstance(self.flip, bool):
            raise ValueError(f"augment.flip must be true or false, got {self.flip!r}")

    @property
    def has_affine(self) -> bool:
        return bool(self.rotate or self.scale or self.translate)

    def __call__(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """Each image of ``x [B, C, H, W]`` transformed with its own random draws."""
        if x.dim() != 4:
            raise ValueError(f"augmentation needs images [B, C, H, W], got {tuple(x.shape)}")
        if self.has_affine:
            x = random_affine(x, self.rotate, self.scale, self.translate, generator)
        if self.crop_padding:
            x = random_crop(x, self.crop_padding, generator)
        if self.flip:
            x = random_flip(x, generator)
        if self.color_jitter:
            x = color_jitter(x, self.color_jitter, generator)
        return x


PRESETS: dict[str, ImageAugmentation] = {
    "characters": ImageAugmentation(rotate=10.0, scale=0.1, translate=0.1),
    "images": ImageAugmentation(crop_padding=4, flip=True, color_jitter=0.4),
}


def parse_augmentation(spec: Any) -> ImageAugmentation | None:
    """``data.augment``: ``null``/``none``, a preset name, or a mapping of the fields."""
    if spec is None or spec == "none" or spec is False:
        return None
    if isinstance(spec, str):
        if spec not in PRESETS:
            raise ValueError(f"data.augment must be one of {['none', *PRESETS]} or a mapping "
                             f"of {[f.name for f in fields(ImageAugmentation)]}, got {spec!r}")
        return PRESETS[spec]
    if isinstance(spec, dict):
        known = {f.name for f in fields(ImageAugmentation)}
        unknown = sorted(set(spec) - known)
        if unknown:
            raise ValueError(f"data.augment keys {unknown} are unknown; known: {sorted(known)}")
        return ImageAugmentation(**spec)
    raise ValueError(f"data.augment must be a preset name or a mapping, got {spec!r}")


def _uniform(n: int, low: float, high: float, generator: torch.Generator) -> Tensor:
    return low + (high - low) * torch.rand(n, generator=generator, dtype=torch.float64)


def random_affine(x: Tensor, rotate: float, scale: float, translate: float,
                  generator: torch.Generator) -> Tensor:
    """``x'(p) = x(A p + t)`` per image (normalised coordinates, bilinear, zero padding)."""
    n = x.shape[0]
    angle = _uniform(n, -rotate, rotate, generator) * (math.pi / 180)
    factor = _uniform(n, 1 - scale, 1 + scale, generator)
    shift = _uniform(2 * n, -translate, translate, generator).view(n, 2)
    cos, sin = torch.cos(angle) / factor, torch.sin(angle) / factor
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1),
                         torch.stack([sin, cos, shift[:, 1]], 1)], 1).to(x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def random_crop(x: Tensor, padding: int, generator: torch.Generator) -> Tensor:
    """A random ``H x W`` window of each image zero-padded by ``padding`` on every side."""
    n, _, h, w = x.shape
    padded = F.pad(x, (padding,) * 4)
    offsets = torch.randint(2 * padding + 1, (n, 2), generator=generator)
    return torch.stack([padded[i, :, top: top + h, left: left + w]
                        for i, (top, left) in enumerate(offsets.tolist())])


def random_flip(x: Tensor, generator: torch.Generator) -> Tensor:
    """Each image mirrored left-right with probability 1/2."""
    flip = torch.rand(x.shape[0], generator=generator) < 0.5
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)


def color_jitter(x: Tensor, strength: float, generator: torch.Generator) -> Tensor:
    """Brightness ``b x``, contrast ``c x + (1 - c) mean(gray)`` and, for RGB, saturation
    ``s x + (1 - s) gray`` with factors ``U(1 - strength, 1 + strength)``, clamped to [0, 1]."""
    n, channels = x.shape[:2]
    shape = (n, 1, 1, 1)

    def factor() -> Tensor:
        return _uniform(n, 1 - strength, 1 + strength, generator).to(x.dtype).view(shape)

    x = (x * factor()).clamp(0, 1)
    gray = _gray(x)
    contrast = factor()
    x = (contrast * x + (1 - contrast) * gray.mean((1, 2, 3), keepdim=True)).clamp(0, 1)
    if channels == 3:
        saturation = factor()
        x = (saturation * x + (1 - saturation) * _gray(x)).clamp(0, 1)
    return x


def _gray(x: Tensor) -> Tensor:
    if x.shape[1] != 3:
        return x.mean(1, keepdim=True)
    weights = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype, device=x.device)
    return (x * weights.view(1, 3, 1, 1)).sum(1, keepdim=True)


class AugmentedTasks(TaskSource):
    """``source``'s batches with ``augmentation`` applied to every support and query image.

    The draws come from ``source.generator`` (after the batch is drawn), so the checkpointed
    state of ``source`` is the whole state: resuming gives the same augmented batches.
    """

    def __init__(self, source: TaskSource, augmentation: ImageAugmentation) -> None:
        if not isinstance(augmentation, ImageAugmentation):
            raise TypeError(f"augmentation must be an ImageAugmentation, got "
                            f"{type(augmentation).__name__}")
        self.source = source
        self.augmentation = augmentation
        self.tasks_per_batch = source.tasks_per_batch
        self.generator = source.generator

    def __getattr__(self, name: str) -> Any:  # dataset, task_names, num_tasks ... of source
        if name == "source":
            raise AttributeError(name)
        return getattr(self.source, name)

    def _augment(self, x: Tensor) -> Tensor:
        if x.shape[1] == 0:
            return x
        flat = self.augmentation(x.flatten(0, 1), self.generator)
        return flat.view(x.shape)

    def sample(self) -> TaskBatch:
        batch = self.source.sample()
        return TaskBatch(self._augment(batch.support_x), batch.support_y,
                         self._augment(batch.query_x), batch.query_y,
                         num_classes=batch.num_classes, task_id=batch.task_id)

    def state_dict(self) -> dict:
        return self.source.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.source.load_state_dict(state)
