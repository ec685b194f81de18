"""Online meta-learning on a task stream (Finn, Rajeswaran, Kakade & Levine 2019, "Online
Meta-Learning"): follow the meta-leader and the paper's three baselines, as a step hook
of the one `Trainer` and a config section (``online``, `OnlineConfig`).

The trainer's clock: the stream delivers its batches at steps ``0, U, 2U, ...``
(``U = online.updates_per_batch``; ``train.steps`` is the stream's arrivals times ``U``).
When a batch of task ``t`` arrives, the learner adapts, from its current parameters, to
every example of task ``t`` arrived so far and is scored on task ``t``'s held-out examples
(a ``"split": "stream"`` record of ``metrics.jsonl``); the ``U`` steps that follow are
updates on meta-batches from the stream's replay buffer of every task seen so far (the
run's task source, `BufferSource`), taken when the protocol learns across tasks and the
buffer holds a task with ``support + query`` examples. The four protocols differ only in
where task ``t``'s learning starts, with the same learner, steps and data:

- ``ftml`` (follow the meta-leader, eq. 4 / Algorithm 1): updates are the learner's own
  meta-gradient (its inner steps on each buffer task's support, loss on its query);
  scoring adapts with ``online.eval_inner_steps``;
- ``ftl`` (follow the leader): updates with 0 inner steps, i.e. joint training of one model
  on every task seen so far; scoring fine-tunes it on task ``t``'s data;
- ``toe`` (train on everything): the same joint training, scored without fine-tuning;
- ``scratch``: no update across tasks; scoring trains the initial parameters on task ``t``.

`complete_online_config` writes these facts into the run's config (``algorithm.inner_steps:
0`` for the joint-training protocols, ``online.eval_inner_steps: 0`` for ``toe``), so the
saved config says what ran. The stream's state (round, arrival orders, generator) is the
task source's, checkpointed by the trainer: a resumed run continues with the same buffer
and the same next task. At the last step the hook writes ``stream.json``: per task index,
`summarise_stream`'s metrics.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from metalab.algorithms import algorithm_class
from metalab.tasks.stream import BufferSource
from metalab.train import distributed
from metalab.train.checkpoint import atomic_write_text
from metalab.train.config import ConfigError, OnlineConfig, TrainConfig, accepted_keywords
from metalab.train.sources import STREAM_FAMILIES

STREAM_FILE = "stream.json"
STREAM_SPLIT = "stream"


@dataclass(frozen=True)
class Protocol:
    """What a protocol changes: whether updates run the learner's inner loop
    (``False``: 0 inner steps, joint training), whether scoring adapts to the task, and
    whether it updates across tasks at all."""

    inner_loop_in_updates: bool
    adapts_when_scored: bool
    updates: bool


PROTOCOLS = {
    "ftml": Protocol(inner_loop_in_updates=True, adapts_when_scored=True, updates=True),
    "ftl": Protocol(inner_loop_in_updates=False, adapts_when_scored=True, updates=True),
    "toe": Protocol(inner_loop_in_updates=False, adapts_when_scored=False, updates=True),
    "scratch": Protocol(inner_loop_in_updates=False, adapts_when_scored=True, updates=False),
}


# -- the config -----------------------------------------------------------------------------
def complete_online_config(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` with its ``online`` protocol's facts written in (module doc) and checked
    (the data are a task stream, ``train.val_every`` is 0); reads no data. A config without
    ``online`` is returned as is."""
    if config.get("online") is None:
        return config
    config = copy.deepcopy(config)
    online, algorithm, data = config["online"], config["algorithm"], config["data"]
    protocol = PROTOCOLS[online["protocol"]]
    if data["name"] not in STREAM_FAMILIES:
        raise ConfigError(f"online runs on a task stream: data.name must be one of "
                          f"{sorted(STREAM_FAMILIES)}, got {data['name']!r}")
    if not protocol.inner_loop_in_updates:
        _set_fact(algorithm, "inner_steps", 0, "algorithm", online["protocol"],
                  accepted_keywords(algorithm_class(algorithm["name"])))
    if not protocol.adapts_when_scored:
        _set_fact(online, "eval_inner_steps", 0, "online", online["protocol"], None)
    if TrainConfig.of(config).val_every != 0:
        raise ConfigError("train.val_every must be 0 for an online run (each task is scored "
                          "on its held-out examples as it arrives)")
    return config


def check_stream_steps(source: BufferSource, online: OnlineConfig, steps: int) -> None:
    """``train.steps`` must be the stream's arrivals times ``online.updates_per_batch``
    (checked when the run's trainer is made: it needs the stream's data)."""
    needed = source.stream.arrivals() * online.updates_per_batch
    if steps != needed:
        raise ConfigError(f"train.steps must be {needed} for this stream (its arrivals times "
                          f"online.updates_per_batch), got {steps}")


def _set_fact(section: dict[str, Any], key: str, value: Any, name: str, protocol: str,
              accepted: set[str] | None) -> None:
    if accepted is not None and key not in accepted:
        raise ConfigError(f"online.protocol {protocol!r} needs {name}.{key} (set to {value}), "
                          f"which {section.get('name', name)!r} does not take")
    if section.get(key) not in (None, value):
        raise ConfigError(f"online.protocol {protocol!r} runs with {name}.{key}: {value}, "
                          f"got {section[key]!r}; remove it or set {value}")
    section[key] = value


