"""`TaskBatch`: a meta-batch of tasks, each a support set and a query set.

Every tensor has a leading task dimension: ``support_x [T, Ns, ...]``, ``support_y [T, Ns]``,
``query_x [T, Nq, ...]``, ``query_y [T, Nq]``. Labels are integers for classification
(``num_classes`` given) and floats for regression.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, fields
from typing import NamedTuple

import torch
from torch import Tensor

from metalab.validation import check_positive_int


class Task(NamedTuple):
    """One task of a batch: tensors without the task dimension."""

    support_x: Tensor
    support_y: Tensor
    query_x: Tensor
    query_y: Tensor


@dataclass(frozen=True)
class TaskBatch:
    """A batch of T tasks, validated on construction.

    Args:
        support_x, support_y, query_x, query_y: tensors with leading dimension T; x and y
            of the same set share the second dimension (the number of examples).
        num_classes: for classification, the number of labels per task; labels must then
            be integers in ``[0, num_classes)``. ``None`` for regression.
        task_id: optional ``[T]`` integer identifiers (a class set, a group, a user ...).
    """

    support_x: Tensor
    support_y: Tensor
    query_x: Tensor
    query_y: Tensor
    num_classes: int | None = None
    task_id: Tensor | None = None

    def __post_init__(self) -> None:
        for name in ("support_x", "support_y", "query_x", "query_y"):
            value = getattr(self, name)
            if not isinstance(value, Tensor):
                raise TypeError(
                    f"TaskBatch.{name} must be a torch.Tensor, got {type(value).__name__}"
                )
            if value.dim() < 2:
                raise ValueError(
                    f"TaskBatch.{name} must have shape [tasks, examples, ...], "
                    f"got {tuple(value.shape)}"
                )
        tasks = self.support_x.shape[0]
        for name in ("support_y", "query_x", "query_y"):
            if getattr(self, name).shape[0] != tasks:
                raise ValueError(
                    f"TaskBatch.{name} has {getattr(self, name).shape[0]} tasks but support_x has "
                    f"{tasks}; every field needs the same leading task dimension"
                )
        for split in ("support", "query"):
            x, y = getattr(self, f"{split}_x"), getattr(self, f"{split}_y")
            if x.shape[1] != y.shape[1]:
                raise ValueError(
                    f"TaskBatch.{split}_y has {y.shape[1]} examples per task but {split}_x has "
                    f"{x.shape[1]}"
                )
            if self.num_classes is not None:
                self._check_labels(f"{split}_y", y)
        if self.task_id is not None and tuple(self.task_id.shape) != (tasks,):
            raise ValueError(
                f"TaskBatch.task_id must have shape [{tasks}], got {tuple(self.task_id.shape)}"
            )

    def _check_labels(self, name: str, y: Tensor) -> None:
        if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
            raise TypeError(
                f"TaskBatch.{name} must hold integer class labels for classification, got {y.dtype}"
            )
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= self.num_classes):
            raise ValueError(
                f"TaskBatch.{name} holds labels in [{int(y.min())}, {int(y.max())}] but "
                f"num_classes={self.num_classes} allows [0, {self.num_classes - 1}]"
            )

    def __len__(self) -> int:
        return self.support_x.shape[0]

    def chunks(self, size: int | None) -> Iterator[TaskBatch]:
        """Consecutive batches of at most ``size`` tasks (``None``: the whole batch)."""
        size = len(self) if size is None else check_positive_int("task_chunk", size)
        for start in range(0, len(self), size):
            yield self[start: start + size]

    def __getitem__(self, index: int | slice) -> Task | TaskBatch:
        """An int gives one `Task` (no task dimension); a slice gives a smaller `TaskBatch`."""
        if isinstance(index, slice):
            return self._map(lambda t: t[index])
        return Task(self.support_x[index], self.support_y[index], self.query_x[index],
                    self.query_y[index])

    def to(self, *args, **kwargs) -> TaskBatch:
        """Move every tensor, like `Tensor.to`; label dtypes are kept."""

        def move(t: Tensor) -> Tensor:
            if t.is_floating_point():
                return t.to(*args, **kwargs)
            device = kwargs.get("device") or next(
                (a for a in args if isinstance(a, (str, torch.device))), None
            )
            return t.to(device) if device is not None else t

        return self._map(move)

    def _map(self, fn) -> TaskBatch:
        values = {}
        for f in fields(self):
            value = getattr(self, f.name)
            values[f.name] = fn(value) if isinstance(value, Tensor) else value
        return TaskBatch(**values)

    @property
    def device(self) -> torch.device:
        return self.support_x.device
