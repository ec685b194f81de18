"""Episode batches and the two pure functions every policy gradient needs: discounted
returns-to-go and generalized advantage estimation (GAE, Schulman et al. 2016).

Time is the last dimension of ``rewards``, ``values`` and ``masks`` (``[..., H]``); a mask is
1 while the episode runs and 0 after it ended (rewards there are ignored).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from metalab.validation import check_real


@dataclass(frozen=True)
class EpisodeBatch:
    """E episodes of horizon H on each of T tasks.

    ``observations [T, E, H, obs_dim]`` (the observation each action was taken in),
    ``actions [T, E, H, act_dim]``, ``rewards [T, E, H]``, ``log_probs [T, E, H]`` (log-
    probabilities of the actions under the behaviour policy; a function of its parameters
    when the collector computed them with grad), ``masks [T, E, H]``, ``task_ids [T]``, and
    for environments that report success (Meta-World's ``info["success"]``) ``success
    [T, E]``: 1 for an episode in which the environment reported success at some step.
    """

    observations: Tensor
    actions: Tensor
    rewards: Tensor
    log_probs: Tensor
    masks: Tensor
    task_ids: Tensor
    success: Tensor | None = None

    def __post_init__(self) -> None:
        if self.rewards.dim() != 3:
            raise ValueError(f"rewards must have shape [tasks, episodes, horizon], "
                             f"got {tuple(self.rewards.shape)}")
        steps = tuple(self.rewards.shape)
        for name in ("log_probs", "masks"):
            if tuple(getattr(self, name).shape) != steps:
                raise ValueError(f"{name} must have the shape of rewards {steps}, "
                                 f"got {tuple(getattr(self, name).shape)}")
        for name in ("observations", "actions"):
            value = getattr(self, name)
            if value.dim() != 4 or tuple(value.shape[:3]) != steps:
                raise ValueError(f"{name} must have shape {steps} + (dim,), "
                                 f"got {tuple(value.shape)}")
        if tuple(self.task_ids.shape) != steps[:1]:
            raise ValueError(f"task_ids must have shape ({steps[0]},), "
                             f"got {tuple(self.task_ids.shape)}")
        if self.success is not None and tuple(self.success.shape) != steps[:2]:
            raise ValueError(f"success must have shape {steps[:2]} (tasks, episodes), "
                             f"got {tuple(self.success.shape)}")

    @property
    def num_tasks(self) -> int:
        return self.rewards.shape[0]

    def select_tasks(self, index: slice) -> EpisodeBatch:
        """The episodes of the tasks ``index`` (a slice)."""
        return EpisodeBatch(self.observations[index], self.actions[index],
                            self.rewards[index], self.log_probs[index], self.masks[index],
                            self.task_ids[index],
                            None if self.success is None else self.success[index])

    def total_returns(self) -> Tensor:
        """Undiscounted return of every episode, ``[T, E]``."""
        return (self.rewards * self.masks).sum(dim=-1)

    def mean_return(self) -> Tensor:
        """The undiscounted return averaged over all episodes (a scalar)."""
        return self.total_returns().mean()


def check_time_major(name: str, tensor: Tensor, like: Tensor) -> None:
    if tensor.shape != like.shape:
        raise ValueError(f"{name} must have the shape of rewards {tuple(like.shape)}, "
                         f"got {tuple(tensor.shape)}")


def discounted_returns(rewards: Tensor, masks: Tensor, gamma: float) -> Tensor:
    """Returns-to-go ``G_t = m_t (r_t + gamma G_{t+1})`` with ``G_H = 0``, same shape."""
    gamma = check_real("gamma", gamma)
    check_time_major("masks", masks, rewards)
    returns = torch.zeros_like(rewards)
    following = torch.zeros_like(rewards[..., 0])
    for t in range(rewards.shape[-1] - 1, -1, -1):
        following = masks[..., t] * (rewards[..., t] + gamma * following)
        returns[..., t] = following
    return returns


def gae(rewards: Tensor, values: Tensor, masks: Tensor, gamma: float, lam: float) -> Tensor:
    """Generalized advantage estimates (Schulman et al. 2016, eq. 16).

    ``delta_t = r_t + gamma m_{t+1} V_{t+1} - V_t`` (``V_H = 0``: no bootstrap after the
    horizon) and ``A_t = m_t (delta_t + gamma lam A_{t+1})``. ``lam = 1`` gives ``G_t - V_t``;
    ``lam = 0`` the one-step TD error.
    """
    gamma = check_real("gamma", gamma)
    lam = check_real("lam", lam)
    check_time_major("values", values, rewards)
    check_time_major("masks", masks, rewards)
    next_values = torch.cat([values[..., 1:] * masks[..., 1:],
                             torch.zeros_like(values[..., :1])], dim=-1)
    deltas = rewards + gamma * next_values - values
    advantages = torch.zeros_like(rewards)
    following = torch.zeros_like(rewards[..., 0])
    for t in range(rewards.shape[-1] - 1, -1, -1):
        following = masks[..., t] * (deltas[..., t] + gamma * lam * following)
        advantages[..., t] = following
    return advantages


def standardized_advantages(advantages: Tensor, masks: Tensor, dims: tuple[int, ...] | None = None,
                            eps: float = 1e-8) -> Tensor:
    """``(A - mean) / (std + eps)`` over the valid steps, zero on masked ones.

    The mean and the (biased) standard deviation pool the dimensions ``dims`` (every
    dimension when ``None``: one standardisation of the whole batch, as PPO does; ``(1, 2)``
    on ``[tasks, episodes, horizon]``: one per task, as MAML-RL's released code does).
    """
    if masks.shape != advantages.shape:
        raise ValueError(f"masks must have the shape of advantages {tuple(advantages.shape)}, "
                         f"got {tuple(masks.shape)}")
    count = masks.sum(dim=dims, keepdim=True).clamp_min(1.0)
    mean = (advantages * masks).sum(dim=dims, keepdim=True) / count
    variance = ((advantages - mean) ** 2 * masks).sum(dim=dims, keepdim=True) / count
    return (advantages - mean) / (variance.sqrt() + eps) * masks
