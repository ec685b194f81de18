"""`GroupDataset`: labelled images that also carry a group (a user, a rotation, a corruption).

Group shift (Zhang, Marklund et al., "Adaptive Risk Minimization", NeurIPS 2021, sec. 3):
training examples come from groups ``z`` with proportions ``p_tr(z)``; test examples from
other proportions or unseen groups. A group dataset is an :class:`ImageDataset` plus
``groups`` (the group index of every image), ``group_names`` and optional per-group metadata
``group_info``. The proportions of a split are its group sizes (:meth:`group_counts`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from .base import ImageDataset


class GroupDataset(ImageDataset):
    """Labelled images, each belonging to one of ``len(group_names)`` groups.

    Args:
        images, labels, class_names, split, class_info: as for :class:`ImageDataset`.
        groups: int group index per image (``N`` entries, each in
            ``[0, len(group_names))``). A group may hold no image in a split.
        group_names: one name per group; the index is the group id (the same ids across the
            splits of one dataset, so a test group can be matched with a training group).
        group_info: optional per-group metadata dicts (angle, corruption, severity, user ...).
    """

    groups: Tensor
    group_names: list[str]
    group_info: list[dict[str, Any]] | None

    def __init__(
        self,
        images: Tensor,
        labels: Sequence[int] | Tensor,
        class_names: Sequence[str],
        split: str,
        groups: Sequence[int] | Tensor,
        group_names: Sequence[str],
        class_info: Sequence[dict[str, Any]] | None = None,
        group_info: Sequence[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(images, labels, class_names, split, class_info)
        self.groups = _check_groups(groups, len(self), group_names)
        self.group_names = [str(name) for name in group_names]
        if group_info is not None and len(group_info) != len(self.group_names):
            raise ValueError(
                f"group_info has {len(group_info)} entries but there are "
                f"{len(self.group_names)} groups"
            )
        self.group_info = [dict(info) for info in group_info] if group_info is not None else None

    @property
    def num_groups(self) -> int:
        """Number of groups (``len(group_names)``), including groups without images."""
        return len(self.group_names)

    def group_counts(self) -> Tensor:
        """Number of images of each group (LongTensor ``[num_groups]``)."""
        return torch.bincount(self.groups, minlength=self.num_groups)

    def group_proportions(self) -> Tensor:
        """Fraction of the split's images in each group (float64 ``[num_groups]``)."""
        counts = self.group_counts().double()
        return counts / counts.sum().clamp_min(1.0)

    def group_indices(self) -> list[Tensor]:
        """For each group, the dataset indices of its images (in dataset order)."""
        order = torch.argsort(self.groups, stable=True)
        return list(torch.split(order, self.group_counts().tolist()))

    def summary(self) -> dict[str, Any]:
        counts = self.group_counts()
        present = counts[counts > 0]
        summary = super().summary()
        summary["groups"] = self.num_groups
        summary["groups_with_images"] = int(present.numel())
        summary["images_per_group"] = (
            [int(present.min()), int(present.max())] if present.numel() else []
        )
        return summary

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(split={self.split!r}, classes={self.num_classes}, "
            f"groups={self.num_groups}, images={len(self)}, shape={list(self.image_shape)})"
        )


def _check_groups(groups: Sequence[int] | Tensor, size: int,
                  group_names: Sequence[str]) -> Tensor:
    """``groups`` as a 1-D LongTensor of ``size`` valid group indices, or a clear error."""
    if isinstance(groups, Tensor) and (groups.is_floating_point() or groups.is_complex()
                                       or groups.dtype == torch.bool):
        raise TypeError(f"groups must hold integer group indices, got dtype {groups.dtype}")
    groups = torch.as_tensor(groups, dtype=torch.long)
    if groups.dim() != 1 or groups.shape[0] != size:
        raise ValueError(
            f"groups must be 1-D with one group index per image ({size}), "
            f"got shape {tuple(groups.shape)}"
        )
    if isinstance(group_names, str) or len(group_names) == 0:
        raise ValueError("group_names must be a non-empty sequence of names, one per group")
    if len(set(map(str, group_names))) != len(group_names):
        raise ValueError("group_names must be distinct (the index of a name is its group id)")
    if groups.numel() and (int(groups.min()) < 0 or int(groups.max()) >= len(group_names)):
        raise ValueError(
            f"groups must lie in [0, {len(group_names)}) (one per group name), "
            f"got range [{int(groups.min())}, {int(groups.max())}]"
        )
    return groups
