"""Optimisation problems as tasks, for training a learned optimizer (Andrychowicz et al.
2016).

A task is a problem to optimise, written as an ordinary `TaskBatch`: the support set holds
what defines the loss the optimizee is trained on, the query set what scores the result.
No new batch type is needed; the ``l2o`` learner reads the support as "the problem".

- `RandomQuadratics`: ``f(theta) = ||W theta - y||^2`` with ``W [d, d]`` and ``y [d]``
  drawn from ``N(0, 1)`` entrywise (the paper's 10-D quadratics). The rows of ``W`` are
  the inputs and ``y`` the targets (``support_x = W [T, d, d]``, ``support_y = y [T, d, 1]``;
  the query set is the same problem), so a linear model without bias and the mean squared
  error give ``f(theta) / d``.
- `ClassifierTrainingProblems`: train a fresh classifier on a dataset (MNIST in the paper).
  A dataset's examples are divided once into train/val/test pools by a seeded permutation
  (``split_seed``, fractions 60/20/20); a task of a pool is ``examples`` of its examples in
  a random order (the optimizee's minibatches, taken in turn) and ``queries`` other ones
  (held out, scoring the trained classifier).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from metalab.tasks.batch import TaskBatch
from metalab.tasks.source import TaskSource
from metalab.validation import check_choice, check_positive_int

POOLS = ("train", "val", "test")


class RandomQuadratics(TaskSource):
    """Random quadratics ``||W theta - y||^2`` in ``dim`` dimensions (module docstring)."""

    def __init__(self, dim: int = 10, tasks_per_batch: int = 128, seed: int | None = None
                 ) -> None:
        super().__init__(tasks_per_batch, seed)
        self.dim = check_positive_int("dim", dim)

    def sample(self) -> TaskBatch:
        shape = (self.tasks_per_batch, self.dim)
        w = torch.randn(*shape, self.dim, generator=self.generator)
        y = torch.randn(*shape, 1, generator=self.generator)
        return TaskBatch(w, y, w.clone(), y.clone())


def pool_indices(size: int, pool: str, fractions: Sequence[float], seed: int) -> Tensor:
    """Indices of ``pool`` (``train``/``val``/``test``) in a seeded permutation of ``size``
    examples cut by ``fractions`` (which sum to 1)."""
    check_choice("pool", pool, POOLS)
    if len(fractions) != 3 or any(f <= 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(f"fractions must be three positive numbers summing to 1 (train, "
                         f"val, test), got {list(fractions)}")
    order = torch.randperm(size, generator=torch.Generator().manual_seed(int(seed)))
    cuts = [0, round(fractions[0] * size), round((fractions[0] + fractions[1]) * size), size]
    index = POOLS.index(pool)
    return order[cuts[index]:cuts[index + 1]]


class ClassifierTrainingProblems(TaskSource):
    """Tasks "train a fresh classifier on these examples" from a labelled image dataset.

    Args:
        dataset: an `ImageDataset` (``images`` uint8 ``[N, C, H, W]``, ``labels``); inputs
            are flattened and scaled to ``[0, 1]``.
        pool: ``"train"``, ``"val"`` or ``"test"``: which part of the seeded division.
        examples: support examples per task (the optimizee's training data).
        queries: held-out examples per task (disjoint from the support).
        split_seed: the seed of the division into pools (fixed: the same for every run).
        fractions: the pools' shares of the dataset.
    """

    def __init__(self, dataset, pool: str, examples: int, queries: int,
                 tasks_per_batch: int = 1, seed: int | None = None, split_seed: int = 0,
                 fractions: Sequence[float] = (0.6, 0.2, 0.2)) -> None:
        super().__init__(tasks_per_batch, seed)
        self.dataset = dataset
        self.examples = check_positive_int("examples", examples)
        self.queries = check_positive_int("queries", queries)
        indices = pool_indices(len(dataset.labels), pool, fractions, split_seed)
        if self.examples + self.queries > len(indices):
            raise ValueError(f"examples + queries = {self.examples + self.queries} but the "
                             f"{pool} pool has {len(indices)} examples")
        self.inputs = dataset.images[indices].flatten(start_dim=1).float() / 255.0
        self.labels = dataset.labels[indices]
        self.num_classes = int(dataset.labels.max()) + 1

    def sample(self) -> TaskBatch:
        picks = torch.stack([torch.randperm(len(self.labels), generator=self.generator)
                             [: self.examples + self.queries]
                             for _ in range(self.tasks_per_batch)])
        support, query = picks[:, : self.examples], picks[:, self.examples:]
        return TaskBatch(self.inputs[support], self.labels[support], self.inputs[query],
                         self.labels[query], num_classes=self.num_classes)


__all__ = ["ClassifierTrainingProblems", "RandomQuadratics", "pool_indices"]
