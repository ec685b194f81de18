"""A learned value-function baseline, the option beside the linear feature baseline
(`linear_baseline_values`): an MLP ``V_phi`` on the same garage features ``x_t`` of
`linear_features` (``[o, o^2, t/100, (t/100)^2, (t/100)^3, 1]``, so time is an input),
regressed on the discounted returns-to-go ``G_t`` of the valid (unmasked) steps,

    min_phi  (1 / #valid) sum_{t valid} (V_phi(x_t) - G_t)^2,

by ``steps`` Adam steps per fit, warm-started from the previous fit so that it learns
across meta-iterations (one network for all tasks, where the linear fit is per task).
Inputs and targets are standardised with the valid steps' mean and standard deviation of
the batch being fitted (as garage's ``GaussianMLPBaseline`` normalises both), so the
network sees O(1) numbers whatever the scale of the return. The values are the fitted
network's on the same steps, without gradient (no gradient of the policy objective
reaches ``phi``, nor ``phi`` the policy's), zero on masked steps. The network's
parameters are module parameters and its Adam state is the module's extra state, so a
learner that holds it checkpoints and resumes it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from metalab.rl.baselines import linear_features
from metalab.validation import check_choice, check_positive_int, check_real

BASELINES = ("linear", "mlp")


def standardize(rows: Tensor) -> tuple[Tensor, Tensor]:
    """``(mean, std)`` of ``rows`` over dim 0 (the std at least 1e-8)."""
    return rows.mean(0), rows.std(0, unbiased=False).clamp_min(1e-8)


class ValueFunctionBaseline(nn.Module):
    """``V_phi``: tanh MLP ``2 obs_dim + 4 -> hidden -> 1`` fitted as the module docstring.

    Called as `linear_baseline_values` without its ridge: ``baseline(observations
    [T, E, H, obs_dim], returns [T, E, H], masks [T, E, H]) -> values [T, E, H]``.
    """

    def __init__(self, observation_dim: int, hidden: Sequence[int] = (32, 32),
                 steps: int = 20, lr: float = 1e-2) -> None:
        super().__init__()
        self.observation_dim = check_positive_int("observation_dim", observation_dim)
        self.steps = check_positive_int("baseline_steps", steps)
        self.lr = check_real("baseline_lr", lr, inclusive=False)
        if isinstance(hidden, int) or not isinstance(hidden, Sequence):
            raise ValueError(f"baseline_hidden must be a list of layer widths, got {hidden!r}")
        width, layers = 2 * self.observation_dim + 4, []
        for index, size in enumerate(hidden):
            size = check_positive_int(f"baseline_hidden[{index}]", size)
            layers += [nn.Linear(width, size), nn.Tanh()]
            width = size
        self.network = nn.Sequential(*layers, nn.Linear(width, 1))
        self.optimizer = torch.optim.Adam(self.network.parameters(), lr=self.lr)
        self.statistics: tuple[Tensor, Tensor, Tensor, Tensor] | None = None  # of the last fit

    # -- Adam's moments are state a resumed run needs ---------------------------------------
    def get_extra_state(self) -> dict:
        return {"optimizer": self.optimizer.state_dict()}

    def set_extra_state(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])

    def fit(self, features: Tensor, returns: Tensor, masks: Tensor) -> float:
        """``steps`` Adam steps on the standardised regression of the valid steps' returns
        on their features (all ``[..., F]`` / ``[...]``); returns the last loss. Leaves no
        ``.grad`` behind (the trainer's optimizer holds these parameters too)."""
        valid = masks.detach() > 0
        x, y = self.inputs(features)[valid], returns.detach().to(self.dtype)[valid]
        if y.numel() == 0:
            raise ValueError("masks must leave at least one valid step to fit the baseline on")
        (x_mean, x_std), (y_mean, y_std) = standardize(x), standardize(y)
        self.statistics = (x_mean, x_std, y_mean, y_std)
        target = (y - y_mean) / y_std
        with torch.enable_grad():
            for _ in range(self.steps):
                self.optimizer.zero_grad(set_to_none=True)
                prediction = self.network((x - x_mean) / x_std).squeeze(-1)
                loss = (prediction - target).pow(2).mean()
                loss.backward()
                self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.item()

    @property
    def dtype(self) -> torch.dtype:
        return self.network[-1].weight.dtype

    def inputs(self, features: Tensor) -> Tensor:
        return features.detach().to(self.dtype)

    def predict(self, features: Tensor) -> Tensor:
        """``V_phi`` on ``features`` in the scale of the last fit's returns (no gradient)."""
        if self.statistics is None:
            raise RuntimeError("the value baseline predicts after a fit: call it on a batch")
        x_mean, x_std, y_mean, y_std = self.statistics
        with torch.no_grad():
            return self.network((self.inputs(features) - x_mean) / x_std).squeeze(-1) \
                * y_std + y_mean

    def forward(self, observations: Tensor, returns: Tensor, masks: Tensor) -> Tensor:
        """Fit on the valid steps, then the values ``[T, E, H]`` there (zero where masked)."""
        if observations.shape[:-1] != returns.shape or masks.shape != returns.shape:
            raise ValueError(f"observations [..., obs_dim], returns and masks must share "
                             f"their leading shape, got {tuple(observations.shape)}, "
                             f"{tuple(returns.shape)} and {tuple(masks.shape)}")
        features = linear_features(observations.detach())
        self.fit(features, returns, masks)
        return self.predict(features).to(returns.dtype) * masks


def build_baseline(kind: str, observation_dim: int | None, hidden: Sequence[int],
                   steps: int, lr: float) -> ValueFunctionBaseline | None:
    """The learner's ``baseline`` option: ``None`` for ``"linear"`` (the per-task linear
    fit), a `ValueFunctionBaseline` for ``"mlp"``."""
    if check_choice("baseline", kind, BASELINES) == "linear":
        return None
    if observation_dim is None:
        raise ValueError("baseline 'mlp' needs a policy with observation_dim")
    return ValueFunctionBaseline(observation_dim, hidden, steps, lr)
