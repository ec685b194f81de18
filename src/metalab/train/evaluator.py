"""Meta-test evaluation: mean metric over episodes with a 95% confidence interval."""

from __future__ import annotations

import math

import torch

from metalab.algorithms import MetaLearner
from metalab.tasks import TaskSource


def mean_ci95(values: torch.Tensor) -> tuple[float, float]:
    """Mean and the half-width ``1.96 * sd / sqrt(n)`` (sample sd; 0 for one value)."""
    values = values.double()
    n = values.numel()
    sd = values.std(unbiased=True).item() if n > 1 else 0.0
    return values.mean().item(), 1.96 * sd / math.sqrt(n)


class Evaluator:
    """Adapts ``learner`` to ``episodes`` tasks from a source and scores each query set.

    Args:
        episodes: number of tasks (600 by default, the usual few-shot protocol).
    """

    def __init__(self, episodes: int = 600) -> None:
        if episodes < 1:
            raise ValueError(f"episodes must be >= 1, got {episodes}")
        self.episodes = episodes

    def per_task(self, learner: MetaLearner, source: TaskSource,
                 device: torch.device | str = "cpu", dtype: torch.dtype | None = None
                 ) -> dict[str, torch.Tensor]:
        """Per-task values of every metric (and ``loss``) over ``episodes`` tasks."""
        collected: dict[str, list[torch.Tensor]] = {}
        seen = 0
        while seen < self.episodes:
            batch = source.sample().to(device)
            if dtype is not None:
                batch = batch.to(dtype)
            losses, metrics = learner.task_losses(batch, training=False)
            for name, values in {"loss": losses, **metrics}.items():
                collected.setdefault(name, []).append(values.detach().cpu())
            seen += len(batch)
        return {name: torch.cat(parts)[: self.episodes] for name, parts in collected.items()}

    def evaluate(self, learner: MetaLearner, source: TaskSource,
                 device: torch.device | str = "cpu", dtype: torch.dtype | None = None
                 ) -> dict[str, float | int | str]:
        """``{"metric", "mean", "ci95", "episodes"}`` for the learner's main metric."""
        was_training = learner.training
        learner.eval()
        try:
            values = self.per_task(learner, source, device, dtype)
        finally:
            learner.train(was_training)
        mean, ci95 = mean_ci95(values[learner.metric_name])
        return {"metric": learner.metric_name, "mean": mean, "ci95": ci95,
                "episodes": self.episodes}
