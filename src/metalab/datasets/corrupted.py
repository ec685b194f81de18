"""`CorruptedDataset`: a labelled image dataset under corruptions, one group per
(corruption, severity) pair (the adapter the corruption-shift benchmarks build on)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .base import ImageDataset, to_float
from .corruption_groups import group_list, group_seed
from .corruptions import SEVERITIES, corrupt
from .groups import GroupDataset


class CorruptedDataset(GroupDataset):
    """A labelled image dataset under corruptions: one group per (corruption, severity).

    Args:
        dataset: an :class:`ImageDataset` (uint8 ``images``, ``labels``, ``class_names``).
        corruptions: names (each taken at every severity of ``severities``) and/or explicit
            ``(name, severity)`` pairs; see
            :func:`~metalab.datasets.corruption_groups.corruption_groups` for ARM's split.
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

    seed: int

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
