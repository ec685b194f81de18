"""Multi-task learning as task batches: every task of a step is one entry of a `TaskBatch`.

A multi-task step over T tasks is a `TaskBatch` with ``query_x [T, B, ...]``,
``query_y [T, B]`` (task t's labels), ``task_id = arange(T)`` (which head, which FiLM row)
and an empty support set (``support_x [T, 0, ...]``): multi-task models do not adapt.
``num_classes`` is the largest number of classes of any task.

Two sources:

- `MultiLabelSource`: one image, several labels (``labels [N, T]``, e.g. MultiMNIST's left
  and right digits). All tasks of a step share the same B images (an ``expand``, no copy).
- `PartitionedTaskSource`: one label per image, the classes split into groups, task t
  classifying the classes of group t with labels re-indexed within the group (the
  20-superclass CIFAR-100 benchmark of Yu et al. 2020; here the alphabets of glyphs).
  Every task draws its own B images.

Both draw from their own generator (``sample``) and also walk a split once, in order,
without touching the generator (``evaluation_batches``), so per-task test accuracy is
exactly defined. `split_per_class` holds out examples of every class (multi-task tasks
share their classes between training and test), `partition_by_info` groups classes by a
``class_info`` key (the alphabet).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import Tensor

from metalab.datasets import ImageDataset
from metalab.tasks.batch import TaskBatch
from metalab.tasks.episodes import gather_inputs
from metalab.tasks.source import TaskSource, batch_sizes
from metalab.validation import check_positive_int


def multitask_batch(x: Tensor, y: Tensor, num_classes: int, task_id: Tensor) -> TaskBatch:
    """A `TaskBatch` with query set ``(x [T, B, ...], y [T, B])`` and an empty support set."""
    empty_x = x[:, :0]
    empty_y = y[:, :0]
    return TaskBatch(empty_x, empty_y, x, y, num_classes=num_classes, task_id=task_id)


def _labels_of(dataset) -> Tensor:
    labels = getattr(dataset, "labels", None)
    if labels is None:
        raise TypeError(f"dataset must have a 'labels' attribute; {type(dataset).__name__} "
                        f"has none")
    return torch.as_tensor(labels, dtype=torch.long)


class _ClassesPerTaskSource(TaskSource):
    """A source whose tasks may have different numbers of classes (``classes_per_task``)."""

    classes_per_task: list[int]

    def sizes(self) -> dict:
        """Sizes of one batch, with one output size per task."""
        return batch_sizes(self.sample(), self.classes_per_task)


class MultiLabelSource(_ClassesPerTaskSource):
    """Batches of B images labelled for every task: ``dataset.labels`` is ``[N, T]``.

    Args:
        dataset: ``len(dataset) == N``, ``labels [N, T]`` (non-negative ints) and inputs
            through ``dataset.gather(indices)`` or ``dataset[i][0]``.
        batch_size: images per step (B <= N), distinct within a step.
        seed: seed of the source's generator.

    ``classes_per_task[t]`` is ``labels[:, t].max() + 1``.
    """

    def __init__(self, dataset, batch_size: int, seed: int | None = None) -> None:
        labels = _labels_of(dataset)
        if labels.dim() != 2 or labels.shape[0] != len(dataset) or labels.shape[1] < 1:
            raise ValueError(f"dataset.labels must be [N, tasks] with N = len(dataset) = "
                             f"{len(dataset)}, got shape {tuple(labels.shape)}")
        if labels.numel() and int(labels.min()) < 0:
            raise ValueError(f"dataset.labels must be non-negative, got {int(labels.min())}")
        super().__init__(labels.shape[1], seed)
        self.dataset = dataset
        self.labels = labels
        self.batch_size = check_positive_int("batch_size", batch_size)
        if self.batch_size > len(dataset):
            raise ValueError(f"batch_size={batch_size} but the dataset has {len(dataset)} "
                             f"examples")
        self.num_tasks = labels.shape[1]
        self.classes_per_task = (labels.max(dim=0).values + 1).tolist()
        self.num_classes = max(self.classes_per_task)

    def _batch(self, indices: Tensor) -> TaskBatch:
        x = gather_inputs(self.dataset, indices)
        x = x.unsqueeze(0).expand(self.num_tasks, *x.shape)
        y = self.labels[indices].T.contiguous()
        return multitask_batch(x, y, self.num_classes, torch.arange(self.num_tasks))

    def sample(self) -> TaskBatch:
        indices = torch.randperm(len(self.dataset), generator=self.generator)[: self.batch_size]
        return self._batch(indices)
    def evaluation_batches(self) -> Iterator[TaskBatch]:
        """The whole dataset once, in order, in batches of at most ``batch_size``."""
        for start in range(0, len(self.dataset), self.batch_size):
            yield self._batch(torch.arange(start, min(start + self.batch_size,
                                                      len(self.dataset))))


class PartitionedTaskSource(_ClassesPerTaskSource):
    """Task t classifies the classes assigned to it by ``partition``; B images per task.

    Args:
        dataset: ``labels [N]`` (one class per item) and inputs as for `MultiLabelSource`.
        partition: one entry per class of the dataset (indexed by label): the task the
            class belongs to, ``0 .. T-1``, or ``-1`` to leave the class out. Within a task
            the classes are re-labelled ``0 .. C_t - 1`` in increasing class order.
        batch_size: images per task per step, distinct within a task; every task needs at
            least that many.
        seed: seed of the source's generator.
        task_names: optional name per task (e.g. the alphabets).
    """

    def __init__(self, dataset, partition: Sequence[int] | Tensor, batch_size: int,
                 seed: int | None = None, task_names: Sequence[str] | None = None) -> None:
        labels = _labels_of(dataset)
        if labels.dim() != 1 or labels.shape[0] != len(dataset):
            raise ValueError(f"dataset.labels must be 1-D with {len(dataset)} entries, got "
                             f"shape {tuple(labels.shape)}")
        partition = self._check_partition(partition, labels)
        tasks = int(partition.max()) + 1
        super().__init__(tasks, seed)
        self.dataset = dataset
        self.partition = partition
        self.num_tasks = tasks
        self.batch_size = check_positive_int("batch_size", batch_size)
        self.local_labels = self._local_labels(partition)[labels]
        self.task_indices = [torch.nonzero(partition[labels] == t).flatten()
                             for t in range(tasks)]
        self.classes_per_task = [int((partition == t).sum()) for t in range(tasks)]
        self.num_classes = max(self.classes_per_task)
        self.task_names = list(task_names) if task_names is not None else [
            str(t) for t in range(tasks)]
        if len(self.task_names) != tasks:
            raise ValueError(f"task_names has {len(self.task_names)} names for {tasks} tasks")
        sizes = [len(i) for i in self.task_indices]
        smallest = min(range(tasks), key=sizes.__getitem__)
        if sizes[smallest] < self.batch_size:
            raise ValueError(f"batch_size={batch_size} but task {self.task_names[smallest]!r} "
                             f"has {sizes[smallest]} examples")

    @staticmethod
    def _check_partition(partition, labels: Tensor) -> Tensor:
        partition = torch.as_tensor(partition)
        if partition.dim() != 1 or partition.is_floating_point() or partition.dtype == torch.bool:
            raise ValueError(f"partition must be a 1-D integer sequence (one task per class), "
                             f"got {partition.dtype} of shape {tuple(partition.shape)}")
        partition = partition.long()
        if labels.numel() and int(labels.max()) >= len(partition):
            raise ValueError(f"partition has {len(partition)} entries but the dataset has "
                             f"labels up to {int(labels.max())}; give one task per class")
        if not len(partition) or int(partition.max()) < 0 or int(partition.min()) < -1:
            raise ValueError("partition entries must be task indices >= 0 or -1 (class left "
                             "out), with at least one class assigned")
        present = torch.unique(partition[partition >= 0])
        missing = sorted(set(range(int(partition.max()) + 1)) - set(present.tolist()))
        if missing:
            raise ValueError(f"partition leaves tasks {missing} without classes; tasks must be "
                             f"numbered 0 .. T-1 without gaps")
        return partition

    @staticmethod
    def _local_labels(partition: Tensor) -> Tensor:
        """Label of every class inside its task (its rank among the task's classes)."""
        local = torch.full_like(partition, -1)
        for task in range(int(partition.max()) + 1):
            members = torch.nonzero(partition == task).flatten()
            local[members] = torch.arange(len(members))
        return local

    def _batch(self, indices: Tensor, task_id: Tensor) -> TaskBatch:
        x = gather_inputs(self.dataset, indices.reshape(-1))
        x = x.reshape(*indices.shape, *x.shape[1:])
        return multitask_batch(x, self.local_labels[indices], self.num_classes, task_id)

    def sample(self) -> TaskBatch:
        picks = [members[torch.randperm(len(members), generator=self.generator)
                         [: self.batch_size]] for members in self.task_indices]
        return self._batch(torch.stack(picks), torch.arange(self.num_tasks))

    def evaluation_batches(self) -> Iterator[TaskBatch]:
        """Every task's examples once, in order: single-task batches (``task_id=[t]``) of at
        most ``batch_size``, task 0 first."""
        for task, members in enumerate(self.task_indices):
            for start in range(0, len(members), self.batch_size):
                chunk = members[start:start + self.batch_size]
                yield self._batch(chunk.unsqueeze(0), torch.tensor([task]))


def split_per_class(dataset: ImageDataset, held_out: int, seed: int = 0
                    ) -> tuple[ImageDataset, ImageDataset]:
    """Hold out ``held_out`` random examples of every class: ``(train, held_out_set)``.

    The two datasets keep the class names, class info and labels of ``dataset``; their
    ``split`` is ``"<split>-train"`` and ``"<split>-test"``. Deterministic for ``seed``.
    """
    check_positive_int("held_out", held_out)
    images = getattr(dataset, "images", None)
    if not isinstance(images, Tensor):
        raise TypeError(f"dataset must be an ImageDataset with an 'images' tensor; "
                        f"{type(dataset).__name__} has none")
    labels = _labels_of(dataset)
    generator = torch.Generator().manual_seed(int(seed))
    test_parts, train_parts = [], []
    for label in torch.unique(labels).tolist():
        members = torch.nonzero(labels == label).flatten()
        if len(members) <= held_out:
            raise ValueError(f"held_out={held_out} but class {dataset.class_names[label]!r} has "
                             f"{len(members)} examples; at least one must stay for training")
        order = members[torch.randperm(len(members), generator=generator)]
        test_parts.append(order[:held_out].sort().values)
        train_parts.append(order[held_out:].sort().values)

    def subset(parts: list[Tensor], name: str) -> ImageDataset:
        index = torch.cat(parts).sort().values
        return ImageDataset(images[index], labels[index], dataset.class_names,
                            f"{dataset.split}-{name}", dataset.class_info)

    return subset(train_parts, "train"), subset(test_parts, "test")


def partition_by_info(dataset, key: str = "alphabet", groups: int = 20
                      ) -> tuple[Tensor, list[str]]:
    """Assign the classes of the ``groups`` largest values of ``class_info[key]`` to tasks.

    Returns a partition (task per class, ``-1`` for classes of smaller groups) and the
    group names, largest group first (ties: first appearance in class order).
    """
    check_positive_int("groups", groups)
    info = getattr(dataset, "class_info", None)
    if not info:
        raise TypeError(f"dataset must have per-class 'class_info' to partition by {key!r}; "
                        f"{type(dataset).__name__} has none")
    if any(key not in entry for entry in info):
        raise ValueError(f"class_info entries lack the key {key!r}; keys are {sorted(info[0])}")
    values = [entry[key] for entry in info]
    order = list(dict.fromkeys(values))
    if groups > len(order):
        raise ValueError(f"groups={groups} but the dataset has {len(order)} distinct {key} "
                         f"values")
    sizes = {value: values.count(value) for value in order}
    chosen = sorted(order, key=lambda v: -sizes[v])[:groups]
    task_of = {value: task for task, value in enumerate(chosen)}
    partition = torch.tensor([task_of.get(value, -1) for value in values])
    return partition, chosen
