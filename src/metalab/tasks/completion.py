"""Image completion tasks (Garnelo et al. 2018, section 4.2): a task is one image.

The image is a function from pixel coordinates to intensities. The support (context) set
is a random subset of ``shots`` (coordinate, intensity) pairs; the query (target) set is
every pixel (or, with ``queries``, a random subset of that many pixels). Coordinates are
``(row, column)`` scaled to ``[-1, 1]``; intensities are in ``[0, 1]``, one per channel.
"""

from __future__ import annotations

import torch
from torch import Tensor

from metalab import datasets
from metalab.tasks.batch import TaskBatch
from metalab.tasks.source import TaskSource
from metalab.validation import check_positive_int


def pixel_coordinates(height: int, width: int) -> Tensor:
    """``[H * W, 2]`` (row, column) coordinates in ``[-1, 1]``, row-major."""
    rows = torch.linspace(-1.0, 1.0, height)
    cols = torch.linspace(-1.0, 1.0, width)
    grid = torch.stack(torch.meshgrid(rows, cols, indexing="ij"), dim=-1)
    return grid.reshape(height * width, 2)


class ImageCompletion(TaskSource):
    """Pixel-completion tasks from the images of a labelled image dataset.

    Args:
        images: ``[N, C, H, W]`` images with values in ``[0, 1]``.
        shots: context pixels per task; with ``max_shots`` the fewest (a batch draws its
            number uniformly in ``[shots, max_shots]``).
        queries: target pixels per task; ``None``: all ``H * W`` pixels, in raster order.

    ``support_x``/``query_x`` are ``[T, n, 2]`` coordinates, ``support_y``/``query_y``
    ``[T, n, C]`` intensities.
    """

    def __init__(self, images: Tensor, shots: int, queries: int | None = None,
                 tasks_per_batch: int = 16, max_shots: int | None = None,
                 seed: int | None = None) -> None:
        super().__init__(tasks_per_batch, seed)
        if images.dim() != 4:
            raise ValueError(f"images must have shape [N, C, H, W], got {tuple(images.shape)}")
        self.images = images
        _, channels, height, width = images.shape
        self.pixels = height * width
        self.shots = check_positive_int("shots", shots)
        top = self.shots if max_shots is None else check_positive_int("max_shots", max_shots)
        if top < self.shots or top > self.pixels:
            raise ValueError(f"max_shots must be in [shots={shots}, {self.pixels}], got {top}")
        self.max_shots = top
        if queries is not None and check_positive_int("queries", queries) > self.pixels:
            raise ValueError(f"queries must be <= the {self.pixels} pixels, got {queries}")
        self.queries = queries
        self.coordinates = pixel_coordinates(height, width)
        self.values = images.reshape(len(images), channels, self.pixels).transpose(1, 2)

    def sample(self) -> TaskBatch:
        tasks = self.tasks_per_batch
        shots = int(torch.randint(self.shots, self.max_shots + 1, (), generator=self.generator))
        index = torch.randint(len(self.images), (tasks,), generator=self.generator)
        order = torch.rand(tasks, self.pixels, generator=self.generator).argsort(dim=1)
        context = order[:, :shots]
        if self.queries is None:
            target = torch.arange(self.pixels).expand(tasks, -1)
        else:
            target = order[:, torch.randperm(self.pixels, generator=self.generator)[:self.queries]]
        values = self.values[index]
        gather = lambda where: values.gather(1, where[..., None].expand(-1, -1, values.shape[-1]))  # noqa: E731
        return TaskBatch(self.coordinates[context], gather(context),
                         self.coordinates[target], gather(target))


class GlyphsCompletion(ImageCompletion):
    """`ImageCompletion` on the Glyphs dataset's ``split`` (``image_size`` pixels a side)."""

    def __init__(self, shots: int, split: str = "train", queries: int | None = None,
                 tasks_per_batch: int = 16, max_shots: int | None = None, image_size: int = 28,
                 seed: int | None = None) -> None:
        dataset = datasets.build("glyphs", split=split, image_size=image_size)
        images = dataset.images.float() / 255.0
        super().__init__(images, shots, queries, tasks_per_batch, max_shots, seed)
