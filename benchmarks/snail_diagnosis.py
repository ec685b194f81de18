"""Is SNAIL broken or slow on Glyphs 5-way 1-shot? (issue 14, docs/black-box-methods.md)

Short runs of the shipped `snail-glyphs-5w1s` (meta-batch 4, as the few-shot grid) through
`metalab.train.Trainer`, validated every ``--every`` steps on ``--val-episodes`` held-out
episodes, logging the gradient norm of each block (the embedding, the five blocks of the
sequence network, the output layer) at those steps:

- ``--task real``: the ordinary episodes;
- ``--task copy``: every query is an exact copy of a support image (its 15 queries per class
  are that class's support image), the easiest retrieval task there is: a working SNAIL
  only has to find the identical support step and copy its label channel;
- ``--task synthetic``: the sequence network alone (identity embedding) on 64-dimensional
  ReLU'd Gaussian "features", 32 episodes per step with one query each, a copy of one
  support step (``--noise`` adds Gaussian noise to the copy); validated on
  ``--val-episodes`` such episodes.

``--label-ablation`` zeroes the support label channel at validation, so every validation
accuracy above chance must come through that channel. Writes ``--out`` (JSON) with the curve.

    OMP_NUM_THREADS=1 python benchmarks/snail_diagnosis.py --task copy --steps 150
    OMP_NUM_THREADS=1 python benchmarks/snail_diagnosis.py --task real --lr 3e-3
    OMP_NUM_THREADS=1 python benchmarks/snail_diagnosis.py --task synthetic --steps 600
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from metalab.algorithms.snail import SNAIL
from metalab.cli.main import resolve_config_path
from metalab.tasks.batch import TaskBatch
from metalab.tasks.source import TaskSource
from metalab.train import Trainer, load_config
from metalab.train.build import complete_model_config
from metalab.train.evaluator import Evaluator
from metalab.train.run import make_trainer

WAYS, SHOTS, QUERIES = 5, 1, 15


def copy_queries(batch: TaskBatch) -> TaskBatch:
    """The batch with each class's queries replaced by copies of its support images."""
    copies = batch.query_x.shape[1] // batch.support_x.shape[1]
    return replace(batch, query_x=batch.support_x.repeat_interleave(copies, dim=1),
                   query_y=batch.support_y.repeat_interleave(copies, dim=1))


class CopySource(TaskSource):
    """``source``'s batches with `copy_queries` applied."""

    def __init__(self, source: TaskSource) -> None:
        super().__init__(source.tasks_per_batch, 0)
        self.source = source

    def sample(self) -> TaskBatch:
        return copy_queries(self.source.sample())

    def state_dict(self) -> dict:
        return self.source.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.source.load_state_dict(state)


class SyntheticCopies(TaskSource):
    """Episodes of ``dim``-dimensional features ``relu(N(0, I))`` per class and one query,
    a copy of a random class's support feature plus ``noise`` times N(0, I)."""

    def __init__(self, tasks_per_batch: int, seed: int, dim: int = 64, noise: float = 0.0
                 ) -> None:
        super().__init__(tasks_per_batch, seed)
        self.dim, self.noise = dim, noise

    def sample(self) -> TaskBatch:
        g, tasks = self.generator, self.tasks_per_batch
        support_x = torch.randn(tasks, WAYS, self.dim, generator=g).relu()
        labels = torch.stack([torch.randperm(WAYS, generator=g) for _ in range(tasks)])
        chosen = torch.randint(WAYS, (tasks, 1), generator=g)
        query_x = support_x.gather(1, chosen.unsqueeze(-1).expand(-1, -1, self.dim))
        query_x = query_x + self.noise * torch.randn(query_x.shape, generator=g)
        return TaskBatch(support_x, labels, query_x, labels.gather(1, chosen),
                         num_classes=WAYS)


def blocks(learner: SNAIL) -> dict[str, nn.Module]:
    named = {"embedding": learner.model}
    named.update({f"net.{i}": block for i, block in enumerate(learner.net.blocks)})
    named["output"] = learner.net.output
    return named


