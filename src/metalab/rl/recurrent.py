"""RL²'s recurrent policy and its trials (Duan et al. 2016, "RL^2: Fast Reinforcement
Learning via Slow Reinforcement Learning").

A *trial* is ``K`` consecutive episodes on one task. The policy is a GRU whose input at
every step is ``[observation, previous action, previous reward, episode-start flag]``
(zeros at the start of the trial; after an episode ended early, the action and the zero
reward of its last masked step, exactly as stored in the batch); its hidden state
starts at zero at the beginning of each trial and is carried across the episodes of the
trial, so what it learned about the task in episode ``k`` shapes its behaviour in episode
``k + 1``. A step that is masked (its episode already ended) leaves the hidden state as it
was. The mean action is a linear read-out of the hidden state; the log standard deviation
is a learned, state-independent vector.

`collect_trials` runs ``trials_per_task`` trials of ``K`` episodes on every task of a
batched environment (`PointNavigation`; `collect_gym_trials`: a simulator family's
environment pool, `rl/gym_collector.py`) and returns them as an `EpisodeBatch` whose
"episodes" are the trials and whose time axis is the ``K * horizon`` steps of a trial;
``log_probs`` are recomputed in one differentiable pass over the whole sequence
(`trial_log_probs`), so they are functions of the policy's parameters.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from metalab.rl.episodes import EpisodeBatch, discounted_returns, gae
from metalab.rl.gym_collector import EnvPool, first_dtype, run_steps
from metalab.rl.navigation import PointNavigation
from metalab.rl.policies import gaussian_log_prob, standard_normal_like
from metalab.rl.rollout import step_running
from metalab.validation import check_positive_int, check_real


class GRUGaussianPolicy(nn.Module):
    """``forward(inputs [..., L, input_dim], masks [..., L], state=None) -> (mean, log_std,
    state)`` over a sequence (from the zero state: a trial's start); `step` is one step.

    ``action_scale`` ``c``: the policy acts in units of ``c`` (``mean = c * head(h)``,
    ``log_std = log_std_param + log c``), so with ``c`` the environment's action bound
    (nav2d: 0.1) the initial policy's mean and noise are on the scale of the actions the
    environment applies (at ``c = 1`` and ``init_log_std = 0`` the noise is ten times
    nav2d's bound and the clipped action hardly depends on the mean)."""

    def __init__(self, observation_dim: int, action_dim: int, hidden: int = 64,
                 init_log_std: float = 0.0, action_scale: float = 1.0) -> None:
        super().__init__()
        self.action_scale = check_real("action_scale", action_scale, inclusive=False)
        self.observation_dim = check_positive_int("observation_dim", observation_dim)
        self.action_dim = check_positive_int("action_dim", action_dim)
        self.hidden = check_positive_int("hidden", hidden)
        self.input_dim = observation_dim + action_dim + 2
        self.cell = nn.GRUCell(self.input_dim, hidden)
        self.head = nn.Linear(hidden, action_dim)
        self.log_std = nn.Parameter(torch.full((action_dim,), float(init_log_std)))

    def initial_state(self, batch_shape: tuple[int, ...], like: Tensor) -> Tensor:
        return like.new_zeros(*batch_shape, self.hidden)

    def step(self, inputs: Tensor, state: Tensor, mask: Tensor | None = None
             ) -> tuple[Tensor, Tensor, Tensor]:
        """``(mean, log_std, next_state)`` for ``inputs [..., input_dim]``; where ``mask`` is
        0 the state is kept."""
        if inputs.shape[-1] != self.input_dim:
            raise ValueError(f"inputs must have last dimension {self.input_dim} (observation, "
                             f"previous action, previous reward, episode start), got shape "
                             f"{tuple(inputs.shape)}")
        batch = inputs.shape[:-1]
        new = self.cell(inputs.reshape(-1, self.input_dim),
                        state.reshape(-1, self.hidden)).reshape(*batch, self.hidden)
        if mask is not None:
            keep = mask.unsqueeze(-1)
            new = keep * new + (1 - keep) * state
        mean = self.action_scale * self.head(new)
        log_std = self.log_std + math.log(self.action_scale)
        return mean, log_std.expand_as(mean), new

    def forward(self, inputs: Tensor, masks: Tensor, state: Tensor | None = None
                ) -> tuple[Tensor, Tensor, Tensor]:
        """``(mean [..., L, act], log_std, final state)`` over ``inputs [..., L, input]``
        from ``state`` (``None``: zeros, the start of a trial)."""
        if state is None:
            state = self.initial_state(inputs.shape[:-2], inputs)
        means, log_stds = [], []
        for t in range(inputs.shape[-2]):
            mean, log_std, state = self.step(inputs[..., t, :], state, masks[..., t])
            means.append(mean)
            log_stds.append(log_std)
        return torch.stack(means, dim=-2), torch.stack(log_stds, dim=-2), state


def trial_inputs(observations: Tensor, actions: Tensor, rewards: Tensor, horizon: int
                 ) -> Tensor:
    """The policy's inputs ``[..., K*H, obs + act + 2]`` of trials with these observations,
    actions and rewards: the previous step's action and reward (zero at the trial's start)
    and a flag at the first step of every episode."""
    previous_actions = torch.cat([torch.zeros_like(actions[..., :1, :]),
                                  actions[..., :-1, :]], dim=-2)
    previous_rewards = torch.cat([torch.zeros_like(rewards[..., :1]), rewards[..., :-1]],
                                 dim=-1)
    steps = torch.arange(rewards.shape[-1], device=rewards.device)
    starts = (steps % horizon == 0).to(rewards.dtype).expand_as(rewards)
    return torch.cat([observations, previous_actions, previous_rewards.unsqueeze(-1),
                      starts.unsqueeze(-1)], dim=-1)


def trial_log_probs(policy: nn.Module, params: Mapping[str, Tensor], batch: EpisodeBatch,
                    horizon: int) -> tuple[Tensor, Tensor, Tensor]:
    """``(log_probs, mean, log_std)`` of a batch of trials at ``params`` (differentiable)."""
    inputs = trial_inputs(batch.observations, batch.actions, batch.rewards, horizon)
    mean, log_std, _ = functional_call(policy, dict(params), (inputs, batch.masks))
    return gaussian_log_prob(batch.actions, mean, log_std), mean, log_std


def collect_trials(env: PointNavigation, policy: nn.Module, params: Mapping[str, Tensor],
                   goals: Tensor, trials_per_task: int, episodes_per_trial: int, *,
                   generator: torch.Generator | None = None) -> EpisodeBatch:
    """``trials_per_task`` trials of ``episodes_per_trial`` episodes on every goal, the
    hidden state reset at each trial's start only (see the module docstring)."""
    env.check_goals(goals)
    trials = check_positive_int("trials_per_task", trials_per_task)
    episodes = check_positive_int("episodes_per_trial", episodes_per_trial)
    params = dict(params)
    steps: dict[str, list[Tensor]] = {"observations": [], "actions": [], "rewards": [],
                                      "masks": []}
    with torch.no_grad():
        state = policy.initial_state((goals.shape[0], trials), goals)
        previous_action = goals.new_zeros(goals.shape[0], trials, env.action_dim)
        previous_reward = goals.new_zeros(goals.shape[0], trials)
        for _ in range(episodes):
            positions = env.initial_positions(goals, trials)
            alive = positions.new_ones(positions.shape[:2], dtype=goals.dtype)
            for t in range(env.horizon):
                start = torch.full_like(previous_reward, float(t == 0))
                inputs = torch.cat([positions, previous_action, previous_reward.unsqueeze(-1),
                                    start.unsqueeze(-1)], dim=-1)
                mean, log_std, state = functional_call(
                    policy, params, (inputs.unsqueeze(-2), alive.unsqueeze(-1), state))
                positions, alive, previous_action, previous_reward = step_running(
                    env, positions, alive, mean.squeeze(-2), log_std.squeeze(-2), goals,
                    generator, steps)  # the previous action and reward as stored
    rewards = torch.stack(steps["rewards"], dim=2)
    batch = EpisodeBatch(torch.stack(steps["observations"], dim=2),
                         torch.stack(steps["actions"], dim=2), rewards, torch.zeros_like(rewards),
                         torch.stack(steps["masks"], dim=2),
                         torch.arange(goals.shape[0], device=goals.device))
    log_probs, _, _ = trial_log_probs(policy, params, batch, env.horizon)
    return EpisodeBatch(batch.observations, batch.actions, batch.rewards, log_probs,
                        batch.masks, batch.task_ids)


def collect_gym_trials(family: Any, policy: nn.Module, params: Mapping[str, Tensor],
                       tasks: Sequence, trials_per_task: int, episodes_per_trial: int, *,
                       pool: EnvPool | None = None, generator: torch.Generator | None = None
                       ) -> EpisodeBatch:
    """`collect_trials` on a simulator family (``tasks``: what its ``set_task`` takes):
    ``trials_per_task`` trials of ``episodes_per_trial`` episodes of ``family.horizon``
    steps on every task, stepped on ``pool`` (a fresh `EnvPool` when ``None``), the hidden
    state reset at each trial's start only. The environment gets the Gaussian action
    clipped to its action space; the batch stores the sampled one."""
    trials = check_positive_int("trials_per_task", trials_per_task)
    episodes = check_positive_int("episodes_per_trial", episodes_per_trial)
    if len(tasks) == 0:
        raise ValueError("tasks must hold at least one task, got none")
    if policy.action_dim != family.action_dim or policy.observation_dim != family.observation_dim:
        raise ValueError(f"policy observation_dim/action_dim ({policy.observation_dim}, "
                         f"{policy.action_dim}) must equal the family's "
                         f"({family.observation_dim}, {family.action_dim})")
    params = dict(params)
    dtype = first_dtype(params)
    device = next(iter(params.values())).device
    shape = (len(tasks), trials)
    owned = pool is None
    pool = EnvPool(family) if pool is None else pool
    carried = {"state": None, "action": torch.zeros(*shape, family.action_dim, dtype=dtype,
                                                    device=device),
               "reward": torch.zeros(shape, dtype=dtype, device=device)}

    def act(observations: Tensor, alive: Tensor, records: dict) -> tuple[Tensor, Tensor]:
        start = not records["actions"]  # the episode's first step
        previous_action = carried["action"] if start else records["actions"][-1]
        previous_reward = carried["reward"] if start else records["rewards"][-1]
        inputs = torch.cat([observations, previous_action, previous_reward.unsqueeze(-1),
                            torch.full_like(previous_reward, float(start)).unsqueeze(-1)], -1)
        mean, log_std, carried["state"] = functional_call(
            policy, params, (inputs.unsqueeze(-2), alive.unsqueeze(-1), carried["state"]))
        mean, log_std = mean.squeeze(-2), log_std.squeeze(-2)
        action = mean + torch.exp(log_std) * standard_normal_like(mean, generator)
        return action, action

    parts: list[dict[str, Tensor]] = []
    try:
        bounds = pool.assign(tasks, trials)
        with torch.no_grad():
            for _ in range(episodes):
                steps = run_steps(pool, bounds, act, shape, family.horizon, (dtype, device),
                                  generator)
                carried["action"] = steps["actions"][..., -1, :]  # as stored (padding too)
                carried["reward"] = steps["rewards"][..., -1]
                parts.append(steps)
    finally:
        if owned:
            pool.close()
    fields = {key: torch.cat([part[key] for part in parts], dim=2)
              for key in ("observations", "actions", "rewards", "masks")}
    batch = EpisodeBatch(fields["observations"], fields["actions"], fields["rewards"],
                         torch.zeros_like(fields["rewards"]), fields["masks"],
                         torch.arange(len(tasks), device=device))
    log_probs, _, _ = trial_log_probs(policy, params, batch, family.horizon)
    return EpisodeBatch(batch.observations, batch.actions, batch.rewards, log_probs,
                        batch.masks, batch.task_ids)


def trial_returns_and_advantages(rewards: Tensor, values_of: Callable[[Tensor], Tensor],
                                 masks: Tensor, gamma: float, lam: float
                                 ) -> tuple[Tensor, Tensor, Tensor]:
    """``(returns, values, advantages) [..., K*H]`` of trials whose credit spans the trial.

    The discounted return and GAE run over the trial's *valid* steps in order, so the
    steps left masked after an episode ended early are skipped, not a cut: a step of
    episode ``k`` is credited with the rewards of episodes ``k + 1 .. K`` (``G_t = r_t +
    gamma G_{t'}``, ``t'`` the next valid step). `discounted_returns` and `gae` alone would
    zero the chain at the first masked step. ``values_of(returns)`` gives the baseline
    ``[..., K*H]`` fitted on those returns (e.g. `linear_baseline_values`).
    """
    order = torch.argsort(1 - masks, dim=-1, stable=True)  # valid steps first, in order

    def compact(x: Tensor) -> Tensor:
        return torch.gather(x, -1, order)

    def expand(x: Tensor) -> Tensor:
        return torch.zeros_like(x).scatter(-1, order, x)

    packed_masks = compact(masks)
    returns = expand(discounted_returns(compact(rewards), packed_masks, gamma))
    values = values_of(returns)
    advantages = expand(gae(compact(rewards), compact(values), packed_masks, gamma, lam))
    return returns, values, advantages