# -- the hook -------------------------------------------------------------------------------
class StreamEvaluation:
    """The trainer's step hook for an online run (module doc): the stream advances every
    ``updates_per_batch`` steps and the new task is scored; ``stream.json`` at the end.

    Args:
        source: the run's task source (the stream's buffer).
        online: the ``online`` section.
    """

    def __init__(self, source: BufferSource, online: OnlineConfig) -> None:
        self.source = source
        self.online = online
        self.protocol = PROTOCOLS[online.protocol]

    @property
    def stream(self):
        return self.source.stream

    def trains(self, trainer) -> bool:
        return self.protocol.updates and self.source.ready()

    def after_step(self, trainer) -> None:
        if trainer.step % self.online.updates_per_batch == 0 and self.stream.has_next():
            self.stream.advance()
            record = self.score(trainer)
            if distributed.is_main_process():
                trainer.log.write(record)
        if trainer.step == trainer.steps and distributed.is_main_process():
            write_stream_summary(trainer.run_dir, self.online)

    def score(self, trainer) -> dict[str, Any]:
        """Adapt to the current task's arrived examples; held-out accuracy and loss."""
        learner, stream = trainer.learner, self.stream
        place = {"device": trainer.device, "dtype": trainer.dtype}
        support_x, support_y = stream.received()
        test_x, test_y = stream.held_out()
        options = ({} if self.online.eval_inner_steps is None
                   else {"inner_steps": self.online.eval_inner_steps})
        predictor = learner.adapt(support_x.to(**place), support_y.to(trainer.device),
                                  **options)
        with torch.no_grad():
            loss, accuracy = learner.score(predictor(test_x.to(**place)),
                                           test_y.to(trainer.device))
        return {"step": trainer.step, "split": STREAM_SPLIT, "task": stream.task_index,
                "examples": stream.arrived, "updates": trainer.updates,
                "accuracy": float(accuracy), "loss": float(loss)}

    def state_dict(self) -> dict:
        return {}  # the stream's state is the task source's, checkpointed with it

    def load_state_dict(self, state: dict) -> None:
        pass


# -- metrics --------------------------------------------------------------------------------
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


def updates_to_threshold(updates: list[int], accuracies: list[float],
                         threshold: float) -> int | None:
    """Updates taken since the task's first evaluation until its first evaluation at
    ``threshold`` (``updates``: the learner's update count at each evaluation)."""
    reached = examples_to_threshold(list(range(len(updates))), accuracies, threshold)
    return None if reached is None else updates[reached] - updates[0]


def accuracy_at(examples: list[int], accuracies: list[float], budget: int) -> float | None:
    """The accuracy at the first evaluation with at least ``budget`` examples arrived."""
    for count, accuracy in zip(examples, accuracies, strict=True):
        if count >= budget:
            return accuracy
    return None


def cumulative_loss(task_losses: list[float]) -> list[float]:
    """Regret-style running sum ``sum_{s <= t} loss_s`` over task indices ``t``."""
    total, running = 0.0, []
    for loss in task_losses:
        total += loss
        running.append(total)
    return running


def summarise_stream(records: list[dict[str, Any]], threshold: float,
                     budget: int) -> dict[str, Any]:
    """Per task index (from its ``stream`` records, in order): examples and updates to
    ``threshold`` (``None``: never reached), accuracy after ``budget`` examples, final
    accuracy, ``examples`` (all it had), and ``loss``, the mean held-out loss over its
    evaluations (the loss incurred on the task's round, a learning curve's area);
    ``cumulative_loss``: its running sum over tasks (regret-style)."""
    by_task: dict[int, list[dict[str, Any]]] = {}
    for record in records:
        by_task.setdefault(int(record["task"]), []).append(record)
    tasks = []
    for task in sorted(by_task):
        rows = by_task[task]
        examples = [r["examples"] for r in rows]
        accuracies = [r["accuracy"] for r in rows]
        tasks.append({
            "task": task, "examples": examples[-1],
            "examples_to_threshold": examples_to_threshold(examples, accuracies, threshold),
            "updates_to_threshold": updates_to_threshold([r["updates"] for r in rows],
                                                         accuracies, threshold),
            "accuracy_at_budget": accuracy_at(examples, accuracies, budget),
            "final_accuracy": accuracies[-1],
            "loss": sum(r["loss"] for r in rows) / len(rows)})
    return {"threshold": threshold, "budget": budget, "tasks": tasks,
            "cumulative_loss": cumulative_loss([t["loss"] for t in tasks])}


def read_stream_records(run_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{str(path)!r} does not exist; train the run first")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if r.get("split") == STREAM_SPLIT]


def write_stream_summary(run_dir: str | Path, online: OnlineConfig) -> dict[str, Any]:
    """`summarise_stream` of the run's records, written atomically to ``stream.json``."""
    summary = summarise_stream(read_stream_records(run_dir), online.threshold, online.budget)
    summary["protocol"] = online.protocol
    atomic_write_text(Path(run_dir) / STREAM_FILE, json.dumps(summary, indent=1) + "\n")
    return summary
