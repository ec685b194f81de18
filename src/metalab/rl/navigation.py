"""2-D point navigation (Finn et al. 2017, section 5.3) as plain batched tensors.

A task is a goal ``g`` sampled uniformly in ``[-0.5, 0.5]^2``. The state is the point's
position ``s`` (the observation; the goal is not observed), starting at the origin. A step
clips the action to ``[-0.1, 0.1]^2`` and moves the point, ``s' = s + clip(a)``; the reward
is the negative Euclidean distance to the goal after the step, ``r = -||s' - g||_2``. This is
the reward of the released code (``point_env_randgoal.py`` in cbfinn/maml_rl, also used by
pytorch-maml-rl); the paper's text says squared distance, we follow the code. As in the
released code an episode ends early when the point is within ``goal_tolerance`` (0.01) of the
goal in both coordinates; the horizon is 100 steps.

Goals on a half circle (``goals="half-circle"``): ``g = goal_range (cos theta, sin theta)``,
``theta`` uniform in ``[0, pi]`` (the goals of PEARL's point robot, rlkit's
``SparsePointEnv``: radius 1, the start at the origin; rlkit spaces its fixed goal set
evenly over the half circle, we draw the angle). Every goal is ``goal_range`` from the
start, so a policy that ignores the task cannot do well by staying put, and the goal's
direction is what a context has to tell.

Sparse goals (``sparse_radius=r``, the E-MAML comparison): the reward is ``1 - ||s' - g||``
within ``r`` of the goal and 0 elsewhere (rlkit's ``SparsePointEnv`` of the PEARL paper,
which sparsifies the negative distance the same way), so an episode that never comes within
``r`` carries no signal; `Navigation2D` then turns the early end off (reaching the goal
should not end the reward).

Shapes: ``goals [T, 2]``, ``positions`` and ``actions [T, E, 2]`` (T tasks, E episodes per
task), ``rewards`` and ``done [T, E]``: every task and episode is stepped at once.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from metalab.validation import check_positive_int, check_real


def check_last_dim(name: str, tensor: Tensor, size: int) -> None:
    """Raise if ``tensor`` is not a floating tensor whose last dimension is ``size``."""
    if not isinstance(tensor, Tensor) or tensor.dim() == 0 or tensor.shape[-1] != size:
        shape = tuple(tensor.shape) if isinstance(tensor, Tensor) else type(tensor).__name__
        raise ValueError(f"{name} must be a tensor whose last dimension is {size}, got {shape}")


class PointNavigation:
    """The task family of 2-D navigation: ``sample_tasks``, ``initial_positions``, ``step``."""

    observation_dim = 2
    action_dim = 2

    GOAL_DISTRIBUTIONS = ("square", "half-circle")

    def __init__(self, horizon: int = 100, goal_range: float = 0.5, max_action: float = 0.1,
                 goal_tolerance: float | None = 0.01, sparse_radius: float | None = None,
                 goals: str = "square"):
        self.horizon = check_positive_int("horizon", horizon)
        if goals not in self.GOAL_DISTRIBUTIONS:
            raise ValueError(f"goals must be one of {list(self.GOAL_DISTRIBUTIONS)}, "
                             f"got {goals!r}")
        self.goals = goals
        self.goal_range = check_real("goal_range", goal_range, inclusive=False)
        self.max_action = check_real("max_action", max_action, inclusive=False)
        self.goal_tolerance = (None if goal_tolerance is None
                               else check_real("goal_tolerance", goal_tolerance))
        self.sparse_radius = (None if sparse_radius is None
                              else check_real("sparse_radius", sparse_radius, inclusive=False))

    def sample_tasks(self, n: int, generator: torch.Generator | None = None,
                     dtype: torch.dtype = torch.float64) -> Tensor:
        """``n`` goals, shape ``[n, 2]``: uniform in ``[-goal_range, goal_range]^2``, or
        (``goals="half-circle"``) ``goal_range (cos theta, sin theta)``, ``theta ~ U[0, pi]``."""
        n = check_positive_int("n", n)
        device = generator.device if generator is not None else "cpu"
        if self.goals == "half-circle":
            theta = math.pi * torch.rand(n, generator=generator, dtype=dtype, device=device)
            return self.goal_range * torch.stack([theta.cos(), theta.sin()], dim=-1)
        unit = torch.rand(n, 2, generator=generator, dtype=dtype, device=device)
        return (2.0 * unit - 1.0) * self.goal_range

    def initial_positions(self, goals: Tensor, episodes_per_task: int) -> Tensor:
        """Every episode starts at the origin: zeros of shape ``[T, E, 2]``."""
        self.check_goals(goals)
        episodes = check_positive_int("episodes_per_task", episodes_per_task)
        return goals.new_zeros(goals.shape[0], episodes, 2)

    def step(self, positions: Tensor, actions: Tensor, goals: Tensor) -> tuple[Tensor, Tensor,
                                                                                 Tensor]:
        """One step of every episode: ``(next_positions, rewards, done)``."""
        self.check_goals(goals)
        check_last_dim("positions", positions, 2)
        check_last_dim("actions", actions, self.action_dim)
        if actions.shape != positions.shape:
            raise ValueError(f"actions must have the shape of positions {tuple(positions.shape)}"
                             f", got {tuple(actions.shape)}")
        if positions.shape[0] != goals.shape[0]:
            raise ValueError(f"positions must have one row per goal ({goals.shape[0]}), "
                             f"got {positions.shape[0]}")
        moved = positions + actions.clamp(-self.max_action, self.max_action)
        offset = moved - goals.unsqueeze(1)
        distance = offset.norm(dim=-1)
        rewards = -distance
        if self.sparse_radius is not None:
            rewards = torch.where(distance <= self.sparse_radius, 1.0 - distance,
                                  torch.zeros_like(distance))
        if self.goal_tolerance is None:
            done = torch.zeros_like(rewards, dtype=torch.bool)
        else:
            done = (offset.abs() < self.goal_tolerance).all(dim=-1)
        return moved, rewards, done

    @staticmethod
    def check_goals(goals: Tensor) -> None:
        if not isinstance(goals, Tensor) or goals.dim() != 2 or goals.shape[1] != 2:
            shape = tuple(goals.shape) if isinstance(goals, Tensor) else type(goals).__name__
            raise ValueError(f"goals must be a tensor of shape [tasks, 2], got {shape}")
