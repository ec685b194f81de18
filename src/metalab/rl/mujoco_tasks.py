"""MuJoCo locomotion task families of the MAML and PEARL papers on gymnasium's v5 environments
(``pip install "metalab[mujoco]"``: gymnasium[mujoco] and mujoco from PyPI, nothing else).

A task is one number: a target velocity or a direction. ``sample_tasks(n, generator)`` gives a
float64 tensor ``[n]``; ``make_env()`` builds an environment (gymnasium's API: ``reset(seed=)``,
``step(action)``) whose reward is the task's; ``set_task(env, task)`` switches it. The forward
velocity is the finite difference of the root's x position over one environment step,
``v = (qpos_0' - qpos_0) / dt`` (``dt = 0.05``: 5 MuJoCo steps of 0.01 s), as in PEARL's code
(``rlkit/envs/half_cheetah_vel.py``); MAML's rllab code read the torso's centre-of-mass
velocity instead. The action in the control cost is the one applied (the collector clips it to
the action space, [-1, 1], as MuJoCo's actuators would).

- **half-cheetah velocity** (Finn et al. 2017; Rakelly et al. 2019): target ``v_goal ~ U[0, 2]``
  (MAML; PEARL's code draws U[0, 3]), ``r = -|v - v_goal| - 0.05 ||a||^2``: both papers' code
  writes the control cost as ``0.5 * 1e-1 * sum(a^2)``.
- **half-cheetah direction**: ``d = +-1`` with probability 1/2, ``r = d v - 0.05 ||a||^2``.
- **ant direction** (an option; PEARL's ``ant-dir`` with ``forward_backward=True``): ``d = +-1``,
  ``r = d v - 0.5 ||a||^2 - 5e-4 ||clip(cfrc_ext, -1, 1)||^2 + 1`` (the last three terms are
  gymnasium Ant-v5's own control, contact and healthy terms, whose defaults are PEARL's
  coefficients); the episode terminates when the torso leaves z in [0.2, 1.0] (Ant-v5's rule).

The horizon is 200 steps (MAML / PEARL). Observations are gymnasium's v5 defaults
(half-cheetah 17: qpos without the root x, qvel; ant 105: qpos without x, y, qvel, contact
forces); the task is not observed.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from metalab.rl.extras import require
from metalab.validation import check_interval, check_positive_int

EXTRA = "mujoco"


class LocomotionEnv:
    """A gymnasium MuJoCo environment whose reward is its family's task reward.

    Same API as a gymnasium environment (``reset(seed=)``, ``step(action)``,
    ``observation_space``, ``action_space``, ``close()``); ``info`` carries ``velocity`` and
    ``reward_task`` (the reward returned), besides gymnasium's own terms.
    """

    def __init__(self, env: Any, family: LocomotionTasks):
        self.env = env
        self.family = family
        self.task: float | None = None

    @property
    def observation_space(self) -> Any:
        return self.env.observation_space

    @property
    def action_space(self) -> Any:
        return self.env.action_space

    @property
    def unwrapped(self) -> Any:
        return self.env.unwrapped

    def reset(self, *, seed: int | None = None) -> tuple[np.ndarray, dict]:
        if self.task is None:
            raise RuntimeError("set a task first: family.set_task(env, task)")
        return self.env.reset(seed=seed)

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        if self.task is None:
            raise RuntimeError("set a task first: family.set_task(env, task)")
        data = self.env.unwrapped.data
        x_before = float(data.qpos[0])
        observation, _, terminated, truncated, info = self.env.step(action)
        velocity = (float(data.qpos[0]) - x_before) / self.env.unwrapped.dt
        reward = self.family.reward(self.task, velocity, np.asarray(action), info)
        info = dict(info, velocity=velocity, reward_task=reward)
        return observation, reward, terminated, truncated, info

    def close(self) -> None:
        self.env.close()


class LocomotionTasks:
    """A family of tasks on one gymnasium MuJoCo environment (subclasses give the reward)."""

    env_id: str
    observation_dim: int
    action_dim: int

    def __init__(self, horizon: int = 200, **env_kwargs: Any):
        self.horizon = check_positive_int("horizon", horizon)
        self.env_kwargs = env_kwargs

    def sample_tasks(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        raise NotImplementedError

    def reward(self, task: float, velocity: float, action: np.ndarray, info: dict) -> float:
        raise NotImplementedError

    def check_task(self, task: Any) -> float:
        raise NotImplementedError

    def make_env(self, task: Any = None) -> LocomotionEnv:
        """A fresh environment (any task of the family runs on it; ``task`` is unused)."""
        gym = require("gymnasium", EXTRA)
        require("mujoco", EXTRA)
        env = gym.make(self.env_id, max_episode_steps=self.horizon, disable_env_checker=True,
                       **self.env_kwargs)
        return LocomotionEnv(env, self)

    def env_key(self, task: Any) -> str:
        """Environments with equal keys can run each other's tasks: one key for the family."""
        return self.env_id

    def set_task(self, env: LocomotionEnv, task: Any) -> None:
        if not isinstance(env, LocomotionEnv) or type(env.family) is not type(self):
            raise ValueError(f"env must be an environment made by {type(self).__name__}"
                             f".make_env(), got {type(env).__name__}")
        env.task = self.check_task(task)


