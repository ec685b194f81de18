"""`TaskSource`: the protocol every task family follows.

A task source draws `TaskBatch`es from its own `torch.Generator`, so a run is deterministic
for a seed and its exact position can be checkpointed (`state_dict`) and resumed.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from metalab.tasks.batch import TaskBatch

# check_positive_int lives in metalab.validation; imported here under its old address so
# ``from metalab.tasks.source import check_positive_int`` keeps working.
from metalab.validation import check_positive_int

__all__ = ["TaskSource", "check_positive_int"]


class TaskSource:
    """Base class: an infinite, seeded stream of task batches.

    Subclasses implement `sample`, drawing all randomness from ``self.generator``.
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

    def __iter__(self) -> Iterator[TaskBatch]:
        while True:
            yield self.sample()

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