class GradientNorms:
    """A `StepHook`: after every ``every``-th update, the gradient norm of each block."""

    def __init__(self, learner: SNAIL, every: int) -> None:
        self.blocks, self.every, self.records = blocks(learner), every, {}

    def after_step(self, trainer: Trainer) -> None:
        if trainer.step and trainer.step % self.every == 0:
            self.records[trainer.step] = {
                name: float(sum((p.grad ** 2).sum() for p in block.parameters()
                                if p.grad is not None) ** 0.5)
                for name, block in self.blocks.items()}

    def trains(self, trainer: Trainer) -> bool:
        return True

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def ablated_accuracy(learner: SNAIL, source: TaskSource, episodes: int) -> float:
    """Validation accuracy with the support label channel zeroed."""
    original = learner.adapt_task

    def without_labels(*args, **kwargs):
        steps = original(*args, **kwargs)
        return torch.cat((steps[:, :-learner.ways], torch.zeros_like(steps[:, -learner.ways:])),
                         dim=1)

    learner.adapt_task = without_labels
    try:
        return Evaluator(episodes).evaluate(learner, source)["mean"]
    finally:
        del learner.adapt_task


def glyph_trainer(args, run_dir: Path) -> Trainer:
    config = load_config(resolve_config_path("snail-glyphs-5w1s"), [
        f"train.steps={args.steps}", "train.meta_batch=4", f"train.lr={args.lr}",
        f"train.val_every={args.every}", f"train.val_episodes={args.val_episodes}",
        f"train.checkpoint_every={args.steps}", f"train.log_every={args.every}",
        "train.progress=false", f"train.seed={args.seed}"])
    trainer = make_trainer(complete_model_config(config), run_dir)
    if args.task == "copy":
        trainer.source = CopySource(trainer.source)
        val_source = trainer.val_source
        trainer.val_source = lambda: CopySource(val_source())
    return trainer


def synthetic_trainer(args, run_dir: Path) -> Trainer:
    torch.manual_seed(args.seed)
    learner = SNAIL(nn.Identity(), WAYS, SHOTS, filters=64, key_sizes=(32, 128, 256),
                    value_sizes=(16, 64, 128), embedding_dim=64)
    return Trainer(learner, SyntheticCopies(32, args.seed, noise=args.noise), run_dir,
                   steps=args.steps, lr=args.lr, val_every=args.every,
                   val_episodes=args.val_episodes, checkpoint_every=args.steps,
                   log_every=args.every, progress=False, seed=args.seed,
                   val_source=lambda: SyntheticCopies(20, 12345, noise=args.noise))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--task", choices=("real", "copy", "synthetic"), default="real")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--noise", type=float, default=0.0)
    parser.add_argument("--every", type=int, default=25)
    parser.add_argument("--val-episodes", type=int, default=40)
    parser.add_argument("--label-ablation", action="store_true")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as run_dir:
        make = synthetic_trainer if args.task == "synthetic" else glyph_trainer
        trainer = make(args, Path(run_dir))
        norms = GradientNorms(trainer.learner, args.every)
        trainer.hooks.append(norms)
        started = time.perf_counter()
        trainer.fit()
        seconds = time.perf_counter() - started
        records = [json.loads(line) for line in
                   (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
        ablated = (ablated_accuracy(trainer.learner, trainer.val_source(), args.val_episodes)
                   if args.label_ablation else None)
    curve = [{"step": r["step"], "val_accuracy": r["accuracy"], "ci95": r["ci95"],
              "gradient_norms": norms.records.get(r["step"])}
             for r in records if r["split"] == "val"]
    for row in curve:
        print(row["step"], round(row["val_accuracy"], 3), json.dumps(
            {k: round(v, 4) for k, v in (row["gradient_norms"] or {}).items()}), flush=True)
    result = {"args": {k: str(v) for k, v in vars(args).items()}, "curve": curve,
              "seconds": round(seconds, 1), "label_ablated_accuracy": ablated}
    if ablated is not None:
        print("label channel zeroed at validation:", round(ablated, 3))
    print(f"{seconds:.0f} s")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
