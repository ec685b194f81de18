"""Can a Rainbow task reach 90% held-out accuracy within its own data? The learners of the
shipped online configs, scored exactly as the stream scores a task (the learner's
``adapt`` from its initial parameters on ``N`` training examples for ``S`` full-batch SGD
steps at the inner lr, then its held-out accuracy): the from-scratch protocol's curve.

For each config (``scratch-rainbow-digits``: MLP 588-64-10 on 14x14 embedded digits;
``scratch-rainbow-mnist``: Conv4-32 with per-task batch norm on 16x16 MNIST digits; and
the MLP on the MNIST digits, to separate the network from the digits), the first
``--tasks`` tasks of the seed-0 stream, ``N`` in ``--examples``, ``S`` in ``--steps``,
inner lr in ``--lrs``; mean over tasks and ``--inits`` initialisations.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/rainbow_reach.py \
        --mnist /work/shared/data/mnist --out benchmarks/results/rainbow_reach

``--from-run RUN`` instead starts from a trained online run's last parameters (the end of
its stream) and scores every task of its stream the same way with all its training
examples, for each ``S`` in ``--steps`` (0 allowed) and inner lr: how far the learner the
stream produced is from 90% on held-out digits of tasks it has trained on, and whether
more scoring steps would close the gap.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from metalab.functional.update_rules import SGD
from metalab.train.build import build_meta_learner, complete_model_config
from metalab.train.config import TrainConfig, load_config
from metalab.train.run import load_run, read_run_config
from metalab.train.sources import build_task_stream

CONFIGS = Path(__file__).resolve().parents[1] / "src" / "metalab" / "configs"


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mnist", default=None, help="folder with the MNIST t10k files")
    parser.add_argument("--from-run", dest="from_run", default=None,
                        help="score the tasks of this online run's stream from its last "
                             "parameters instead (module doc)")
    parser.add_argument("--tasks", type=int, default=3)
    parser.add_argument("--inits", type=int, default=1)
    parser.add_argument("--examples", default="50,100,200")
    parser.add_argument("--steps", default="10,30")
    parser.add_argument("--lrs", default="0.03,0.1")
    parser.add_argument("--learners", default=None,
                        help="only these rows of settings(), separated by ';' (default all)")
    parser.add_argument("--out", default="benchmarks/results/rainbow_reach")
    return parser.parse_args()


def settings(mnist: str) -> dict[str, tuple[str, list[str]]]:
    # 200 training examples per task (the digits configs draw 100) so that N can be 200
    mlp_on_mnist = ["data.digits=mnist", f"data.root={mnist}", "data.train_per_task=200"]
    return {"MLP, embedded digits 14x14": ("scratch-rainbow-digits",
                                           ["data.train_per_task=200"]),
            "MLP, MNIST 14x14": ("scratch-rainbow-digits", mlp_on_mnist),
            "Conv4-32 task-BN, MNIST 16x16": ("scratch-rainbow-mnist", [f"data.root={mnist}"])}


def accuracy_after(config: dict, tasks: int, inits: int, examples: int, steps: int,
                   lr: float) -> float:
    """Mean held-out accuracy after ``steps`` SGD steps at ``lr`` on ``examples``."""
    config = {**config, "algorithm": {**config["algorithm"], "inner_lr": lr}}
    stream = build_task_stream(config["data"], 0)
    scores = []
    for init in range(inits):
        torch.manual_seed(init)
        learner = build_meta_learner(config)
        for task in stream.tasks[:tasks]:
            adapted = learner.adapt(task.train_x[:examples], task.train_y[:examples],
                                    inner_steps=steps)
            with torch.no_grad():
                _, accuracy = learner.score(adapted(task.test_x), task.test_y)
            scores.append(float(accuracy))
    return sum(scores) / len(scores)


def from_run(args: argparse.Namespace) -> None:
    """Mean held-out accuracy over the run's stream tasks (and how many reach 0.9) after
    ``S`` steps from the run's last parameters on each task's training examples."""
    config = read_run_config(args.from_run)
    stream = build_task_stream(config["data"], TrainConfig.of(config).seed)
    learner = load_run(args.from_run)
    lines = [f"From the last parameters of {args.from_run} ({len(stream)} tasks, all their "
             f"training examples): mean held-out accuracy / tasks at >= 0.9.", "",
             "| inner lr | " + " | ".join(f"S {s}" for s in args.steps.split(",")) + " |",
             "|---" * (len(args.steps.split(",")) + 1) + "|"]
    for lr in args.lrs.split(","):
        learner.update_rule = SGD(float(lr))  # the run's learner is MAML: SGD at the lr
        cells = []
        for steps in args.steps.split(","):
            scores = []
            for task in stream.tasks:
                adapted = learner.adapt(task.train_x, task.train_y, inner_steps=int(steps))
                with torch.no_grad():
                    scores.append(float(learner.score(adapted(task.test_x), task.test_y)[1]))
            cells.append(f"{sum(scores) / len(scores):.3f} / {sum(s >= 0.9 for s in scores)}")
            print(lr, steps, cells[-1], flush=True)
        lines.append(f"| {lr} | " + " | ".join(cells) + " |")
    Path(args.out).with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    torch.set_num_threads(1)
    args = parse()
    if args.from_run:
        from_run(args)
        return
    if args.mnist is None:
        raise SystemExit("--mnist (the folder with the MNIST t10k files) is required")
    started = time.perf_counter()
    table = {}
    chosen = settings(args.mnist)
    if args.learners:
        chosen = {k: v for k, v in chosen.items() if k in args.learners.split(";")}
    for label, (name, overrides) in chosen.items():
        config = complete_model_config(load_config(CONFIGS / f"{name}.yaml", overrides))
        table[label] = {f"lr {lr}, N {n}, S {s}": accuracy_after(
            config, args.tasks, args.inits, int(n), int(s), float(lr))
            for lr in args.lrs.split(",") for n in args.examples.split(",")
            for s in args.steps.split(",")}
        print(label, table[label], flush=True)
    learners = list(table)
    lines = [f"Held-out accuracy from scratch (mean over the first {args.tasks} tasks of the "
             f"seed-0 stream x {args.inits} initialisations) after S full-batch SGD steps on "
             f"N examples; {time.perf_counter() - started:.0f} s.", "",
             "| inner lr, N, S | " + " | ".join(learners) + " |",
             "|---" * (len(learners) + 1) + "|"]
    for key in table[learners[0]]:
        lines.append(f"| {key} | " + " | ".join(f"{table[name][key]:.3f}" for name in learners)
                     + " |")
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps({"args": vars(args), "table": table},
                                                   indent=1))
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
