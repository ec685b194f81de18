"""RFS's self-distillation on a few-shot grid cell: the teacher, then born-again generations.

For each seed, generation 0 is the grid's cell (`fewshot_table.cell_config`: the method's
shipped config with the grid's dataset, setting, backbone, augmentation and budget), and
generation g > 0 is the same config with ``algorithm.distill_from`` = generation g - 1 of
the same seed (``train.seed`` too, so each student starts from its teacher's initial
parameters and sees the same batches). Every run is tested on the cell's 600 episodes. The
table gives each generation's accuracy over seeds and its gain over the teacher paired by
seed (Student-t 95% CI over seeds). A run with an ``eval.json`` is reused, so the grid's
own run directories serve as generation 0 (``--runs``, the grid's ``--runs``)::

    OMP_NUM_THREADS=1 python benchmarks/self_distillation.py --dataset omniglot-small-rot \\
        --omniglot-root ../shared/data/omniglot --setting 20w1s --backbone resnet12-w0.25 \\
        --augment on --generations 2 --seeds 0 1 2 --runs /tmp/grid/runs
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import fewshot_table as ft

from metalab.train import evaluate_run, train_run
from metalab.train.checkpoint import atomic_write_text
from metalab.train.report import over_seeds, write_json
from metalab.train.seeds import with_seed

RESULTS = Path(__file__).parent / "results" / "self_distillation"


def run_dir(args: argparse.Namespace, generation: int, seed: int) -> Path:
    variant, shipped = ft.resolve_variant("RFS", args.dataset, args.setting, args.backbone,
                                          args.augment)
    if generation == 0:  # the grid's own layout, so its runs are reused
        return ft.cell_run_dir(args.runs, ft.RESULTS, ft.cell_path(
            ft.RESULTS, "RFS", args.dataset, args.setting, seed, variant, shipped))
    return args.runs / "self_distillation" / args.dataset / args.setting / variant.label / \
        f"born{generation}-seed{seed}"


def accuracy_of(args: argparse.Namespace, generation: int, seed: int) -> float:
    """Train (unless reused) and test one generation of one seed; its test accuracy."""
    out = run_dir(args, generation, seed)
    if not (out / "eval.json").is_file():
        config = with_seed(ft.cell_config(
            "RFS", args.dataset, args.setting, args.budget, args.omniglot_root,
            ft.Variant(args.backbone, args.augment))[2], seed)
        if generation > 0:
            config["algorithm"]["distill_from"] = str(run_dir(args, generation - 1, seed))
        train_run(config, out)
        evaluate_run(out, episodes=args.budget.episodes)
    return 100 * json.loads((out / "eval.json").read_text())["mean"]


def table(accuracies: dict[int, list[float]]) -> str:
    teacher = accuracies[0]
    lines = ["| generation | accuracy % (seeds) | gain over the teacher, paired by seed |",
             "|---|---|---|"]
    for generation, values in accuracies.items():
        acc = over_seeds(values)
        seeds = ", ".join(f"{v:.1f}" for v in values)
        gain = "—" if generation == 0 else "{mean:+.1f} ± {ci95:.1f}".format(
            **over_seeds([v - t for v, t in zip(values, teacher, strict=True)]))
        name = "teacher (the grid's cell)" if generation == 0 else f"born-again {generation}"
        lines.append(f"| {name} | {acc['mean']:.1f} ± {acc['ci95']:.1f} ({seeds}) | {gain} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="glyphs", choices=sorted(ft.DATASETS))
    parser.add_argument("--omniglot-root", default=None)
    parser.add_argument("--setting", default="20w1s", choices=sorted(ft.SETTINGS))
    parser.add_argument("--backbone", default="resnet12-w0.25")
    parser.add_argument("--augment", default="on", choices=["on", "off"])
    parser.add_argument("--generations", type=int, default=2)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--runs", type=Path, default=Path("runs/fewshot_table"))
    args = parser.parse_args()
    args.budget = ft.Budget()  # the grid's: its cells are generation 0
    accuracies = {g: [accuracy_of(args, g, s) for s in args.seeds]
                  for g in range(args.generations + 1)}
    name = f"{args.dataset}_{args.setting}_{args.backbone}_aug-{args.augment}"
    write_json(RESULTS / f"{name}.json", {"dataset": args.dataset, "setting": args.setting,
                                          "backbone": args.backbone, "augment": args.augment,
                                          "seeds": args.seeds, "accuracy": accuracies})
    text = table(accuracies)
    atomic_write_text(RESULTS / f"{name}.md", text)
    print(text, end="")


if __name__ == "__main__":
    main()
