"""N-way K-shot episodes from any labelled dataset (Vinyals et al. 2016; Finn et al. 2017).

A labelled dataset is a `torch.utils.data.Dataset` returning ``(x, y)`` with a ``labels``
sequence of one int class per item. Each task draws ``ways`` classes without replacement
and, from each, ``shots + queries`` distinct examples: the first ``shots`` form the support
set, the rest the query set, so support and query never share an example.

Label assignment:
- ``shuffle_labels=True``: a fresh random class-to-label permutation per task, so tasks
  are mutually exclusive and the meta-learner must use the support set.
- ``shuffle_labels=False``: a fixed class-to-label map (non-mutually-exclusive tasks,
  Yin et al. 2020). The classes are split once, deterministically, into ``ways`` groups;
  a task draws one class from each group and the group index is its label, so every class
  carries the same label in every task it appears in.

Within-group episodes (``within="alphabet"``; Lake et al. 2015's within-alphabet one-shot
protocol): a task first draws one group uniformly among the groups of the dataset's
``class_info[within]`` (an alphabet) that have at least ``ways`` classes, then its
``ways`` classes from that group only, so similar characters compete. A group with fewer
than ``ways`` classes is an error naming it, unless ``skip_small_groups=True`` leaves it
out (it is then never drawn); no eligible group at all is always an error. The batch's
``task_id`` is the drawn group's index in ``task_names``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from metalab.tasks.batch import TaskBatch
from metalab.tasks.source import TaskSource
from metalab.validation import check_positive_int


class EpisodeSampler(TaskSource):
    """Samples batches of ``tasks_per_batch`` N-way K-shot tasks from ``dataset``."""

    def __init__(self, dataset, ways: int, shots: int, queries: int, tasks_per_batch: int = 1,
                 shuffle_labels: bool = True, seed: int | None = None,
                 within: str | None = None, skip_small_groups: bool = False) -> None:
        super().__init__(tasks_per_batch, seed)
        self.dataset = dataset
        self.ways = check_positive_int("ways", ways)
        self.shots = check_positive_int("shots", shots)
        self.queries = check_positive_int("queries", queries)
        self.shuffle_labels = bool(shuffle_labels)
        self.class_ids, self.class_indices = indices_by_class(dataset)
        self._check_request()
        self.label_groups = None if self.shuffle_labels else self._fixed_label_groups()
        self.within = within
        self.task_names: list[str] | None = None
        self.class_groups: list[Tensor] | None = None
        if within is not None:
            if not self.shuffle_labels:
                raise ValueError(f"within={within!r} draws the classes of each task from one "
                                 f"group, which needs shuffle_labels=True")
            self.task_names, self.class_groups = self._groups_within(within,
                                                                     bool(skip_small_groups))

    def _describe_dataset(self) -> str:
        split = getattr(self.dataset, "split", None)
        return f"split {split!r}" if split is not None else "the dataset"

    def _class_name(self, position: int) -> str:
        names = getattr(self.dataset, "class_names", None)
        label = self.class_ids[position]
        return str(names[label]) if names is not None else str(label)

    def _check_request(self) -> None:
        classes = len(self.class_indices)
        if self.ways > classes:
            raise ValueError(
                f"ways={self.ways} but {self._describe_dataset()} has {classes} classes"
            )
        needed = self.shots + self.queries
        sizes = torch.tensor([len(i) for i in self.class_indices])
        smallest = int(sizes.argmin())
        if sizes[smallest] < needed:
            raise ValueError(
                f"shots+queries={needed} but class {self._class_name(smallest)!r} has "
                f"{int(sizes[smallest])} examples"
            )

    def _groups_within(self, key: str, skip_small: bool) -> tuple[list[str], list[Tensor]]:
        """Names of the groups with at least ``ways`` classes and their class positions."""
        info = getattr(self.dataset, "class_info", None)
        if not info:
            raise ValueError(f"within={key!r} needs per-class metadata (class_info) naming "
                             f"each class's {key}; {type(self.dataset).__name__} has none")
        missing = [label for label in self.class_ids if key not in info[label]]
        if missing:
            raise ValueError(f"within={key!r}: class_info of class {missing[0]} has no "
                             f"{key!r}; its keys are {sorted(info[missing[0]])}")
        members: dict[str, list[int]] = {}
        for position, label in enumerate(self.class_ids):
            members.setdefault(str(info[label][key]), []).append(position)
        small = {name: len(p) for name, p in members.items() if len(p) < self.ways}
        if small and not skip_small:
            name, size = next(iter(small.items()))
            raise ValueError(
                f"within={key!r}: {key} {name!r} of {self._describe_dataset()} has {size} "
                f"classes but ways={self.ways} (too small: {small}); lower ways or set "
                f"skip_small_groups=True to leave such {key}s out")
        names = [name for name in members if name not in small]
        if not names:
            raise ValueError(f"within={key!r}: no {key} of {self._describe_dataset()} has "
                             f"ways={self.ways} classes; the largest has "
                             f"{max(map(len, members.values()))}")
        return names, [torch.tensor(members[name]) for name in names]

    def _fixed_label_groups(self) -> list[Tensor]:
        order = torch.randperm(len(self.class_indices), generator=torch.Generator().manual_seed(0))
        return [order[label::self.ways] for label in range(self.ways)]

    def _draw_classes(self, group: int | None = None) -> Tensor:
        """Class positions of one task, ordered by the label they receive."""
        if group is not None:
            members = self.class_groups[group]
            return members[torch.randperm(len(members), generator=self.generator)[: self.ways]]
        if self.label_groups is None:
            return torch.randperm(len(self.class_indices), generator=self.generator)[: self.ways]
        picks = [group[torch.randint(len(group), (1,), generator=self.generator)]
                 for group in self.label_groups]
        return torch.cat(picks)

    def _draw_group(self) -> int | None:
        """The group of one task (``within``), uniformly among the eligible ones."""
        if self.class_groups is None:
            return None
        return int(torch.randint(len(self.class_groups), (1,), generator=self.generator))

    def _draw_task(self, group: int | None = None) -> Tensor:
        """Dataset indices ``[ways, shots + queries]`` of one task, row i labelled i."""
        classes = self._draw_classes(group)
        per_class = self.shots + self.queries
        rows = []
        for position in classes.tolist():
            members = self.class_indices[position]
            chosen = torch.randperm(len(members), generator=self.generator)[:per_class]
            rows.append(members[chosen])
        return torch.stack(rows)

    def sample(self) -> TaskBatch:
        groups = [self._draw_group() for _ in range(self.tasks_per_batch)]
        indices = torch.stack([self._draw_task(group) for group in groups])
        # indices: [T, ways, shots + queries]
        x = gather_inputs(self.dataset, indices.reshape(-1))
        x = x.reshape(*indices.shape, *x.shape[1:])
        labels = torch.arange(self.ways).view(1, self.ways, 1).expand_as(indices)
        support_x, query_x = x[:, :, : self.shots], x[:, :, self.shots :]
        support_y, query_y = labels[:, :, : self.shots], labels[:, :, self.shots :]

        def flat(t: Tensor) -> Tensor:
            return t.reshape(t.shape[0], -1, *t.shape[3:])

        task_id = None if self.class_groups is None else torch.tensor(groups)
        return TaskBatch(flat(support_x), flat(support_y).contiguous(), flat(query_x),
                         flat(query_y).contiguous(), num_classes=self.ways, task_id=task_id)


def indices_by_class(dataset) -> tuple[list[int], list[Tensor]]:
    """The distinct labels of ``dataset`` and, for each, the indices of its examples."""
    labels = getattr(dataset, "labels", None)
    if labels is None:
        raise TypeError(
            f"dataset must have a 'labels' sequence (one int class per item); "
            f"{type(dataset).__name__} has none"
        )
    labels = torch.as_tensor(labels, dtype=torch.long)
    if labels.dim() != 1 or len(labels) != len(dataset):
        raise ValueError(
            f"dataset.labels must be a flat sequence of {len(dataset)} ints, got shape "
            f"{tuple(labels.shape)}"
        )
    class_ids, inverse = torch.unique(labels, return_inverse=True)
    order = torch.argsort(inverse, stable=True)
    counts = torch.bincount(inverse, minlength=len(class_ids)).tolist()
    return class_ids.tolist(), list(torch.split(order, counts))


def gather_inputs(dataset, indices: Tensor) -> Tensor:
    """Inputs of ``indices`` stacked; uses ``dataset.gather`` when the dataset offers it."""
    gather = getattr(dataset, "gather", None)
    if gather is not None:
        return gather(indices)
    return torch.stack([torch.as_tensor(dataset[i][0]) for i in indices.tolist()])
