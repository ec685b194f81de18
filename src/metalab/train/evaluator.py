"""Meta-test evaluation: mean metric over episodes with a 95% confidence interval."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch

from metalab.algorithms import MetaLearner
from metalab.algorithms.calibration import bootstrap_ece, pooled_confidence
from metalab.tasks import TaskBatch, TaskSource
from metalab.tasks.objective import lower_is_better


def mean_ci95(values: torch.Tensor) -> tuple[float, float]:
    """Mean and the half-width ``1.96 * sd / sqrt(n)`` (sample sd; 0 for one value)."""
    values = values.double()
    n = values.numel()
    sd = values.std(unbiased=True).item() if n > 1 else 0.0
    return values.mean().item(), 1.96 * sd / math.sqrt(n)


class Evaluator:
    """Adapts ``learner`` to ``episodes`` tasks from a source and scores each query set.

    Every task goes through ``learner.task_losses(batch, training=False, **options)``,
    which adapts with `MetaLearner.adapt`: the path a user calls.

    Args:
        episodes: number of tasks (600 by default, the usual few-shot protocol).
        options: adaptation options passed to every task's `adapt` (``inner_steps``);
            ``None`` values mean the learner's own default.
    """

    def __init__(self, episodes: int = 600, **options) -> None:
        if episodes < 1:
            raise ValueError(f"episodes must be >= 1, got {episodes}")
        self.episodes = episodes
        self.options = {k: v for k, v in options.items() if v is not None}

    def per_task(self, learner: MetaLearner, source: TaskSource,
                 device: torch.device | str = "cpu", dtype: torch.dtype | None = None
                 ) -> dict[str, torch.Tensor]:
        """Per-task values of every metric (and ``loss``) over ``episodes`` tasks.

        A source with a fixed evaluation set (``evaluation_batches()``, the multi-task
        sources) is scored on all of it once, whatever ``episodes`` says. When the batches
        carry task ids (groups, multi-task heads), ``"task_id"`` holds them.
        """
        collected: dict[str, list[torch.Tensor]] = {}
        if self.options:  # a clear error before any task is adapted
            learner.check_adapt_options(self.options)
        for batch in self._batches(source):
            batch = batch.to(device)
            if dtype is not None:
                batch = batch.to(dtype)
            losses, metrics = learner.task_losses(batch, training=False, **self.options)
            values_of = {"loss": losses, **metrics}
            if batch.task_id is not None:
                values_of["task_id"] = batch.task_id
            for name, values in values_of.items():
                collected.setdefault(name, []).append(values.detach().cpu())
        limit = None if hasattr(source, "evaluation_batches") else self.episodes
        return {name: torch.cat(parts)[:limit] for name, parts in collected.items()}

    def _batches(self, source: TaskSource) -> Iterator[TaskBatch]:
        if hasattr(source, "evaluation_batches"):
            yield from source.evaluation_batches()
            return
        seen = 0
        while seen < self.episodes:
            batch = source.sample()
            yield batch
            seen += len(batch)

    def evaluate(self, learner: MetaLearner, source: TaskSource,
                 device: torch.device | str = "cpu", dtype: torch.dtype | None = None
                 ) -> dict[str, float | int | str]:
        """``{"metric", "mean", "ci95", "episodes"}`` for the learner's main metric, and
        ``name``/``name_ci95`` for any other per-task value the learner reports beside it
        (a neural process's ``log_likelihood``).

        When the source names its groups or tasks (group data, multi-task data; see
        `group_names`) it adds `group_summary`'s keys. Task ids without names (a regression
        family's task index) get no per-group table.
        """
        was_training = learner.training
        learner.eval()
        try:
            values = self.per_task(learner, source, device, dtype)
        finally:
            learner.train(was_training)
        metric = learner.metric_name
        mean, ci95 = mean_ci95(values[metric])
        result = {"metric": metric, "mean": mean, "ci95": ci95,
                  "episodes": int(values[metric].numel())}
        for name in sorted(set(values) - {metric, "loss", "task_id", "calibration_bins"}):
            result[name], result[f"{name}_ci95"] = mean_ci95(values[name])  # reported beside
        if "calibration_bins" in values:  # pooled over every query, CI by task bootstrap
            result["ece"], result["ece_ci95"] = bootstrap_ece(values["calibration_bins"])
            result["confidence"] = pooled_confidence(values["calibration_bins"])
        names = group_names(source)
        if "task_id" in values and names is not None:
            result.update(group_summary(values[metric], values["task_id"], metric, names))
        return result


def group_names(source: TaskSource) -> list[str] | None:
    """Names of a source's groups or tasks (its dataset's groups, its task names)."""
    dataset = getattr(source, "dataset", None)
    names = getattr(source, "task_names", None)
    for attribute in ("group_names", "task_names"):
        if names is None:
            names = getattr(dataset, attribute, None)
    return None if names is None else [str(name) for name in names]


def group_summary(values: torch.Tensor, groups: torch.Tensor, metric: str = "accuracy",
                  names: list[str] | None = None) -> dict[str, Any]:
    """Average and worst-group ``metric`` over evaluation batches labelled by ``groups``.

    ``average_<metric>`` is the mean over all batches (the per-group average when every
    group has the same number of batches) with its 95% CI; ``worst_group_<metric>`` is the
    lowest per-group mean (the highest for an error such as ``mse`` or ``loss``), with that
    group's CI; ``per_group`` maps each group id to ``{"mean", "ci95", "batches"}`` (and
    ``"name"``, with ``names``).
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
        if names is not None:
            per_group[int(group)]["name"] = names[int(group)]
    worst = (max if lower_is_better(metric) else min)(per_group, key=lambda g: per_group[g]["mean"])
    mean, ci95 = mean_ci95(values)
    return {f"average_{metric}": mean, "average_ci95": ci95,
            f"worst_group_{metric}": per_group[worst]["mean"],
            "worst_group_ci95": per_group[worst]["ci95"], "worst_group": worst,
            "per_group": per_group}
