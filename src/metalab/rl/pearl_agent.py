"""The networks of PEARL (Rakelly et al. 2019) in one module, the config's ``model``
(``name: pearl-agent``): the context encoder ``q(z | c)``, the latent-conditioned
tanh-Gaussian actor ``pi(a | s, z)``, twin critics ``Q_1, Q_2 (s, a, z)`` and their target
copies (not trained: ``requires_grad`` off, moved by `polyak_update` only).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from metalab.rl.context_encoder import ContextEncoder
from metalab.rl.sac import QNetwork, TanhGaussianPolicy
from metalab.validation import check_positive_int


class PEARLAgent(nn.Module):
    """Encoder, actor, twin critics and target critics for ``observation_dim``,
    ``action_dim`` and a latent of ``z_dim`` dimensions. A context transition is
    ``[s, a, r]`` plus ``s'`` with ``next_observation_in_context`` (the official code's
    default leaves ``s'`` out)."""

    def __init__(self, observation_dim: int, action_dim: int, z_dim: int = 5,
                 hidden: Sequence[int] = (300, 300, 300),
                 encoder_hidden: Sequence[int] = (200, 200, 200),
                 next_observation_in_context: bool = True) -> None:
        super().__init__()
        self.observation_dim = check_positive_int("observation_dim", observation_dim)
        self.action_dim = check_positive_int("action_dim", action_dim)
        self.z_dim = check_positive_int("z_dim", z_dim)
        self.next_observation_in_context = bool(next_observation_in_context)
        context_dim = observation_dim * (2 if next_observation_in_context else 1) + action_dim + 1
        self.encoder = ContextEncoder(context_dim, z_dim, encoder_hidden)
        self.policy = TanhGaussianPolicy(observation_dim, action_dim, z_dim, hidden)
        self.q1 = QNetwork(observation_dim, action_dim, z_dim, hidden)
        self.q2 = QNetwork(observation_dim, action_dim, z_dim, hidden)
        self.target_q1 = copy.deepcopy(self.q1).requires_grad_(False)
        self.target_q2 = copy.deepcopy(self.q2).requires_grad_(False)

    def context(self, transitions: dict[str, Tensor]) -> Tensor:
        """``[..., N, context_dim]``: the encoder's input rows of ``transitions``."""
        parts = [transitions["observations"], transitions["actions"],
                 transitions["rewards"].unsqueeze(-1)]
        if self.next_observation_in_context:
            parts.append(transitions["next_observations"])
        return torch.cat(parts, dim=-1)

    def posterior(self, transitions: dict[str, Tensor], mask: Tensor | None = None
                  ) -> tuple[Tensor, Tensor]:
        """``(mean, variance)`` of ``q(z | c)`` for the context ``transitions``."""
        return self.encoder(self.context(transitions), mask)
