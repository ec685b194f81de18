"""The MAML-RL inner step (Finn et al. 2017, eq. 4 with the policy-gradient loss): one
vanilla policy-gradient step ``theta' = theta + alpha * grad_theta J_hat(theta)`` on a batch
of trajectories sampled from ``pi_theta``, as a pure function of the parameters.

Two surrogate objectives with the same value of the first gradient (REINFORCE with
causality, ``sum_t grad log pi(a_t|s_t) gamma^t (G_t - b_t)``) and different second
derivatives:

- ``"dice"`` (Foerster et al. 2018): ``sum_t box(sum_{t'<=t} log pi_{t'}) gamma^t r_t +
  sum_t (1 - box(log pi_t)) gamma^t b_t`` with the magic box ``box(x) = exp(x - x.detach())``
  (value 1, derivative ``box(x) dx``). Its value is the discounted return; differentiated
  twice it also carries the ``grad log p grad log p^T R`` term, i.e. how the sampled
  trajectories depend on the pre-update parameters, so the meta-gradient through ``theta'``
  is unbiased (the Hessian estimate is unbiased).
- ``"naive"``: ``sum_t log pi_t gamma^t (G_t - b_t)`` with the returns held constant, the
  loss of the public MAML-RL implementations. Its Hessian misses that term, so the
  meta-gradient is biased (Rothfuss et al. 2019, ProMP section 4).

Both are averaged over episodes (and tasks). Which meta-objective each estimator is unbiased
for (Rothfuss et al. 2019 name them formulations II and I; the tests check both exactly):

- MAML's ``J(theta + alpha grad J(theta))``: the ``"dice"`` step, whose Jacobian
  ``d theta' / d theta`` is in expectation ``I + alpha Hessian J`` (the naive one misses the
  ``grad log p grad log p^T R`` part);
- E-MAML's ``E_tau[J(theta'(tau))]`` (Stadie et al. 2018): the sample-path derivative of
  the update (the ``"naive"`` step) *plus* the credit of the pre-update episodes in the
  post-update objective, ``dice_objective(..., credit_log_probs=sum of the pre-update
  log-probabilities)``, which adds ``J(theta') grad log p(tau | theta)``. Combining the DiCE
  step with that credit counts the score term twice (biased); the naive step without the
  credit (the public implementations) misses it (biased).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import Tensor

from metalab.rl.episodes import discounted_returns
from metalab.validation import check_choice, check_real

ESTIMATORS = ("dice", "naive")


def magic_box(x: Tensor) -> Tensor:
    """DiCE's magic box: ``exp(x - stop_gradient(x))`` (value 1, gradient ``box(x) dx``)."""
    return torch.exp(x - x.detach())


def discounts(rewards: Tensor, gamma: float) -> Tensor:
    """``gamma^t`` along the last (time) dimension, shaped like one row of ``rewards``."""
    steps = torch.arange(rewards.shape[-1], dtype=rewards.dtype, device=rewards.device)
    return gamma**steps


def check_like(name: str, tensor: Tensor, rewards: Tensor) -> None:
    if tensor.shape != rewards.shape:
        raise ValueError(f"{name} must have the shape of rewards {tuple(rewards.shape)}, "
                         f"got {tuple(tensor.shape)}")


def dice_objective(log_probs: Tensor, rewards: Tensor, masks: Tensor, gamma: float,
                   baselines: Tensor | None = None,
                   credit_log_probs: Tensor | None = None) -> Tensor:
    """The DiCE surrogate averaged over episodes; ``[..., H]`` inputs, a scalar out.

    ``credit_log_probs`` (shape ``rewards.shape[:-1]`` or broadcastable to it) is added to
    every cumulative log-probability (see the module docstring).
    """
    gamma = check_real("gamma", gamma)
    check_like("log_probs", log_probs, rewards)
    check_like("masks", masks, rewards)
    weights = discounts(rewards, gamma) * masks
    cumulative = torch.cumsum(log_probs * masks, dim=-1)
    if credit_log_probs is not None:
        cumulative = cumulative + credit_log_probs.unsqueeze(-1)
    objective = (magic_box(cumulative) * weights * rewards).sum(dim=-1)
    if baselines is not None:
        check_like("baselines", baselines, rewards)
        objective = objective + ((1 - magic_box(log_probs)) * weights
                                 * baselines.detach()).sum(dim=-1)
    return objective.mean()


