"""MAML for reinforcement learning (Finn, Abbeel & Levine 2017, section 3.2 and 5.3), with
E-MAML (Stadie et al. 2018) as an option.

For each task ``T_i`` of a meta-batch (an `EnvironmentTasks` batch from the task source):

    D_i   ~ pi_theta          (support: pre-update episodes, asked of the collector)
    theta'_i = theta + alpha grad_theta J_hat(theta; D_i)        (eq. 4, the inner step)
    D'_i  ~ pi_theta'_i       (query: post-update episodes)
    max_theta  sum_i J(theta'_i)                                  (eq. 5, the meta-objective)

The inner step is `adapt_per_task` (the linear feature baseline, or with ``baseline: mlp``
a learned value function, `ValueFunctionBaseline`; the DiCE surrogate, whose
second derivative makes the meta-gradient unbiased for MAML's objective, or the naive one of
the public implementations as ``estimator: naive``). The outer objective is the importance-
sampled surrogate of the post-update policies,

    L(theta) = mean_i mean_episodes sum_t  pi_theta'_i(a_t|s_t) / pi_old'_i(a_t|s_t) * A_t,

``A_t`` GAE advantages of the post-update episodes (the baseline fitted on them),
``theta'_i = theta'_i(theta)`` recomputed from the *same* pre-update episodes, so its
gradient at ``theta_old`` is the policy gradient of the post-update return through the
inner step. ``outer_step: trpo`` (the paper) maximises it by TRPO on the mean KL
``KL(pi_old'_i || pi_theta'_i)`` of the post-update policies (`trpo_step`: conjugate
gradient on Fisher-vector products, then a line search that keeps the actual KL within
``max_kl`` and requires improvement; the Fisher matrix is the Hessian of that KL through
the inner step of ``estimator``: the naive step is the sample path the line search
evaluates, DiCE's graph adds the score term, so with DiCE the quadratic model overestimates
the KL the line search measures, ~1,000x on half-cheetah at 10 x 2 episodes and 2x on
nav2d at 20 x 20, docs/meta-rl.md "Why the TRPO steps were tiny"); ``outer_step:
gradient`` hands ``-grad L`` to the trainer's optimizer (Adam, say) instead.

E-MAML (``e_maml: true``) maximises ``E_{D_i}[J(theta'(D_i))]`` instead: the sample-path
(naive) inner step plus the credit of the pre-update episodes for the post-update return
(`exploration_credit`), added to ``L``. It needs ``estimator: naive`` (DiCE's step would
count the score term twice) and raw advantages (the credit is on the scale of the return).

How it runs through the one trainer: the outer step is not the gradient of a loss. With TRPO
`meta_backward` writes ``.grad = -(accepted step)``, which is the whole update:
``writes_whole_update`` tells the trainer to apply it unchanged (``train.optimizer: sgd``,
``train.lr: 1``, no schedule or clipping). The rollout RNG is seeded per meta-batch by the
task source, whose state the trainer checkpoints, so a resumed run is bit-identical.
Meta-test (`task_losses` with ``training=False``, the path of `adapt_to_tasks`) reports the
mean undiscounted return per task before adaptation (``return_pre``) and after
``inner_steps`` steps (``return``), each step on freshly collected episodes, and for a
family that reports success (Meta-World) the success rates ``success_pre`` / ``success``.
With more than one step, ``return_step0 .. return_stepK`` is the adaptation curve (the
return of the episodes each step was taken on, then the final one's).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call

from metalab.algorithms.policy_learner import PolicyLearner
from metalab.rl import (
    ESTIMATORS,
    EpisodeBatch,
    ValueFunctionBaseline,
    adapt_per_task,
    build_baseline,
    discounted_returns,
    exploration_credit,
    gae,
    gaussian_kl,
    gaussian_log_prob,
    linear_baseline_values,
    policy_log_probs,
    standardized_advantages,
    trpo_options,
    trpo_step,
)
from metalab.rl.task_source import EnvironmentTasks
from metalab.validation import check_choice, check_positive_int, check_real

OUTER_STEPS = ("trpo", "gradient")
Params = dict[str, Tensor]


@dataclass(frozen=True)
class Rollouts:
    """What one meta-iteration sampled: the pre-update (support) and post-update (query)
    episodes, the post-update advantages and the sampling policies' outputs on them;
    ``pre_baselines``: the baseline's values on the pre-update episodes, fitted once so that
    every evaluation of the inner step uses the same (a learned baseline's fit changes it)."""

    pre: EpisodeBatch
    post: EpisodeBatch
    advantages: Tensor
    old_log_probs: Tensor
    old_mean: Tensor
    old_log_std: Tensor
    pre_baselines: Tensor


def masked_task_mean(values: Tensor, masks: Tensor) -> Tensor:
    """``[T, E, H] -> [T]``: the mean over each task's valid steps."""
    return (values * masks).sum(dim=(1, 2)) / masks.sum(dim=(1, 2)).clamp_min(1.0)


def task_scores(batch: EpisodeBatch) -> dict[str, Tensor]:
    """``{"return": [T]}``: the mean undiscounted return per task, and ``"success" [T]``
    (the fraction of successful episodes) when the environment reports success."""
    scores = {"return": batch.total_returns().mean(dim=-1)}
    if batch.success is not None:
        scores["success"] = batch.success.mean(dim=-1)
    return scores


def per_task_outputs(policy: nn.Module, params: Params, observations: Tensor
                     ) -> tuple[Tensor, Tensor]:
    """``(mean, log_std)`` of task ``i``'s parameters ``params[.][i]`` on its observations."""
    outputs = [functional_call(policy, {n: v[i] for n, v in params.items()},
                               (observations[i],)) for i in range(observations.shape[0])]
    means, log_stds = zip(*outputs, strict=True)
    return torch.stack(means), torch.stack(log_stds)


class MAMLRL(PolicyLearner, name="maml-rl"):
    """MAML-RL / E-MAML on a Gaussian policy (the config's model).

    Args:
        model: the policy, ``model(observations) -> (mean, log_std)`` (`GaussianMLPPolicy`).
        inner_lr: alpha, the inner policy-gradient step size (the surrogate is a sum over
            time of raw advantages; see docs/meta-rl.md for its scale).
        inner_steps: inner steps in meta-training (1, as in the paper).
        eval_inner_steps: steps at meta-test (default 1); ``inner_steps=k`` overrides it.
        gamma, gae_lambda: discount and GAE's lambda for the post-update advantages.
        estimator: ``"dice"`` (unbiased for MAML's objective) or ``"naive"``.
        e_maml: add E-MAML's pre-update credit (needs ``estimator: naive``).
        outer_step: ``"trpo"`` (the paper) or ``"gradient"`` (the trainer's optimizer on
            ``-L``).
        max_kl, cg_iterations, cg_damping, backtrack_ratio, max_backtracks: TRPO's
            (the paper: 0.01, 10, 1e-5, 0.5, 15).
        fisher_tasks: estimate TRPO's Fisher-vector products on the first ``k`` tasks of
            the meta-batch only (rllab's ``subsample_factor`` idea; each product costs a
            double backward through every task's inner step); ``None``: all (the paper).
            The line search still checks the KL of all tasks.
        normalize_advantages: standardise the post-update advantages per task.
        first_order: drop the inner step's second derivatives (first-order MAML-RL).
        baseline_reg: ridge of the linear baseline.
        baseline: ``"linear"`` (the papers' linear feature baseline, fitted per task) or
            ``"mlp"`` (a learned value function, `ValueFunctionBaseline`, warm-started across
            iterations; at meta-test a copy is fitted, the learner's is left unchanged).
        baseline_hidden, baseline_steps, baseline_lr: the ``mlp`` baseline's hidden widths,
            Adam steps per fit and Adam's learning rate.
    """

    adapt_options = ("inner_steps",)
    adapts_by = "adapt_to_tasks(family, tasks, episodes) and the family's collect(...)"
    incompatible_options: dict[str, str] = {}

    def __init__(self, model: nn.Module, inner_lr: float = 1e-3, inner_steps: int = 1,
                 eval_inner_steps: int = 1, gamma: float = 0.99, gae_lambda: float = 1.0,
                 estimator: str = "dice", e_maml: bool = False, outer_step: str = "trpo",
                 max_kl: float = 0.01, cg_iterations: int = 10, cg_damping: float = 1e-5,
                 backtrack_ratio: float = 0.5, max_backtracks: int = 15,
                 fisher_tasks: int | None = None, normalize_advantages: bool = False,
                 first_order: bool = False, baseline_reg: float = 1e-5,
                 baseline: str = "linear", baseline_hidden: tuple[int, ...] = (32, 32),
                 baseline_steps: int = 20, baseline_lr: float = 1e-2) -> None:
        super().__init__()
        self.policy = model
        self.inner_lr = check_real("inner_lr", inner_lr)
        if check_positive_int("inner_steps", inner_steps) != 1:
            raise ValueError(f"inner_steps must be 1 in meta-training (the paper's; several "
                             f"steps are for meta-test: eval_inner_steps), got {inner_steps}")
        self.eval_inner_steps = check_positive_int("eval_inner_steps", eval_inner_steps,
                                                   minimum=0)
        self.gamma = check_real("gamma", gamma)
        self.gae_lambda = check_real("gae_lambda", gae_lambda)
        self.estimator = check_choice("estimator", estimator, ESTIMATORS)
        self.e_maml = bool(e_maml)
        if self.e_maml and self.estimator != "naive":
            raise ValueError("e_maml needs estimator='naive': E-MAML's credit term with the "
                             "DiCE inner step counts the score term twice")
        if self.e_maml and normalize_advantages:
            raise ValueError("e_maml needs normalize_advantages=False: the credit term is on "
                             "the scale of the raw return")
        self.outer_step = check_choice("outer_step", outer_step, OUTER_STEPS)
        self.writes_whole_update = self.outer_step == "trpo"
        self.trpo_options = trpo_options(max_kl, cg_iterations, cg_damping,
                                         backtrack_ratio, max_backtracks)
        self.fisher_tasks = None if fisher_tasks is None else check_positive_int(
            "fisher_tasks", fisher_tasks)
        self.normalize_advantages = bool(normalize_advantages)
        self.first_order = bool(first_order)
        self.baseline_reg = check_real("baseline_reg", baseline_reg)
        self.value_baseline = build_baseline(baseline, getattr(model, "observation_dim", None),
                                             baseline_hidden, baseline_steps, baseline_lr)

    # -- the baseline ---------------------------------------------------------------------------
    def baseline_values(self, episodes: EpisodeBatch, *,
                        value_baseline: ValueFunctionBaseline | None = None) -> Tensor:
        """The baseline's values ``[T, E, H]`` on ``episodes``: the per-task linear fit, or
        the learned baseline (``value_baseline``, default the learner's) fitted on them."""
        value_baseline = value_baseline or self.value_baseline
        returns = discounted_returns(episodes.rewards, episodes.masks, self.gamma)
        if value_baseline is None:
            return linear_baseline_values(episodes.observations, returns, episodes.masks,
                                          self.baseline_reg)
        return value_baseline(episodes.observations, returns, episodes.masks)

    # -- the inner step -----------------------------------------------------------------------
    def inner_step(self, params: Params, episodes: EpisodeBatch, *, per_task: bool = False,
                   create_graph: bool = True, baselines: Tensor | None = None) -> Params:
        """Per-task adapted parameters (a leading task dimension) after one inner step on
        ``episodes`` from ``params`` (shared, or per task); ``baselines``: the baseline's
        values on ``episodes``, fitted beforehand (``None``: the linear one, fitted here)."""
        return adapt_per_task(self.policy, params, episodes, step_size=self.inner_lr,
                              gamma=self.gamma, estimator=self.estimator,
                              baseline_reg=self.baseline_reg,
                              first_order=self.first_order or not create_graph,
                              per_task=per_task, baselines=baselines)

    def detached_parameters(self) -> Params:
        return {n: p.detach().requires_grad_(True) for n, p in self.policy.named_parameters()}

    def adapt_to_tasks(self, family, tasks: Tensor, episodes: int, *,
                       inner_steps: int | None = None,
                       generator: torch.Generator | None = None) -> tuple[Params, list[Tensor]]:
        """Meta-test adaptation to ``tasks`` of ``family``: ``inner_steps`` times, collect
        ``episodes`` per task with the current (per-task) policy and take the inner step on
        them. Returns the adapted parameters ``[T, ...]`` (the meta-learned ones, stacked,
        for 0 steps) and `task_scores` (mean return and success per task) of each batch the
        steps were taken on."""
        steps = self.eval_inner_steps if inner_steps is None else check_positive_int(
            "inner_steps", inner_steps, minimum=0)
        params, per_task, returns = self.detached_parameters(), False, []
        value_baseline = copy.deepcopy(self.value_baseline)  # meta-test leaves it unchanged
        for _ in range(steps):
            with torch.no_grad():
                batch = family.collect(self.policy, params, tasks, episodes,
                                       generator=generator, per_task=per_task)
            returns.append(task_scores(batch))
            baselines = self.baseline_values(batch, value_baseline=value_baseline)
            with torch.enable_grad():
                adapted = self.inner_step(params, batch, per_task=per_task,
                                          create_graph=False, baselines=baselines)
            params = {n: v.detach().requires_grad_(True) for n, v in adapted.items()}
            per_task = True
        if not per_task:
            params = {n: v.detach().expand(len(tasks), *v.shape)
                      for n, v in params.items()}
        return params, returns

    # -- meta-test ------------------------------------------------------------------------------
    def task_losses(self, batch: EnvironmentTasks, training: bool = True, **options
                    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Meta-test: ``(-return after adaptation [T], {"return": ..., "return_pre": ...})``
        over the batch's tasks (see the module docstring)."""
        self.check_batch(batch)
        self.check_evaluation(training)
        options = self.check_adapt_options(options)
        generator = batch.generator()
        adapted, returns = self.adapt_to_tasks(batch.family, batch.tasks, batch.episodes,
                                               generator=generator, **options)
        with torch.no_grad():
            final = batch.family.collect(self.policy, adapted, batch.tasks, batch.episodes,
                                         generator=generator, per_task=True)
        after = task_scores(final)
        before = returns[0] if returns else after
        metrics = {**after, **{f"{name}_pre": value for name, value in before.items()}}
        if len(returns) > 1:  # the adaptation curve: the return after each inner step
            steps = [*returns, after]
            metrics.update({f"return_step{k}": s["return"] for k, s in enumerate(steps)})
        return -after["return"], metrics

    # -- the outer objective --------------------------------------------------------------------
    def collect_rollouts(self, batch: EnvironmentTasks) -> Rollouts:
        """Pre-update episodes at ``theta``, the inner step, post-update episodes at each
        ``theta'_i``, and their advantages (the sampling policies held fixed)."""
        generator, params = batch.generator(), self.detached_parameters()
        family, tasks, episodes = batch.family, batch.tasks, batch.episodes
        with torch.no_grad():
            pre = family.collect(self.policy, params, tasks, episodes, generator=generator)
        pre_baselines = self.baseline_values(pre)
        with torch.enable_grad():
            adapted = self.inner_step(params, pre, create_graph=False, baselines=pre_baselines)
        adapted = {n: v.detach() for n, v in adapted.items()}
        with torch.no_grad():
            post = family.collect(self.policy, adapted, tasks, episodes, generator=generator,
                                  per_task=True)
            mean, log_std = per_task_outputs(self.policy, adapted, post.observations)
            old_log_probs = gaussian_log_prob(post.actions, mean, log_std)
        return Rollouts(pre, post, self.advantages(post), old_log_probs, mean, log_std,
                        pre_baselines)

    def advantages(self, post: EpisodeBatch) -> Tensor:
        """GAE of the post-update episodes with the linear baseline fitted per task, or the
        learned one fitted on them (standardised per task with ``normalize_advantages``)."""
        values = self.baseline_values(post)
        advantages = gae(post.rewards, values, post.masks, self.gamma, self.gae_lambda)
        if not self.normalize_advantages:
            return advantages
        return standardized_advantages(advantages, post.masks, dims=(1, 2))

    def surrogate_and_kl(self, params: Params, rollouts: Rollouts, differentiable: bool = True
                         ) -> tuple[Tensor, Tensor]:
        """``(L(theta), KL(theta))``: the surrogate of the module docstring (plus E-MAML's
        credit with ``e_maml``) and the mean over tasks and valid post-update steps of
        ``KL(pi_old'_i || pi_theta'_i)``, both through the inner step from ``params``
        (``differentiable=False``: values only, the inner step without its second
        derivatives). With ``fisher_tasks = k`` the differentiable KL (whose Hessian is
        TRPO's Fisher matrix) is the mean over the first ``k`` tasks only, computed on a
        graph of its own so that its products cost ``k`` tasks' double backward."""
        pre, post = rollouts.pre, rollouts.post
        adapted = self.inner_step(params, pre, create_graph=differentiable,
                                  baselines=rollouts.pre_baselines)
        mean, log_std = per_task_outputs(self.policy, adapted, post.observations)
        ratio = torch.exp(gaussian_log_prob(post.actions, mean, log_std)
                          - rollouts.old_log_probs)
        value = (ratio * rollouts.advantages * post.masks).sum(dim=-1).mean()
        if self.e_maml:
            log_probs = policy_log_probs(self.policy, params, pre.observations, pre.actions)
            returns = discounted_returns(post.rewards, post.masks, self.gamma)[..., 0]
            value = value + exploration_credit((log_probs * pre.masks).sum(dim=(1, 2)),
                                               returns.mean(dim=-1))
        if differentiable and self.fisher_tasks is not None:  # the tasks are i.i.d.
            tasks = slice(0, self.fisher_tasks)
            adapted = self.inner_step(params, pre.select_tasks(tasks),
                                      baselines=rollouts.pre_baselines[tasks])
            mean, log_std = per_task_outputs(self.policy, adapted,
                                             post.observations[tasks])
            return value, self.kl_of(rollouts, mean, log_std, tasks)
        return value, self.kl_of(rollouts, mean, log_std, slice(None))

    @staticmethod
    def kl_of(rollouts: Rollouts, mean: Tensor, log_std: Tensor, tasks: slice) -> Tensor:
        """Mean over the ``tasks`` and their valid steps of ``KL(old || (mean, log_std))``."""
        divergence = gaussian_kl(rollouts.old_mean[tasks], rollouts.old_log_std[tasks], mean,
                                 log_std)
        return masked_task_mean(divergence, rollouts.post.masks[tasks]).mean()

    # -- the outer update -----------------------------------------------------------------------
    def meta_backward(self, batch: EnvironmentTasks, task_chunk: int | None = None,
                      scale: float = 1.0) -> dict[str, float]:
        """Collect, then write the outer update into ``.grad``: ``-(TRPO step)`` (the
        whole update, applied by SGD with learning rate 1) or ``-grad L``."""
        self.check_batch(batch)
        rollouts = self.collect_rollouts(batch)
        names = [n for n, p in self.policy.named_parameters() if p.requires_grad]
        leaves = [p for p in self.policy.parameters() if p.requires_grad]
        metrics = {"return_pre": rollouts.pre.mean_return().item(),
                   "return": rollouts.post.mean_return().item()}
        if rollouts.post.success is not None:
            metrics.update(success_pre=rollouts.pre.success.mean().item(),
                           success=rollouts.post.success.mean().item())
        if self.outer_step == "gradient":
            surrogate, _ = self.surrogate_and_kl(dict(zip(names, leaves, strict=True)),
                                                 rollouts)
            (-surrogate * scale).backward()
            return {**metrics, "loss": -surrogate.item()}

        def evaluate(values: list[Tensor], differentiable: bool) -> tuple[Tensor, Tensor]:
            return self.surrogate_and_kl(dict(zip(names, values, strict=True)), rollouts,
                                         differentiable)

        result = trpo_step(evaluate, leaves, **self.trpo_options)
        start = 0
        for p in leaves:
            step = result.step[start:start + p.numel()].view_as(p)
            start += p.numel()
            direction = -scale * step
            p.grad = direction if p.grad is None else p.grad + direction
        return {**metrics, "loss": -result.surrogate_before, "kl": result.kl,
                "improvement": result.surrogate_after - result.surrogate_before,
                "backtracks": float(result.backtracks)}
