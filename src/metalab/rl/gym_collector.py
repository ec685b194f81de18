"""Rollout collection on simulator task families (rl/mujoco_tasks.py, rl/metaworld_tasks.py):
(policy, parameters, tasks) -> the same :class:`EpisodeBatch` as the navigation collector.

E episodes on each of T tasks run side by side on T x E environments (gymnasium's API; by
default a loop over them in this process, synchronous; ``pool=ProcessEnvPool(...)`` from
rl/process_pool.py steps them in worker processes): one batched policy pass per time step gives
every action, then each running environment steps once. An environment whose episode
terminated (or was truncated) is no longer stepped; its later steps are masked out.
Environments are kept in an :class:`EnvPool` between calls (building one costs milliseconds
for MuJoCo, more for Meta-World), and each slot is rebuilt only when its task needs another
environment class.

Seeded: with a ``generator``, every episode's reset seed and every action's noise come from
it, so equal generator states give identical batches. The sampled Gaussian action is stored
(its log-probability is what the policy gradient needs); the environment gets it clipped to
its action space. As in ``rl/rollout.py`` the log-probabilities are recomputed in one
differentiable pass, so they are functions of ``params`` (shared, or per task with
``per_task=True``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from metalab.rl.episodes import EpisodeBatch
from metalab.rl.policies import gaussian_log_prob, standard_normal_like
from metalab.rl.rollout import check_per_task, policy_outputs
from metalab.validation import check_positive_int

SEED_BOUND = 2**31 - 1
TERMINATED = "terminated"
"""An info key `EnvPool.step` answers from the step's ``terminated`` flag (a true end of the
episode, as opposed to the horizon's truncation): what a bootstrapped critic needs."""


