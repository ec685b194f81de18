"""Plain labelled batches over all the classes of a split: pretraining an embedding.

The pretraining stage of the "closer look" baselines (Chen et al. 2019) and of RFS (Tian et
al. 2020) is ordinary classification over every training class. To go through the one
trainer, each batch is a `TaskBatch` of one task whose support set is empty and whose query
set is ``batch_size`` examples drawn uniformly without replacement from the whole split,
labelled by their class position ``0 .. num_classes - 1`` (``num_classes`` = every class).
"""

from __future__ import annotations

import torch

from metalab.tasks.batch import TaskBatch
from metalab.tasks.episodes import gather_inputs, indices_by_class
from metalab.tasks.source import TaskSource
from metalab.validation import check_positive_int


class LabelledBatches(TaskSource):
    """Batches of ``batch_size`` labelled examples of ``dataset`` (all its classes)."""

    def __init__(self, dataset, batch_size: int, seed: int | None = None) -> None:
        super().__init__(1, seed)
        self.dataset = dataset
        self.batch_size = check_positive_int("batch_size", batch_size)
        class_ids, members = indices_by_class(dataset)
        if self.batch_size > len(dataset):
            raise ValueError(f"batch_size={batch_size} but the dataset has {len(dataset)} "
                             f"examples")
        self.num_classes = len(class_ids)
        self.position_of = torch.empty(len(dataset), dtype=torch.long)
        for position, indices in enumerate(members):
            self.position_of[indices] = position

    def sample(self) -> TaskBatch:
        chosen = torch.randperm(len(self.dataset), generator=self.generator)[: self.batch_size]
        x = gather_inputs(self.dataset, chosen)
        y = self.position_of[chosen]
        empty_x = x.new_zeros((1, 0, *x.shape[1:]))
        return TaskBatch(empty_x, y.new_zeros((1, 0)), x.unsqueeze(0), y.unsqueeze(0),
                         num_classes=self.num_classes)
