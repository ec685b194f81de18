"""Rollouts of a latent-conditioned tanh-Gaussian policy (PEARL's actor): every task ``t``
and episode ``e`` acts with its own latent ``z[t, e]``, held fixed for the episode (PEARL
samples ``z`` once per episode). `collect_latent_episodes` runs on the batched 2-D
navigation, `collect_gym_latent_episodes` on a simulator family's environment pool
(`rl/gym_collector.py`: MuJoCo locomotion, Meta-World).

The policy's action ``a = tanh(u)`` lies in ``[-1, 1]``; the environment receives it mapped
affinely onto its action range (navigation: ``max_action * a``; a gymnasium environment:
``low + (a + 1) (high - low) / 2``, as rlkit's ``NormalizedBoxEnv`` rescales it), and the
transitions record ``a`` itself, the action the critic and the log-density are of.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from metalab.rl.gym_collector import TERMINATED, EnvPool, run_steps
from metalab.rl.navigation import PointNavigation
from metalab.rl.policies import standard_normal_like
from metalab.rl.sac import TanhGaussianPolicy


@torch.no_grad()
def collect_latent_episodes(env: PointNavigation, policy: TanhGaussianPolicy, z: Tensor,
                            goals: Tensor, *, generator: torch.Generator | None = None,
                            deterministic: bool = False) -> dict[str, Tensor]:
    """One episode per ``z [T, E, z_dim]`` on ``goals [T, 2]``: ``observations``,
    ``actions``, ``next_observations`` ``[T, E, H, 2]``, ``rewards``, ``dones`` (the
    environment's terminal flag) and ``masks`` (1 while the episode runs) ``[T, E, H]``.
    ``deterministic``: act with ``tanh(mean)`` (no noise is drawn)."""
    env.check_goals(goals)
    if z.dim() != 3 or z.shape[0] != goals.shape[0]:
        raise ValueError(f"z must have shape [tasks ({goals.shape[0]}), episodes, z_dim], "
                         f"got {tuple(z.shape)}")
    positions = env.initial_positions(goals, z.shape[1])
    alive = positions.new_ones(positions.shape[:2])
    steps: dict[str, list[Tensor]] = {k: [] for k in ("observations", "actions", "rewards",
                                                      "next_observations", "dones", "masks")}
    for _ in range(env.horizon):
        action = latent_action(policy, positions, z, generator, deterministic)
        moved, reward, done = env.step(positions, env.max_action * action, goals)
        for key, value in (("observations", positions), ("actions", action),
                           ("rewards", reward * alive), ("next_observations", moved),
                           ("dones", done.to(alive.dtype)), ("masks", alive)):
            steps[key].append(value)
        keep = alive.unsqueeze(-1)
        positions = keep * moved + (1 - keep) * positions
        alive = alive * (~done).to(alive.dtype)
    return {key: torch.stack(values, dim=2) for key, values in steps.items()}


def latent_action(policy: TanhGaussianPolicy, observations: Tensor, z: Tensor,
                  generator: torch.Generator | None, deterministic: bool) -> Tensor:
    """``tanh(u)``, ``u ~ N(mu(s, z), sigma(s, z)^2)``; ``deterministic``: ``tanh(mu)``."""
    if deterministic:
        return policy.mode(observations, z)
    mean, log_std = policy(observations, z)
    return torch.tanh(mean + torch.exp(log_std) * standard_normal_like(mean, generator))


@torch.no_grad()
def collect_gym_latent_episodes(family: Any, policy: TanhGaussianPolicy, z: Tensor,
                                tasks: Sequence, *, pool: EnvPool | None = None,
                                generator: torch.Generator | None = None,
                                deterministic: bool = False) -> dict[str, Tensor]:
    """One episode of ``family.horizon`` steps per ``z [T, E, z_dim]`` on the simulator
    tasks ``tasks`` (what the family's ``set_task`` takes, one per row of ``z``), stepped
    on ``pool`` (a fresh `EnvPool` when ``None``). The same fields as
    `collect_latent_episodes`; ``dones`` is the environment's ``terminated`` flag (an
    episode cut by the horizon is not done: the critic bootstraps through it)."""
    if z.dim() != 3 or z.shape[0] != len(tasks):
        raise ValueError(f"z must have shape [tasks ({len(tasks)}), episodes, z_dim], "
                         f"got {tuple(z.shape)}")
    if policy.action_dim != family.action_dim:
        raise ValueError(f"policy.action_dim must equal the family's action dimension "
                         f"{family.action_dim}, got {policy.action_dim}")
    owned = pool is None
    pool = EnvPool(family) if pool is None else pool
    try:
        low, high = pool.assign(tasks, z.shape[1])
        scale, offset = (torch.as_tensor(b, dtype=z.dtype, device=z.device)
                         for b in ((high - low) / 2, (high + low) / 2))

        def act(observations: Tensor, alive: Tensor, records: dict) -> tuple[Tensor, Tensor]:
            action = latent_action(policy, observations, z, generator, deterministic)
            return action, offset + scale * action

        steps = run_steps(pool, (low, high), act, tuple(z.shape[:2]), family.horizon,
                          (z.dtype, z.device), generator, (TERMINATED,))
    finally:
        if owned:
            pool.close()
    steps["dones"] = steps.pop(TERMINATED)
    return steps
