"""Online meta-learning protocols on a `TaskStream` (Finn, Rajeswaran, Kakade & Levine 2019,
"Online Meta-Learning"): follow the meta-leader and the paper's three baselines.

After each arriving batch of task ``t`` the learner adapts, from its current parameters,
to every example of task ``t`` arrived so far and is scored on task ``t``'s held-out
examples; then (protocols that learn across tasks) it takes ``updates_per_batch`` updates
on meta-batches drawn from the stream's buffer of all tasks seen so far. Each protocol is
one learner (built by the caller's ``make_learner(**learner_options)``, e.g. a
gradient-based meta-learner taking ``inner_steps``) and three facts:

- ``ftml`` (follow the meta-leader, eq. 4 / Algorithm 1): training adapts with the
  learner's own inner steps (the meta-gradient of the query loss after adaptation);
  evaluation adapts with ``eval_inner_steps``;
- ``ftl`` (follow the leader): training with 0 inner steps is joint training of one model on
  every task's data so far (pretraining); evaluation fine-tunes it on task ``t``'s data with
  ``eval_inner_steps`` steps;
- ``toe`` (train on everything): the same joint training, evaluated without fine-tuning;
- ``scratch`` (train from scratch): no update across tasks; evaluation trains the initial
  (random) parameters on task ``t``'s data with ``eval_inner_steps`` steps.

All four therefore learn task ``t`` with the same budget (the same steps, rate and data)
and differ only in where they start, which is the paper's question.

The driver is thin on purpose: each update is the trainer's own `Trainer.train_step`
(meta-gradient by the run's backward step, clipping, schedule, optimizer step) on a
`BufferSource`; it does not re-implement a training loop. It cannot be `Trainer.fit`
because the data a step may draw change between steps (the stream advances and evaluation
interleaves), which `fit`'s fixed source and step count do not express.

Metrics per task index: `examples_to_threshold` (the examples of task ``t`` that arrived
before its held-out accuracy first reached ``threshold``; 0.9 in the paper) and
`accuracy_at` (the held-out accuracy once ``budget`` examples have arrived).
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from metalab.tasks.stream import BufferSource, TaskStream
from metalab.train.trainer import Trainer
from metalab.validation import check_choice, check_positive_int


@dataclass(frozen=True)
class Protocol:
    """``learner_options`` build the learner; ``eval_inner_steps`` adapt it to task ``t``
    (``None``: the learner's own); ``updates`` whether it learns across tasks."""

    name: str
    learner_options: dict[str, Any]
    eval_inner_steps: int | None
    updates: bool


def protocols(inner_steps: int = 1, eval_inner_steps: int = 5) -> dict[str, Protocol]:
    """The four protocols of the module doc, with ``ftml``'s training ``inner_steps`` and
    everyone's evaluation ``eval_inner_steps`` (the ones that adapt)."""
    return {
        "ftml": Protocol("ftml", {"inner_steps": inner_steps}, eval_inner_steps, True),
        "ftl": Protocol("ftl", {"inner_steps": 0}, eval_inner_steps, True),
        "toe": Protocol("toe", {"inner_steps": 0}, 0, True),
        "scratch": Protocol("scratch", {"inner_steps": 0}, eval_inner_steps, False),
    }


def examples_to_threshold(examples: list[int], accuracies: list[float],
                          threshold: float) -> int | None:
    """The first ``examples[i]`` with ``accuracies[i] >= threshold``; ``None`` if never."""
    if len(examples) != len(accuracies):
        raise ValueError(f"examples and accuracies must have the same length, got "
                         f"{len(examples)} and {len(accuracies)}")
    for count, accuracy in zip(examples, accuracies, strict=True):
        if accuracy >= threshold:
            return count
    return None


def accuracy_at(examples: list[int], accuracies: list[float], budget: int) -> float | None:
    """The accuracy at the first evaluation with at least ``budget`` examples arrived."""
    for count, accuracy in zip(examples, accuracies, strict=True):
        if count >= budget:
            return accuracy
    return None


@dataclass
class OnlineResult:
    """Per task index: the evaluations ``(examples arrived, held-out accuracy)``."""

    protocol: str
    curves: list[list[tuple[int, float]]] = field(default_factory=list)

    def to_threshold(self, threshold: float, censor_at: int | None = None) -> list[float]:
        """`examples_to_threshold` per task; a task that never reaches it counts as
        ``censor_at`` (default: its examples plus one, i.e. "more than all it had")."""
        values = []
        for curve in self.curves:
            examples, accuracies = [c for c, _ in curve], [a for _, a in curve]
            reached = examples_to_threshold(examples, accuracies, threshold)
            cap = censor_at if censor_at is not None else (examples[-1] + 1 if examples
                                                            else math.inf)
            values.append(float(cap if reached is None else reached))
        return values

    def accuracy_at(self, budget: int) -> list[float | None]:
        return [accuracy_at([c for c, _ in cv], [a for _, a in cv], budget)
                for cv in self.curves]


@torch.no_grad()
def held_out_accuracy(learner, stream: TaskStream, inner_steps: int | None) -> float:
    """Adapt ``learner`` to the current task's arrived examples; accuracy on its held-out."""
    support_x, support_y = stream.received()
    test_x, test_y = stream.held_out()
    options = {} if inner_steps is None else {"inner_steps": inner_steps}
    with torch.enable_grad():
        predictor = learner.adapt(support_x, support_y, **options)
    return float((predictor(test_x).argmax(-1) == test_y).float().mean())


def run_online(make_learner: Callable[..., torch.nn.Module], stream: TaskStream,
               protocol: Protocol, *, updates_per_batch: int = 5, tasks_per_update: int = 4,
               support: int = 10, query: int = 10, lr: float = 1e-3,
               optimizer: str = "adam", seed: int = 0,
               run_dir: str | Path | None = None) -> OnlineResult:
    """Run ``protocol`` over the whole ``stream`` (module doc); returns the curves."""
    check_choice("protocol", protocol.name, sorted(protocols()))
    check_positive_int("updates_per_batch", updates_per_batch)
    torch.manual_seed(seed)
    learner = make_learner(**protocol.learner_options)
    source = BufferSource(stream, tasks_per_update, support, query)
    total_batches = sum(math.ceil(t.train_x.shape[0] / stream.batch_size) for t in stream.tasks)
    with tempfile.TemporaryDirectory() as scratch_dir:
        trainer = Trainer(learner, source, run_dir or scratch_dir, optimizer=optimizer, lr=lr,
                          steps=max(total_batches * updates_per_batch, 1),
                          meta_batch=tasks_per_update, val_every=0, progress=False, seed=seed)
        result = OnlineResult(protocol.name)
        while stream.task_index + 1 < len(stream):
            stream.begin_task()
            curve = []
            while stream.has_batch():
                stream.next_batch()
                curve.append((stream.arrived,
                              held_out_accuracy(learner, stream, protocol.eval_inner_steps)))
                if protocol.updates and source.ready():
                    for _ in range(updates_per_batch):
                        trainer.train_step()
                        trainer.step += 1
            result.curves.append(curve)
    return result
