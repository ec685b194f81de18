"""`TaskSource`: the protocol every task family follows.

A task source draws `TaskBatch`es from its own `torch.Generator`, so a run is deterministic
for a seed and its exact position can be checkpointed (`state_dict`) and resumed.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from metalab.tasks.batch import TaskBatch

# check_positive_int lives in metalab.validation; imported here under its old address so
# ``from metalab.tasks.source import check_positive_int`` keeps working.
from metalab.validation import check_positive_int

__all__ = ["TaskSource", "batch_sizes", "check_positive_int"]


def batch_sizes(batch: TaskBatch, classes_per_task: list[int] | None = None) -> dict[str, Any]:
    """The input and output sizes a model needs for ``batch``'s data.

    Images ``[C, H, W]`` give ``in_channels`` and ``image_size``; vectors give
    ``in_features``. Classification gives ``outputs`` = the classes per task (one number,
    or ``classes_per_task`` when tasks differ); regression gives the target's size, and a
    map of channels also ``out_channels``.
    """
    x_shape, y_shape = tuple(batch.query_x.shape[2:]), tuple(batch.query_y.shape[2:])
    sizes: dict[str, Any] = {}
    if len(x_shape) == 3:
        sizes.update(in_channels=x_shape[0], image_size=x_shape[-1])
    elif len(x_shape) == 1:
        sizes["in_features"] = x_shape[0]
    if batch.num_classes is None:
        sizes["outputs"] = y_shape[0] if y_shape else 1
        if len(y_shape) == 3:
            sizes["out_channels"] = y_shape[0]
    else:
        sizes["outputs"] = list(classes_per_task) if classes_per_task else batch.num_classes
    return sizes


class TaskSource:
    """Base class: an infinite, seeded stream of task batches.

    Subclasses implement `sample`, drawing all randomness from ``self.generator``.
    `sizes` tells the config builder the data's sizes (`batch_sizes` of one batch); a
    source whose sizes do not come from a batch (an environment) overrides it.
    """

    def __init__(self, tasks_per_batch: int, seed: int | None = None) -> None:
        self.tasks_per_batch = check_positive_int("tasks_per_batch", tasks_per_batch)
        self.generator = torch.Generator()
        if seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(int(seed))

    def sample(self) -> TaskBatch:
        raise NotImplementedError

    def sizes(self) -> dict[str, Any]:
        """The model sizes of this source's data, read from one `sample` (call it on a
        fresh source: it advances the generator)."""
        return batch_sizes(self.sample())

    def __iter__(self) -> Iterator[TaskBatch]:
        while True:
            yield self.sample()

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
