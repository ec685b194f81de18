"""What a wall-clock CPU budget (30 minutes by default) reaches per method (issue 19).

The few-shot grid (`fewshot_table.py`) gives every method the same 200 meta-iterations x 4
tasks. A user's question is different: with half an hour of one CPU thread, where does each
method get? For one grid cell (method, dataset, setting, backbone, augmentation, seed; its
config is `fewshot_table.cell_config`'s):

1. **Probe.** The cell's config trains ``--probe-steps`` steps; its seconds per step are read
   between the first and the last logged step (start-up left out), measured now, on this
   machine, at this load.
2. **Train for the budget.** ``steps = floor(minutes * 60 / seconds per step)``; the cell's
   config with that many steps (lengths counted in steps, such as RFS's learning-rate step
   and MAML++'s annealing, scaled as in the grid), the outer learning rate annealed to 0 by
   a cosine over them unless the config has its own schedule (RFS's step decay is kept,
   scaled), validation on ``--val-episodes`` episodes of the val split (disjoint alphabets)
   ten times, a checkpoint at each (an interrupted run resumes: rerun the same command),
   the learner of the best validation kept (``train.keep_best``).
3. **Test** on ``--episodes`` (600) test episodes, the grid's episodes: the last learner,
   and the one of the best validation (model selection on the val alphabets).

The record, ``benchmarks/results/fewshot_budget/cells/<dataset>/<setting>/<method>/<backbone>_
aug-<off|on>/seed<N>.json`` (written atomically), holds the config, the steps, the probe's
seconds per step, the training clock (the log's seconds less the validations' own), the
validation curve (training minutes, accuracy, 95% interval over episodes), the test accuracy
with its interval (``best_validation``: the best validation's step, minutes and test
accuracy; records made before ``keep_best`` have none), and the load averages. ``--plot``
draws, per (dataset, setting), validation accuracy against training minutes, one line per
(method, variant), the test accuracy in the legend:

    OMP_NUM_THREADS=1 python benchmarks/fewshot_budget.py --method RFS --dataset glyphs \\
        --setting 20w1s --backbone resnet12-w0.25 --augment on --seed 0
    python benchmarks/fewshot_budget.py --plot      # the figures and budget.md from the records
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import tempfile
import time
from pathlib import Path

import fewshot_table as ft

from metalab.train import evaluate_run, load_config, train_run
from metalab.train.checkpoint import BEST_CHECKPOINT, atomic_write_text
from metalab.train.report import write_json
from metalab.train.seeds import with_seed

RESULTS = Path(__file__).resolve().parent / "results" / "fewshot_budget"
VALIDATIONS = 10


def probe_seconds_per_step(config: dict, steps: int) -> float:
    """Seconds per training step of ``config`` over ``steps`` steps, start-up left out:
    the clock between the first and the last logged step."""
    if steps < 2:
        raise ValueError(f"--probe-steps must be at least 2, got {steps}")
    probe = {**config, "train": {**config["train"], "steps": steps, "val_every": 0,
                                 "log_every": 1, "checkpoint_every": steps}}
    with tempfile.TemporaryDirectory() as tmp:
        train_run(probe, Path(tmp) / "probe")
        log = [json.loads(line) for line in (Path(tmp) / "probe" / "metrics.jsonl").open()]
    train = [r for r in log if r["split"] == "train"]
    return (train[-1]["seconds"] - train[0]["seconds"]) / (train[-1]["step"] - train[0]["step"])


def budget_overrides(config: dict, steps: int, val_episodes: int) -> list[str]:
    """``steps`` training steps; step-counted lengths scaled from the config's; a cosine to
    0 unless the config has its own schedule; ten validations, each a checkpoint, the best
    one's learner kept (``train.keep_best``)."""
    out = [f"train.steps={steps}",
           *ft.scaled_schedule_overrides(config, steps / int(config["train"]["steps"]))]
    if config["train"].get("lr_schedule", "constant") == "constant":
        out += ["train.lr_schedule=cosine", "train.lr_final=0.0"]
    every = max(1, steps // VALIDATIONS)
    return out + [f"train.val_every={every}", f"train.val_episodes={val_episodes}",
                  f"train.checkpoint_every={every}", f"train.log_every={every}",
                  "train.keep_best=true", "train.progress=false"]


def training_clock(log: list[dict]) -> list[dict]:
    """The validation records with ``minutes``: training time at their step, that is the
    train records' clock (which a resumed run restarts) less the validations before."""
    clock, offset, last, spent = [], 0.0, 0.0, 0.0
    train_seconds = {}
    for record in log:
        if record["split"] == "train":
            if record["seconds"] < last:  # resumed: the clock restarted
                offset += last
            last = record["seconds"]
            train_seconds[record["step"]] = offset + record["seconds"] - spent
        elif record["split"] == "val":
            spent += record.get("val_seconds", 0.0)
            if record["step"] in train_seconds:
                clock.append({"step": record["step"],
                              "minutes": train_seconds[record["step"]] / 60,
                              "accuracy": record["accuracy"], "ci95": record["ci95"]})
    return clock


def record_path(results: Path, method: str, dataset: str, setting: str, seed: int,
                variant: ft.Variant) -> Path:
    return (results / "cells" / dataset / setting / ft.method_folder(method) / variant.label
            / f"seed{seed}.json")


def run_budget(args: argparse.Namespace) -> dict:
    variant, _ = ft.resolve_variant(args.method, args.dataset, args.setting, args.backbone,
                                    args.augment)
    name, overrides, config = ft.cell_config(args.method, args.dataset, args.setting,
                                             ft.Budget(episodes=args.episodes),
                                             args.omniglot_root, variant)
    config = with_seed(config, args.seed)
    path = record_path(args.results, args.method, args.dataset, args.setting, args.seed,
                       variant)
    run_dir = ft.cell_run_dir(args.runs, args.results, path)
    probe_file = run_dir.parent / f"{run_dir.name}.probe.json"  # beside: a run dir starts empty
    resuming = (run_dir / "config.yaml").is_file() and probe_file.is_file()
    if resuming:
        config = load_config(run_dir / "config.yaml")
        seconds_per_step = json.loads(probe_file.read_text())["seconds_per_step"]
    else:
        if run_dir.exists():
            shutil.rmtree(run_dir)
        seconds_per_step = probe_seconds_per_step(config, args.probe_steps)
        steps = max(1, math.floor(args.minutes * 60 / seconds_per_step))
        mine = budget_overrides(config, steps, args.val_episodes)
        config = with_seed(load_config(ft.resolve_config_path(name), overrides + mine),
                           args.seed)
        probe_file.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(probe_file, json.dumps({"seconds_per_step": seconds_per_step}))
    load_before = os.getloadavg()
    started = time.perf_counter()
    train_run(config, run_dir, resume=resuming)
    wall = time.perf_counter() - started
    load_after = os.getloadavg()
    log = [json.loads(line) for line in (run_dir / "metrics.jsonl").open()]
    curve = training_clock(log)
    started = time.perf_counter()
    result = evaluate_run(run_dir, episodes=args.episodes)
    eval_seconds = time.perf_counter() - started
    best = best_validation(run_dir, args.episodes, curve)
    record = {"method": args.method, "dataset": args.dataset, "setting": args.setting,
              "seed": args.seed, "backbone": variant.backbone, "augment": variant.augment,
              "minutes_budget": args.minutes, "probe_steps": args.probe_steps,
              "probe_seconds_per_step": seconds_per_step,
              "steps": int(config["train"]["steps"]),
              "train_minutes": curve[-1]["minutes"] if curve else wall / 60,
              "wall_minutes_with_validation": wall / 60, "validation": curve,
              "accuracy": result["mean"], "episode_ci95": result["ci95"],
              "episodes": result["episodes"], "eval_seconds": eval_seconds,
              **({"best_validation": best} if best else {}),
              "load_average_before": list(load_before), "load_average_after": list(load_after),
              "environment": ft.environment(), "config": config}
    write_json(path, record)
    print(f"{args.dataset} {args.setting} {args.method} {variant.label} seed {args.seed}: "
          f"{record['steps']} steps in {record['train_minutes']:.1f} min of training "
          f"(probe {seconds_per_step:.3f} s/step): {100 * result['mean']:.1f} ± "
          f"{100 * result['ci95']:.1f}%", flush=True)
    return record


def best_validation(run_dir: Path, episodes: int, curve: list[dict]) -> dict | None:
    """The test accuracy of the learner at its best validation (``best.pt``; model selection
    on the val alphabets), on the same test episodes, with that validation's step and
    training minutes; ``None`` for a run without ``best.pt``."""
    if not (run_dir / BEST_CHECKPOINT).is_file():
        return None
    result = evaluate_run(run_dir, episodes=episodes, checkpoint="best")
    minutes = {point["step"]: point["minutes"] for point in curve}
    return {"step": result["step"], "minutes": minutes.get(result["step"]),
            "accuracy": result["mean"], "episode_ci95": result["ci95"]}


def grid_accuracy(record: dict) -> tuple[float, str] | None:
    """The grid's accuracy for the same (method, dataset, setting) at its 200-iteration
    budget (mean over its seeds) and the variant it is of: the record's own variant where
    the grid has it, else the shipped config's."""
    _, shipped = ft.resolve_variant(record["method"], record["dataset"], record["setting"],
                                    None, None)
    for variant in (ft.Variant(record["backbone"], record["augment"]), shipped):
        values = [json.loads(path.read_text())["accuracy"] for seed in range(10)
                  if (path := ft.cell_path(ft.RESULTS, record["method"], record["dataset"],
                                           record["setting"], seed, variant,
                                           shipped)).is_file()]
        if values:
            return sum(values) / len(values), f"{variant.label}, {len(values)} seeds"
    return None


def markdown(records: list[dict]) -> str:
    lines = ["| dataset | setting | method | variant | seed | steps | training min | "
             "test accuracy ± 95% CI over episodes | at the best validation (min) | "
             "at the grid's 200 iterations |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(records, key=lambda r: (r["dataset"], r["setting"], -r["accuracy"])):
        grid, best = grid_accuracy(r), r.get("best_validation")
        at_best = ("-" if best is None else f"{100 * best['accuracy']:.1f} ± "
                   f"{100 * best['episode_ci95']:.1f} ({best['minutes']:.1f})")
        lines.append(f"| {r['dataset']} | {r['setting']} | {r['method']} | {r['backbone']}_aug-"
                     f"{r['augment']} | {r['seed']} | {r['steps']} | {r['train_minutes']:.1f} "
                     f"| {100 * r['accuracy']:.1f} ± {100 * r['episode_ci95']:.1f} | "
                     f"{at_best} | {'-' if grid is None else f'{100 * grid[0]:.1f} ({grid[1]})'} |")
    return "\n".join(lines) + "\n"


def plot(results: Path) -> list[Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = ft.read_records(results)
    outputs = []
    for dataset, setting in sorted({(r["dataset"], r["setting"]) for r in records}):
        fig, ax = plt.subplots(figsize=(7, 4.2))
        for r in sorted((r for r in records
                         if (r["dataset"], r["setting"]) == (dataset, setting)),
                        key=lambda r: -r["accuracy"]):
            xs = [p["minutes"] for p in r["validation"]]
            ys = [100 * p["accuracy"] for p in r["validation"]]
            band = [100 * p["ci95"] for p in r["validation"]]
            label = (f"{r['method']} {r['backbone']} aug-{r['augment']}: test "
                     f"{100 * r['accuracy']:.1f}%")
            line, = ax.plot(xs, ys, "o-", markersize=3, label=label)
            ax.fill_between(xs, [y - b for y, b in zip(ys, band, strict=True)],
                            [y + b for y, b in zip(ys, band, strict=True)],
                            color=line.get_color(), alpha=0.15)
        ax.set_xlabel("training minutes (one thread)")
        ax.set_ylabel("validation accuracy (%)")
        ax.set_title(f"{dataset} {setting}: a {records[0]['minutes_budget']:g}-minute budget")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        out = results / f"{dataset}_{setting}.png"
        fig.savefig(out, dpi=120)
        plt.close(fig)
        outputs.append(out)
    (results / "budget.md").write_text(markdown(records))
    return outputs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", choices=list(ft.METHODS))
    parser.add_argument("--dataset", choices=list(ft.DATASETS), default="glyphs")
    parser.add_argument("--setting", choices=list(ft.SETTINGS), default="20w1s")
    parser.add_argument("--backbone", default=None, help="conv4, resnet12-w<width> (default: "
                        "the shipped config's)")
    parser.add_argument("--augment", choices=list(ft.AUGMENTS), default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--probe-steps", type=int, default=20)
    parser.add_argument("--val-episodes", type=int, default=100)
    parser.add_argument("--episodes", type=int, default=600)
    parser.add_argument("--omniglot-root", default=None)
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--runs", type=Path, default=Path("runs") / "fewshot_budget")
    parser.add_argument("--plot", action="store_true", help="draw the figures from the records")
    args = parser.parse_args(argv)
    if args.plot:
        for out in plot(args.results):
            print(out)
        return
    if args.method is None:
        parser.error("--method is required unless --plot")
    if args.minutes <= 0:
        parser.error(f"--minutes must be > 0, got {args.minutes}")
    run_budget(args)


if __name__ == "__main__":
    main()
