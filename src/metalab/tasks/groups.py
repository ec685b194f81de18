"""Group batches for adaptation under group shift (ARM: Zhang, Marklund et al., NeurIPS 2021).

In Adaptive Risk Minimization a task is a group ``z`` and its support set is an *unlabelled*
batch of the group's inputs: the model adapts to the batch and predicts the labels of the
same inputs (ARM, Algorithm 1: sample ``z_1..z_N ~ p_z``, then ``(x, y)_{1..K} ~ p(x, y | z)``
for each). A group batch is therefore a `TaskBatch` with one task per group whose
``query_x`` *is* ``support_x`` (the same tensor) and whose ``query_y`` holds their labels;
``support_y`` holds the same labels, which learners promise never to read. ``task_id`` is
the group index in the dataset.

A group dataset (see :class:`metalab.datasets.groups.GroupDataset`) has ``groups`` (one
group index per item), ``labels``, ``num_classes`` (or ``class_names``) and ``gather``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from metalab.tasks.batch import TaskBatch
from metalab.tasks.source import TaskSource
from metalab.validation import check_choice, check_positive_int

SAMPLING = ("frequency", "uniform")


class GroupBatchSampler(TaskSource):
    """Training batches of ``groups_per_batch`` groups, ``support_size`` examples each.

    Args:
        dataset: a group dataset.
        groups_per_batch: tasks per batch (ARM's ``meta_batch_size``).
        support_size: examples per group, drawn uniformly *with* replacement from the
            group (ARM's ``support_size``), so a group smaller than the batch is usable.
        sampling: how each task's group is drawn. ``"frequency"``: in proportion to the
            group's size in ``dataset`` (the training proportions ``p_tr(z)``; ERM-like
            group weighting). ``"uniform"``: uniformly over the groups that have examples
            (the upweighted "UW" sampling of the ARM paper; ARM trains with it,
            ``--uniform_over_groups 1``).
        distinct_groups: ``False`` (ARM's sampler): every task draws its group
            independently, so a group may appear twice in a batch and each task's group
            follows ``sampling`` exactly. ``True``: the groups of a batch are distinct
            (drawn one after another without replacement, weighted as ``sampling`` says);
            the marginal proportions are then flatter than ``p_tr(z)`` and
            ``groups_per_batch`` may not exceed the number of groups with examples.
        seed: seed of the sampler's own generator.
    """

    def __init__(self, dataset, groups_per_batch: int, support_size: int,
                 sampling: str = "frequency", distinct_groups: bool = False,
                 seed: int | None = 0) -> None:
        super().__init__(check_positive_int("groups_per_batch", groups_per_batch), seed)
        self.dataset = dataset
        self.support_size = check_positive_int("support_size", support_size)
        self.sampling = check_choice("sampling", sampling, SAMPLING)
        self.distinct_groups = bool(distinct_groups)
        self.group_members, self.num_classes = _group_members(dataset)
        counts = torch.tensor([len(m) for m in self.group_members], dtype=torch.float64)
        self.groups_with_data = int((counts > 0).sum())
        if self.distinct_groups and groups_per_batch > self.groups_with_data:
            raise ValueError(
                f"groups_per_batch={groups_per_batch} distinct groups but "
                f"{_describe(dataset)} has {self.groups_with_data} groups with examples"
            )
        weights = counts if sampling == "frequency" else (counts > 0).double()
        self.group_probabilities = weights / weights.sum()

    def _draw_groups(self) -> Tensor:
        return torch.multinomial(self.group_probabilities, self.tasks_per_batch,
                                 replacement=not self.distinct_groups,
                                 generator=self.generator)

    def sample(self) -> TaskBatch:
        groups = self._draw_groups()
        rows = []
        for group in groups.tolist():
            members = self.group_members[group]
            picks = torch.randint(len(members), (self.support_size,), generator=self.generator)
            rows.append(members[picks])
        return _group_batch(self.dataset, torch.stack(rows), groups, self.num_classes)


class GroupEvalSampler(TaskSource):
    """Evaluation batches, each from a single group, cycling through the groups in order.

    Visit ``k`` of the cycle goes to the ``k mod G``-th group with examples, so after any
    multiple of ``G`` tasks every group has the same number of evaluation batches (the
    per-group protocol of ARM's evaluation: adapt to a batch of one test group, score it).
    Within a group the examples are visited in epochs: a seeded permutation is cut into
    ``ceil(n / batch_size)`` batches of distinct examples (the last one completed with the
    permutation's first examples), so :attr:`episodes_to_cover` tasks score every example of
    every group at least once. The stream is a pure function of ``seed`` and the number of
    batches drawn, which is the whole checkpointed state.

    Args:
        dataset: a group dataset.
        batch_size: examples per task; ``1`` is allowed (no adaptation signal beyond one
            input). Must not exceed the smallest group with examples.
        groups_per_batch: tasks per `TaskBatch` (consecutive groups of the cycle).
        seed: seed of the within-group orders (``None``: a random one).
    """

    def __init__(self, dataset, batch_size: int, groups_per_batch: int = 1,
                 seed: int | None = 0) -> None:
        super().__init__(check_positive_int("groups_per_batch", groups_per_batch), seed)
        self.dataset = dataset
        self.batch_size = check_positive_int("batch_size", batch_size)
        self.seed = self.generator.initial_seed()
        members, self.num_classes = _group_members(dataset)
        self.cycle = [g for g, m in enumerate(members) if len(m)]
        self.group_members = members
        smallest = min(self.cycle, key=lambda g: len(members[g]))
        if self.batch_size > len(members[smallest]):
            raise ValueError(
                f"batch_size={batch_size} but group {_group_name(dataset, smallest)!r} of "
                f"{_describe(dataset)} has {len(members[smallest])} examples; evaluation "
                f"batches hold distinct examples of one group"
            )
        self.batches_drawn = 0
        self._orders: dict[int, tuple[int, Tensor]] = {}

    def batches_per_epoch(self, group: int) -> int:
        """Visits after which every example of ``group`` has been in a batch."""
        return -(-len(self.group_members[group]) // self.batch_size)

    @property
    def episodes_to_cover(self) -> int:
        """Tasks after which every example of every group has been evaluated at least once."""
        return len(self.cycle) * max(self.batches_per_epoch(g) for g in self.cycle)

    def _order(self, group: int, epoch: int) -> Tensor:
        cached = self._orders.get(group)
        if cached is None or cached[0] != epoch:
            generator = torch.Generator().manual_seed(_mix(self.seed, group, epoch))
            order = self.group_members[group][
                torch.randperm(len(self.group_members[group]), generator=generator)]
            cached = self._orders[group] = (epoch, order)
        return cached[1]

    def _visit(self, visit: int) -> tuple[int, Tensor]:
        """Group and example indices of the ``visit``-th evaluation task."""
        group = self.cycle[visit % len(self.cycle)]
        per_epoch = self.batches_per_epoch(group)
        epoch, position = divmod(visit // len(self.cycle), per_epoch)
        order = self._order(group, epoch)
        chosen = order[position * self.batch_size:(position + 1) * self.batch_size]
        missing = self.batch_size - len(chosen)
        if missing:
            chosen = torch.cat([chosen, order[:missing]])
        return group, chosen

    def sample(self) -> TaskBatch:
        visits = [self._visit(self.batches_drawn + t) for t in range(self.tasks_per_batch)]
        self.batches_drawn += self.tasks_per_batch
        groups = torch.tensor([g for g, _ in visits])
        indices = torch.stack([chosen for _, chosen in visits])
        return _group_batch(self.dataset, indices, groups, self.num_classes)

    def state_dict(self) -> dict:
        return {"batches_drawn": self.batches_drawn}

    def load_state_dict(self, state: dict) -> None:
        self.batches_drawn = int(state["batches_drawn"])


def _group_members(dataset) -> tuple[list[Tensor], int]:
    """For each group of ``dataset``, its item indices; and the number of classes."""
    groups = getattr(dataset, "groups", None)
    labels = getattr(dataset, "labels", None)
    if groups is None or labels is None:
        raise TypeError(
            f"dataset must be a group dataset with 'groups' and 'labels' (one int per item); "
            f"{type(dataset).__name__} lacks {'groups' if groups is None else 'labels'}"
        )
    groups = torch.as_tensor(groups, dtype=torch.long)
    if groups.dim() != 1 or len(groups) != len(dataset) or not len(groups):
        raise ValueError(
            f"dataset.groups must be a non-empty flat sequence of {len(dataset)} ints, "
            f"got shape {tuple(groups.shape)}"
        )
    if int(groups.min()) < 0:
        raise ValueError(f"dataset.groups must be >= 0, got {int(groups.min())}")
    num_groups = getattr(dataset, "num_groups", int(groups.max()) + 1)
    counts = torch.bincount(groups, minlength=num_groups)
    order = torch.argsort(groups, stable=True)
    members = list(torch.split(order, counts.tolist()))
    num_classes = getattr(dataset, "num_classes", None)
    if num_classes is None:
        num_classes = int(torch.as_tensor(labels).max()) + 1
    return members, int(num_classes)


def _group_batch(dataset, indices: Tensor, groups: Tensor, num_classes: int) -> TaskBatch:
    """The `TaskBatch` of ``indices [T, B]``: query inputs are the support inputs."""
    gather = getattr(dataset, "gather", None)
    flat = indices.reshape(-1)
    if gather is not None:
        x = gather(flat)
    else:
        x = torch.stack([torch.as_tensor(dataset[i][0]) for i in flat.tolist()])
    x = x.reshape(*indices.shape, *x.shape[1:])
    y = torch.as_tensor(dataset.labels, dtype=torch.long)[indices]
    return TaskBatch(x, y, x, y, num_classes=num_classes, task_id=groups)


def _describe(dataset) -> str:
    split = getattr(dataset, "split", None)
    return f"split {split!r}" if split is not None else "the dataset"


def _group_name(dataset, group: int) -> str:
    names = getattr(dataset, "group_names", None)
    return str(names[group]) if names is not None else str(group)


def _mix(*values: int) -> int:
    """A 63-bit seed from several ints (SplitMix64-style mixing, order sensitive)."""
    state = 0x9E3779B97F4A7C15
    for value in values:
        state = (state ^ (int(value) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9
        state &= 0xFFFFFFFFFFFFFFFF
        state ^= state >> 31
    return state & 0x7FFFFFFFFFFFFFFF
