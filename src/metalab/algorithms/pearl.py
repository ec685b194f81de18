"""PEARL (Rakelly, Zhou, Quillen, Finn & Levine 2019, "Efficient Off-Policy
Meta-Reinforcement Learning via Probabilistic Context Variables").

The task is inferred as a latent ``z`` from a context of transitions: ``q(z | c)`` is the
product of per-transition Gaussian factors (`metalab.rl.context_encoder`; the prior is not
a factor, as in the official code). The actor and critics are SAC's (`metalab.rl.sac`,
twin critics with Polyak-averaged targets, SAC v2 without a value network), conditioned on
``z``. Per gradient step, on ``B`` training tasks ``i``:

    c_i ~ encoder buffer of task i (recent data),  z_i ~ q(z | c_i)  (reparametrised)
    (s, a, r, s', d) ~ replay buffer of task i
    y = reward_scale r + gamma (1 - d) (min_j Q'_j(s', a', z_i) - alpha log pi(a' | s', z_i))
    L_critic = mean (Q_1(s, a, z_i) - y)^2 + mean (Q_2(s, a, z_i) - y)^2
               + beta sum_i KL(q(z | c_i) || N(0, I))
    L_actor  = mean [alpha log pi(a~ | s, z_i) - min_j Q_j(s, a~, z_i)],  a~ ~ pi(. | s, z_i)
    L_alpha  = -mean [log alpha (log pi(a~ | s, z_i) + target_entropy)]  (``learn_alpha``)

The encoder is trained through the critic loss (eq. 4 of the paper: ``L_critic`` and the KL
term), not through the actor's: the actor sees ``z`` detached. The KL is summed over the
meta-batch's tasks (the official code's reduction). Each loss's gradient is written into
its own networks' ``.grad`` (critic loss: encoder and critics; actor loss: actor; alpha
loss: ``log alpha``) and the trainer's one optimizer (Adam, the paper's 3e-4 for all)
applies them; the targets follow by ``theta' <- tau theta + (1 - tau) theta'``, taken at the
start of the next step (after the optimizer applied this one).

Data (the paper's Algorithm 1): a fixed set of ``train_tasks`` tasks is drawn once from the
family (with the first meta-batch's rollout seed), each with a replay buffer and an
encoder buffer. Before the first step, ``initial_episodes`` per task with ``z`` from the
prior go into both. Every ``collect_every`` steps, for ``collect_tasks`` tasks: the encoder
buffer is emptied, ``prior_episodes`` with ``z ~ N(0, I)`` and ``posterior_episodes`` with
``z ~ q(z | c)`` (``c`` from the encoder buffer) go into both buffers, and
``extra_posterior_episodes`` with ``z ~ q(z | c)`` into the replay buffer only. Every random
draw comes from the batch's generator (seeded by the task source) and the buffers are part
of the learner's state (`get_extra_state`), so a resumed run is bit-identical.

A trainer step is one gradient step; ``train.meta_batch`` is ``B`` (the batch's tasks
themselves are not used: the training tasks are the fixed set, sampled per step).

Meta-test (`meta_test`, through `task_losses` with ``training=False``): for each held-out
task, ``eval_episodes`` consecutive episodes, the first with ``z`` from the prior, each
later one with ``z ~ q(z | c)`` of all the task's transitions so far (posterior sampling);
``return_episode1 .. K`` is the return of each, ``return`` the last's.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from metalab.algorithms.policy_learner import PolicyLearner
from metalab.rl.context_encoder import standard_normal_kl
from metalab.rl.pearl_agent import PEARLAgent
from metalab.rl.policies import standard_normal_like
from metalab.rl.replay import FIELDS, TaskReplay
from metalab.rl.sac import polyak_update, soft_q_target
from metalab.rl.task_source import EnvironmentTasks
from metalab.validation import check_positive_int, check_real


def valid_transitions(episodes: dict[str, Tensor], task: int) -> dict[str, Tensor]:
    """Task ``task``'s transitions of ``episodes`` (fields ``[T, E, H, ...]``) whose mask is
    set, flattened to ``[n, ...]``."""
    keep = episodes["masks"][task].reshape(-1).bool()
    return {k: episodes[k][task].reshape(keep.shape[0], *episodes[k].shape[3:])[keep]
            for k in FIELDS}


def episode_returns(episodes: dict[str, Tensor]) -> Tensor:
    """``[T, E]``: the undiscounted return of every episode."""
    return (episodes["rewards"] * episodes["masks"]).sum(dim=-1)


class PEARL(PolicyLearner, name="pearl"):
    """PEARL on a `PEARLAgent` (the config's model). Options (module docstring; in
    brackets the official code's defaults where we follow them): ``train_tasks``,
    ``gamma`` [0.99], ``tau`` [0.005], ``alpha`` (fixed, or the initial value with
    ``learn_alpha``; the official code fixes 1 and scales rewards), ``target_entropy``
    (default ``-action_dim``), ``kl_weight`` beta [0.1], ``reward_scale``, ``batch_size``
    (transitions per task), ``context_size`` (context transitions per task),
    ``replay_capacity`` [1e6], ``initial_episodes``, ``collect_every``, ``collect_tasks``,
    ``prior_episodes``, ``posterior_episodes``, ``extra_posterior_episodes``,
    ``eval_episodes``, ``eval_deterministic`` (the actor's mean action at meta-test)."""

    adapt_options = ()
    adapts_by = "meta_test(family, tasks, runs)"

    def __init__(self, model: nn.Module, train_tasks: int = 40, gamma: float = 0.99,
                 tau: float = 0.005, alpha: float = 1.0, learn_alpha: bool = False,
                 target_entropy: float | None = None, kl_weight: float = 0.1,
                 reward_scale: float = 1.0, batch_size: int = 256, context_size: int = 100,
                 replay_capacity: int = 100_000, initial_episodes: int = 2,
                 collect_every: int = 100, collect_tasks: int = 5, prior_episodes: int = 1,
                 posterior_episodes: int = 0, extra_posterior_episodes: int = 1,
                 eval_episodes: int = 3, eval_deterministic: bool = True) -> None:
        super().__init__()
        if not isinstance(model, PEARLAgent):
            raise ValueError(f"PEARL needs model.name: pearl-agent (encoder, actor and twin "
                             f"critics), got {type(model).__name__}")
        self.agent = model
        self.train_tasks = check_positive_int("train_tasks", train_tasks)
        self.gamma = check_real("gamma", gamma)
        self.tau = check_real("tau", tau)
        if self.tau > 1 or self.gamma > 1:
            raise ValueError(f"gamma and tau must lie in [0, 1], got {gamma} and {tau}")
        log_alpha = torch.tensor(math.log(check_real("alpha", alpha, inclusive=False)))
        self.learn_alpha = bool(learn_alpha)
        if self.learn_alpha:
            self.log_alpha = nn.Parameter(log_alpha)
        else:
            self.register_buffer("log_alpha", log_alpha)
        self.target_entropy = (-float(model.action_dim) if target_entropy is None
                               else float(target_entropy))
        self.kl_weight = check_real("kl_weight", kl_weight)
        self.reward_scale = check_real("reward_scale", reward_scale, inclusive=False)
        self.batch_size = check_positive_int("batch_size", batch_size)
        self.context_size = check_positive_int("context_size", context_size)
        self.replay_capacity = check_positive_int("replay_capacity", replay_capacity)
        self.initial_episodes = check_positive_int("initial_episodes", initial_episodes)
        self.collect_every = check_positive_int("collect_every", collect_every)
        self.collect_tasks = check_positive_int("collect_tasks", collect_tasks)
        if self.collect_tasks > self.train_tasks:
            raise ValueError(f"collect_tasks must be at most train_tasks ({train_tasks}), "
                             f"got {collect_tasks}")
        self.prior_episodes = check_positive_int("prior_episodes", prior_episodes, minimum=0)
        self.posterior_episodes = check_positive_int("posterior_episodes", posterior_episodes,
                                                     minimum=0)
        self.extra_posterior_episodes = check_positive_int(
            "extra_posterior_episodes", extra_posterior_episodes, minimum=0)
        if self.prior_episodes + self.posterior_episodes == 0:
            raise ValueError("prior_episodes + posterior_episodes must be at least 1: the "
                             "encoder buffer is refilled from them at every collection")
        self.eval_episodes = check_positive_int("eval_episodes", eval_episodes)
        self.eval_deterministic = bool(eval_deterministic)
        self.reset_data()

    def reset_data(self) -> None:
        """No training tasks, buffers or counts yet (drawn at the first step)."""
        self.task_set: Tensor | None = None
        self.replay: TaskReplay | None = None
        self.encoder_replay: TaskReplay | None = None
        self.gradient_steps = 0
        self.env_steps = 0
        self.last_returns = {"return_prior": float("nan"), "return_posterior": float("nan")}

    # -- the state beyond the parameters: tasks, buffers, counts ------------------------------
    def get_extra_state(self) -> dict:
        return {"task_set": self.task_set, "gradient_steps": self.gradient_steps,
                "env_steps": self.env_steps, "last_returns": dict(self.last_returns),
                "replay": None if self.replay is None else self.replay.state_dict(),
                "encoder_replay": (None if self.encoder_replay is None
                                   else self.encoder_replay.state_dict())}

    def set_extra_state(self, state: dict) -> None:
        self.reset_data()
        self.task_set = state["task_set"]
        self.gradient_steps, self.env_steps = state["gradient_steps"], state["env_steps"]
        self.last_returns = dict(state["last_returns"])
        if state["replay"] is not None:
            self.replay = TaskReplay.from_state_dict(state["replay"])
            self.encoder_replay = TaskReplay.from_state_dict(state["encoder_replay"])

    def check_batch(self, batch) -> None:
        super().check_batch(batch)
        if not hasattr(batch.family, "collect_latent"):
            raise TypeError(f"PEARL needs a task family with collect_latent (a collector of "
                            f"latent-conditioned episodes); {type(batch.family).__name__} "
                            f"has none")
        agent = self.agent
        if (batch.family.observation_dim, batch.family.action_dim) != (
                agent.observation_dim, agent.action_dim):
            raise ValueError(f"model observation_dim/action_dim ({agent.observation_dim}, "
                             f"{agent.action_dim}) must match the environment's "
                             f"({batch.family.observation_dim}, {batch.family.action_dim})")

    @property
    def alpha(self) -> Tensor:
        return self.log_alpha.exp().detach()

    # -- collection ------------------------------------------------------------------------------
    def sample_latents(self, mean: Tensor, variance: Tensor, episodes: int,
                       generator: torch.Generator) -> Tensor:
        """``[T, episodes, z_dim]``: one ``z ~ N(mean, variance)`` per episode."""
        mean = mean.unsqueeze(1).expand(-1, episodes, -1)
        variance = variance.unsqueeze(1).expand(-1, episodes, -1)
        return mean + variance.sqrt() * standard_normal_like(mean, generator)

    def prior_latents(self, tasks: int, episodes: int, generator: torch.Generator) -> Tensor:
        zeros = self.log_alpha.new_zeros(tasks, self.agent.z_dim)
        return self.sample_latents(zeros, torch.ones_like(zeros), episodes, generator)

    @torch.no_grad()
    def posterior_latents(self, indices: Tensor, episodes: int, generator: torch.Generator
                          ) -> Tensor:
        """``z ~ q(z | c)`` per episode, ``c`` sampled from each task's encoder buffer."""
        context = self.encoder_replay.sample(indices, self.context_size, generator)
        return self.sample_latents(*self.agent.posterior(context), episodes, generator)

    def store(self, family, indices: Tensor, z: Tensor, generator: torch.Generator,
              buffers: tuple[TaskReplay, ...]) -> Tensor:
        """Run one episode per ``z [T, E, z_dim]`` on the training tasks ``indices`` (the
        actor sampling), add the transitions to ``buffers``; the episodes' returns."""
        episodes = family.collect_latent(self.agent.policy, z, self.task_set[indices],
                                         generator=generator)
        for row, task in enumerate(indices.tolist()):
            transitions = valid_transitions(episodes, row)
            for buffer in buffers:
                buffer.add(task, transitions)
        self.env_steps += int(episodes["masks"].sum())
        return episode_returns(episodes)

    def start(self, family, generator: torch.Generator) -> None:
        """Draw the training tasks, make the buffers, collect the initial prior episodes."""
        self.task_set = family.sample_tasks(self.train_tasks, generator)
        dtype = self.log_alpha.dtype
        self.replay, self.encoder_replay = (
            TaskReplay(self.train_tasks, self.replay_capacity, self.agent.observation_dim,
                       self.agent.action_dim, dtype, self.log_alpha.device) for _ in range(2))
        everyone = torch.arange(self.train_tasks, device=generator.device)
        z = self.prior_latents(self.train_tasks, self.initial_episodes, generator)
        returns = self.store(family, everyone, z, generator, (self.replay, self.encoder_replay))
        self.last_returns["return_prior"] = returns.mean().item()

    def collect(self, family, generator: torch.Generator) -> None:
        """One collection round of the module docstring on ``collect_tasks`` tasks."""
        indices = torch.randperm(self.train_tasks, generator=generator,
                                 device=generator.device)[:self.collect_tasks]
        for task in indices.tolist():
            self.encoder_replay.clear(task)
        both, posterior = (self.replay, self.encoder_replay), []
        if self.prior_episodes:
            z = self.prior_latents(len(indices), self.prior_episodes, generator)
            self.last_returns["return_prior"] = self.store(family, indices, z, generator,
                                                           both).mean().item()
        if self.posterior_episodes:
            z = self.posterior_latents(indices, self.posterior_episodes, generator)
            posterior.append(self.store(family, indices, z, generator, both))
        if self.extra_posterior_episodes:
            z = self.posterior_latents(indices, self.extra_posterior_episodes, generator)
            posterior.append(self.store(family, indices, z, generator, (self.replay,)))
        if posterior:
            self.last_returns["return_posterior"] = torch.cat(posterior, 1).mean().item()

    # -- the gradient step -----------------------------------------------------------------------
    def losses(self, indices: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
        """The critic (with the KL), actor and temperature losses of the module docstring
        on the training tasks ``indices``."""
        agent, alpha = self.agent, self.alpha
        context = self.encoder_replay.sample(indices, self.context_size, generator)
        batch = self.replay.sample(indices, self.batch_size, generator)
        mean, variance = agent.posterior(context)
        task_z = mean + variance.sqrt() * standard_normal_like(mean, generator)
        z = task_z.unsqueeze(1).expand(-1, self.batch_size, -1)
        observations, actions = batch["observations"], batch["actions"]
        with torch.no_grad():
            next_actions, next_log_probs = agent.policy.sample(
                batch["next_observations"], z, standard_normal_like(actions, generator))
            target = soft_q_target(
                self.reward_scale * batch["rewards"], batch["dones"],
                agent.target_q1(batch["next_observations"], next_actions, z),
                agent.target_q2(batch["next_observations"], next_actions, z),
                next_log_probs, alpha, self.gamma)
        kl = standard_normal_kl(mean, variance).sum()
        q1, q2 = agent.q1(observations, actions, z), agent.q2(observations, actions, z)
        critic = ((q1 - target) ** 2).mean() + ((q2 - target) ** 2).mean()
        z = z.detach()  # the actor does not train the encoder
        new_actions, log_probs = agent.policy.sample(observations, z,
                                                     standard_normal_like(actions, generator))
        q_new = torch.minimum(agent.q1(observations, new_actions, z),
                              agent.q2(observations, new_actions, z))
        losses = {"critic": critic + self.kl_weight * kl, "q_error": critic.detach(),
                  "kl": kl.detach(), "actor": (alpha * log_probs - q_new).mean(),
                  "q": q1.detach().mean(), "entropy": -log_probs.detach().mean()}
        if self.learn_alpha:
            losses["alpha"] = -(self.log_alpha * (log_probs.detach()
                                                  + self.target_entropy)).mean()
        return losses

    def loss_parameters(self) -> dict[str, list[nn.Parameter]]:
        """Which parameters each loss trains."""
        agent = self.agent
        owners = {"critic": [*agent.encoder.parameters(), *agent.q1.parameters(),
                             *agent.q2.parameters()],
                  "actor": list(agent.policy.parameters())}
        if self.learn_alpha:
            owners["alpha"] = [self.log_alpha]
        return owners

    def meta_backward(self, batch: EnvironmentTasks, task_chunk: int | None = None,
                      scale: float = 1.0) -> dict[str, float]:
        """One PEARL gradient step's gradients into ``.grad`` (collecting first when due)."""
        self.check_batch(batch)
        if len(batch) > self.train_tasks:
            raise ValueError(f"train.meta_batch ({len(batch)}) must be at most "
                             f"algorithm.train_tasks ({self.train_tasks})")
        generator = batch.generator()
        if self.task_set is None:
            self.start(batch.family, generator)
        else:  # the target update of the previous step, after its optimizer step
            polyak_update(self.agent.target_q1, self.agent.q1, self.tau)
            polyak_update(self.agent.target_q2, self.agent.q2, self.tau)
        if self.gradient_steps % self.collect_every == 0:
            self.collect(batch.family, generator)
        indices = torch.randperm(self.train_tasks, generator=generator,
                                 device=generator.device)[:len(batch)]
        losses = self.losses(indices, generator)
        for name, params in self.loss_parameters().items():
            grads = torch.autograd.grad(losses[name], params)
            for p, g in zip(params, grads, strict=True):
                p.grad = scale * g if p.grad is None else p.grad + scale * g
        self.gradient_steps += 1
        return {"loss": losses["critic"].item(), "actor_loss": losses["actor"].item(),
                "q_error": losses["q_error"].item(), "kl": losses["kl"].item(),
                "q": losses["q"].item(), "entropy": losses["entropy"].item(),
                "alpha": self.alpha.item(), "env_steps": float(self.env_steps),
                **self.last_returns}

    # -- meta-test -------------------------------------------------------------------------------
    @torch.no_grad()
    def meta_test(self, family, tasks: Tensor, runs: int, generator: torch.Generator
                  ) -> Tensor:
        """``[T, runs, eval_episodes]``: the return of each consecutive episode on each task
        (``runs`` independent repetitions), the first with ``z`` from the prior, each later
        one with ``z ~ q(z | c)`` of the task's transitions so far."""
        returns, context = [], None
        for _ in range(self.eval_episodes):
            if context is None:
                z = self.prior_latents(len(tasks), runs, generator)
            else:
                flat = {k: v.flatten(2, 3) for k, v in context.items()}  # [T, runs, E*H, .]
                mean, variance = self.agent.posterior(flat, flat["masks"])
                z = mean + variance.sqrt() * standard_normal_like(mean, generator)
            episodes = family.collect_latent(self.agent.policy, z, tasks, generator=generator,
                                             deterministic=self.eval_deterministic)
            returns.append(episode_returns(episodes))
            new = {k: v.unsqueeze(2) for k, v in episodes.items()}
            context = new if context is None else {k: torch.cat([context[k], new[k]], 2)
                                                   for k in new}
        return torch.stack(returns, dim=-1)

    def task_losses(self, batch: EnvironmentTasks, training: bool = True, **options
                    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Meta-test: per task ``-return`` of the last episode and the mean return of every
        episode over ``batch.episodes`` runs (the adaptation curve)."""
        self.check_batch(batch)
        self.check_evaluation(training)
        self.check_adapt_options(options)
        with torch.no_grad():
            returns = self.meta_test(batch.family, batch.tasks, batch.episodes,
                                     batch.generator()).mean(dim=1)
        metrics = {f"return_episode{k + 1}": returns[:, k] for k in range(returns.shape[1])}
        return -returns[:, -1], {"return": returns[:, -1], **metrics}
