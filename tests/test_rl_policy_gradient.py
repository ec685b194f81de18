"""The DiCE and naive policy-gradient objectives and the MAML-RL inner step, against hand
computations and exact expectations on a two-action softmax bandit (one-step episodes).

On the bandit with logits ``theta`` and rewards ``r``: ``p = softmax(theta)``, the exact
expected return ``J(theta) = sum_a p_a r_a``. A pre-update batch of N = 2 episodes has 4
outcomes ``(a1, a2)`` with probability ``p_a1 p_a2``, so every expectation over the sampled
trajectories is an exact finite sum.
"""

import itertools

import pytest
import torch

from metalab.rl import (
    dice_objective,
    inner_policy_gradient_step,
    magic_box,
    naive_objective,
    policy_gradient_objective,
)

REWARD = torch.tensor([1.0, 0.2], dtype=torch.float64)
THETA = torch.tensor([0.3, -0.2], dtype=torch.float64)
ALPHA = 0.7
OUTCOMES = list(itertools.product([0, 1], repeat=2))


def probabilities(theta):
    return torch.exp(theta) / torch.exp(theta).sum()


def expected_return(theta):
    return (probabilities(theta) * REWARD).sum()


def bandit_log_probs(actions):
    """``log_probs_of(params)`` for one-step episodes with these actions, shape [E, 1]."""
    index = torch.tensor(actions)
    return lambda params: torch.log_softmax(params["theta"], -1)[index].unsqueeze(-1)


def bandit_rewards(actions):
    return REWARD[torch.tensor(actions)].unsqueeze(-1)


def test_dice_value_is_the_return_and_its_gradient_is_reinforce_by_hand():
    theta = THETA.clone().requires_grad_()
    actions = [0, 1, 1]
    log_probs = bandit_log_probs(actions)({"theta": theta})
    rewards, masks = bandit_rewards(actions), torch.ones(3, 1, dtype=torch.float64)
    objective = dice_objective(log_probs, rewards, masks, gamma=0.9)
    assert torch.isclose(objective, rewards.mean())
    (gradient,) = torch.autograd.grad(objective, theta)
    # REINFORCE: grad log softmax(theta)_a = e_a - p, averaged with the rewards
    p = probabilities(THETA)
    by_hand = sum(REWARD[a] * (torch.eye(2, dtype=torch.float64)[a] - p) for a in actions) / 3
    assert torch.allclose(gradient, by_hand)


def test_dice_baseline_term_keeps_the_value_and_subtracts_the_baseline():
    theta = THETA.clone().requires_grad_()
    actions = [0, 1, 1]
    baselines = torch.tensor([[0.4], [-0.3], [0.5]], dtype=torch.float64)
    log_probs = bandit_log_probs(actions)({"theta": theta})
    rewards, masks = bandit_rewards(actions), torch.ones(3, 1, dtype=torch.float64)
    objective = dice_objective(log_probs, rewards, masks, 0.9, baselines)
    assert torch.isclose(objective, rewards.mean())
    (gradient,) = torch.autograd.grad(objective, theta)
    p = probabilities(THETA)
    by_hand = sum((REWARD[a] - b) * (torch.eye(2, dtype=torch.float64)[a] - p)
                  for a, b in zip(actions, baselines[:, 0], strict=True)) / 3
    assert torch.allclose(gradient, by_hand)


def test_dice_and_naive_have_the_same_first_gradient_on_multi_step_episodes():
    generator = torch.Generator().manual_seed(0)
    weights = torch.randn(5, 4, generator=generator, dtype=torch.float64, requires_grad=True)
    features = torch.randn(3, 4, 5, generator=generator, dtype=torch.float64)
    log_probs = torch.nn.functional.logsigmoid(features @ weights).sum(-1)  # [3, 4]
    rewards = torch.randn(3, 4, generator=generator, dtype=torch.float64)
    masks = torch.tensor([[1.0, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0]], dtype=torch.float64)
    baselines = torch.randn(3, 4, generator=generator, dtype=torch.float64) * masks
    dice = torch.autograd.grad(dice_objective(log_probs, rewards, masks, 0.8, baselines),
                               weights, retain_graph=True)[0]
    naive = torch.autograd.grad(naive_objective(log_probs, rewards, masks, 0.8, baselines),
                                weights)[0]
    assert torch.allclose(dice, naive)
    # and the DiCE value is the discounted return of the unmasked steps
    value = dice_objective(log_probs, rewards, masks, 0.8, baselines)
    discounted = (rewards * masks * 0.8 ** torch.arange(4, dtype=torch.float64)).sum(-1).mean()
    assert torch.isclose(value, discounted)


