"""Rollouts of a latent-conditioned tanh-Gaussian policy (PEARL's actor) on the batched 2-D
navigation: every task ``t`` and episode ``e`` acts with its own latent ``z[t, e]``, held
fixed for the episode (PEARL samples ``z`` once per episode).

The policy's action ``a = tanh(u)`` lies in ``[-1, 1]``; the environment receives
``max_action * a`` (the action range, as rlkit's ``NormalizedBoxEnv`` rescales it), and
the transitions record ``a`` itself, the action the critic and the log-density are of.
"""

from __future__ import annotations

import torch
from torch import Tensor

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
        if deterministic:
            action = policy.mode(positions, z)
        else:
            mean, log_std = policy(positions, z)
            action = torch.tanh(mean + torch.exp(log_std)
                                * standard_normal_like(mean, generator))
        moved, reward, done = env.step(positions, env.max_action * action, goals)
        for key, value in (("observations", positions), ("actions", action),
                           ("rewards", reward * alive), ("next_observations", moved),
                           ("dones", done.to(alive.dtype)), ("masks", alive)):
            steps[key].append(value)
        keep = alive.unsqueeze(-1)
        positions = keep * moved + (1 - keep) * positions
        alive = alive * (~done).to(alive.dtype)
    return {key: torch.stack(values, dim=2) for key, values in steps.items()}
