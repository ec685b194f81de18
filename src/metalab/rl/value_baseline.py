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

Under ``torchrun`` each process holds its own shard of the tasks' episodes. In training
mode under an initialised process group of several processes (as `nn.SyncBatchNorm`
synchronises in training mode only) the fit pools them: the standardisation statistics,
the count ``N`` of valid steps and every step's gradient of ``sum_{t valid} (V - G)^2 / N``
are summed over processes, so every process takes the same Adam steps, those of one
process fitting on all processes' episodes, and the networks stay identical. In eval mode
(meta-test, which rank 0 runs alone while validating) the fit stays local.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import Tensor, nn

from metalab.rl.baselines import linear_features
from metalab.validation import check_choice, check_positive_int, check_real

BASELINES = ("linear", "mlp")


def standardize(rows: Tensor) -> tuple[Tensor, Tensor]:
    """``(mean, std)`` of ``rows`` over dim 0 (the std at least 1e-8)."""
    return rows.mean(0), rows.std(0, unbiased=False).clamp_min(1e-8)


def several_processes() -> bool:
    """Whether a process group of more than one process is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def sum_over_processes(tensors: list[Tensor]) -> None:
    """Replace each of ``tensors`` by its sum over the processes (one flat all-reduce)."""
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat)
    offset = 0
    for t in tensors:
        t.copy_(flat[offset: offset + t.numel()].view_as(t))
        offset += t.numel()


def pooled_standardize(rows: Tensor, count: Tensor) -> tuple[Tensor, Tensor]:
    """`standardize` over the rows of every process (``count`` of them in all), two-pass:
    ``mean = sum rows / N``, ``std = sqrt(sum (rows - mean)^2 / N)``."""
    total = rows.sum(0)
    sum_over_processes([total])
    mean = total / count
    squares = (rows - mean).pow(2).sum(0)
    sum_over_processes([squares])
    return mean, (squares / count).sqrt().clamp_min(1e-8)


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
        on their features (all ``[..., F]`` / ``[...]``), pooled over processes in training
        mode (module docstring); returns the last loss. Leaves no ``.grad`` behind (the
        trainer's optimizer holds these parameters too)."""
        valid = masks.detach() > 0
        x, y = self.inputs(features)[valid], returns.detach().to(self.dtype)[valid]
        pooled = self.training and several_processes()
        count = y.new_tensor(float(y.numel()))
        if pooled:
            sum_over_processes([count])
        if count.item() == 0:  # every process sees the same count: all raise together
            raise ValueError("masks must leave at least one valid step to fit the baseline on")
        if pooled:
            (x_mean, x_std), (y_mean, y_std) = (pooled_standardize(x, count),
                                                pooled_standardize(y, count))
        else:
            (x_mean, x_std), (y_mean, y_std) = standardize(x), standardize(y)
        self.statistics = (x_mean, x_std, y_mean, y_std)
        target = (y - y_mean) / y_std
        with torch.enable_grad():
            for _ in range(self.steps):
                self.optimizer.zero_grad(set_to_none=True)
                prediction = self.network((x - x_mean) / x_std).squeeze(-1)
                squared = (prediction - target).pow(2)
                loss = squared.sum() / count if pooled else squared.mean()
                loss.backward()
                if pooled:  # each process's share of the pooled mean, summed
                    loss = loss.detach().clone()
                    sum_over_processes([*(p.grad for p in self.network.parameters()), loss])
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
