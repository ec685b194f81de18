"""Meta-World benchmarks as task families (Yu et al. 2019; ``pip install "metalab[metaworld]"``,
metaworld 3.1.1 with mujoco 3.3.0).

Through the package's classic benchmark API, which gives the right task sets:
``metaworld.ML1(env_name, seed=)`` / ``metaworld.ML10(seed=)`` hold ``train_classes`` /
``test_classes`` (environment classes by name) and ``train_tasks`` / ``test_tasks`` (a
``Task`` per parametric variation: its pickled ``data`` fixes the object and goal positions).
ML1 is one environment (e.g. ``reach-v3``) with 50 train and 50 test variations whose goals do
not overlap; ML10 is 10 train environments (50 variations each) and 5 held-out test
environments. (Not the gymnasium registrations ``Meta-World/ML1-train``: in 3.1.1 their
train vector environment serves the test goals.)

A family is one benchmark and one split: ``sample_tasks(n, generator)`` draws ``n`` distinct
tasks of the split, ``make_env(task)`` builds an environment of the task's class,
``set_task(env, task)`` switches the variation. Success is the environment's own signal,
``info["success"]`` (``success_key``). The goal is not observed (the last 3 of the 39
observation entries are zeros). Building a benchmark takes seconds (ML10 about 15-20 s),
so benchmarks are cached per (benchmark, environment, seed) for the process.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np
import torch

from metalab.rl.extras import require
from metalab.validation import check_choice, check_positive_int

EXTRA = "metaworld"
BENCHMARKS = ("ML1", "ML10")
SPLITS = ("train", "test")
MAX_PATH_LENGTH = 500  # Meta-World truncates every episode here


@lru_cache(maxsize=8)
def build_benchmark(benchmark: str, env_name: str | None, seed: int) -> Any:
    """The metaworld benchmark object, built once per process for each argument set."""
    metaworld = require("metaworld", EXTRA)
    if benchmark == "ML1":
        names = sorted(metaworld.ML1.ENV_NAMES)
        check_choice("env_name", env_name, names)
        return metaworld.ML1(env_name, seed=seed)
    return metaworld.ML10(seed=seed)


class MetaWorldTasks:
    """The train or test tasks of a Meta-World ML1 or ML10 benchmark."""

    observation_dim = 39
    action_dim = 4
    success_key = "success"

    def __init__(self, benchmark: str = "ML1", env_name: str | None = "reach-v3",
                 split: str = "train", horizon: int = MAX_PATH_LENGTH, seed: int = 0):
        self.benchmark = check_choice("benchmark", benchmark, BENCHMARKS)
        if benchmark == "ML1" and not isinstance(env_name, str):
            raise ValueError(f"env_name must name a Meta-World environment (e.g. 'reach-v3') "
                             f"for ML1, got {env_name!r}")
        if benchmark != "ML1" and env_name is not None:
            raise ValueError(f"env_name must be None for {benchmark} (its environments are "
                             f"fixed), got {env_name!r}")
        self.env_name = env_name
        self.split = check_choice("split", split, SPLITS)
        self.horizon = check_positive_int("horizon", horizon)
        if horizon > MAX_PATH_LENGTH:
            raise ValueError(f"horizon must be at most {MAX_PATH_LENGTH} (Meta-World's episode "
                             f"length), got {horizon}")
        self.seed = check_positive_int("seed", seed, minimum=0)

    def _benchmark(self) -> Any:
        return build_benchmark(self.benchmark, self.env_name, self.seed)

    @property
    def tasks(self) -> list:
        """Every task of the split, in the benchmark's order."""
        return list(getattr(self._benchmark(), f"{self.split}_tasks"))

    @property
    def classes(self) -> dict[str, type]:
        """The split's environment classes by name."""
        return dict(getattr(self._benchmark(), f"{self.split}_classes"))

    def sample_indices(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` distinct indices into ``tasks``, drawn uniformly (``n`` at most their number)."""
        n = check_positive_int("n", n)
        count = len(self.tasks)
        if n > count:
            raise ValueError(f"n must be at most the {count} {self.split} tasks of "
                             f"{self.benchmark}, got {n}")
        return torch.randperm(count, generator=generator)[:n]

    def sample_tasks(self, n: int, generator: torch.Generator | None = None) -> list:
        """``n`` distinct tasks of the split, drawn uniformly (``n`` at most their number)."""
        tasks = self.tasks
        return [tasks[i] for i in self.sample_indices(n, generator).tolist()]

    def check_task(self, task: Any) -> Any:
        if not hasattr(task, "env_name") or not hasattr(task, "data"):
            raise ValueError(f"task must be a metaworld Task (from sample_tasks or tasks), "
                             f"got {type(task).__name__}")
        classes = self.classes
        if task.env_name not in classes:
            raise ValueError(f"task must be one of the {self.split} environments "
                             f"{sorted(classes)} of {self.benchmark}, got {task.env_name!r}")
        return task

    def env_key(self, task: Any) -> str:
        """Environments with equal keys can run each other's tasks: the environment name."""
        return self.check_task(task).env_name

    def make_env(self, task: Any) -> Any:
        """A fresh environment of ``task``'s class (the task still has to be set)."""
        return self.classes[self.env_key(task)]()

    def set_task(self, env: Any, task: Any) -> None:
        task = self.check_task(task)
        expected = self.classes[task.env_name]
        if type(env) is not expected:
            raise ValueError(f"env must be a {expected.__name__} for a {task.env_name!r} task, "
                             f"got {type(env).__name__}")
        env.set_task(task)

    @staticmethod
    def goal(env: Any) -> np.ndarray:
        """The goal position of the environment's current variation (set after ``reset``)."""
        return np.array(env._target_pos, dtype=np.float64)
