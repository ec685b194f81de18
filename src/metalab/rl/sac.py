"""Soft actor-critic pieces (Haarnoja et al. 2018, "Soft Actor-Critic Algorithms and
Applications"), conditioned on a task latent ``z`` as PEARL uses them.

- `TanhGaussianPolicy`: ``u ~ N(mu(s, z), sigma(s, z)^2)``, ``a = tanh(u)``, with the
  change-of-variables log-density (SAC appendix C, eq. 21)

      log pi(a | s, z) = sum_i [ log N(u_i; mu_i, sigma_i^2) - log(1 - tanh(u_i)^2) ],

  ``log(1 - tanh(u)^2) = 2 (log 2 - u - softplus(-2u))`` (the same value without the
  ``1 - a^2`` underflow near ``|a| = 1``). ``log sigma`` is clamped to [-20, 2] (rlkit's).
- `QNetwork`: ``Q(s, a, z)``, an MLP on the concatenation.
- `soft_q_target`: the twin-critic target ``y = r + gamma (1 - d) (min_j Q'_j(s', a', z) -
  alpha log pi(a' | s', z))``, ``a' ~ pi(. | s', z)``.
- `polyak_update`: ``theta' <- tau theta + (1 - tau) theta'``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metalab.validation import check_positive_int

LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0


def relu_mlp(in_features: int, hidden: Sequence[int], out_features: int) -> nn.Sequential:
    """Linear-ReLU layers of widths ``hidden``, then a linear output layer."""
    layers: list[nn.Module] = []
    width = check_positive_int("in_features", in_features)
    for index, size in enumerate(hidden):
        layers += [nn.Linear(width, check_positive_int(f"hidden[{index}]", size)), nn.ReLU()]
        width = size
    layers.append(nn.Linear(width, check_positive_int("out_features", out_features)))
    return nn.Sequential(*layers)


def log_one_minus_tanh_squared(u: Tensor) -> Tensor:
    """``log(1 - tanh(u)^2)``, computed as ``2 (log 2 - u - softplus(-2u))``."""
    return 2.0 * (math.log(2.0) - u - F.softplus(-2.0 * u))


def tanh_gaussian_log_prob(u: Tensor, mean: Tensor, log_std: Tensor) -> Tensor:
    """``log pi(tanh(u))`` of the tanh-squashed diagonal Gaussian (module docstring), summed
    over the last dimension."""
    gaussian = (-0.5 * ((u - mean) * torch.exp(-log_std)) ** 2 - log_std
                - 0.5 * math.log(2 * math.pi))
    return (gaussian - log_one_minus_tanh_squared(u)).sum(dim=-1)


class TanhGaussianPolicy(nn.Module):
    """``pi(a | s, z)``: an MLP on ``[s, z]`` giving the mean and log-std of ``u``;
    ``a = tanh(u)`` in ``[-1, 1]`` (the collector scales it to the action range)."""

    def __init__(self, observation_dim: int, action_dim: int, z_dim: int,
                 hidden: Sequence[int] = (300, 300, 300)) -> None:
        super().__init__()
        self.action_dim = check_positive_int("action_dim", action_dim)
        self.net = relu_mlp(observation_dim + z_dim, hidden, 2 * action_dim)

    def forward(self, observations: Tensor, z: Tensor) -> tuple[Tensor, Tensor]:
        mean, log_std = self.net(torch.cat([observations, z], dim=-1)).chunk(2, dim=-1)
        return mean, log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)

    def sample(self, observations: Tensor, z: Tensor, noise: Tensor
               ) -> tuple[Tensor, Tensor]:
        """``(a, log pi(a | s, z))`` for the reparametrised ``u = mean + std * noise``
        (differentiable in the parameters through ``u``)."""
        mean, log_std = self(observations, z)
        u = mean + torch.exp(log_std) * noise
        return torch.tanh(u), tanh_gaussian_log_prob(u, mean, log_std)

    def mode(self, observations: Tensor, z: Tensor) -> Tensor:
        """The deterministic action ``tanh(mean)`` (PEARL's evaluation action)."""
        return torch.tanh(self(observations, z)[0])


class QNetwork(nn.Module):
    """``Q(s, a, z)``: an MLP on ``[s, a, z]`` with one output."""

    def __init__(self, observation_dim: int, action_dim: int, z_dim: int,
                 hidden: Sequence[int] = (300, 300, 300)) -> None:
        super().__init__()
        self.net = relu_mlp(observation_dim + action_dim + z_dim, hidden, 1)

    def forward(self, observations: Tensor, actions: Tensor, z: Tensor) -> Tensor:
        return self.net(torch.cat([observations, actions, z], dim=-1)).squeeze(-1)


def soft_q_target(rewards: Tensor, dones: Tensor, target_q1: Tensor, target_q2: Tensor,
                  next_log_probs: Tensor, alpha: Tensor | float, gamma: float) -> Tensor:
    """``r + gamma (1 - d) (min(Q'_1, Q'_2) - alpha log pi(a' | s'))`` (no gradient)."""
    soft_value = torch.minimum(target_q1, target_q2) - alpha * next_log_probs
    return (rewards + gamma * (1.0 - dones) * soft_value).detach()


@torch.no_grad()
def polyak_update(target: nn.Module, source: nn.Module, tau: float) -> None:
    """``theta_target <- tau theta_source + (1 - tau) theta_target``, parameter by
    parameter."""
    for t, s in zip(target.parameters(), source.parameters(), strict=True):
        t.mul_(1.0 - tau).add_(s, alpha=tau)
