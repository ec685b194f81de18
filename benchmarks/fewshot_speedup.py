"""Speed of a few-shot grid cell's evaluation and training step, this tree against a commit.

For a speed-up that must not change what the grid computes: the cell's config (built by
`fewshot_table.cell_config`, the grid's overrides) builds the same learner, with the same
initial weights, from this tree and from ``COMMIT``'s ``src/metalab`` (imported as
``metalab_at_commit``, as `speed_against_commit` does). Both score the same sampled test
episodes (``learner.task_losses(batch, training=False)``, the evaluator's call) and take the
meta-gradient of the same training batches (``meta_backward``), in alternating order, one
process, one thread. It reports per phase the ratio of median times (commit / this tree,
above 1: this tree is faster) and whether every per-task value (loss, accuracy, NLL,
calibration bins) and every meta-gradient entry is identical, or else the largest difference:

    OMP_NUM_THREADS=1 nice -n 5 python benchmarks/fewshot_speedup.py 4abe558 \\
        --cells "Meta-Curvature glyphs 20w1s" "ProtoNet glyphs 20w1s resnet12-w0.25" \\
        --out benchmarks/results/fewshot_speedup

A cell is ``"<method> <dataset> <setting> [backbone] [augment]"`` (method names with a
space written with ``_``: ``Meta_Networks``). The weights are the initial ones (timing and
the equality of the computation do not depend on training).
"""

from __future__ import annotations

import argparse
import importlib
import json
import shlex
import statistics
import sys
import tempfile
from pathlib import Path

import fewshot_table as ft
import torch
from speed_against_commit import OLD, import_commit

from metalab.profiling import time_in_turn
from metalab.train.build import build_meta_learner, complete_model_config
from metalab.train.checkpoint import atomic_write_text
from metalab.train.sources import build_task_source


def parse_cell(text: str) -> tuple[str, str, str, ft.Variant | None]:
    parts = text.split()
    method, dataset, setting = parts[0].replace("_", " "), parts[1], parts[2]
    backbone = parts[3] if len(parts) > 3 else None
    augment = parts[4] if len(parts) > 4 else None
    variant, _ = ft.resolve_variant(method, dataset, setting, backbone, augment)
    return method, dataset, setting, variant


def learners(config: dict, old_build) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The cell's learner from the commit and from this tree, with the same weights."""
    torch.manual_seed(0)
    new = build_meta_learner(config)
    torch.manual_seed(0)
    old = old_build(config)
    old.load_state_dict(new.state_dict())
    return old, new


def as_old(batch, old_tasks):
    return old_tasks.TaskBatch(batch.support_x, batch.support_y, batch.query_x,
                               batch.query_y, num_classes=batch.num_classes)


def largest_difference(a, b) -> float:
    """0.0 when every tensor of ``a`` equals ``b``'s exactly, else the largest |a - b|."""
    if all(torch.equal(x, y) for x, y in zip(a, b, strict=True)):
        return 0.0
    return max((x.double() - y.double()).abs().max().item() for x, y in zip(a, b, strict=True))


def evaluation_case(old, new, batches, old_tasks, rounds: int) -> dict:
    old_batches = [as_old(b, old_tasks) for b in batches]
    old.eval()
    new.eval()

    def scores(learner, data):
        torch.manual_seed(0)  # any random draw (dropout, sampling) the same in both
        out = []
        for batch in data:
            losses, metrics = learner.task_losses(batch, training=False)
            out += [losses.detach(), *(metrics[k].detach() for k in sorted(metrics))]
        return out

    difference = largest_difference(scores(old, old_batches), scores(new, batches))
    times = time_in_turn(lambda: scores(old, old_batches), lambda: scores(new, batches), rounds)
    return summary(times, difference, len(batches) * len(batches[0]), "episodes")