def naive_objective(log_probs: Tensor, rewards: Tensor, masks: Tensor, gamma: float,
                    baselines: Tensor | None = None) -> Tensor:
    """``mean over episodes of sum_t log pi_t gamma^t (G_t - b_t)`` (returns constant)."""
    gamma = check_real("gamma", gamma)
    check_like("log_probs", log_probs, rewards)
    advantages = discounted_returns(rewards, masks, gamma)
    if baselines is not None:
        check_like("baselines", baselines, rewards)
        advantages = advantages - baselines
    weights = discounts(rewards, gamma) * masks * advantages.detach()
    return (log_probs * weights).sum(dim=-1).mean()


def policy_gradient_objective(log_probs: Tensor, rewards: Tensor, masks: Tensor, gamma: float,
                              baselines: Tensor | None = None,
                              estimator: str = "dice") -> Tensor:
    """The surrogate named by ``estimator`` (``"dice"`` or ``"naive"``)."""
    check_choice("estimator", estimator, ESTIMATORS)
    if estimator == "dice":
        return dice_objective(log_probs, rewards, masks, gamma, baselines)
    return naive_objective(log_probs, rewards, masks, gamma, baselines)


def exploration_credit(pre_update_log_probs: Tensor, post_update_returns: Tensor) -> Tensor:
    """E-MAML's extra term (Stadie et al. 2018): credit each task's pre-update (exploration)
    episodes for the return reached after adapting on them.

    ``pre_update_log_probs [T]``: the sum of the log-probabilities of all of task ``i``'s
    pre-update actions, a function of ``theta``; ``post_update_returns [T]``: its post-update
    return estimate ``R_i`` (held constant). The value is 0 and the gradient
    ``mean_i (R_i - b_i) grad log p(tau_i | theta)``, with the baseline ``b_i`` the mean of
    the *other* tasks' returns (independent of ``tau_i``, so it adds no bias; 0 for one
    task). Added to the post-update objective of a naive (sample-path) inner step it makes
    the meta-gradient unbiased for ``E_tau[J(theta'(tau))]`` (see the module docstring).
    """
    if pre_update_log_probs.dim() != 1 or pre_update_log_probs.shape != post_update_returns.shape:
        raise ValueError(f"pre_update_log_probs and post_update_returns must both have shape "
                         f"[tasks], got {tuple(pre_update_log_probs.shape)} and "
                         f"{tuple(post_update_returns.shape)}")
    returns = post_update_returns.detach()
    tasks = returns.shape[0]
    baseline = ((returns.sum() - returns) / (tasks - 1) if tasks > 1
                else torch.zeros_like(returns))
    return ((magic_box(pre_update_log_probs) - 1) * (returns - baseline)).mean()


def inner_policy_gradient_step(log_probs_of: Callable[[dict[str, Tensor]], Tensor],
                               params: Mapping[str, Tensor], rewards: Tensor, masks: Tensor, *,
                               step_size: float, gamma: float,
                               baselines: Tensor | None = None, estimator: str = "dice",
                               first_order: bool = False) -> dict[str, Tensor]:
    """``theta' = theta + step_size * grad_theta J_hat(theta)``, ``J_hat`` the surrogate of
    ``estimator`` on trajectories whose log-probabilities at ``theta`` are
    ``log_probs_of(theta)`` (shape of ``rewards``). With ``first_order=False`` the step keeps
    the graph, so ``theta'`` is differentiable in ``theta`` (the meta-gradient)."""
    step_size = check_real("step_size", step_size)
    params = dict(params)
    objective = policy_gradient_objective(log_probs_of(params), rewards, masks, gamma,
                                          baselines, estimator)
    names = [name for name, value in params.items() if value.requires_grad]
    if not names:
        raise ValueError("params must contain at least one tensor that requires grad")
    grads = torch.autograd.grad(objective, [params[name] for name in names],
                                create_graph=not first_order)
    updated = dict(params)
    for name, grad in zip(names, grads, strict=True):
        updated[name] = params[name] + step_size * grad
    return updated
