"""PEARL's probabilistic context encoder (Rakelly et al. 2019, section 4.1).

Each transition ``c_n = (s, a, r, s')`` of a task's context gives a Gaussian factor
``Psi(z | c_n) = N(mu_n, sigma_n^2)`` (an MLP, ``sigma_n^2 = softplus(.)``), and the
posterior is their product (eq. 3 up to normalisation):

    sigma^2 = 1 / sum_n (1 / sigma_n^2),     mu = sigma^2 * sum_n (mu_n / sigma_n^2),

per latent dimension. As in the official code (``_product_of_gaussians`` in
katerakelly/oyster's ``agent.py``), only the factors are multiplied: the N(0, I) prior is
not a factor of the product; it enters through the KL term
``KL(q(z | c) || N(0, I))`` of the critic loss and as the latent of an empty context.
Masked transitions (after an episode ended) contribute no factor.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metalab.rl.sac import relu_mlp
from metalab.validation import check_positive_int

MIN_VARIANCE = 1e-7  # the official code's clamp of sigma_n^2


def gaussian_product(means: Tensor, variances: Tensor, mask: Tensor | None = None
                     ) -> tuple[Tensor, Tensor]:
    """``[..., N, D] -> ([..., D], [..., D])``: the mean and variance of the product of the
    ``N`` factors (``mask [..., N]``: which factors count)."""
    precisions = 1.0 / variances.clamp_min(MIN_VARIANCE)
    if mask is not None:
        precisions = precisions * mask.unsqueeze(-1)
    variance = 1.0 / precisions.sum(dim=-2)
    return variance * (precisions * means).sum(dim=-2), variance


def standard_normal_kl(mean: Tensor, variance: Tensor) -> Tensor:
    """``KL(N(mean, diag(variance)) || N(0, I))`` summed over the last dimension:
    ``1/2 sum (variance + mean^2 - 1 - log variance)``."""
    return 0.5 * (variance + mean**2 - 1.0 - torch.log(variance)).sum(dim=-1)


class ContextEncoder(nn.Module):
    """``Psi``: transitions ``[..., N, context_dim] -> factors (mu_n, sigma_n^2)`` and their
    product ``q(z | c)``."""

    def __init__(self, context_dim: int, z_dim: int, hidden: Sequence[int] = (200, 200, 200)
                 ) -> None:
        super().__init__()
        self.z_dim = check_positive_int("z_dim", z_dim)
        self.net = relu_mlp(context_dim, hidden, 2 * z_dim)

    def factors(self, context: Tensor) -> tuple[Tensor, Tensor]:
        mean, raw = self.net(context).chunk(2, dim=-1)
        return mean, F.softplus(raw)

    def forward(self, context: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """The posterior's ``(mean, variance)`` ``[..., z_dim]``."""
        return gaussian_product(*self.factors(context), mask)