def training_case(old, new, batches, old_tasks, chunk, rounds: int) -> dict:
    old_batches = [as_old(b, old_tasks) for b in batches]
    old.train()
    new.train()

    def gradients(learner, data):
        torch.manual_seed(0)  # DropBlock's masks the same in both
        learner.zero_grad(set_to_none=True)
        for batch in data:
            learner.meta_backward(batch, task_chunk=chunk)
        return [p.grad for p in learner.parameters() if p.grad is not None]

    difference = largest_difference(gradients(old, old_batches), gradients(new, batches))
    times = time_in_turn(lambda: gradients(old, old_batches), lambda: gradients(new, batches),
                         rounds)
    return summary(times, difference, len(batches), "meta-iterations")


def summary(times, difference: float, units: int, unit: str) -> dict:
    old, new = (statistics.median(t) for t in times)
    per_round = [o / n for o, n in zip(*times, strict=True)]
    return {"commit_s": old, "tree_s": new, "ratio": old / new,
            "round_ratios": [round(r, 3) for r in per_round], "units": units, "unit": unit,
            "largest_difference": difference}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("commit")
    parser.add_argument("--cells", nargs="+", required=True)
    parser.add_argument("--phases", nargs="+", default=["eval", "train"],
                        choices=["eval", "train"])
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--iterations", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--omniglot-root", default=None)
    parser.add_argument("--out", type=Path, default=None, help="write OUT.md and OUT.json")
    args = parser.parse_args(argv)
    results = []
    with tempfile.TemporaryDirectory() as folder:
        import_commit(args.commit, Path(folder))
        old_build = importlib.import_module(f"{OLD}.train.build").build_meta_learner
        old_tasks = importlib.import_module(f"{OLD}.tasks")
        for text in args.cells:
            method, dataset, setting, variant = parse_cell(text)
            config = complete_model_config(ft.cell_config(
                method, dataset, setting, ft.Budget(), args.omniglot_root, variant)[2])
            old, new = learners(config, old_build)
            row = {"cell": f"{method} {dataset} {setting} {variant.label}"}
            if "eval" in args.phases:
                source = build_task_source(config, "test", config["eval"]["batch_size"],
                                           seed=0)
                batches = [source.sample()
                           for _ in range(-(-args.episodes // config["eval"]["batch_size"]))]
                row["eval"] = evaluation_case(old, new, batches, old_tasks, args.rounds)
            if "train" in args.phases:
                source = build_task_source(config, "train", config["train"]["meta_batch"],
                                           seed=0)
                batches = [source.sample() for _ in range(args.iterations)]
                row["train"] = training_case(old, new, batches, old_tasks,
                                             config["train"].get("task_chunk"), args.rounds)
            print(json.dumps(row), flush=True)
            results.append(row)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.out.with_suffix(".json"), json.dumps(
            {"commit": args.commit, "threads": torch.get_num_threads(),
             "command": shlex.join(sys.argv), "cells": results}, indent=2) + "\n")
        atomic_write_text(args.out.with_suffix(".md"), markdown(results, args))


def markdown(results: list[dict], args) -> str:
    lines = [f"# Few-shot cells: this tree against {args.commit}\n",
             f"`{shlex.join(sys.argv)}` ({torch.get_num_threads()} thread(s); {args.rounds} "
             f"rounds timed in turn after one warm-up; the machine was shared with other "
             f"jobs, so only the ratios mean anything).\n",
             "| cell | phase | work | commit s | this tree s | ratio (median of times) | "
             "per-round ratios | largest difference |", "|---|---|---|---|---|---|---|---|"]
    for row in results:
        for phase in ("eval", "train"):
            if phase in row:
                r = row[phase]
                lines.append(f"| {row['cell']} | {phase} | {r['units']} {r['unit']} | "
                             f"{r['commit_s']:.2f} | {r['tree_s']:.2f} | **{r['ratio']:.2f}x** | "
                             f"{', '.join(f'{x:.2f}' for x in r['round_ratios'])} | "
                             f"{r['largest_difference']:.3g} |")
    lines.append("\nlargest difference 0: every per-task loss, accuracy, NLL and calibration "
                 "bin (eval) and every meta-gradient entry (train) is bit-identical.\n")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
