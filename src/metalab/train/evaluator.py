"""Meta-test evaluation: mean metric over episodes with a 95% confidence interval."""

from __future__ import annotations

import math
from typing import Any

import torch

from metalab.algorithms import MetaLearner
from metalab.tasks import TaskSource

LOWER_IS_BETTER = {"mse", "loss"}


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
        """Per-task values of every metric (and ``loss``) over ``episodes`` tasks.

        When the batches carry task ids (groups, multi-task heads), ``"task_id"`` holds them.
        """
        collected: dict[str, list[torch.Tensor]] = {}
        seen = 0
        while seen < self.episodes:
            batch = source.sample().to(device)
            if dtype is not None:
                batch = batch.to(dtype)
            losses, metrics = learner.task_losses(batch, training=False)
            values_of = {"loss": losses, **metrics}
            if batch.task_id is not None:
                values_of["task_id"] = batch.task_id
            for name, values in values_of.items():
                collected.setdefault(name, []).append(values.detach().cpu())
            seen += len(batch)
        return {name: torch.cat(parts)[: self.episodes] for name, parts in collected.items()}

    def evaluate(self, learner: MetaLearner, source: TaskSource,
                 device: torch.device | str = "cpu", dtype: torch.dtype | None = None
                 ) -> dict[str, float | int | str]:
        """``{"metric", "mean", "ci95", "episodes"}`` for the learner's main metric.

        With task ids (groups, tasks of a multi-task model) it adds `group_summary`'s keys.
        """
        was_training = learner.training
        learner.eval()
        try:
            values = self.per_task(learner, source, device, dtype)
        finally:
            learner.train(was_training)
        metric = learner.metric_name
        mean, ci95 = mean_ci95(values[metric])
        result = {"metric": metric, "mean": mean, "ci95": ci95, "episodes": self.episodes}
        if "task_id" in values:
            result.update(group_summary(values[metric], values["task_id"], metric))
        return result


def group_summary(values: torch.Tensor, groups: torch.Tensor, metric: str = "accuracy"
                  ) -> dict[str, Any]:
    """Average and worst-group ``metric`` over evaluation batches labelled by ``groups``.

    ``average_<metric>`` is the mean over all batches (the per-group average when every
    group has the same number of batches) with its 95% CI; ``worst_group_<metric>`` is the
    lowest per-group mean (the highest for an error such as ``mse`` or ``loss``), with that
    group's CI; ``per_group`` maps each group id to ``{"mean", "ci95", "batches"}``.
    """
    if values.shape != groups.shape or values.dim() != 1:
        raise ValueError(f"values and groups must be 1-D of the same length, got "
                         f"{tuple(values.shape)} and {tuple(groups.shape)}")
    if values.numel() == 0:
        raise ValueError("group_summary needs at least one evaluation batch")
    per_group = {}
    for group in groups.unique().tolist():
        mean, ci95 = mean_ci95(values[groups == group])
        per_group[int(group)] = {"mean": mean, "ci95": ci95,
                                 "batches": int((groups == group).sum())}
    lower_is_better = metric in LOWER_IS_BETTER
    worst = (max if lower_is_better else min)(per_group, key=lambda g: per_group[g]["mean"])
    mean, ci95 = mean_ci95(values)
    return {f"average_{metric}": mean, "average_ci95": ci95,
            f"worst_group_{metric}": per_group[worst]["mean"],
            "worst_group_ci95": per_group[worst]["ci95"], "worst_group": worst,
            "per_group": per_group}
