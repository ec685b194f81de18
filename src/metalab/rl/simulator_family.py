"""Simulator task families (MuJoCo locomotion, Meta-World) as the `TaskFamily` a meta-RL
method trains on: ``data.name: half-cheetah-vel`` / ``half-cheetah-dir`` / ``ant-dir`` /
``metaworld`` in a config.

`SimulatorFamily` wraps a simulator's task set (`rl/mujoco_tasks.py`,
`rl/metaworld_tasks.py`) and its collector (`collect_gym_rollouts`) into the four members
of the protocol. Tasks travel as a tensor (the task source and `EnvironmentTasks` need one):
the MuJoCo families' tasks already are one (target velocities, directions); a Meta-World
task is a pickled variation, so it travels as its index in the split's task list
(``sample_tasks`` draws distinct indices). A family whose environments report success
(Meta-World's ``info["success"]``) fills the batch's ``success [T, E]``: 1 for an episode
in which the environment reported success at some step (Meta-World's evaluation
protocol). The environments are kept between collections (one `EnvPool`, or
``workers >= 1``: a `ProcessEnvPool` of that many processes). A simulator family also
serves RL² (``collect_trials``, `rl/recurrent.py`) and PEARL (``collect_latent``,
`rl/latent_rollout.py`) on the same pool.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from metalab.rl.episodes import EpisodeBatch
from metalab.rl.gym_collector import EnvPool, collect_gym_rollouts
from metalab.rl.latent_rollout import collect_gym_latent_episodes
from metalab.rl.metaworld_tasks import MAX_PATH_LENGTH, MetaWorldTasks
from metalab.rl.mujoco_tasks import FAMILIES as LOCOMOTION
from metalab.rl.recurrent import collect_gym_trials
from metalab.validation import check_positive_int


class SimulatorFamily:
    """A simulator task set (``simulator``: `LocomotionTasks` or `MetaWorldTasks`) as a
    `TaskFamily`; ``workers`` > 0 steps the environments in that many processes."""

    def __init__(self, simulator: Any, workers: int = 0) -> None:
        self.simulator = simulator
        self.workers = check_positive_int("workers", workers, minimum=0)
        self._pool: Any = None
        self.indexed = isinstance(simulator, MetaWorldTasks)
        self.success_key = getattr(simulator, "success_key", None)

    @property
    def observation_dim(self) -> int:
        return self.simulator.observation_dim

    @property
    def action_dim(self) -> int:
        return self.simulator.action_dim

    @property
    def horizon(self) -> int:
        return self.simulator.horizon

    def sample_tasks(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` tasks: the simulator's tensor, or (Meta-World) ``n`` distinct indices into
        the split's task list, as a long tensor."""
        if self.indexed:
            return self.simulator.sample_indices(n, generator)
        return self.simulator.sample_tasks(n, generator)

    def specifications(self, tasks: Tensor) -> list:
        """What the simulator's ``set_task`` takes for each entry of ``tasks``."""
        if not self.indexed:
            return list(tasks)
        every = self.simulator.tasks
        if tasks.dtype.is_floating_point or tasks.dim() != 1:
            raise ValueError(f"tasks must be a 1-D integer tensor of task indices for "
                             f"Meta-World, got {tasks.dtype} of shape {tuple(tasks.shape)}")
        if len(tasks) and (int(tasks.min()) < 0 or int(tasks.max()) >= len(every)):
            raise ValueError(f"tasks must index the {len(every)} {self.simulator.split} tasks, "
                             f"got {tasks.tolist()}")
        return [every[i] for i in tasks.tolist()]

    def pool(self) -> Any:
        if self._pool is None:
            if self.workers:
                from metalab.rl.process_pool import ProcessEnvPool
                self._pool = ProcessEnvPool(self.simulator, workers=self.workers)
            else:
                self._pool = EnvPool(self.simulator)
        return self._pool

    def collect(self, policy: nn.Module, params: Mapping[str, Tensor], tasks: Tensor,
                episodes_per_task: int, *, generator: torch.Generator | None = None,
                per_task: bool = False) -> EpisodeBatch:
        keys = (self.success_key,) if self.success_key else ()
        batch, infos = collect_gym_rollouts(self.simulator, policy, params,
                                            self.specifications(tasks), episodes_per_task,
                                            pool=self.pool(), generator=generator,
                                            per_task=per_task, info_keys=keys)
        if not keys:
            return batch
        success = (infos[self.success_key] > 0).any(dim=-1).to(batch.rewards.dtype)
        return EpisodeBatch(batch.observations, batch.actions, batch.rewards, batch.log_probs,
                            batch.masks, batch.task_ids, success)

    def collect_trials(self, policy: nn.Module, params: Mapping[str, Tensor], tasks: Tensor,
                       trials_per_task: int, episodes_per_trial: int, *,
                       generator: torch.Generator | None = None) -> EpisodeBatch:
        """RL²'s trials (`collect_gym_trials`) on this family's pool."""
        return collect_gym_trials(self.simulator, policy, params, self.specifications(tasks),
                                  trials_per_task, episodes_per_trial, pool=self.pool(),
                                  generator=generator)

    def collect_latent(self, policy: nn.Module, z: Tensor, tasks: Tensor, *,
                       generator: torch.Generator | None = None,
                       deterministic: bool = False) -> dict[str, Tensor]:
        """PEARL's transitions (`collect_gym_latent_episodes`): one episode per latent
        ``z [T, E, z_dim]`` on this family's pool."""
        return collect_gym_latent_episodes(self.simulator, policy, z, self.specifications(tasks),
                                           pool=self.pool(), generator=generator,
                                           deterministic=deterministic)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_pool": None}  # environments are not pickled


def build_half_cheetah_vel(horizon: int = 200, velocity_range: tuple[float, float] = (0.0, 2.0),
                           workers: int = 0) -> SimulatorFamily:
    """``data.name: half-cheetah-vel`` (`HalfCheetahVelocity`)."""
    return SimulatorFamily(LOCOMOTION["half-cheetah-vel"](horizon, tuple(velocity_range)),
                           workers)


def direction_factory(name: str):
    """``data.name: name`` for a direction family (options: horizon, workers)."""

    def build(horizon: int = 200, workers: int = 0) -> SimulatorFamily:
        return SimulatorFamily(LOCOMOTION[name](horizon), workers)

    build.__name__ = f"build_{name.replace('-', '_')}"
    return build


def build_metaworld(benchmark: str = "ML1", env_name: str | None = "reach-v3",
                    split: str = "train", horizon: int = MAX_PATH_LENGTH, seed: int = 0,
                    workers: int = 0) -> SimulatorFamily:
    """``data.name: metaworld``: the ``split`` tasks of a Meta-World benchmark (the task
    source passes ``split``: "train" for meta-training, "test" for meta-test)."""
    return SimulatorFamily(MetaWorldTasks(benchmark, env_name, split, horizon, seed), workers)


SIMULATOR_FAMILIES = {"half-cheetah-vel": build_half_cheetah_vel,
                      "half-cheetah-dir": direction_factory("half-cheetah-dir"),
                      "ant-dir": direction_factory("ant-dir"), "metaworld": build_metaworld}
