"""The one training loop, shared by every `MetaLearner`.

Each step draws a meta-batch from the task source, sets the meta-gradient with the run's
one backward step (the mean loss's, or a combiner's: `backward_step_for`) and takes one
meta-optimizer step. Metrics go to ``RUN_DIR/metrics.jsonl``; a checkpoint with
the learner, optimizer, task-source and RNG states is written atomically every
``checkpoint_every`` steps and at the end, so ``fit(resume=True)`` after an interruption
ends with exactly the parameters of an uninterrupted run. With ``keep_best`` the learner at
its best validation so far is also written to ``best.pt`` (model selection on the val split).

A run whose task source changes between steps (a task stream: data arrive, and the learner
is scored on each new task, between updates) gives the trainer *step hooks*: after every
completed step (and once before the first) each hook's ``after_step(trainer)`` may advance
its source and log records, and ``trains(trainer)`` says whether the next step takes an
update (a protocol that never updates, a buffer not ready yet: the step is counted, no
update is taken). Hooks' states are checkpointed with the rest.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch
from pydantic import ValidationError
from tqdm import tqdm

from metalab.algorithms import MetaLearner
from metalab.combiners import build_combiner
from metalab.tasks import TaskSource
from metalab.tasks.objective import lower_is_better
from metalab.train import distributed
from metalab.train.allocator import keep_freed_memory
from metalab.train.backward import BackwardStep, MeanBackward
from metalab.train.checkpoint import (
    BEST_CHECKPOINT,
    CHECKPOINT,
    atomic_torch_save,
    atomic_write_text,
    load_checkpoint,
)
from metalab.train.combined_step import CombinedStep
from metalab.train.config import ConfigError, TrainConfig, explain
from metalab.train.evaluator import Evaluator
from metalab.validation import check_choice


def _place(module: torch.nn.Module, device, dtype) -> torch.nn.Module:
    return module.to(device=device, dtype=dtype) if dtype else module.to(device)


OPTIMIZERS = {"adam": torch.optim.Adam, "sgd": torch.optim.SGD, "adamw": torch.optim.AdamW}
METRICS_FILE = "metrics.jsonl"


def _train_config(config: TrainConfig | None, source: TaskSource,
                  options: dict[str, Any]) -> TrainConfig:
    if config is not None:
        if options:
            raise TypeError(f"give Trainer a TrainConfig or its fields as keywords, not both "
                            f"(got config and {sorted(options)})")
        return config
    options.setdefault("meta_batch", getattr(source, "tasks_per_batch", 1))
    try:
        return TrainConfig(**options)
    except ValidationError as error:
        raise ConfigError(explain(TrainConfig, error)) from None


def backward_step_for(learner: MetaLearner, config: TrainConfig,
                      combiner: torch.nn.Module | None) -> BackwardStep:
    """`MeanBackward`, or a `CombinedStep` when there is a combiner or diagnostics are on
    (diagnostics without a combiner combine by the mean: the same update)."""
    if combiner is None and not config.diagnostics:
        return MeanBackward(learner, config.task_chunk)
    if not learner.outer_update_is_loss_gradient:
        raise ConfigError(f"train.combiner and train.diagnostics need per-task loss gradients, "
                          f"but {type(learner).__name__}'s outer update is not a loss "
                          f"gradient; set train.combiner: null and train.diagnostics: false")
    return CombinedStep(learner, combiner or build_combiner("mean"), config.combine_params,
                        config.task_chunk)


def check_whole_update(learner: MetaLearner, config: TrainConfig) -> None:
    """A learner whose ``.grad`` is the whole update (``writes_whole_update``) needs the
    optimizer step to apply it unchanged: ``sgd`` at ``lr`` 1, a constant schedule, no
    clipping, one process (its update is computed on the whole meta-batch at once)."""
    if not getattr(learner, "writes_whole_update", False):
        return
    wrong = [f"train.{key}: {value!r} (needs {needed!r})" for key, value, needed in (
        ("optimizer", config.optimizer, "sgd"), ("lr", config.lr, 1.0),
        ("lr_schedule", config.lr_schedule, "constant"),
        ("grad_clip", config.grad_clip, None)) if value != needed]
    if wrong:
        raise ConfigError(f"{type(learner).__name__} computes its whole outer update itself, "
                          f"so the optimizer must apply it unchanged; set {', '.join(wrong)}")
    if distributed.world_size() > 1:
        raise ConfigError(f"{type(learner).__name__} computes its whole outer update on the "
                          f"full meta-batch; run it in one process")


def scheduled_lr(config: TrainConfig, step: int) -> float:
    """The meta-optimizer's learning rate for the update after ``step = t`` completed steps
    of ``T = steps`` (``lr_schedule``; `TrainConfig` has the formulas):

    - ``constant``: ``lr``;
    - ``linear``: ``lr + (lr_final - lr) t / T``;
    - ``cosine``: ``lr_final + (lr - lr_final) (1 + cos(pi t / T)) / 2`` (SGDR's cosine
      annealing without restarts, Loshchilov & Hutter 2017);
    - ``step``: ``lr * lr_gamma ** floor(t / lr_step_every)``.
    """
    schedule, t, total = config.lr_schedule, step, config.steps
    if schedule == "constant":
        return config.lr
    if schedule == "linear":
        return config.lr + (config.lr_final - config.lr) * t / total
    if schedule == "cosine":
        return config.lr_final + (config.lr - config.lr_final) * (
            1 + math.cos(math.pi * t / total)) / 2
    return config.lr * config.lr_gamma ** (t // config.lr_step_every)


def build_optimizer(name: str, params, lr: float) -> torch.optim.Optimizer:
    check_choice("train.optimizer", name, sorted(OPTIMIZERS))
    return OPTIMIZERS[name](params, lr=lr)


class StepHook(Protocol):
    """What the trainer calls between steps (module doc); `metalab.train.online`'s
    `StreamEvaluation` is one."""

    def after_step(self, trainer: Trainer) -> None:
        """Called once ``trainer.step`` steps are done: 0 (a fresh run, before the first
        step), 1, ..., ``steps``; runs before that step's checkpoint is written."""

    def trains(self, trainer: Trainer) -> bool:
        """Whether the step about to run (step ``trainer.step + 1``) takes an update."""

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


