"""The one training loop, shared by every `MetaLearner`.

Each step draws a meta-batch from the task source, computes ``learner.meta_loss`` and
takes one meta-optimizer step. Metrics go to ``RUN_DIR/metrics.jsonl``; a checkpoint with
the learner, optimizer, task-source and RNG states is written atomically every
``checkpoint_every`` steps and at the end, so ``fit(resume=True)`` after an interruption
ends with exactly the parameters of an uninterrupted run.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.nn.utils import parameters_to_vector
from tqdm import tqdm

from metalab.algorithms import MetaLearner
from metalab.combiners import build_combiner, gradient_statistics
from metalab.tasks import TaskSource
from metalab.train import distributed
from metalab.train.checkpoint import (
    CHECKPOINT,
    atomic_torch_save,
    atomic_write_text,
    load_checkpoint,
)
from metalab.train.combined_step import CombinedStep
from metalab.train.evaluator import Evaluator


def _place(module: torch.nn.Module, device, dtype) -> torch.nn.Module:
    return module.to(device=device, dtype=dtype) if dtype else module.to(device)


OPTIMIZERS = {"adam": torch.optim.Adam, "sgd": torch.optim.SGD, "adamw": torch.optim.AdamW}
METRICS_FILE = "metrics.jsonl"


def build_optimizer(name: str, params, lr: float) -> torch.optim.Optimizer:
    if name not in OPTIMIZERS:
        raise ValueError(f"train.optimizer must be one of {sorted(OPTIMIZERS)}, got {name!r}")
    return OPTIMIZERS[name](params, lr=lr)


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
    """Meta-trains ``learner`` on batches from ``source``.

    Args:
        learner: the method.
        source: training task source (its RNG state is checkpointed).
        run_dir: where metrics and checkpoints go.
        steps: total meta-iterations.
        optimizer, lr: the meta-optimizer (Adam by default).
        val_source: a callable returning a fresh validation source (the same episodes at
            every validation), or ``None``.
        val_every, val_episodes: validation schedule.
        checkpoint_every, log_every: checkpoint and logging periods in steps.
        grad_clip: max global norm of the meta-gradient, or ``None``.
        task_chunk: back-propagate the meta-batch in chunks of at most this many tasks
            (gradients accumulate, so the update is the same); peak memory then holds one
            chunk's graph instead of the whole meta-batch's. ``None``: all tasks at once.
        device, dtype: where and in what precision the batches are processed.
        progress: show a progress bar.
        seed: seeds torch's global RNG (dropout, reparametrized samples ...).
        combiner: a `metalab.combiners.Combiner` that merges the tasks' losses or gradients
            into the update (PCGrad, group DRO ...); ``None``: the mean loss. Its state is
            checkpointed and its parameters (if any) trained with the learner's.
        combine_params: ``"all"`` or ``"shared"``: which parameters the combiner acts on
            (``learner.shared_parameter_names()``; the others take the mean gradient).
        diagnostics: on every logged step, also log the task-gradient statistics (pairwise
            cosines, fraction conflicting, norm ratio) and the curvature of the loss along
            the update: the three conditions of the "tragic triad" (Yu et al. 2020).
    """

    def __init__(self, learner: MetaLearner, source: TaskSource, run_dir: str | Path, *,
                 steps: int, optimizer: str = "adam", lr: float = 1e-3,
                 val_source: Callable[[], TaskSource] | None = None, val_every: int = 500,
                 val_episodes: int = 100, checkpoint_every: int = 500, log_every: int = 10,
                 grad_clip: float | None = None, task_chunk: int | None = None,
                 device: str | torch.device = "cpu",
                 dtype: torch.dtype | None = None, progress: bool = True, seed: int = 0,
                 combiner: torch.nn.Module | None = None, combine_params: str = "all",
                 diagnostics: bool = False) -> None:
        self.learner = _place(learner, device, dtype)
        self.combiner = None if combiner is None else _place(combiner, device, dtype)
        self.source = source
        self.run_dir = Path(run_dir)
        self.steps = steps
        trained = list(learner.parameters())
        if self.combiner is not None:
            trained += list(self.combiner.parameters())
        self.optimizer = build_optimizer(optimizer, trained, lr)
        self.val_source = val_source
        self.val_every = val_every
        self.val_episodes = val_episodes
        self.checkpoint_every = checkpoint_every
        self.log_every = log_every
        self.grad_clip = grad_clip
        if task_chunk is not None and (isinstance(task_chunk, bool)
                                       or not isinstance(task_chunk, int) or task_chunk < 1):
            raise ValueError(f"train.task_chunk must be a positive integer or null, "
                             f"got {task_chunk!r}")
        self.task_chunk = task_chunk
        self.diagnostics = bool(diagnostics)
        self.combined_step = None
        if self.combiner is not None or self.diagnostics:
            self.combined_step = CombinedStep(learner, self.combiner or build_combiner("mean"),
                                              combine_params, task_chunk)
        self._pending_diagnostics: dict[str, float] = {}
        self.device = torch.device(device)
        self.dtype = dtype
        self.progress = progress
        self.seed = seed
        self.step = 0
        self.log = MetricLog(self.run_dir / METRICS_FILE)

    # -- state ---------------------------------------------------------------------------
    def state_dict(self) -> dict:
        state = {"step": self.step, "learner": self.learner.state_dict(),
                 "optimizer": self.optimizer.state_dict(), "source": self.source.state_dict(),
                 "torch_rng": torch.get_rng_state()}
        if self.combiner is not None:
            state["combiner"] = self.combiner.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.step = state["step"]
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
        diagnose = self.diagnostics and self._is_log_step(self.step + 1)
        if self.combined_step is None:
            metrics = self.learner.meta_backward(batch, self.task_chunk, scale=share)
            distributed.all_reduce_gradients(self.learner.parameters())
        else:  # every process computes the same update from the gathered task gradients
            metrics = self.combined_step.backward(batch, keep_gradients=diagnose)
        metrics = distributed.all_reduce_metrics(metrics, share)
        if self.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.learner.parameters(), self.grad_clip)
        before = parameters_to_vector(self.combined_step.parameters) if diagnose else None
        self.optimizer.step()
        if diagnose:
            self._pending_diagnostics = self._diagnose(batch, share, before)
        return metrics

    def _is_log_step(self, step: int) -> bool:
        return step % self.log_every == 0 or step == self.steps

    def _diagnose(self, batch, share: float, before: torch.Tensor) -> dict[str, float]:
        """Gradient statistics of this step, and the loss curvature along its update.

        Along the update ``u = theta' - theta``, ``L(theta') = L + g.u + u^T H u / 2`` to
        second order, so ``2 (L(theta') - L(theta) - g.u) / |u|^2`` estimates the Rayleigh
        quotient ``u^T H u / |u|^2`` on the same batch (one extra forward pass).
        """
        step = self.combined_step
        rows = step.last_gradients
        combined = rows.grads[:, : step.combined_size]
        stats = gradient_statistics(combined @ combined.T)
        update = parameters_to_vector(step.parameters).detach() - before
        with torch.no_grad():
            after = self.learner.training_losses(batch)[0].detach().mean().item()
        after = distributed.all_reduce_metrics({"loss": after}, share)["loss"]
        change = after - rows.losses.mean().item() - (rows.grads.mean(dim=0) @ update).item()
        norm2 = (update @ update).item()
        stats["curvature"] = 2.0 * change / norm2 if norm2 > 0 else 0.0
        return {f"diag/{name}": value for name, value in stats.items()}

    def validate(self) -> dict[str, float]:
        result = Evaluator(self.val_episodes).evaluate(self.learner, self.val_source(),
                                                       self.device, self.dtype)
        return {result["metric"]: result["mean"], "ci95": result["ci95"]}

    def fit(self, resume: bool = False) -> MetaLearner:
        """Train to ``steps``; with ``resume`` continue from the last checkpoint."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if resume:
            self.load_state_dict(load_checkpoint(self.run_dir))
            distributed.barrier()  # every rank has read the checkpoint before rank 0 writes
            if distributed.is_main_process():
                self.log.truncate_after(self.step)
        else:
            torch.manual_seed(self.seed)
        window: list[dict[str, float]] = []
        started = time.perf_counter()
        main = distributed.is_main_process()
        with tqdm(total=self.steps, initial=self.step, disable=not (self.progress and main),
                  dynamic_ncols=True, desc="meta-train") as bar:
            while self.step < self.steps:
                metrics = self.train_step()
                self.step += 1
                bar.update(1)
                bar.set_postfix({k: f"{v:.4g}" for k, v in metrics.items()}, refresh=False)
                if main:
                    window.append(metrics)
                if main and self._is_log_step(self.step):
                    self._log_window("train", window, started)
                    window = []
                if main and self.val_source is not None and (self.step % self.val_every == 0
                                                             or self.step == self.steps):
                    self.log.write({"step": self.step, "split": "val", **self.validate()})
                if self.step % self.checkpoint_every == 0 or self.step == self.steps:
                    self.save_checkpoint()
        distributed.barrier()
        return self.learner

    def _log_window(self, split: str, window: list[dict[str, float]], started: float) -> None:
        record = {"step": self.step, "split": split}
        for name in window[0]:
            record[name] = sum(m[name] for m in window) / len(window)
        record.update(self._pending_diagnostics)
        self._pending_diagnostics = {}
        record["seconds"] = round(time.perf_counter() - started, 3)
        self.log.write(record)