def expected_over_pre_update_batches(theta, term):
    """``sum over (a1, a2) of p_a1 p_a2 * term(actions)`` with the weights held constant."""
    p = probabilities(theta).detach()
    return sum(p[a1] * p[a2] * term([a1, a2]) for a1, a2 in OUTCOMES)


def inner_step(theta, actions, estimator):
    rewards, masks = bandit_rewards(actions), torch.ones(2, 1, dtype=torch.float64)
    return inner_policy_gradient_step(bandit_log_probs(actions), {"theta": theta}, rewards,
                                      masks, step_size=ALPHA, gamma=1.0,
                                      estimator=estimator)["theta"]


def expected_inner_jacobian(estimator):
    theta = THETA.clone().requires_grad_()

    def jacobian(actions):
        updated = inner_step(theta, actions, estimator)
        rows = [torch.autograd.grad(updated[i], theta, retain_graph=True)[0] for i in range(2)]
        return torch.stack(rows)

    return expected_over_pre_update_batches(THETA, jacobian)


def finite_difference_hessian(function, x, eps=1e-4):
    n = x.numel()
    hessian = torch.zeros(n, n, dtype=torch.float64)
    basis = torch.eye(n, dtype=torch.float64) * eps
    for i in range(n):
        for j in range(n):
            hessian[i, j] = (function(x + basis[i] + basis[j]) - function(x + basis[i] - basis[j])
                             - function(x - basis[i] + basis[j])
                             + function(x - basis[i] - basis[j])) / (4 * eps**2)
    return hessian


def test_dice_inner_step_has_an_unbiased_jacobian_and_the_naive_one_does_not():
    # E[d theta' / d theta] = I + alpha * Hessian of the exact expected return
    exact = torch.eye(2, dtype=torch.float64) + ALPHA * finite_difference_hessian(
        expected_return, THETA)
    assert torch.allclose(expected_inner_jacobian("dice"), exact, atol=1e-7)
    assert (expected_inner_jacobian("naive") - exact).abs().max() > 1e-2


def hand_updated_theta(theta, actions):
    """The inner step written out: theta + alpha * mean_i r_ai (e_ai - p)."""
    p = probabilities(theta)
    eye = torch.eye(2, dtype=torch.float64)
    return theta + ALPHA * sum(REWARD[a] * (eye[a] - p) for a in actions) / len(actions)


def exact_meta_objective(theta):
    """E over pre-update batches of the exact expected return after the update."""
    p = probabilities(theta)
    return sum(p[a1] * p[a2] * expected_return(hand_updated_theta(theta, [a1, a2]))
               for a1, a2 in OUTCOMES)


def estimated_meta_gradient(inner_estimator, credit_pre_update):
    """Exact expectation of a meta-gradient estimator over pre- and post-update samples
    (one post-update episode, outcome b with probability p_b(theta')): the post-update DiCE
    objective, crediting the pre-update log-probabilities or not."""
    theta = THETA.clone().requires_grad_()

    def over_post_update(actions):
        updated = inner_step(theta, actions, inner_estimator)
        pre_log_probs = bandit_log_probs(actions)({"theta": theta}).sum().reshape(1)
        credit = pre_log_probs if credit_pre_update else None
        post_p = probabilities(updated).detach()
        total = 0.0
        for b in (0, 1):
            log_probs = bandit_log_probs([b])({"theta": updated})
            rewards, masks = bandit_rewards([b]), torch.ones(1, 1, dtype=torch.float64)
            objective = dice_objective(log_probs, rewards, masks, 1.0, credit_log_probs=credit)
            total = total + post_p[b] * torch.autograd.grad(objective, theta,
                                                            retain_graph=True)[0]
        return total

    return expected_over_pre_update_batches(THETA, over_post_update)


