"""2-D navigation: reward, clipping and termination by hand; seeded tasks and rollouts."""

import math

import pytest
import torch

from metalab.rl import (
    GaussianMLPPolicy,
    PointNavigation,
    adapt_per_task,
    collect_episodes,
    discounted_returns,
    linear_baseline_values,
    policy_log_probs,
)


def test_step_clips_the_action_and_rewards_minus_the_distance_after_the_step():
    env = PointNavigation()
    goals = torch.tensor([[0.3, -0.2]], dtype=torch.float64)
    positions = torch.zeros(1, 1, 2, dtype=torch.float64)
    actions = torch.tensor([[[0.5, -0.05]]], dtype=torch.float64)
    moved, reward, done = env.step(positions, actions, goals)
    # clipped action (0.1, -0.05); offset to the goal (-0.2, 0.15): distance 0.25
    assert torch.allclose(moved, torch.tensor([[[0.1, -0.05]]], dtype=torch.float64))
    assert math.isclose(reward.item(), -0.25, rel_tol=1e-12)
    assert not done.item()


def test_episode_ends_within_the_tolerance_of_the_goal():
    env = PointNavigation()
    goals = torch.tensor([[0.3, -0.2]], dtype=torch.float64)
    positions = torch.tensor([[[0.2, -0.15], [0.2, -0.1]]], dtype=torch.float64)
    actions = torch.tensor([[[0.095, -0.055], [0.095, -0.055]]], dtype=torch.float64)
    _, _, done = env.step(positions, actions, goals)
    assert done.tolist() == [[True, False]]


def test_tasks_are_uniform_in_the_square_and_seeded():
    env = PointNavigation()
    goals = env.sample_tasks(1000, torch.Generator().manual_seed(3))
    assert goals.shape == (1000, 2) and goals.abs().max() <= 0.5 and goals.abs().max() > 0.45
    again = env.sample_tasks(1000, torch.Generator().manual_seed(3))
    assert torch.equal(goals, again)


def test_bad_inputs_name_the_argument():
    env = PointNavigation()
    with pytest.raises(ValueError, match="goals must be a tensor of shape"):
        env.step(torch.zeros(1, 1, 2), torch.zeros(1, 1, 2), torch.zeros(2))
    with pytest.raises(ValueError, match="actions must be a tensor whose last dimension is 2"):
        env.step(torch.zeros(1, 1, 2), torch.zeros(1, 1, 3), torch.zeros(1, 2))
    with pytest.raises(ValueError, match="n must be"):
        env.sample_tasks(0)
    policy = GaussianMLPPolicy(2, 3).double()
    with pytest.raises(ValueError, match="policy.action_dim"):
        collect_episodes(env, policy, dict(policy.named_parameters()), torch.zeros(1, 2,
                         dtype=torch.float64), 2)


def small_rollout(seed: int, per_task: bool = False):
    torch.manual_seed(0)
    env = PointNavigation(horizon=20)
    policy = GaussianMLPPolicy(2, 2, hidden=(16, 16), init_log_std=-1.0).double()
    params = dict(policy.named_parameters())
    goals = env.sample_tasks(3, torch.Generator().manual_seed(1))
    if per_task:
        params = {name: value.unsqueeze(0).expand(3, *value.shape) for name, value in
                  params.items()}
    batch = collect_episodes(env, policy, params, goals, 4,
                             generator=torch.Generator().manual_seed(seed), per_task=per_task)
    return env, policy, goals, batch


def test_same_seed_gives_identical_rollouts_and_another_seed_does_not():
    _, _, _, first = small_rollout(7)
    _, _, _, second = small_rollout(7)
    _, _, _, other = small_rollout(8)
    for name in ("observations", "actions", "rewards", "masks", "log_probs"):
        assert torch.equal(getattr(first, name), getattr(second, name)), name
    assert not torch.equal(first.actions, other.actions)