class MetricLog:
    """Appends one JSON object per line to ``RUN_DIR/metrics.jsonl``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def write(self, record: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")

    def truncate_after(self, step: int) -> None:
        """Drop records past ``step`` (written after the checkpoint a run resumes from)."""
        if not self.path.exists():
            return
        kept = [line for line in self.path.read_text().splitlines()
                if line.strip() and json.loads(line)["step"] <= step]
        atomic_write_text(self.path, "".join(line + "\n" for line in kept))


class Trainer:
    """Meta-trains ``learner`` on batches from ``source`` as ``config`` (`TrainConfig`) says.

    Args:
        learner: the method.
        source: training task source (its RNG state is checkpointed).
        run_dir: where metrics and checkpoints go.
        config: the ``train`` section (steps, optimizer, schedule, device, dtype,
            task_chunk, grad_clip, combine_params, diagnostics ...; see `TrainConfig`).
        val_source: a callable returning a fresh validation source (the same episodes at
            every validation), or ``None`` (no validation).
        combiner: a `metalab.combiners.Combiner` that merges the tasks' losses or gradients
            into the update (PCGrad, group DRO ...); ``None``: the mean loss. Its state is
            checkpointed and its parameters (if any) trained with the learner's.
        hooks: `StepHook`s called between steps (module doc), e.g. a task stream's
            evaluation; their states are checkpointed.
        **options: instead of ``config``, its fields as keywords
            (``Trainer(learner, source, run_dir, steps=100, lr=1e-2)``); ``meta_batch``
            defaults to the source's tasks per batch.
    """

    def __init__(self, learner: MetaLearner, source: TaskSource, run_dir: str | Path,
                 config: TrainConfig | None = None, *,
                 val_source: Callable[[], TaskSource] | None = None,
                 combiner: torch.nn.Module | None = None, hooks: list[StepHook] | None = None,
                 **options: Any) -> None:
        self.config = _train_config(config, source, options)
        device, dtype = self.config.device, self.config.torch_dtype
        self.learner = _place(learner, device, dtype)
        self.combiner = None if combiner is None else _place(combiner, device, dtype)
        self.source = source
        self.run_dir = Path(run_dir)
        trained = list(learner.parameters())
        if self.combiner is not None:
            trained += list(self.combiner.parameters())
        self.optimizer = build_optimizer(self.config.optimizer, trained, self.config.lr)
        self.val_source = val_source if self.config.val_every else None
        if self.config.keep_best and self.val_source is None:
            raise ValueError("train.keep_best needs a validation source (val_source) to "
                             "choose the best learner")
        self.backward_step = backward_step_for(self.learner, self.config, self.combiner)
        check_whole_update(self.learner, self.config)
        self._pending_diagnostics: dict[str, float] = {}
        self.device = torch.device(device)
        self.dtype = dtype
        self.hooks = list(hooks or [])
        self.step = 0
        self.updates = 0  # optimizer updates taken (fewer than steps when a hook skips some)
        self.best: dict[str, float] | None = None  # keep_best: {"step", metric} of best.pt
        self.log = MetricLog(self.run_dir / METRICS_FILE)

    @property
    def steps(self) -> int:
        return self.config.steps

    # -- state ---------------------------------------------------------------------------
    def state_dict(self) -> dict:
        state = {"step": self.step, "learner": self.learner.state_dict(),
                 "optimizer": self.optimizer.state_dict(), "source": self.source.state_dict(),
                 "torch_rng": torch.get_rng_state(), "updates": self.updates}
        if self.hooks:
            state["hooks"] = [hook.state_dict() for hook in self.hooks]
        if self.combiner is not None:
            state["combiner"] = self.combiner.state_dict()
        if self.best is not None:
            state["best"] = self.best
        return state

    def load_state_dict(self, state: dict) -> None:
        self.step = state["step"]
        self.updates = state.get("updates", self.step)  # checkpoints before hooks: all
        self.best = state.get("best")
        for hook, hook_state in zip(self.hooks, state.get("hooks", []), strict=False):
            hook.load_state_dict(hook_state)
        self.learner.load_state_dict(state["learner"])
        if self.combiner is not None:
            self.combiner.load_state_dict(state["combiner"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.source.load_state_dict(state["source"])
        torch.set_rng_state(state["torch_rng"])

    def save_checkpoint(self) -> None:
        if not distributed.is_main_process():
            return
        atomic_torch_save(self.state_dict(), self.run_dir / CHECKPOINT)

    # -- the loop ------------------------------------------------------------------------
    def _batch(self):
        batch = self.source.sample().to(self.device)
        return batch.to(self.dtype) if self.dtype is not None else batch

    def train_step(self) -> dict[str, float]:
        self.learner.train()
        self.optimizer.zero_grad(set_to_none=True)
        batch, share = distributed.shard(self._batch())
        self.learner.set_training_progress(self.step, self.steps)
        diagnose = self.config.diagnostics and self._is_log_step(self.step + 1)
        metrics = self.backward_step.backward(batch, share, diagnose)
        metrics = distributed.all_reduce_metrics(metrics, share)
        if self.config.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.learner.parameters(), self.config.grad_clip)
        if self.config.lr_schedule != "constant":
            for group in self.optimizer.param_groups:
                group["lr"] = scheduled_lr(self.config, self.step)
        self.optimizer.step()
        if diagnose:
            self._pending_diagnostics = self.backward_step.diagnostics(batch, share)
        return metrics

    def _is_log_step(self, step: int) -> bool:
        return step % self.config.log_every == 0 or step == self.steps

    def _is_validation_step(self, step: int) -> bool:
        return self.val_source is not None and (step % self.config.val_every == 0
                                                or step == self.steps)

    def validate(self) -> dict[str, float]:
        """The validation metric with its interval and ``val_seconds``, the time it took
        (the train records' ``seconds`` include it: subtract it for training time alone)."""
        started = time.perf_counter()
        evaluator = Evaluator(self.config.val_episodes)
        result = evaluator.evaluate(self.learner, self.val_source(), self.device, self.dtype)
        return {result["metric"]: result["mean"], "ci95": result["ci95"],
                "val_seconds": round(time.perf_counter() - started, 3)}

    def _keep_if_best(self, value: float) -> None:
        """Write the learner to ``best.pt`` when ``value`` beats every earlier validation
        (a tie keeps the earlier learner)."""
        metric = self.learner.metric_name
        if self.best is not None:
            best = self.best[metric]
            if (value >= best) if lower_is_better(metric) else (value <= best):
                return
        self.best = {"step": self.step, metric: value}
        atomic_torch_save({"step": self.step, "learner": self.learner.state_dict(),
                           "metric": metric, "value": value}, self.run_dir / BEST_CHECKPOINT)

    def fit(self, resume: bool = False) -> MetaLearner:
        """Train to ``steps``; with ``resume`` continue from the last checkpoint.

        Resuming a run that stopped before its first checkpoint starts it from step 0 (its
        metrics so far are dropped), which is what an uninterrupted run does.
        """
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.config.keep_freed_memory:
            keep_freed_memory()
        restored = resume and (self.run_dir / CHECKPOINT).is_file()
        if restored:
            self.load_state_dict(load_checkpoint(self.run_dir))
        else:
            torch.manual_seed(self.config.seed)
        if resume:
            distributed.barrier()  # every rank has read the checkpoint before rank 0 writes
            if distributed.is_main_process():  # a fresh start keeps no record (step 0's too)
                self.log.truncate_after(self.step if restored else -1)
        if not restored:
            self._after_step()  # step 0: what the hooks do before the first update
        window: list[dict[str, float]] = []
        started = time.perf_counter()
        main = distributed.is_main_process()
        with tqdm(total=self.steps, initial=self.step,
                  disable=not (self.config.progress and main),
                  dynamic_ncols=True, desc="meta-train") as bar:
            while self.step < self.steps:
                metrics = self._step()
                self.step += 1
                self._after_step()
                bar.update(1)
                if metrics is not None:
                    bar.set_postfix({k: f"{v:.4g}" for k, v in metrics.items()}, refresh=False)
                if main and metrics is not None:
                    window.append(metrics)
                if main and window and self._is_log_step(self.step):
                    self._log_window("train", window, started)
                    window = []
                if main and self._is_validation_step(self.step):
                    record = self.validate()
                    self.log.write({"step": self.step, "split": "val", **record})
                    if self.config.keep_best:
                        self._keep_if_best(record[self.learner.metric_name])
                if self.step % self.config.checkpoint_every == 0 or self.step == self.steps:
                    self.save_checkpoint()
        distributed.barrier()
        return self.learner

    def _step(self) -> dict[str, float] | None:
        """One step: an update unless a hook says no (then ``None``)."""
        if not all(hook.trains(self) for hook in self.hooks):
            return None
        metrics = self.train_step()
        self.updates += 1
        return metrics

    def _after_step(self) -> None:
        for hook in self.hooks:
            hook.after_step(self)

    def _log_window(self, split: str, window: list[dict[str, float]], started: float) -> None:
        record = {"step": self.step, "split": split}
        for name in window[0]:
            record[name] = sum(m[name] for m in window) / len(window)
        record.update(self._pending_diagnostics)
        self._pending_diagnostics = {}
        record["seconds"] = round(time.perf_counter() - started, 3)
        self.log.write(record)
