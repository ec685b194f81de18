"""`UnlabelledImages`: the images of a labelled dataset with its labels made unreachable.

Unsupervised meta-learning (CACTUs, UMTRA) builds its training tasks from images alone.
This view copies the images out of the dataset and keeps no reference to it, so nothing
downstream can find a label through it: ``labels``, ``class_info`` and ``class_names``
raise `LabelAccessError` (a loud error, not an ``AttributeError`` that ``getattr(...,
None)`` would silently swallow), and an item is the image alone, not ``(x, y)``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from metalab.tasks.episodes import gather_inputs

LABEL_FIELDS = ("labels", "class_info", "class_names", "targets")


class LabelAccessError(RuntimeError):
    """Something asked an unlabelled view for a label."""


class UnlabelledImages:
    """Images ``[N, C, H, W]`` without labels; ``gather(indices)`` gives a batch of them."""

    def __init__(self, images: Tensor, split: str | None = None) -> None:
        if not isinstance(images, Tensor) or images.dim() != 4:
            shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
            raise ValueError(f"images must be a tensor [N, C, H, W], got {shape}")
        self.images = images
        self.split = split

    @classmethod
    def of(cls, dataset) -> UnlabelledImages:
        """The images of a labelled ``dataset`` (copied; the dataset is not kept)."""
        images = gather_inputs(dataset, torch.arange(len(dataset)))
        return cls(images.clone(), split=getattr(dataset, "split", None))

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Tensor:
        return self.images[index]

    def gather(self, indices: Tensor) -> Tensor:
        return self.images[indices]

    def __getattr__(self, name: str):
        if name in LABEL_FIELDS:
            raise LabelAccessError(f"{name} of an unlabelled view was asked for: labels must "
                                   f"never reach unsupervised meta-training")
        raise AttributeError(name)
