"""The support-swap diagnostic of memorization (Yin et al., "Meta-Learning without
Memorization", ICLR 2020).

A meta-learner that memorized the meta-training tasks answers from the query input alone:
its query loss does not change when the task's support set is replaced by another task's.
`support_swap_loss` measures both numbers on one batch: every task adapts once to its own
support set and once to the support set of another task of the batch (a derangement, so no
task keeps its own), and is scored on its own query set each time.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from metalab.algorithms.base import MetaLearner
from metalab.tasks import TaskBatch


def derangement(n: int, generator: torch.Generator | None = None) -> Tensor:
    """A uniformly random permutation of ``range(n)`` with no fixed point (``n >= 2``).

    Rejection sampling: a random permutation is a derangement with probability about 1/e.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"a derangement needs n >= 2 items (a single task has no other task "
                         f"to take a support set from), got n={n!r}")
    identity = torch.arange(n)
    while True:
        permutation = torch.randperm(n, generator=generator)
        if not bool((permutation == identity).any()):
            return permutation


def swap_supports(batch: TaskBatch, permutation: Tensor) -> TaskBatch:
    """``batch`` with task ``i``'s support set replaced by task ``permutation[i]``'s."""
    if tuple(permutation.shape) != (len(batch),):
        raise ValueError(f"permutation must have shape [{len(batch)}], got "
                         f"{tuple(permutation.shape)}")
    if not torch.equal(permutation.sort().values, torch.arange(len(batch))):
        raise ValueError(f"permutation must be a permutation of range({len(batch)}), got "
                         f"{permutation.tolist()}")
    return TaskBatch(batch.support_x[permutation], batch.support_y[permutation], batch.query_x,
                     batch.query_y, num_classes=batch.num_classes, task_id=batch.task_id)


class SupportSwap(NamedTuple):
    """Per-task values ``[T]`` of the learner's metric with its own and a swapped support."""

    metric: str
    normal: Tensor
    swapped: Tensor
    permutation: Tensor


def support_swap_loss(learner: MetaLearner, batch: TaskBatch,
                      generator: torch.Generator | None = None) -> SupportSwap:
    """Query metric (``mse``, ``accuracy`` …) after adapting to the own vs another task's support.

    Both passes use ``learner.task_losses(..., training=False)``, the meta-test adaptation
    (``eval_inner_steps`` for MAML-type learners).
    """
    permutation = derangement(len(batch), generator)
    was_training = learner.training
    learner.eval()
    try:
        _, normal = learner.task_losses(batch, training=False)
        _, swapped = learner.task_losses(swap_supports(batch, permutation), training=False)
    finally:
        learner.train(was_training)
    name = learner.metric_name
    return SupportSwap(name, normal[name].detach(), swapped[name].detach(), permutation)
