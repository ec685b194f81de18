"""The MAML-RL inner step of a policy on an episode batch, one task at a time: fit the linear
baseline on each task's episodes (or take a learned baseline's values), take one
policy-gradient step from the shared parameters (:func:`inner_policy_gradient_step`) and stack
the adapted parameters along a leading task dimension, ready for
``collect_episodes(..., per_task=True)``."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from metalab.rl.baselines import linear_baseline_values
from metalab.rl.episodes import EpisodeBatch, discounted_returns
from metalab.rl.policies import policy_log_probs
from metalab.rl.policy_gradient import inner_policy_gradient_step


def adapt_per_task(policy: nn.Module, params: Mapping[str, Tensor], batch: EpisodeBatch, *,
                   step_size: float, gamma: float, estimator: str = "dice",
                   baseline_reg: float = 1e-5, first_order: bool = False,
                   per_task: bool = False, baselines: Tensor | None = None
                   ) -> dict[str, Tensor]:
    """``theta'_i = theta + step_size * grad J_hat_i(theta)`` for every task ``i`` of
    ``batch`` (sampled at ``params``), stacked: each value gains a leading task dimension.
    With ``per_task=True`` ``params`` already has one (task ``i`` starts from its own
    parameters: the second and later steps of a multi-step adaptation). ``baselines
    [T, E, H]``: values fitted beforehand (a learned baseline's); ``None``: the linear
    baseline fitted here with ridge ``baseline_reg``."""
    if baselines is None:
        returns = discounted_returns(batch.rewards, batch.masks, gamma)
        baselines = linear_baseline_values(batch.observations, returns, batch.masks,
                                           baseline_reg)
    adapted = []
    for task in range(batch.num_tasks):
        observations, actions = batch.observations[task], batch.actions[task]

        def log_probs_of(p, observations=observations, actions=actions):
            return policy_log_probs(policy, p, observations, actions)

        start = {n: v[task] for n, v in params.items()} if per_task else params
        adapted.append(inner_policy_gradient_step(
            log_probs_of, start, batch.rewards[task], batch.masks[task], step_size=step_size,
            gamma=gamma, baselines=baselines[task], estimator=estimator,
            first_order=first_order))
    return {name: torch.stack([p[name] for p in adapted]) for name in adapted[0]}
