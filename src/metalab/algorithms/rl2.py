"""RL² (Duan et al. 2016, "RL^2: Fast Reinforcement Learning via Slow Reinforcement
Learning"): the adaptation is the hidden state of a recurrent policy.

A trial is ``K = episodes_per_trial`` episodes on one task; the GRU policy
(`GRUGaussianPolicy`) sees ``[s_t, a_{t-1}, r_{t-1}, episode start]`` and keeps its hidden
state across the episodes of a trial (reset between trials). The outer objective is the
expected discounted return of the whole trial, ``E[sum_{t < K H} gamma^t r_t]``, so the
policy is rewarded for exploring in early episodes when that pays off in later ones.
Trained, as in the paper, by TRPO (`trpo_step`) on the surrogate

    L(theta) = mean_tasks mean_trials sum_t  pi_theta(a_t | h_t) / pi_old(a_t | h_t) * A_t

(GAE advantages over the trial's ``K H`` steps, a linear feature baseline fitted per task,
or with ``baseline: mlp`` a learned value function, `ValueFunctionBaseline`;
`trial_returns_and_advantages`: the credit runs on across an episode that ended early, so
an action is credited with the later episodes' rewards) with ``KL(pi_old || pi_theta) <=
max_kl`` over the valid steps; ``outer_step: ppo`` (as in the issue: RL² trained by PPO)
takes ``ppo_epochs`` epochs of Adam steps (``ppo_lr``, a fresh Adam each outer step) on
the clipped surrogate (`clipped_surrogate`, clip ``ppo_clip``, advantages standardised
over the batch) over ``ppo_minibatches`` minibatches of whole trials, then writes the
total change as the update; or ``outer_step: gradient`` for the trainer's optimizer. The
task source, trainer, checkpoints and CLI are MAML-RL's: each meta-batch is
`EnvironmentTasks` whose ``episodes`` is the number of trials per task, collected by the
family's ``collect_trials``.

Meta-test: each test task gets ``episodes`` trials from the trained policy (no gradient
step); `task_losses` reports the mean return of every episode of the trial,
``return_episode1 .. return_episodeK``, and ``return`` = the last episode's (what the
hidden state's adaptation reached).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from metalab.algorithms.maml_rl import masked_task_mean
from metalab.algorithms.policy_learner import PolicyLearner
from metalab.rl import (
    EpisodeBatch,
    build_baseline,
    gaussian_kl,
    linear_baseline_values,
    trial_log_probs,
    trpo_options,
    trpo_step,
)
from metalab.rl.episodes import standardized_advantages
from metalab.rl.ppo import clipped_surrogate, minibatch_rows, ppo_options
from metalab.rl.recurrent import trial_returns_and_advantages
from metalab.rl.task_source import EnvironmentTasks
from metalab.validation import check_choice, check_positive_int, check_real

OUTER_STEPS = ("trpo", "ppo", "gradient")


class RL2(PolicyLearner, name="rl2"):
    """RL² on a recurrent Gaussian policy (the config's model, `GRUGaussianPolicy`).

    Args:
        model: the GRU policy.
        episodes_per_trial: K, the episodes of a trial (the hidden state spans them).
        gamma, gae_lambda: discount over the trial's steps and GAE's lambda.
        outer_step: ``"trpo"`` (the paper), ``"ppo"`` or ``"gradient"``.
        max_kl, cg_iterations, cg_damping, backtrack_ratio, max_backtracks: TRPO's.
        ppo_clip, ppo_epochs, ppo_minibatches, ppo_lr: PPO's (see the module docstring).
        baseline_reg: ridge of the linear baseline.
        baseline: ``"linear"`` (per task, the paper's) or ``"mlp"`` (a learned value
            function of the trial step's features, warm-started across iterations).
        baseline_hidden, baseline_steps, baseline_lr: the ``mlp`` baseline's hidden widths,
            Adam steps per fit and Adam's learning rate.
    """

    adapt_options = ()
    adapts_by = "family.collect_trials(policy, params, tasks, ...)"

    def __init__(self, model: nn.Module, episodes_per_trial: int = 2, gamma: float = 0.99,
                 gae_lambda: float = 0.97, outer_step: str = "trpo", max_kl: float = 0.01,
                 cg_iterations: int = 10, cg_damping: float = 1e-5,
                 backtrack_ratio: float = 0.5, max_backtracks: int = 15,
                 baseline_reg: float = 1e-5, ppo_clip: float = 0.2, ppo_epochs: int = 5,
                 ppo_minibatches: int = 4, ppo_lr: float = 1e-3, baseline: str = "linear",
                 baseline_hidden: tuple[int, ...] = (32, 32), baseline_steps: int = 20,
                 baseline_lr: float = 1e-2) -> None:
        super().__init__()
        self.policy = model
        self.episodes_per_trial = check_positive_int("episodes_per_trial", episodes_per_trial)
        self.gamma = check_real("gamma", gamma)
        self.gae_lambda = check_real("gae_lambda", gae_lambda)
        self.outer_step = check_choice("outer_step", outer_step, OUTER_STEPS)
        self.writes_whole_update = self.outer_step in ("trpo", "ppo")
        self.ppo_options = ppo_options(ppo_clip, ppo_epochs, ppo_minibatches, ppo_lr)
        self.trpo_options = trpo_options(max_kl, cg_iterations, cg_damping,
                                         backtrack_ratio, max_backtracks)
        self.baseline_reg = check_real("baseline_reg", baseline_reg)
        self.value_baseline = build_baseline(baseline, getattr(model, "observation_dim", None),
                                             baseline_hidden, baseline_steps, baseline_lr)

    def check_batch(self, batch) -> None:
        super().check_batch(batch)
        if not hasattr(batch.family, "collect_trials"):
            raise TypeError(f"RL2 needs a task family with collect_trials (a recurrent "
                            f"collector); {type(batch.family).__name__} has none")

    def collect(self, batch: EnvironmentTasks) -> EpisodeBatch:
        params = {n: p.detach() for n, p in self.policy.named_parameters()}
        return batch.family.collect_trials(self.policy, params, batch.tasks, batch.episodes,
                                           self.episodes_per_trial,
                                           generator=batch.generator())

    def episode_returns(self, trials: EpisodeBatch, horizon: int) -> Tensor:
        """``[T, K]``: the mean (over trials) return of each episode of the trial."""
        tasks, count, _ = trials.rewards.shape
        per_episode = (trials.rewards * trials.masks).reshape(tasks, count,
                                                             self.episodes_per_trial, horizon)
        return per_episode.sum(-1).mean(1)

    def task_losses(self, batch: EnvironmentTasks, training: bool = True, **options
                    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Meta-test: per task, ``-return`` of the trial's last episode and the return of
        every episode (see the module docstring)."""
        self.check_batch(batch)
        self.check_evaluation(training)
        self.check_adapt_options(options)
        with torch.no_grad():
            returns = self.episode_returns(self.collect(batch), batch.family.horizon)
        metrics = {f"return_episode{k + 1}": returns[:, k] for k in range(returns.shape[1])}
        return -returns[:, -1], {"return": returns[:, -1], **metrics}

    def surrogate_and_kl(self, params: dict[str, Tensor], trials: EpisodeBatch,
                         advantages: Tensor, old: tuple[Tensor, Tensor, Tensor],
                         horizon: int) -> tuple[Tensor, Tensor]:
        """``(L(theta), KL(pi_old || pi_theta))`` on the collected trials."""
        log_probs, mean, log_std = trial_log_probs(self.policy, params, trials, horizon)
        old_log_probs, old_mean, old_log_std = old
        ratio = torch.exp(log_probs - old_log_probs)
        value = (ratio * advantages * trials.masks).sum(dim=-1).mean()
        divergence = gaussian_kl(old_mean, old_log_std, mean, log_std)
        return value, masked_task_mean(divergence, trials.masks).mean()

    def advantages(self, trials: EpisodeBatch) -> Tensor:
        """GAE over each trial's valid steps with the per-task linear baseline (or the
        learned one, fitted on these trials)."""
        def baseline(returns: Tensor) -> Tensor:
            if self.value_baseline is not None:
                return self.value_baseline(trials.observations, returns, trials.masks)
            return linear_baseline_values(trials.observations, returns, trials.masks,
                                          self.baseline_reg)

        return trial_returns_and_advantages(trials.rewards, baseline, trials.masks,
                                            self.gamma, self.gae_lambda)[2]

    def meta_backward(self, batch: EnvironmentTasks, task_chunk: int | None = None,
                      scale: float = 1.0) -> dict[str, float]:
        """Collect trials, then write ``-(TRPO or PPO step)`` (or ``-grad L``) into ``.grad``."""
        self.check_batch(batch)
        horizon = batch.family.horizon
        trials = self.collect(batch)
        advantages = self.advantages(trials)
        names = [n for n, p in self.policy.named_parameters() if p.requires_grad]
        leaves = [p for p in self.policy.parameters() if p.requires_grad]
        with torch.no_grad():
            old = trial_log_probs(self.policy, dict(zip(names, leaves, strict=True)), trials,
                                  horizon)
        episode_returns = self.episode_returns(trials, horizon).mean(0)
        metrics = {f"return_episode{k + 1}": value.item()
                   for k, value in enumerate(episode_returns)}
        if self.outer_step == "ppo":
            generator = torch.Generator().manual_seed((batch.seed + 1) % 2**63)
            steps, ppo_metrics = self.ppo_steps(names, leaves, trials, advantages, old[0],
                                                horizon, generator)
            write_update(leaves, steps, scale)
            return {**metrics, **ppo_metrics}

        def evaluate(values: list[Tensor], differentiable: bool = True):
            return self.surrogate_and_kl(dict(zip(names, values, strict=True)), trials,
                                         advantages, old, horizon)

        if self.outer_step == "gradient":
            surrogate, _ = evaluate(leaves)
            (-surrogate * scale).backward()
            return {**metrics, "loss": -surrogate.item()}
        result = trpo_step(evaluate, leaves, **self.trpo_options)
        start = 0
        steps = []
        for p in leaves:
            steps.append(result.step[start:start + p.numel()].view_as(p))
            start += p.numel()
        write_update(leaves, steps, scale)
        return {**metrics, "loss": -result.surrogate_before, "kl": result.kl,
                "improvement": result.surrogate_after - result.surrogate_before}

    def ppo_steps(self, names: list[str], leaves: list[Tensor], trials: EpisodeBatch,
                  advantages: Tensor, old_log_probs: Tensor, horizon: int,
                  generator: torch.Generator) -> tuple[list[Tensor], dict[str, float]]:
        """PPO's epochs on copies of ``leaves``; returns the change of each and metrics
        (the clipped surrogate before / after, the mean KL from the sampling policy)."""
        options = self.ppo_options
        rows = flatten_trials(trials, standardized_advantages(advantages, trials.masks),
                              old_log_probs)
        params = [p.detach().clone().requires_grad_(True) for p in leaves]
        optimizer = torch.optim.Adam(params, lr=options["lr"])

        def objective(index: Tensor | slice) -> Tensor:
            batch, advantage, old_rows = (value[index] for value in rows)
            log_probs, _, _ = trial_log_probs(self.policy, dict(zip(names, params, strict=True)),
                                              batch, horizon)
            return clipped_surrogate(log_probs, old_rows, advantage, batch.masks,
                                     options["clip"])

        with torch.no_grad():
            before = objective(slice(None)).item()
        for _ in range(options["epochs"]):
            for index in minibatch_rows(rows[1].shape[0], options["minibatches"], generator,
                                        device=rows[1].device):
                optimizer.zero_grad()
                (-objective(index)).backward()
                optimizer.step()
        with torch.no_grad():
            after = objective(slice(None)).item()
            values = dict(zip(names, params, strict=True))
            _, mean, log_std = trial_log_probs(self.policy, values, trials, horizon)
            _, old_mean, old_log_std = trial_log_probs(
                self.policy, dict(zip(names, leaves, strict=True)), trials, horizon)
            kl = masked_task_mean(gaussian_kl(old_mean, old_log_std, mean, log_std),
                                  trials.masks).mean().item()
        steps = [new.detach() - p.detach() for new, p in zip(params, leaves, strict=True)]
        return steps, {"loss": -before, "improvement": after - before, "kl": kl}


class TrialRows:
    """Trials ``[T, N, L]`` as rows ``[T N, 1, L]`` (an `EpisodeBatch` of one trial per row,
    so a minibatch of whole trials is an index)."""

    def __init__(self, trials: EpisodeBatch) -> None:
        self.trials = trials

    def __getitem__(self, index: Tensor | slice) -> EpisodeBatch:
        def rows(x: Tensor) -> Tensor:
            return x.flatten(0, 1)[index].unsqueeze(1)

        t = self.trials
        selected = rows(t.rewards)
        return EpisodeBatch(rows(t.observations), rows(t.actions), selected,
                            rows(t.log_probs), rows(t.masks),
                            torch.arange(selected.shape[0], device=selected.device))


def flatten_trials(trials: EpisodeBatch, advantages: Tensor, old_log_probs: Tensor
                   ) -> tuple[TrialRows, Tensor, Tensor]:
    """``(trials, advantages, old log-probabilities)`` indexable by rows of whole trials."""
    return (TrialRows(trials), advantages.flatten(0, 1).unsqueeze(1),
            old_log_probs.flatten(0, 1).unsqueeze(1))


def write_update(leaves: list[Tensor], steps: list[Tensor], scale: float) -> None:
    """Add ``-scale * step`` to each leaf's ``.grad`` (the trainer's sgd at lr 1 applies
    ``+step``)."""
    for p, step in zip(leaves, steps, strict=True):
        p.grad = -scale * step if p.grad is None else p.grad - scale * step