def scalar(name: str, task: Any) -> float:
    if isinstance(task, Tensor):
        if task.numel() != 1:
            raise ValueError(f"{name} must be one number, got a tensor of shape "
                             f"{tuple(task.shape)}")
        task = task.item()
    if isinstance(task, bool) or not isinstance(task, int | float | np.floating | np.integer):
        raise ValueError(f"{name} must be a number, got {task!r}")
    return float(task)


class HalfCheetahVelocity(LocomotionTasks):
    """Target velocity ``U[low, high]`` (default [0, 2]); ``r = -|v - v_goal| - 0.05 ||a||^2``."""

    env_id = "HalfCheetah-v5"
    observation_dim = 17
    action_dim = 6
    ctrl_cost_weight = 0.05

    def __init__(self, horizon: int = 200, velocity_range: tuple[float, float] = (0.0, 2.0),
                 **env_kwargs: Any):
        super().__init__(horizon, **env_kwargs)
        self.velocity_range = check_interval("velocity_range", velocity_range)

    def sample_tasks(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` target velocities, uniform in ``velocity_range``, float64 ``[n]``."""
        n = check_positive_int("n", n)
        low, high = self.velocity_range
        return low + (high - low) * torch.rand(n, generator=generator, dtype=torch.float64)

    def check_task(self, task: Any) -> float:
        return scalar("task (a target velocity)", task)

    def reward(self, task: float, velocity: float, action: np.ndarray, info: dict) -> float:
        return -abs(velocity - task) - self.ctrl_cost_weight * float(np.sum(np.square(action)))


class DirectionTasks(LocomotionTasks):
    """Direction ``d = +-1``, each with probability 1/2."""

    def sample_tasks(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` directions in {-1, +1}, float64 ``[n]``."""
        n = check_positive_int("n", n)
        heads = torch.randint(0, 2, (n,), generator=generator)
        return (2 * heads - 1).to(torch.float64)

    def check_task(self, task: Any) -> float:
        direction = scalar("task (a direction)", task)
        if direction not in (-1.0, 1.0):
            raise ValueError(f"task (a direction) must be -1 or +1, got {direction!r}")
        return direction


class HalfCheetahDirection(DirectionTasks):
    """``r = d v - 0.05 ||a||^2``."""

    env_id = "HalfCheetah-v5"
    observation_dim = 17
    action_dim = 6
    ctrl_cost_weight = 0.05

    def reward(self, task: float, velocity: float, action: np.ndarray, info: dict) -> float:
        return task * velocity - self.ctrl_cost_weight * float(np.sum(np.square(action)))


class AntDirection(DirectionTasks):
    """``r = d v`` plus Ant-v5's control (0.5), contact (5e-4) and healthy (+1) terms."""

    env_id = "Ant-v5"
    observation_dim = 105
    action_dim = 8

    def reward(self, task: float, velocity: float, action: np.ndarray, info: dict) -> float:
        return (task * velocity + float(info["reward_ctrl"]) + float(info["reward_contact"])
                + float(info["reward_survive"]))


FAMILIES = {"half-cheetah-vel": HalfCheetahVelocity, "half-cheetah-dir": HalfCheetahDirection,
            "ant-dir": AntDirection}
