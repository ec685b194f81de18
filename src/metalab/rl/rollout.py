"""Rollout collection on the batched navigation environment: (policy, parameters, goals) ->
an :class:`EpisodeBatch` of E episodes per task, all tasks and episodes stepped at once.

Actions are sampled without gradient (no reparametrization is needed by the score-function
estimators); the batch's ``log_probs`` are then computed in one differentiable pass, so
they are functions of ``params`` (what the inner policy-gradient step differentiates).
``params`` are shared by all tasks, or, with ``per_task=True``, carry a leading task
dimension (adapted parameters, one set per task; evaluated with ``torch.func.vmap``).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

from metalab.rl.episodes import EpisodeBatch
from metalab.rl.navigation import PointNavigation
from metalab.rl.policies import gaussian_log_prob, standard_normal_like
from metalab.validation import check_positive_int


def policy_outputs(policy: nn.Module, params: Mapping[str, Tensor], observations: Tensor,
                   per_task: bool) -> tuple[Tensor, Tensor]:
    """``(mean, log_std)`` for ``observations [T, ...]``."""
    params = dict(params)
    if not per_task:
        return functional_call(policy, params, (observations,))
    return vmap(lambda p, o: functional_call(policy, p, (o,)))(params, observations)


def check_per_task(params: Mapping[str, Tensor], tasks: int) -> None:
    for name, value in params.items():
        if value.dim() == 0 or value.shape[0] != tasks:
            raise ValueError(f"params[{name!r}] must have a leading task dimension of {tasks} "
                             f"when per_task=True, got shape {tuple(value.shape)}")


def step_running(env: PointNavigation, positions: Tensor, alive: Tensor, mean: Tensor,
                 log_std: Tensor, goals: Tensor, generator: torch.Generator | None,
                 steps: dict[str, list[Tensor]]) -> tuple[Tensor, Tensor, Tensor]:
    """One step of every episode: draw ``action ~ N(mean, exp(log_std)^2)``, step ``env``,
    append the observation, action, reward (zero once an episode has ended) and mask to
    ``steps``; an ended episode stays where it stopped. Returns ``(positions, alive,
    action, reward)`` after the step."""
    action = mean + torch.exp(log_std) * standard_normal_like(mean, generator)
    moved, reward, done = env.step(positions, action, goals)
    reward = reward * alive
    for key, value in (("observations", positions), ("actions", action),
                       ("rewards", reward), ("masks", alive)):
        steps[key].append(value)
    keep = alive.unsqueeze(-1)
    positions = keep * moved + (1 - keep) * positions
    return positions, alive * (~done).to(alive.dtype), action, reward


def collect_episodes(env: PointNavigation, policy: nn.Module, params: Mapping[str, Tensor],
                     goals: Tensor, episodes_per_task: int, *,
                     generator: torch.Generator | None = None, per_task: bool = False,
                     task_ids: Tensor | None = None) -> EpisodeBatch:
    """Run ``episodes_per_task`` episodes of ``env.horizon`` steps on every goal."""
    env.check_goals(goals)
    episodes = check_positive_int("episodes_per_task", episodes_per_task)
    if getattr(policy, "action_dim", env.action_dim) != env.action_dim:
        raise ValueError(f"policy.action_dim must equal the environment's action dimension "
                         f"{env.action_dim}, got {policy.action_dim}")
    if per_task:
        check_per_task(params, goals.shape[0])
    positions = env.initial_positions(goals, episodes)
    alive = positions.new_ones(positions.shape[:2], dtype=goals.dtype)
    steps: dict[str, list[Tensor]] = {"observations": [], "actions": [], "rewards": [],
                                      "masks": []}
    with torch.no_grad():
        for _ in range(env.horizon):
            mean, log_std = policy_outputs(policy, params, positions, per_task)
            positions, alive, _, _ = step_running(env, positions, alive, mean, log_std, goals,
                                                  generator, steps)
    observations_t = torch.stack(steps["observations"], dim=2)
    actions_t = torch.stack(steps["actions"], dim=2)
    mean, log_std = policy_outputs(policy, params, observations_t, per_task)
    log_probs = gaussian_log_prob(actions_t, mean, log_std)
    if task_ids is None:
        task_ids = torch.arange(goals.shape[0], device=goals.device)
    return EpisodeBatch(observations_t, actions_t, torch.stack(steps["rewards"], dim=2),
                        log_probs, torch.stack(steps["masks"], dim=2), task_ids)
