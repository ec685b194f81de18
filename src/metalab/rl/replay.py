"""Per-task replay buffers (PEARL's ``MultiTaskReplayBuffer``): one ring buffer of
transitions ``(s, a, r, s', done)`` per training task, as preallocated tensors so that a
checkpoint holds them whole (`state_dict`) and a resumed run samples exactly what an
uninterrupted one would.
"""

from __future__ import annotations

import torch
from torch import Tensor

from metalab.validation import check_positive_int

FIELDS = ("observations", "actions", "rewards", "next_observations", "dones")


class TaskReplay:
    """``num_tasks`` ring buffers of ``capacity`` transitions each (oldest overwritten)."""

    def __init__(self, num_tasks: int, capacity: int, observation_dim: int, action_dim: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"
                 ) -> None:
        self.num_tasks = check_positive_int("num_tasks", num_tasks)
        self.capacity = check_positive_int("capacity", capacity)
        shapes = {"observations": (observation_dim,), "actions": (action_dim,),
                  "rewards": (), "next_observations": (observation_dim,), "dones": ()}
        self.data = {k: torch.zeros(num_tasks, capacity, *shapes[k], dtype=dtype, device=device)
                     for k in FIELDS}
        self.sizes = torch.zeros(num_tasks, dtype=torch.long, device=device)
        self.positions = torch.zeros(num_tasks, dtype=torch.long, device=device)

    def add(self, task: int, transitions: dict[str, Tensor]) -> None:
        """Append ``transitions`` (each field ``[n, ...]``) to task ``task``'s buffer."""
        count = transitions["rewards"].shape[0]
        index = (self.positions[task] + torch.arange(count, device=self.positions.device)
                 ) % self.capacity
        for key in FIELDS:
            self.data[key][task, index] = transitions[key].to(self.data[key].dtype)
        self.positions[task] = (self.positions[task] + count) % self.capacity
        self.sizes[task] = min(self.capacity, int(self.sizes[task]) + count)

    def clear(self, task: int) -> None:
        """Forget task ``task``'s transitions (PEARL refreshes its encoder buffer so)."""
        self.sizes[task] = 0
        self.positions[task] = 0

    def sample(self, tasks: Tensor, count: int, generator: torch.Generator | None = None
               ) -> dict[str, Tensor]:
        """``count`` transitions per task of ``tasks [B]``, uniformly with replacement:
        fields ``[B, count, ...]``."""
        sizes = self.sizes[tasks]
        if bool((sizes == 0).any()):
            empty = tasks[sizes == 0].tolist()
            raise ValueError(f"tasks {empty} have no transitions in the replay buffer yet")
        drawn_on = generator.device if generator is not None else sizes.device  # seeded values
        uniform = torch.rand(len(tasks), count, generator=generator, dtype=torch.float64,
                             device=drawn_on).to(sizes.device)
        index = (uniform * sizes[:, None]).long().clamp_max(sizes[:, None] - 1)
        rows = tasks[:, None].expand_as(index)
        return {key: self.data[key][rows, index] for key in FIELDS}

    def state_dict(self) -> dict:
        """Copies of the buffers (a state kept in memory does not change with later adds)."""
        return {"data": {k: v.clone() for k, v in self.data.items()},
                "sizes": self.sizes.clone(), "positions": self.positions.clone()}

    @classmethod
    def from_state_dict(cls, state: dict) -> TaskReplay:
        """The buffers a `state_dict` describes (their sizes read from it)."""
        observations, actions = state["data"]["observations"], state["data"]["actions"]
        replay = cls(observations.shape[0], observations.shape[1], observations.shape[2],
                     actions.shape[2], observations.dtype, observations.device)
        replay.load_state_dict(state)
        return replay

    def load_state_dict(self, state: dict) -> None:
        for key in FIELDS:
            if state["data"][key].shape != self.data[key].shape:
                raise ValueError(f"replay buffer field {key!r} has shape "
                                 f"{tuple(state['data'][key].shape)} in the checkpoint, "
                                 f"{tuple(self.data[key].shape)} here")
        self.data = {k: v.clone() for k, v in state["data"].items()}
        self.sizes, self.positions = state["sizes"].clone(), state["positions"].clone()
