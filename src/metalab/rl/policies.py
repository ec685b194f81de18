"""A Gaussian MLP policy (Finn et al. 2017: two tanh hidden layers of 100 units, a
state-independent learned log standard deviation).

``forward(observations) -> (mean, log_std)``; it holds no other state, so
``torch.func.functional_call(policy, params, (observations,))`` evaluates it at adapted
parameters. ``gaussian_log_prob`` gives ``log N(a; mean, diag(exp(log_std))^2)`` summed
over the action dimensions.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call

from metalab.validation import check_positive_int


class GaussianMLPPolicy(nn.Module):
    def __init__(self, observation_dim: int, action_dim: int,
                 hidden: Sequence[int] = (100, 100), init_log_std: float = 0.0):
        super().__init__()
        self.observation_dim = check_positive_int("observation_dim", observation_dim)
        self.action_dim = check_positive_int("action_dim", action_dim)
        layers: list[nn.Module] = []
        width = observation_dim
        for index, size in enumerate(hidden):
            layers += [nn.Linear(width, check_positive_int(f"hidden[{index}]", size)), nn.Tanh()]
            width = size
        layers.append(nn.Linear(width, action_dim))
        self.mean = nn.Sequential(*layers)
        self.log_std = nn.Parameter(torch.full((action_dim,), float(init_log_std)))

    def forward(self, observations: Tensor) -> tuple[Tensor, Tensor]:
        if observations.dim() == 0 or observations.shape[-1] != self.observation_dim:
            raise ValueError(f"observations must have last dimension {self.observation_dim}, "
                             f"got shape {tuple(observations.shape)}")
        mean = self.mean(observations)
        return mean, self.log_std.expand_as(mean)



def standard_normal_like(mean: Tensor, generator: torch.Generator | None) -> Tensor:
    """Standard normal noise of ``mean``'s shape and dtype, on its device, drawn from
    ``generator`` on the generator's own device (so a seeded CPU generator gives the same
    actions whichever device the policy runs on)."""
    source = generator.device if generator is not None else mean.device
    return torch.randn(mean.shape, generator=generator, dtype=mean.dtype,
                       device=source).to(mean.device)

def gaussian_log_prob(actions: Tensor, mean: Tensor, log_std: Tensor) -> Tensor:
    """``sum_i log N(a_i; mean_i, exp(log_std_i)^2)`` over the last dimension."""
    if actions.shape != mean.shape:
        raise ValueError(f"actions must have the shape of the policy's mean "
                         f"{tuple(mean.shape)}, got {tuple(actions.shape)}")
    z = (actions - mean) * torch.exp(-log_std)
    return (-0.5 * z**2 - log_std - 0.5 * math.log(2 * math.pi)).sum(dim=-1)


def policy_log_probs(policy: nn.Module, params: Mapping[str, Tensor], observations: Tensor,
                     actions: Tensor) -> Tensor:
    """Log-probabilities of ``actions`` in ``observations`` at ``params`` (differentiable in
    ``params``); shapes ``[..., obs_dim]``, ``[..., act_dim] -> [...]``."""
    mean, log_std = functional_call(policy, dict(params), (observations,))
    return gaussian_log_prob(actions, mean, log_std)


def gaussian_kl(mean_p: Tensor, log_std_p: Tensor, mean_q: Tensor, log_std_q: Tensor) -> Tensor:
    """``KL(p || q)`` of diagonal Gaussians, summed over the last dimension:
    ``sum_i log(s_q / s_p) + (s_p^2 + (m_p - m_q)^2) / (2 s_q^2) - 1/2``."""
    variance_p, variance_q = torch.exp(2 * log_std_p), torch.exp(2 * log_std_q)
    return (log_std_q - log_std_p + (variance_p + (mean_p - mean_q) ** 2) / (2 * variance_q)
            - 0.5).sum(dim=-1)
