"""`TaskStream`: tasks that arrive one after another, their data in batches (online
meta-learning, Finn, Rajeswaran, Kakade & Levine 2019, "Online Meta-Learning", sec. 3-4).

Round ``t`` is task ``t`` of ``tasks`` (the order given). Its training examples arrive
``batch_size`` at a time, in an order drawn from the stream's generator when the task
begins; its held-out examples never arrive and serve to measure how well task ``t`` is
learned from what has arrived so far. Every example that has arrived joins the replay
buffer: ``sample_buffer`` draws a meta-batch of tasks (uniformly, with replacement) among
the tasks seen so far, each with a support and a query set drawn without overlap from that
task's arrived examples (FTML's meta-update, Algorithm 1, line "sample task T_k ~ B").

The whole state (the round, how much of the current task has arrived, every seen task's
arrival order, the generator) is `state_dict` / `load_state_dict`, so a resumed run has
the same buffer and draws the same next batches and the same buffer meta-batches.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from metalab.tasks.batch import TaskBatch
from metalab.tasks.source import batch_sizes
from metalab.validation import check_positive_int


class StreamTask(NamedTuple):
    """One task of a stream: its training examples (they arrive) and held-out ones."""

    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor


def _check_task(index: int, task: StreamTask) -> None:
    for split in ("train", "test"):
        x, y = getattr(task, f"{split}_x"), getattr(task, f"{split}_y")
        if x.shape[0] != y.shape[0] or x.shape[0] == 0:
            raise ValueError(f"tasks[{index}].{split}_x has {x.shape[0]} examples and "
                             f"{split}_y {y.shape[0]}; expected the same positive number")


class TaskStream:
    """An ordered stream of ``tasks`` whose training data arrive ``batch_size`` at a time.

    Args:
        tasks: the `StreamTask`s in the order they arrive.
        batch_size: training examples per arriving batch (the last batch of a task may be
            smaller).
        seed: seed of the arrival orders and of the buffer's draws.
        num_classes: labels per task (classification), given to the sampled `TaskBatch`es.

    Use: ``for t in range(len(stream))``: ``stream.begin_task()`` (round ``t``), then
    ``while stream.has_batch(): x, y = stream.next_batch()``.
    """

    def __init__(self, tasks: list[StreamTask], batch_size: int, seed: int = 0,
                 num_classes: int | None = None) -> None:
        if not tasks:
            raise ValueError("tasks must hold at least one StreamTask, got none")
        for index, task in enumerate(tasks):
            _check_task(index, task)
        self.tasks = list(tasks)
        self.batch_size = check_positive_int("batch_size", batch_size)
        self.num_classes = num_classes
        self.generator = torch.Generator().manual_seed(int(seed))
        self.task_index = -1  # the current round; -1 before the first begin_task
        self.orders: list[Tensor] = []  # arrival order of every task begun so far
        self.arrived = 0  # examples of the current task that have arrived

    def __len__(self) -> int:
        return len(self.tasks)

    # -- the stream ------------------------------------------------------------------------
    def begin_task(self) -> int:
        """Move to the next task (its arrival order drawn now); returns its index."""
        if self.task_index + 1 >= len(self.tasks):
            raise StopIteration(f"the stream's {len(self.tasks)} tasks are all begun")
        self.task_index += 1
        size = self.tasks[self.task_index].train_x.shape[0]
        self.orders.append(torch.randperm(size, generator=self.generator))
        self.arrived = 0
        return self.task_index

    @property
    def current(self) -> StreamTask:
        if self.task_index < 0:
            raise RuntimeError("no task has begun: call begin_task() first")
        return self.tasks[self.task_index]

    def has_batch(self) -> bool:
        """Whether the current task has training examples that have not arrived yet."""
        return self.arrived < self.current.train_x.shape[0]

    def next_batch(self) -> tuple[Tensor, Tensor]:
        """The current task's next ``batch_size`` training examples ``(x, y)``."""
        if not self.has_batch():
            raise StopIteration(f"task {self.task_index} has no training examples left")
        order = self.orders[self.task_index][self.arrived: self.arrived + self.batch_size]
        self.arrived += len(order)
        return self.current.train_x[order], self.current.train_y[order]

    def arrivals(self) -> int:
        """Batches the whole stream delivers: per task, its examples / ``batch_size``,
        rounded up."""
        return sum(-(-t.train_x.shape[0] // self.batch_size) for t in self.tasks)

    def has_next(self) -> bool:
        """Whether a batch is still to arrive (of this task or a later one)."""
        return self.task_index + 1 < len(self.tasks) or (
            self.task_index >= 0 and self.has_batch())

    def advance(self) -> tuple[Tensor, Tensor]:
        """The next batch of the stream, beginning the next task when the current one has
        no examples left."""
        if self.task_index < 0 or not self.has_batch():
            self.begin_task()
        return self.next_batch()

    def received(self, task: int | None = None) -> tuple[Tensor, Tensor]:
        """Every training example of ``task`` (default: the current one) arrived so far."""
        task = self.task_index if task is None else task
        indices = self._arrived_indices(task)
        return self.tasks[task].train_x[indices], self.tasks[task].train_y[indices]

    def held_out(self, task: int | None = None) -> tuple[Tensor, Tensor]:
        """The held-out examples of ``task`` (default: the current one)."""
        chosen = self.tasks[self.task_index if task is None else task]
        return chosen.test_x, chosen.test_y

    # -- the replay buffer ---------------------------------------------------------------
    def _arrived_indices(self, task: int) -> Tensor:
        if not 0 <= task <= self.task_index:
            raise ValueError(f"task must be a task seen so far, in [0, {self.task_index}], "
                             f"got {task}")
        count = self.arrived if task == self.task_index else len(self.orders[task])
        return self.orders[task][:count]

    def buffer_sizes(self) -> list[int]:
        """Arrived examples of every task seen so far (the buffer's content)."""
        return [len(self._arrived_indices(t)) for t in range(self.task_index + 1)]

    def sample_buffer(self, tasks_per_batch: int, support: int, query: int
                      ) -> TaskBatch | None:
        """A meta-batch from the buffer: ``tasks_per_batch`` tasks drawn uniformly with
        replacement among the seen tasks with at least ``support + query`` arrived examples,
        each with ``support`` and ``query`` examples drawn without overlap. ``None`` when
        no seen task has that many examples yet."""
        check_positive_int("tasks_per_batch", tasks_per_batch)
        check_positive_int("support", support)
        check_positive_int("query", query)
        needed = support + query
        eligible = [t for t, size in enumerate(self.buffer_sizes()) if size >= needed]
        if not eligible:
            return None
        picks = torch.randint(len(eligible), (tasks_per_batch,), generator=self.generator)
        fields: dict[str, list[Tensor]] = {"sx": [], "sy": [], "qx": [], "qy": []}
        chosen_tasks = []
        for pick in picks.tolist():
            task = eligible[pick]
            chosen_tasks.append(task)
            arrived = self._arrived_indices(task)
            draw = arrived[torch.randperm(len(arrived), generator=self.generator)[:needed]]
            data = self.tasks[task]
            fields["sx"].append(data.train_x[draw[:support]])
            fields["sy"].append(data.train_y[draw[:support]])
            fields["qx"].append(data.train_x[draw[support:]])
            fields["qy"].append(data.train_y[draw[support:]])
        stacked = {k: torch.stack(v) for k, v in fields.items()}
        return TaskBatch(stacked["sx"], stacked["sy"], stacked["qx"], stacked["qy"],
                         num_classes=self.num_classes, task_id=torch.tensor(chosen_tasks))

    # -- checkpointing -------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"task_index": self.task_index, "arrived": self.arrived,
                "orders": [o.clone() for o in self.orders],
                "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        if state["task_index"] >= len(self.tasks):
            raise ValueError(f"state is at task {state['task_index']} but this stream has "
                             f"{len(self.tasks)} tasks")
        self.task_index = int(state["task_index"])
        self.arrived = int(state["arrived"])
        self.orders = [o.clone() for o in state["orders"]]
        self.generator.set_state(state["generator"])


class BufferSource:
    """The buffer of a `TaskStream` as a task source: ``sample()`` is one buffer meta-batch
    (what the trainer's step draws). Its state is the stream's."""

    def __init__(self, stream: TaskStream, tasks_per_batch: int, support: int,
                 query: int) -> None:
        self.stream = stream
        self.tasks_per_batch = check_positive_int("tasks_per_batch", tasks_per_batch)
        self.support = check_positive_int("support", support)
        self.query = check_positive_int("query", query)

    def ready(self) -> bool:
        """Whether some seen task has ``support + query`` arrived examples."""
        return any(s >= self.support + self.query for s in self.stream.buffer_sizes())

    def sample(self) -> TaskBatch:
        batch = self.stream.sample_buffer(self.tasks_per_batch, self.support, self.query)
        if batch is None:
            raise RuntimeError(f"the buffer has no task with support+query="
                               f"{self.support + self.query} examples yet; check ready()")
        return batch

    def sizes(self) -> dict:
        """The model sizes of the stream's data (`example_batch`: nothing is drawn)."""
        return batch_sizes(self.example_batch())

    def example_batch(self) -> TaskBatch:
        """One task of the first task's first ``support`` + ``query`` training examples,
        whether or not they have arrived (the data's sizes; draws nothing)."""
        task = self.stream.tasks[0]
        cut, end = self.support, self.support + self.query
        return TaskBatch(task.train_x[None, :cut], task.train_y[None, :cut],
                         task.train_x[None, cut:end], task.train_y[None, cut:end],
                         num_classes=self.stream.num_classes)

    def state_dict(self) -> dict:
        return self.stream.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.stream.load_state_dict(state)
