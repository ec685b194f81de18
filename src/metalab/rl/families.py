"""Environments as task families: the one interface a meta-RL method talks to.

A task family is any object with

- ``observation_dim``, ``action_dim``, ``horizon`` (ints): what a policy for it looks like;
- ``sample_tasks(n, generator) -> tasks``: ``n`` task specifications (a tensor whose first
  dimension is ``n``: goals, target velocities, ...), drawn from ``generator`` only;
- ``collect(policy, params, tasks, episodes_per_task, *, generator, per_task=False)
  -> EpisodeBatch``: the collector. It sets every task on its environment (the DESIGN's
  ``set_task(env, task)``), runs ``episodes_per_task`` episodes of ``policy`` at ``params``
  (shared, or with ``per_task=True`` a leading task dimension: one adapted set per task),
  takes all its randomness from ``generator`` (a fixed seed gives identical rollouts), and
  returns the episodes with ``log_probs`` recomputed as a differentiable function of
  ``params``.

A family that serves recurrent methods (RL²) also has ``collect_trials(policy, params,
tasks, trials_per_task, episodes_per_trial, *, generator) -> EpisodeBatch``: trials of
consecutive episodes per task with the policy's hidden state kept across the episodes of a
trial (`metalab.rl.recurrent`). One that serves PEARL has ``collect_latent(policy, z, tasks,
*, generator, deterministic) -> transitions``: one episode per task latent ``z [T, E, z_dim]``
of a latent-conditioned policy (`metalab.rl.latent_rollout`).

Families are registered by name (`register_family`) so that a config's ``data.name`` finds
them; `build_family` constructs one from its options. `Navigation2D` is the 2-D point
navigation of the MAML paper on batched tensors (`PointNavigation` + `collect_episodes`);
the simulator families (MuJoCo locomotion, Meta-World) are `rl/simulator_family.py`'s.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from metalab.rl.episodes import EpisodeBatch
from metalab.rl.latent_rollout import collect_latent_episodes
from metalab.rl.navigation import PointNavigation
from metalab.rl.recurrent import collect_trials
from metalab.rl.rollout import collect_episodes
from metalab.rl.simulator_family import SIMULATOR_FAMILIES


@runtime_checkable
class TaskFamily(Protocol):
    """What a meta-RL method needs from an environment (see the module docstring)."""

    observation_dim: int
    action_dim: int
    horizon: int

    def sample_tasks(self, n: int, generator: torch.Generator | None = None) -> Tensor: ...

    def collect(self, policy: nn.Module, params: Mapping[str, Tensor], tasks: Tensor,
                episodes_per_task: int, *, generator: torch.Generator | None = None,
                per_task: bool = False) -> EpisodeBatch: ...


class Navigation2D:
    """2-D point navigation (Finn et al. 2017) as a task family: a task is a goal in
    ``[-goal_range, goal_range]^2`` (or, ``goals: half-circle``, on the upper half of the
    circle of radius ``goal_range``: PEARL's point robot); see `PointNavigation` for the
    dynamics and reward. Goals are drawn in float32 (the policy's dtype) unless ``dtype``
    says otherwise."""

    def __init__(self, horizon: int = 100, goal_range: float = 0.5, max_action: float = 0.1,
                 goal_tolerance: float | None = 0.01, dtype: str = "float32",
                 sparse_radius: float | None = None, goals: str = "square") -> None:
        self.env = PointNavigation(horizon, goal_range, max_action, goal_tolerance,
                                   sparse_radius, goals)
        if dtype not in ("float32", "float64"):
            raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
        self.dtype = getattr(torch, dtype)

    observation_dim = PointNavigation.observation_dim
    action_dim = PointNavigation.action_dim

    @property
    def horizon(self) -> int:
        return self.env.horizon

    def sample_tasks(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return self.env.sample_tasks(n, generator, dtype=self.dtype)

    def collect(self, policy: nn.Module, params: Mapping[str, Tensor], tasks: Tensor,
                episodes_per_task: int, *, generator: torch.Generator | None = None,
                per_task: bool = False) -> EpisodeBatch:
        batch = collect_episodes(self.env, policy, params, tasks, episodes_per_task,
                                 generator=generator, per_task=per_task)
        if self.env.sparse_radius is None:
            return batch
        return replace(batch, success=reached(batch))


    def collect_trials(self, policy: nn.Module, params: Mapping[str, Tensor], tasks: Tensor,
                       trials_per_task: int, episodes_per_trial: int, *,
                       generator: torch.Generator | None = None) -> EpisodeBatch:
        """RL²'s trials (`collect_trials`): the recurrent collector of this family."""
        return collect_trials(self.env, policy, params, tasks, trials_per_task,
                              episodes_per_trial, generator=generator)

    def collect_latent(self, policy: nn.Module, z: Tensor, tasks: Tensor, *,
                       generator: torch.Generator | None = None,
                       deterministic: bool = False) -> dict[str, Tensor]:
        """PEARL's transitions (`collect_latent_episodes`): one episode per latent
        ``z [T, E, z_dim]``."""
        return collect_latent_episodes(self.env, policy, z, tasks, generator=generator,
                                       deterministic=deterministic)


def reached(batch: EpisodeBatch) -> Tensor:
    """``[T, E]``: 1 for a sparse-goal episode that came within the radius (a reward > 0)."""
    return ((batch.rewards > 0) & (batch.masks > 0)).any(dim=-1).to(batch.rewards.dtype)


def sparse_navigation(horizon: int = 100, goal_range: float = 2.0, max_action: float = 0.1,
                      radius: float = 0.2, dtype: str = "float32") -> Navigation2D:
    """``data.name: nav2d-sparse``: 2-D navigation with sparse goals (reward ``1 - d`` within
    ``radius`` of the goal, else 0; no early end) and success = the radius was reached.
    Goals are uniform in ``[-2, 2]^2`` by default: with MAML's ``[-0.5, 0.5]^2`` the random
    initial policy already comes within 0.2 of the goal in 58% of its episodes (14% here,
    docs/meta-rl.md), which leaves little to explore."""
    return Navigation2D(horizon, goal_range, max_action, None, dtype, sparse_radius=radius)


FAMILIES: dict[str, Callable[..., TaskFamily]] = {"nav2d": Navigation2D,
                                                  "nav2d-sparse": sparse_navigation}
FAMILIES.update(SIMULATOR_FAMILIES)  # half-cheetah-vel/-dir, ant-dir, metaworld


def register_family(name: str, factory: Callable[..., TaskFamily]) -> None:
    """Make ``factory(**options)`` the task family ``data.name: name`` builds."""
    if name in FAMILIES and FAMILIES[name] is not factory:
        raise ValueError(f"task family name {name!r} is taken by {FAMILIES[name]!r}")
    FAMILIES[name] = factory


def build_family(name: str, **options: Any) -> TaskFamily:
    """The registered family ``name`` built with ``options``."""
    if name not in FAMILIES:
        close = difflib.get_close_matches(str(name), sorted(FAMILIES), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ValueError(f"environment must be one of {sorted(FAMILIES)}, got {name!r}{hint}")
    return FAMILIES[name](**options)