def central_difference(function, x, eps=1e-6):
    basis = torch.eye(x.numel(), dtype=torch.float64) * eps
    return torch.stack([(function(x + basis[i]) - function(x - basis[i])) / (2 * eps)
                        for i in range(x.numel())])


def test_sampled_meta_gradient_with_pre_update_credit_is_unbiased_for_the_expected_return():
    # E-MAML / ProMP formulation I: grad of E_tau[J(theta'(tau))]. The sample-path derivative
    # of the update (the naive surrogate) plus the credit of the pre-update log-probabilities
    # is exact in expectation; the DiCE inner step would count the score term twice, and
    # leaving the credit out (the public implementations) is biased.
    finite = central_difference(exact_meta_objective, THETA)
    assert torch.allclose(estimated_meta_gradient("naive", True), finite, atol=1e-8)
    assert (estimated_meta_gradient("dice", True) - finite).abs().max() > 1e-3
    assert (estimated_meta_gradient("naive", False) - finite).abs().max() > 1e-3


def complete_batch_step(theta, estimator):
    """The inner step on the complete batch: one episode per action, its reward weighted by
    the action's probability (held constant), so the surrogate's value is E_pi[r]."""
    actions = [0, 1]
    weight = 2 * probabilities(theta).detach()
    rewards = (REWARD * weight).unsqueeze(-1)
    return inner_policy_gradient_step(bandit_log_probs(actions), {"theta": theta}, rewards,
                                      torch.ones(2, 1, dtype=torch.float64), step_size=ALPHA,
                                      gamma=1.0, estimator=estimator)["theta"]


def test_dice_meta_gradient_matches_finite_differences_of_the_post_update_return():
    # MAML's objective (ProMP formulation II): J(theta + alpha grad J(theta)). On the complete
    # batch the DiCE step is exactly theta + alpha grad J(theta) with its exact Jacobian.
    finite = central_difference(lambda t: expected_return(hand_updated_exact(t)), THETA)
    meta = {}
    for estimator in ("dice", "naive"):
        theta = THETA.clone().requires_grad_()
        updated = complete_batch_step(theta, estimator)
        meta[estimator] = torch.autograd.grad(expected_return(updated), theta)[0]
    assert torch.allclose(meta["dice"], finite, atol=1e-8)
    assert (meta["naive"] - finite).abs().max() > 1e-3


def hand_updated_exact(theta):
    """theta + alpha grad J(theta), grad J_k = p_k (r_k - J) (softmax)."""
    p = probabilities(theta)
    return theta + ALPHA * p * (REWARD - (p * REWARD).sum())


def test_magic_box_is_one_with_the_gradient_of_its_argument():
    x = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    box = magic_box(3 * x)
    (gradient,) = torch.autograd.grad(box, x, create_graph=True)
    (second,) = torch.autograd.grad(gradient, x)
    assert box.item() == 1.0 and gradient.item() == 3.0 and second.item() == 9.0


def test_objectives_and_the_inner_step_name_a_bad_argument():
    rewards, masks = torch.zeros(2, 3), torch.ones(2, 3)
    with pytest.raises(ValueError, match="estimator must be one of"):
        policy_gradient_objective(torch.zeros(2, 3), rewards, masks, 0.9, estimator="exact")
    with pytest.raises(ValueError, match="log_probs must have the shape of rewards"):
        dice_objective(torch.zeros(2, 2), rewards, masks, 0.9)
    with pytest.raises(ValueError, match="step_size"):
        inner_policy_gradient_step(lambda p: p["w"], {"w": torch.zeros(2, 3)}, rewards, masks,
                                   step_size=-1.0, gamma=0.9)
