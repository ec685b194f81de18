"""Online meta-learning on Rainbow digits: FTML against train-on-everything (TOE),
follow-the-leader (FTL) and from-scratch, on the same stream (Finn et al. 2019, Fig. 3).

For each protocol and seed the same stream of Rainbow tasks (embedded scikit-learn digits,
or MNIST's test set with ``--root``) is run through `metalab.train.online.run_online`; per
task index the examples needed to reach each of ``--thresholds`` held-out accuracy are recorded
(censored at the task's examples + 1 when never reached), with the area under that curve
(its sum over task indices) and the accuracy after ``--budget`` examples.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/online_rainbow.py \
        --tasks 12 --train-per-task 100 --seeds 0,1,2 --thresholds 0.5,0.9 \
        --out benchmarks/results/online_rainbow

writes ``OUT.json``, ``OUT.md`` (tables) and ``OUT.png`` (examples-to-threshold against the
task index, mean over seeds with a min-max band).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch import nn

from metalab.algorithms.maml import MAML
from metalab.nn.backbones import MLP
from metalab.tasks.rainbow import rainbow_tasks
from metalab.tasks.stream import TaskStream
from metalab.train.online import protocols, run_online
from metalab.train.report import format_plain, over_seeds

ORDER = ("ftml", "ftl", "toe", "scratch")


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default=None, help="MNIST folder (default: embedded digits)")
    parser.add_argument("--tasks", type=int, default=12)
    parser.add_argument("--train-per-task", type=int, default=100)
    parser.add_argument("--test-per-task", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=10)
    parser.add_argument("--updates", type=int, default=10, help="updates per arriving batch")
    parser.add_argument("--tasks-per-update", type=int, default=4)
    parser.add_argument("--support", type=int, default=10)
    parser.add_argument("--query", type=int, default=10)
    parser.add_argument("--inner-lr", type=float, default=0.1)
    parser.add_argument("--inner-steps", type=int, default=1)
    parser.add_argument("--eval-inner-steps", type=int, default=10)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--thresholds", default="0.5,0.9",
                        help="comma-separated; one table each, the plot uses the first")
    parser.add_argument("--budget", type=int, default=20)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--protocols", default=",".join(ORDER))
    parser.add_argument("--out", default="benchmarks/results/online_rainbow")
    return parser.parse_args()


def learner_factory(args: argparse.Namespace, features: int):
    def make(**options) -> MAML:
        model = nn.Sequential(nn.Flatten(), MLP(features, (args.hidden,), 10))
        return MAML(model, inner_lr=args.inner_lr, eval_inner_steps=args.eval_inner_steps,
                    **options)
    return make


def run(args: argparse.Namespace) -> dict:
    seeds = [int(s) for s in args.seeds.split(",")]
    names = args.protocols.split(",")
    table = {name: {} for name in names}
    for seed in seeds:
        tasks = rainbow_tasks(args.root, tasks=args.tasks, train_per_task=args.train_per_task,
                              test_per_task=args.test_per_task, seed=seed, shuffle_order=True)
        features = tasks[0].train_x[0].numel()
        for name in names:
            stream = TaskStream(tasks, args.batch_size, seed=seed, num_classes=10)
            started = time.perf_counter()
            protocol = protocols(args.inner_steps, args.eval_inner_steps)[name]
            result = run_online(learner_factory(args, features), stream, protocol,
                                updates_per_batch=args.updates,
                                tasks_per_update=args.tasks_per_update, support=args.support,
                                query=args.query, lr=args.lr, seed=seed)
            seconds = time.perf_counter() - started
            thresholds = [float(v) for v in args.thresholds.split(",")]
            table[name][seed] = {"to_threshold": {str(v): result.to_threshold(v)
                                                  for v in thresholds},
                                 "accuracy_at_budget": result.accuracy_at(args.budget),
                                 "curves": result.curves, "seconds": seconds}
            print(f"seed {seed} {name}: {seconds:.1f}s, to-threshold "
                  f"{table[name][seed]['to_threshold']}", flush=True)
    return {"args": vars(args), "results": table}


def summary_markdown(report: dict) -> str:
    return "\n".join(threshold_markdown(report, key)
                     for key in report["args"]["thresholds"].split(","))


def threshold_markdown(report: dict, key: str) -> str:
    args = report["args"]
    results = {name: {seed: {**r, "to_threshold": r["to_threshold"][str(float(key))]}
                      for seed, r in per.items()} for name, per in report["results"].items()}
    half = args["tasks"] // 2
    lines = [f"threshold {key}, {args['tasks']} tasks x {args['train_per_task']} "
             f"examples (batches of {args['batch_size']}), seeds {args['seeds']}; "
             f"mean ± Student-t 95% CI over seeds; never reached counts as "
             f"{args['train_per_task'] + 1}", "",
             "| protocol | area (sum over tasks) | mean, first half | mean, second half "
             f"| acc. after {args['budget']} ex. | s/seed |",
             "|---|---|---|---|---|---|"]
    for name, per_seed in results.items():
        runs = list(per_seed.values())
        area = over_seeds([sum(r["to_threshold"]) for r in runs])
        first = over_seeds([sum(r["to_threshold"][:half]) / half for r in runs])
        second = over_seeds([sum(r["to_threshold"][half:]) / (args["tasks"] - half)
                             for r in runs])
        acc = over_seeds([sum(a for a in r["accuracy_at_budget"] if a is not None)
                          / len(r["accuracy_at_budget"]) for r in runs])
        secs = sum(r["seconds"] for r in runs) / len(runs)
        lines.append(f"| {name} | {format_plain(area, 0)} | {format_plain(first, 1)} | "
                     f"{format_plain(second, 1)} | {format_plain(acc, 3)} | {secs:.0f} |")
    lines += ["", "Examples to threshold per task index (mean over seeds):", "",
              "| task | " + " | ".join(results) + " |", "|---" * (len(results) + 1) + "|"]
    for t in range(args["tasks"]):
        cells = [sum(r["to_threshold"][t] for r in per.values()) / len(per)
                 for per in results.values()]
        lines.append(f"| {t} | " + " | ".join(f"{c:.0f}" for c in cells) + " |")
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    key = str(float(report["args"]["thresholds"].split(",")[0]))
    for name, per_seed in report["results"].items():
        values = torch.tensor([r["to_threshold"][key] for r in per_seed.values()])
        index = torch.arange(values.shape[1])
        axis.plot(index, values.mean(0), label=name)
        axis.fill_between(index, values.min(0).values, values.max(0).values, alpha=0.2)
    args = report["args"]
    axis.set_xlabel("task index")
    axis.set_ylabel(f"examples to {float(key):.0%} held-out accuracy")
    axis.set_title(f"Rainbow digits, seeds {args['seeds']} (band: min-max)")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    torch.set_num_threads(1)
    args = parse()
    started = time.perf_counter()
    report = run(args)
    report["seconds"] = time.perf_counter() - started
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=1))
    markdown = summary_markdown(report)
    out.with_suffix(".md").write_text(markdown)
    plot(report, out.with_suffix(".png"))
    print(markdown)
    print(f"total {report['seconds']:.0f}s")


if __name__ == "__main__":
    main()