def test_rollout_is_consistent_with_the_environment_and_the_policy():
    env, policy, goals, batch = small_rollout(7)
    assert batch.observations.shape == (3, 4, 20, 2) and batch.rewards.shape == (3, 4, 20)
    assert torch.all(batch.observations[:, :, 0] == 0)
    # the reward of step t is minus the distance of the next observation to the goal
    following = batch.observations[:, :, 1:]
    distance = (following - goals[:, None, None, :]).norm(dim=-1)
    alive = batch.masks[:, :, 1:] > 0
    assert torch.allclose(batch.rewards[:, :, :-1][alive], -distance[alive])
    # log-probabilities are differentiable functions of the parameters
    params = dict(policy.named_parameters())
    recomputed = policy_log_probs(policy, params, batch.observations, batch.actions)
    assert torch.allclose(batch.log_probs, recomputed) and batch.log_probs.requires_grad


def test_per_task_parameters_give_the_same_rollout_when_they_are_equal():
    _, _, _, shared = small_rollout(7)
    _, _, _, per_task = small_rollout(7, per_task=True)
    assert torch.allclose(shared.actions, per_task.actions)
    assert torch.allclose(shared.log_probs, per_task.log_probs)


def test_adapted_per_task_parameters_are_one_policy_gradient_step_and_differentiable():
    env, policy, goals, batch = small_rollout(7)
    params = dict(policy.named_parameters())
    adapted = adapt_per_task(policy, params, batch, step_size=0.1, gamma=0.99)
    assert adapted["log_std"].shape == (3, 2)
    # task 1 by hand: the DiCE gradient equals the naive surrogate's first gradient, and with
    # the linear baseline it is sum_t grad log pi_t gamma^t (G_t - b_t) averaged over episodes
    returns = discounted_returns(batch.rewards[1:2], batch.masks[1:2], 0.99)
    values = linear_baseline_values(batch.observations[1:2], returns, batch.masks[1:2])
    log_probs = policy_log_probs(policy, params, batch.observations[1], batch.actions[1])
    discount = 0.99 ** torch.arange(20, dtype=torch.float64)
    surrogate = (log_probs * discount * batch.masks[1] * (returns[0] - values[0])).sum(-1).mean()
    (gradient,) = torch.autograd.grad(surrogate, params["log_std"])
    assert torch.allclose(adapted["log_std"][1], params["log_std"] + 0.1 * gradient)
    # the post-update rollout's log-probabilities depend on the pre-update parameters
    post = collect_episodes(env, policy, adapted, goals, 2, per_task=True,
                            generator=torch.Generator().manual_seed(0))
    meta = torch.autograd.grad(post.log_probs.sum(), params["mean.0.weight"])[0]
    assert meta.abs().sum() > 0


def test_half_circle_goals_lie_on_the_upper_half_of_the_circle_and_cover_it():
    """PEARL's point robot: every goal at distance goal_range from the start, angle in
    [0, pi] (caught: goals drawn from the square, or on the whole circle)."""
    env = PointNavigation(goals="half-circle", goal_range=1.0, goal_tolerance=None)
    goals = env.sample_tasks(4000, torch.Generator().manual_seed(0))
    assert goals.shape == (4000, 2) and goals.dtype == torch.float64
    assert torch.allclose(goals.norm(dim=-1), torch.ones(4000, dtype=torch.float64))
    angles = torch.atan2(goals[:, 1], goals[:, 0])
    assert angles.min() >= 0 and angles.max() <= math.pi
    # uniform angle: a quarter of the goals in each quarter of [0, pi] (4000 draws, ~5 sigma)
    counts = torch.histc(angles, bins=4, min=0.0, max=math.pi)
    assert ((counts - 1000).abs() < 140).all(), counts
    scaled = PointNavigation(goals="half-circle", goal_range=0.5).sample_tasks(
        10, torch.Generator().manual_seed(0))
    assert torch.allclose(scaled, 0.5 * env.sample_tasks(10, torch.Generator().manual_seed(0)))


def test_an_unknown_goal_distribution_is_refused_by_name():
    with pytest.raises(ValueError, match="goals must be one of"):
        PointNavigation(goals="circle")