class EnvPool:
    """Environments of one task family, one per slot, stepped in this process (synchronous)
    and reused across collections. ``rl/process_pool.py`` has the same interface with the
    slots spread over worker processes (asynchronous)."""

    def __init__(self, family: Any):
        self.family = family
        self.slots: list[tuple[Any, Any]] = []  # (env_key, env)
        self.active: list[Any] = []

    def environments(self, tasks: Sequence, episodes_per_task: int) -> list[Any]:
        """``T x E`` environments (task-major), each set to its task."""
        count = len(tasks) * episodes_per_task
        envs = []
        for slot in range(count):
            task = tasks[slot // episodes_per_task]
            key = self.family.env_key(task)
            if slot == len(self.slots):
                self.slots.append((key, self.family.make_env(task)))
            elif self.slots[slot][0] != key:
                self.slots[slot][1].close()
                self.slots[slot] = (key, self.family.make_env(task))
            env = self.slots[slot][1]
            self.family.set_task(env, task)
            envs.append(env)
        return envs

    def assign(self, tasks: Sequence, episodes_per_task: int) -> tuple[np.ndarray, np.ndarray]:
        """Set ``T x E`` environments to their tasks; returns the action bounds."""
        self.active = self.environments(tasks, episodes_per_task)
        space = self.active[0].action_space
        return np.asarray(space.low, dtype=np.float64), np.asarray(space.high, dtype=np.float64)

    def reset(self, seeds: Sequence[int]) -> np.ndarray:
        """Reset every assigned environment with its seed; the first observations ``[N, obs]``."""
        return np.stack([env.reset(seed=int(seed))[0]
                         for env, seed in zip(self.active, seeds, strict=True)])

    def step(self, indices: Sequence[int], actions: np.ndarray,
             info_keys: Sequence[str] = ()) -> tuple:
        """Step the environments ``indices`` (one action row each): ``(observations, rewards,
        done, infos)`` for them, ``done`` when terminated or truncated, ``infos[key]`` their
        ``info[key]`` (for `TERMINATED`: the step's ``terminated`` flag)."""
        observations, rewards, done = [], np.zeros(len(indices)), np.zeros(len(indices), bool)
        infos = {key: np.zeros(len(indices)) for key in info_keys}
        for row, index in enumerate(indices):
            obs, rewards[row], terminated, truncated, info = self.active[index].step(actions[row])
            observations.append(obs)
            done[row] = terminated or truncated
            for key in info_keys:
                infos[key][row] = float(terminated if key == TERMINATED else info[key])
        return observations, rewards, done, infos

    def close(self) -> None:
        for _, env in self.slots:
            env.close()
        self.slots, self.active = [], []

    def __enter__(self) -> EnvPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def first_dtype(params: Mapping[str, Tensor]) -> torch.dtype:
    if not params:
        raise ValueError("params must hold the policy's parameters, got an empty mapping")
    return next(iter(params.values())).dtype


def collect_gym_rollouts(family: Any, policy: nn.Module, params: Mapping[str, Tensor],
                         tasks: Sequence, episodes_per_task: int, *,
                         pool: EnvPool | None = None, generator: torch.Generator | None = None,
                         per_task: bool = False, task_ids: Tensor | None = None,
                         info_keys: Sequence[str] = ()) -> tuple[EpisodeBatch, dict[str, Tensor]]:
    """Run ``episodes_per_task`` episodes of ``family.horizon`` steps on every task.

    Returns the batch and, for each name in ``info_keys`` (e.g. Meta-World's ``"success"``),
    the environments' ``info[name]`` as a float64 tensor ``[T, E, H]`` (0 on masked steps).
    """
    episodes = check_positive_int("episodes_per_task", episodes_per_task)
    if len(tasks) == 0:
        raise ValueError("tasks must hold at least one task, got none")
    if getattr(policy, "action_dim", family.action_dim) != family.action_dim:
        raise ValueError(f"policy.action_dim must equal the family's action dimension "
                         f"{family.action_dim}, got {policy.action_dim}")
    if per_task:
        check_per_task(params, len(tasks))
    dtype = first_dtype(params)
    device = next(iter(params.values())).device
    if pool is not None and pool.family is not family:
        raise ValueError("pool must be an environment pool built for this family, got one "
                         f"for {type(pool.family).__name__}")
    owned = pool is None
    pool = EnvPool(family) if pool is None else pool
    try:
        bounds = pool.assign(tasks, episodes)
        steps = run_episodes(pool, bounds, policy, params, (len(tasks), episodes),
                             family.horizon, (dtype, device), generator, per_task,
                             tuple(info_keys))
    finally:
        if owned:
            pool.close()
    observations, actions, rewards, masks, infos = steps
    mean, log_std = policy_outputs(policy, params, observations, per_task)
    log_probs = gaussian_log_prob(actions, mean, log_std)
    if task_ids is None:
        task_ids = torch.arange(len(tasks), device=device)
    batch = EpisodeBatch(observations, actions, rewards, log_probs, masks, task_ids)
    return batch, infos


def collect_gym_episodes(family: Any, policy: nn.Module, params: Mapping[str, Tensor],
                         tasks: Sequence, episodes_per_task: int, **options: Any) -> EpisodeBatch:
    """:func:`collect_gym_rollouts` without the info tensors: just the :class:`EpisodeBatch`."""
    return collect_gym_rollouts(family, policy, params, tasks, episodes_per_task,
                                **options)[0]


def run_episodes(pool: Any, bounds: tuple[np.ndarray, np.ndarray], policy: nn.Module,
                 params: Mapping[str, Tensor], shape: tuple[int, int], horizon: int,
                 placement: tuple[torch.dtype, torch.device],
                 generator: torch.Generator | None, per_task: bool,
                 info_keys: tuple[str, ...]) -> tuple:
    """Step every assigned environment for ``horizon`` steps with the Gaussian policy;
    stacked ``[T, E, H, ...]``, with the ``(dtype, device)`` of ``placement`` (the
    policy's)."""

    def act(observations: Tensor, alive: Tensor, records: dict) -> tuple[Tensor, Tensor]:
        mean, log_std = policy_outputs(policy, params, observations, per_task)
        action = mean + torch.exp(log_std) * standard_normal_like(mean, generator)
        return action, action

    with torch.no_grad():
        steps = run_steps(pool, bounds, act, shape, horizon, placement, generator, info_keys)
    infos = {key: steps[key] for key in info_keys}
    return (*(steps[k] for k in ("observations", "actions", "rewards", "masks")), infos)


def run_steps(pool: Any, bounds: tuple[np.ndarray, np.ndarray],
              act: Callable[[Tensor, Tensor, dict], tuple[Tensor, Tensor]],
              shape: tuple[int, int], horizon: int,
              placement: tuple[torch.dtype, torch.device], generator: torch.Generator | None,
              info_keys: tuple[str, ...] = ()) -> dict[str, Tensor]:
    """One episode on each of the ``T x E`` assigned environments (``shape``), reset with
    seeds drawn from ``generator``. At every step ``act(observations [T, E, obs], alive
    [T, E], records)`` (``records``: the lists of this episode's steps so far) returns the
    action to store ``[T, E, act]`` and the one to apply, which is clipped to ``bounds``; an
    environment whose episode ended is no longer stepped.

    Returns ``observations``, ``next_observations`` ``[T, E, H, obs]``, ``actions``
    ``[T, E, H, act]``, ``rewards``, ``masks`` (1 while the episode runs) and every key of
    ``info_keys`` ``[T, E, H]`` (0 on masked steps), in the ``(dtype, device)`` of
    ``placement``. When every episode ends early, the remaining steps are padded: masked,
    zero actions and rewards, the last observation repeated.
    """
    dtype, device = placement
    count = shape[0] * shape[1]
    seeds = torch.randint(0, SEED_BOUND, shape, generator=generator,
                          device=generator.device if generator is not None else "cpu")
    current = pool.reset(seeds.flatten().tolist())
    alive = np.ones(count, dtype=bool)
    records: dict[str, list[Tensor]] = {key: [] for key in (
        "observations", "actions", "rewards", "masks", "next_observations", *info_keys)}

    def as_tensor(values: np.ndarray, *tail: int) -> Tensor:
        return torch.tensor(values, dtype=dtype, device=device).reshape(*shape, *tail)

    for _ in range(horizon):
        obs = as_tensor(current, -1)  # a copy
        mask = as_tensor(alive)
        action, applied = act(obs, mask, records)
        applied = np.clip(applied.reshape(count, -1).double().cpu().numpy(), *bounds)
        running = np.flatnonzero(alive)
        stepped, reward_rows, done, info_rows = pool.step(running, applied[running], info_keys)
        reward, infos = np.zeros(count), {key: np.zeros(count) for key in info_keys}
        reward[running] = reward_rows
        for key in info_keys:
            infos[key][running] = info_rows[key]
        if len(running):
            current[running] = np.stack(stepped)
        for key, value in (("observations", obs), ("actions", action),
                           ("rewards", as_tensor(reward)), ("masks", mask),
                           ("next_observations", as_tensor(current, -1)),
                           *((key, as_tensor(infos[key])) for key in info_keys)):
            records[key].append(value)
        alive[running] = ~done
        if not alive.any():
            break
    for _ in range(horizon - len(records["rewards"])):
        for key, series in records.items():
            last = series[-1]
            series.append(last if "observations" in key else torch.zeros_like(last))
    return {key: torch.stack(series, dim=2) for key, series in records.items()}
