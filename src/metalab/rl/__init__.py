"""Meta-reinforcement learning machinery: environments as task families (2-D navigation),
batched rollout collection, episode batches, returns and GAE, the linear feature baseline
and a learned (MLP) value baseline,
Gaussian MLP policies, the MAML-RL inner policy-gradient step (DiCE or naive), E-MAML's
exploration credit, the TRPO step, task families and their task source."""

from metalab.rl.adaptation import adapt_per_task
from metalab.rl.baselines import fit_linear_baseline, linear_baseline_values, linear_features
from metalab.rl.episodes import EpisodeBatch, discounted_returns, gae, standardized_advantages
from metalab.rl.families import FAMILIES, Navigation2D, TaskFamily, build_family, register_family
from metalab.rl.navigation import PointNavigation
from metalab.rl.policies import (
    GaussianMLPPolicy,
    gaussian_kl,
    gaussian_log_prob,
    policy_log_probs,
)
from metalab.rl.policy_gradient import (
    ESTIMATORS,
    dice_objective,
    exploration_credit,
    inner_policy_gradient_step,
    magic_box,
    naive_objective,
    policy_gradient_objective,
)
from metalab.rl.recurrent import GRUGaussianPolicy, collect_trials, trial_inputs, trial_log_probs
from metalab.rl.rollout import collect_episodes
from metalab.rl.task_source import EnvironmentTasks, EnvironmentTaskSource
from metalab.rl.trpo import (
    TRPOResult,
    conjugate_gradient,
    fisher_vector_product,
    trpo_options,
    trpo_step,
)
from metalab.rl.value_baseline import BASELINES, ValueFunctionBaseline, build_baseline

__all__ = [
    "BASELINES",
    "ValueFunctionBaseline",
    "build_baseline",
    "ESTIMATORS",
    "FAMILIES",
    "EnvironmentTaskSource",
    "EnvironmentTasks",
    "EpisodeBatch",
    "GRUGaussianPolicy",
    "GaussianMLPPolicy",
    "Navigation2D",
    "PointNavigation",
    "TRPOResult",
    "TaskFamily",
    "adapt_per_task",
    "build_family",
    "collect_episodes",
    "collect_trials",
    "conjugate_gradient",
    "dice_objective",
    "discounted_returns",
    "exploration_credit",
    "fisher_vector_product",
    "fit_linear_baseline",
    "gae",
    "standardized_advantages",
    "gaussian_kl",
    "gaussian_log_prob",
    "inner_policy_gradient_step",
    "linear_baseline_values",
    "linear_features",
    "magic_box",
    "naive_objective",
    "policy_gradient_objective",
    "policy_log_probs",
    "register_family",
    "trial_inputs",
    "trial_log_probs",
    "trpo_options",
    "trpo_step",
]
