"""The PPO outer step (Schulman et al. 2017, "Proximal Policy Optimization Algorithms").

The clipped surrogate (eq. 7), averaged over the valid steps of a minibatch:

    L_clip(theta) = mean_t min(rho_t A_t, clip(rho_t, 1 - eps, 1 + eps) A_t),
    rho_t = pi_theta(a_t | h_t) / pi_old(a_t | h_t) = exp(log pi_theta - log pi_old).

Taking the minimum removes the incentive to move ``rho_t`` outside ``[1 - eps, 1 + eps]``
in the direction the advantage favours (the gradient of a step whose ratio is already
clipped on that side is zero), so several epochs of minibatch gradient ascent on the same
data stay near the sampling policy. `ppo_options` checks a method's PPO settings;
`minibatch_rows` splits rows (whole trials or episodes) into shuffled minibatches.
"""

from __future__ import annotations

import torch
from torch import Tensor

from metalab.validation import check_positive_int, check_real


def clipped_surrogate(log_probs: Tensor, old_log_probs: Tensor, advantages: Tensor,
                      masks: Tensor, clip: float) -> Tensor:
    """``L_clip`` above: the mean over the steps where ``masks`` is 1 (a scalar)."""
    clip = check_real("clip", clip, inclusive=False)
    for name, value in (("old_log_probs", old_log_probs), ("advantages", advantages),
                        ("masks", masks)):
        if value.shape != log_probs.shape:
            raise ValueError(f"{name} must have the shape of log_probs "
                             f"{tuple(log_probs.shape)}, got {tuple(value.shape)}")
    ratio = torch.exp(log_probs - old_log_probs.detach())
    advantages = advantages.detach()
    clipped = ratio.clamp(1.0 - clip, 1.0 + clip)
    objective = torch.minimum(ratio * advantages, clipped * advantages)
    return (objective * masks).sum() / masks.sum().clamp_min(1.0)


def ppo_options(clip: float, epochs: int, minibatches: int, lr: float) -> dict:
    """A method's PPO settings, checked: clip range ``eps``, epochs over the data,
    minibatches per epoch, Adam's learning rate."""
    return {"clip": check_real("ppo_clip", clip, inclusive=False),
            "epochs": check_positive_int("ppo_epochs", epochs),
            "minibatches": check_positive_int("ppo_minibatches", minibatches),
            "lr": check_real("ppo_lr", lr, inclusive=False)}


def minibatch_rows(rows: int, minibatches: int, generator: torch.Generator | None = None,
                   device: torch.device | str | None = None) -> list[Tensor]:
    """A random permutation of ``range(rows)`` cut into ``min(minibatches, rows)`` nearly
    equal index tensors on ``device``. The permutation is drawn on the generator's device
    (a CPU generator keeps a run reproducible whatever device the data is on)."""
    rows = check_positive_int("rows", rows)
    minibatches = min(check_positive_int("minibatches", minibatches), rows)
    source = generator.device if generator is not None else device
    order = torch.randperm(rows, generator=generator, device=source)
    return list(order.to(device).chunk(minibatches))
