"""Meta-reinforcement learning machinery: environments as task families (2-D navigation),
batched rollout collection, episode batches, returns and GAE, the linear feature baseline,
Gaussian MLP policies and the MAML-RL inner policy-gradient step (DiCE or naive)."""

from metalab.rl.adaptation import adapt_per_task
from metalab.rl.baselines import fit_linear_baseline, linear_baseline_values, linear_features
from metalab.rl.episodes import EpisodeBatch, discounted_returns, gae
from metalab.rl.navigation import PointNavigation
from metalab.rl.policies import GaussianMLPPolicy, gaussian_log_prob, policy_log_probs
from metalab.rl.policy_gradient import (
    ESTIMATORS,
    dice_objective,
    inner_policy_gradient_step,
    magic_box,
    naive_objective,
    policy_gradient_objective,
)
from metalab.rl.rollout import collect_episodes

__all__ = [
    "ESTIMATORS",
    "EpisodeBatch",
    "GaussianMLPPolicy",
    "PointNavigation",
    "adapt_per_task",
    "collect_episodes",
    "dice_objective",
    "discounted_returns",
    "fit_linear_baseline",
    "gae",
    "gaussian_log_prob",
    "inner_policy_gradient_step",
    "linear_baseline_values",
    "linear_features",
    "magic_box",
    "naive_objective",
    "policy_gradient_objective",
    "policy_log_probs",
]
