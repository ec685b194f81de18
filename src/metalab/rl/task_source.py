"""The meta-RL task source: each meta-batch is `EnvironmentTasks`, the specifications of
T tasks of one family (goals, velocities, ...) with the collector that turns a policy into
their episodes and the seed of that collector's RNG for this batch.

The source draws the tasks and the rollout seed from its own generator, so its
``state_dict`` (checkpointed by the trainer) fixes every rollout of the rest of a run: a
resumed run collects exactly the episodes of an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from metalab.rl.families import TaskFamily
from metalab.tasks.source import TaskSource
from metalab.validation import check_positive_int

SEED_RANGE = 2**62


@dataclass(frozen=True)
class EnvironmentTasks:
    """A meta-batch of T environment tasks: ``tasks [T, ...]``, ``family`` (its collector),
    ``episodes`` per task for each batch of rollouts, the ``seed`` of this batch's rollout
    RNG and ``task_id [T]``."""

    tasks: Tensor
    family: TaskFamily
    episodes: int
    seed: int
    task_id: Tensor | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.tasks, Tensor) or self.tasks.dim() == 0:
            raise ValueError(f"tasks must be a tensor with a leading task dimension, got "
                             f"{getattr(self.tasks, 'shape', type(self.tasks).__name__)}")
        check_positive_int("episodes", self.episodes)
        if self.task_id is not None and tuple(self.task_id.shape) != (len(self),):
            raise ValueError(f"task_id must have shape [{len(self)}], "
                             f"got {tuple(self.task_id.shape)}")

    def __len__(self) -> int:
        return self.tasks.shape[0]

    def __getitem__(self, index: slice) -> EnvironmentTasks:
        """The tasks ``index`` (a slice) with the same collector; the rollout seed is offset
        by the slice's start so that two shards do not share their noise."""
        if not isinstance(index, slice):
            raise TypeError(f"EnvironmentTasks takes a slice of tasks, got {type(index).__name__}")
        start = index.indices(len(self))[0]
        task_id = None if self.task_id is None else self.task_id[index]
        return replace(self, tasks=self.tasks[index], seed=self.seed + start, task_id=task_id)

    def chunks(self, size: int | None) -> Iterator[EnvironmentTasks]:
        """The whole batch: rollouts of a meta-batch are collected and scored together."""
        yield self

    def to(self, target) -> EnvironmentTasks:
        """The tasks moved to a device or cast to a floating dtype."""
        return replace(self, tasks=self.tasks.to(target))

    def generator(self) -> torch.Generator:
        """A fresh generator seeded with this batch's rollout seed."""
        return torch.Generator().manual_seed(self.seed)


class EnvironmentTaskSource(TaskSource):
    """``tasks_per_batch`` tasks of ``family`` per meta-batch, ``episodes`` per task."""

    def __init__(self, family: TaskFamily, tasks_per_batch: int, episodes: int,
                 seed: int | None = None) -> None:
        super().__init__(tasks_per_batch, seed)
        if not isinstance(family, TaskFamily):
            raise TypeError(f"family must have observation_dim, action_dim, horizon, "
                            f"sample_tasks and collect (a TaskFamily), got "
                            f"{type(family).__name__}")
        self.family = family
        self.episodes = check_positive_int("episodes", episodes)
        self._batches = 0

    def sample(self) -> EnvironmentTasks:
        tasks = self.family.sample_tasks(self.tasks_per_batch, self.generator)
        seed = int(torch.randint(SEED_RANGE, (1,), generator=self.generator))
        start = self._batches * self.tasks_per_batch
        self._batches += 1
        ids = torch.arange(start, start + self.tasks_per_batch)
        return EnvironmentTasks(tasks, self.family, self.episodes, seed, ids)

    def sizes(self) -> dict[str, int]:
        """The policy's sizes the family determines (the builder completes a config's
        model with them)."""
        return {"observation_dim": int(self.family.observation_dim),
                "action_dim": int(self.family.action_dim)}

    def state_dict(self) -> dict:
        return {**super().state_dict(), "batches": self._batches}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self._batches = state["batches"]
