"""The linear feature baseline of the MAML / rllab / garage code (``LinearFeatureBaseline``).

Features of a step at time ``t`` with observation ``o`` (clipped to [-10, 10]):
``[o, o^2, t/100, (t/100)^2, (t/100)^3, 1]``. The coefficients solve the regularised least
squares ``(X^T X + reg I) c = X^T G`` over the (unmasked) steps of one task's episodes, with
``G`` the discounted returns-to-go; the baseline is ``b = X c``. Fitted per task, no gradient,
in float64; where the system is singular the fit retries with ten times ``reg`` (up to five
times), as garage does.
"""

from __future__ import annotations

import torch
from torch import Tensor

from metalab.validation import check_real


def linear_features(observations: Tensor) -> Tensor:
    """``[..., H, obs_dim] -> [..., H, 2 obs_dim + 4]``: the garage features above."""
    if observations.dim() < 2:
        raise ValueError(f"observations must have shape [..., horizon, obs_dim], "
                         f"got {tuple(observations.shape)}")
    clipped = observations.clamp(-10.0, 10.0)
    horizon = observations.shape[-2]
    time = torch.arange(horizon, dtype=observations.dtype, device=observations.device) / 100.0
    time = time.reshape(horizon, 1).expand(*observations.shape[:-1], 1)
    return torch.cat([clipped, clipped**2, time, time**2, time**3, torch.ones_like(time)], -1)


def fit_linear_baseline(features: Tensor, returns: Tensor, masks: Tensor,
                        reg: float = 1e-5) -> Tensor:
    """Per-task coefficients ``[T, F]`` from ``features [T, E, H, F]``, ``returns`` and
    ``masks [T, E, H]`` (masked steps are left out of the fit)."""
    reg = check_real("reg", reg)
    if features.dim() != 4 or tuple(features.shape[:3]) != tuple(returns.shape):
        raise ValueError(f"features must have shape {tuple(returns.shape)} + (F,), "
                         f"got {tuple(features.shape)}")
    if masks.shape != returns.shape:
        raise ValueError(f"masks must have the shape of returns {tuple(returns.shape)}, "
                         f"got {tuple(masks.shape)}")
    x = (features * masks.unsqueeze(-1)).flatten(1, 2).detach().double()
    y = (returns * masks).flatten(1, 2).detach().double()
    gram = x.transpose(1, 2) @ x
    eye = torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)
    rhs = x.transpose(1, 2) @ y.unsqueeze(-1)
    for _ in range(5):  # as garage: a singular system retries with ten times the reg
        coefficients, info = torch.linalg.solve_ex(gram + reg * eye, rhs)
        if bool((info == 0).all()) and bool(torch.isfinite(coefficients).all()):
            break
        reg *= 10.0
    return coefficients.squeeze(-1).to(features.dtype)


def linear_baseline_values(observations: Tensor, returns: Tensor, masks: Tensor,
                           reg: float = 1e-5) -> Tensor:
    """Fit the baseline on each task's episodes and return its values ``[T, E, H]`` (zero on
    masked steps)."""
    features = linear_features(observations)
    coefficients = fit_linear_baseline(features, returns, masks, reg)
    values = torch.einsum("tehf,tf->teh", features.detach(), coefficients)
    return values * masks
