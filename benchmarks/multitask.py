"""Multi-task benchmark: gradient combiners on MultiMNIST and 20 glyph alphabets, and MAML
with and without PCGrad on its meta-gradients.

Three experiments, each over several seeds (model initialisation and task-source seed; the
data sets are fixed), each run a shipped config (``configs/multitask-pcgrad-multimnist``,
``multitask-pcgrad-glyphs20``, ``maml-pcgrad-glyphs-5w1s``) with the benchmark's settings
and combiner as overrides, trained by `metalab.train.train_run` on one CPU thread:

1. **MultiMNIST** (Sener & Koltun 2018): two overlapping digits, a left and a right task.
   Built from MNIST when its files are present, else from the embedded scikit-learn digits
   ("Digits-MultiMNIST"). LeNet trunk, one head per task; combiners act on the trunk.
2. **20 glyph alphabets** (the analogue of the CIFAR-100 20-superclass benchmark of Yu et
   al. 2020): the 20 alphabets of the embedded glyphs with the most characters, task t
   classifying the characters of alphabet t; 5 of the 20 drawings of every character are
   held out for testing. Conv trunk (3 blocks), one linear head per alphabet.
3. **MAML** 5-way 1-shot on glyphs (train alphabets -> test alphabets), the meta-gradients
   of the meta-batch's tasks averaged (mean) or combined by PCGrad (Yu et al. 2020, sec. 5).

Per-task (exact, example-weighted over the held-out set: `per_task_metrics` on the trained
run) and average test accuracy, and MAML's accuracy over test episodes (`evaluate_run`),
with Student-t 95% confidence intervals over seeds (`metalab.train.report.over_seeds`;
the recorded results/multitask.* used ``1.96 * sd / sqrt(seeds)``) are printed as markdown
tables and written to ``benchmarks/results/multitask.json`` and the tables to
``multitask.md`` (atomically). ``--runs DIR`` keeps the run directories.

    OMP_NUM_THREADS=1 python benchmarks/multitask.py            # full run (~40 min)
    OMP_NUM_THREADS=1 python benchmarks/multitask.py --quick    # smoke test (~1 min)
"""

from __future__ import annotations

import argparse
import copy
import platform
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from metalab.algorithms.multitask import per_task_metrics
from metalab.cli.main import resolve_config_path
from metalab.combiners import COMBINERS
from metalab.datasets.atomic import atomic_file
from metalab.train import evaluate_run, load_config, load_run, train_run
from metalab.train.build import build_task_source
from metalab.train.report import format_percent, over_seeds, write_json
from metalab.train.seeds import seed_run_dir, with_seed

COMBINER_NAMES = ("mean", "pcgrad", "gradnorm", "mgda", "cagrad")
# The numbers quoted in the issue (different data, models and training budgets).
REFERENCE = {
    "multimnist": "PCGrad paper: MultiMNIST left/right 96.58 / 95.50 (MNIST, full training)",
    "glyphs": "PCGrad paper: CIFAR-100 20-task 71% (routing networks + PCGrad 77.5%)",
}
RESULTS = Path(__file__).resolve().parent / "results" / "multitask.json"
CONFIGS = {"multimnist": "multitask-pcgrad-multimnist", "glyphs": "multitask-pcgrad-glyphs20",
           "maml": "maml-pcgrad-glyphs-5w1s"}
MNIST_TEST_SEED = 1  # the seed of the test composites (the training ones use the config's 0)


@dataclass(frozen=True)
class Settings:
    seeds: tuple[int, ...] = (0, 1, 2)
    combiners: tuple[str, ...] = COMBINER_NAMES
    # MultiMNIST
    mnist_steps: int = 500
    mnist_batch: int = 64
    mnist_train_copies: int = 4
    mnist_test_copies: int = 4
    mnist_lr: float = 2e-3
    # 20 glyph alphabets
    glyph_tasks: int = 20
    glyph_steps: int = 250
    glyph_batch: int = 8
    glyph_hidden: int = 16
    glyph_held_out: int = 5
    glyph_lr: float = 3e-3
    # MAML
    maml_steps: int = 250
    maml_meta_batch: int = 8
    maml_queries: int = 5
    maml_hidden: int = 16
    maml_inner_lr: float = 0.4
    maml_lr: float = 2e-3
    maml_eval_episodes: int = 400


QUICK = Settings(seeds=(0, 1), mnist_steps=20, mnist_train_copies=1, mnist_test_copies=1,
                 glyph_tasks=4, glyph_steps=5, maml_steps=4, maml_meta_batch=2,
                 maml_eval_episodes=20)


# -- configs ------------------------------------------------------------------------------
def combiner_override(name: str, seed: int) -> list[str]:
    """``train.combiner`` (PCGrad's projection order seeded by the run's seed) and, for a
    gradient combiner, ``train.task_chunk=1``: the per-task gradients are built one task at
    a time, or the gradient of one entry of the stacked losses would traverse every task's
    graph (T backward passes of the whole batch instead of one)."""
    if name not in COMBINERS:
        raise ValueError(f"combiner must be one of {sorted(COMBINERS)}, got {name!r}")
    spec = f"{{name: {name}, seed: {seed}}}" if name == "pcgrad" else f"{{name: {name}}}"
    chunk = 1 if COMBINERS[name].needs_gradients else "null"
    return [f"train.combiner={spec}", f"train.task_chunk={chunk}"]


def part_config(part: str, combiner: str, seed: int, s: Settings) -> dict:
    """The shipped config of ``part`` with the benchmark's settings as overrides: one
    checkpoint at the end, no validation, no conflict diagnostics (they cost time)."""
    steps = {"multimnist": s.mnist_steps, "glyphs": s.glyph_steps, "maml": s.maml_steps}[part]
    overrides = [f"train.steps={steps}", "train.val_every=0", f"train.checkpoint_every={steps}",
                 f"train.log_every={max(1, steps // 10)}", "train.progress=false",
                 "train.diagnostics=false", *combiner_override(combiner, seed)]
    overrides += {
        "multimnist": [f"data.batch_size={s.mnist_batch}", f"data.copies={s.mnist_train_copies}",
                       f"train.lr={s.mnist_lr}", "train.combine_params=shared"],
        "glyphs": [f"data.tasks={s.glyph_tasks}", f"data.batch_size={s.glyph_batch}",
                   f"data.held_out={s.glyph_held_out}", f"model.hidden={s.glyph_hidden}",
                   f"train.lr={s.glyph_lr}", "train.combine_params=shared"],
        "maml": [f"train.meta_batch={s.maml_meta_batch}", f"data.queries={s.maml_queries}",
                 f"model.hidden={s.maml_hidden}", f"algorithm.inner_lr={s.maml_inner_lr}",
                 f"train.lr={s.maml_lr}", "train.combine_params=all",
                 f"eval.episodes={s.maml_eval_episodes}"],
    }[part]
    return with_seed(load_config(resolve_config_path(CONFIGS[part]), overrides), seed)


def test_source(config: dict, part: str, s: Settings):
    """The held-out data of a multi-task config, scored once in full."""
    if part == "multimnist":
        config = copy.deepcopy(config)
        config["data"].update(seed=MNIST_TEST_SEED, copies=s.mnist_test_copies)
    return build_task_source(config, "test", 1, seed=0)


# -- one run --------------------------------------------------------------------------------
def run_one(part: str, combiner: str, seed: int, s: Settings, runs_dir: Path) -> dict:
    """Train the part's config into ``runs_dir/<part>/<combiner>/seed<N>`` and test it: the
    exact per-task accuracy over the held-out set (multi-task parts), `evaluate_run` over
    test episodes (MAML)."""
    config = part_config(part, combiner, seed, s)
    run_dir = seed_run_dir(runs_dir / part / combiner, seed)
    started, cpu = time.perf_counter(), time.process_time()
    train_run(config, run_dir)
    timing = {"seconds": time.perf_counter() - started, "cpu_seconds": time.process_time() - cpu}
    if part == "maml":
        result = evaluate_run(run_dir)
        return {"accuracy": [result["mean"]], "episode_ci95": result["ci95"], **timing}
    source = test_source(config, part, s)
    num_tasks = getattr(source, "num_tasks", None) or len(source.classes_per_task)
    result = per_task_metrics(load_run(run_dir), source.evaluation_batches(), num_tasks)
    return {"accuracy": result["accuracy"].tolist(), **timing}


def task_names(part: str, s: Settings) -> list[str]:
    source = test_source(part_config(part, "mean", 0, s), part, s)
    return [str(name) for name in (getattr(source, "task_names", None)
                                   or source.dataset.task_names)]


# -- reporting -----------------------------------------------------------------------------
def summarize(runs: list[dict], tasks: list[str]) -> dict:
    """Mean and Student-t 95% CI over seeds (`metalab.train.report.over_seeds`) of every
    task's accuracy, of the task average and of the worst task."""
    def interval(values) -> dict:
        entry = over_seeds(values)
        return {"mean": entry["mean"], "ci95": entry["ci95"]}

    accuracy = torch.tensor([run["accuracy"] for run in runs], dtype=torch.float64)
    return {
        "tasks": {name: interval(accuracy[:, t].tolist()) for t, name in enumerate(tasks)},
        "average": interval(accuracy.mean(dim=1).tolist()),
        "worst_task": interval(accuracy.min(dim=1).values.tolist()),
        "seconds_per_run": sum(run["seconds"] for run in runs) / len(runs),
        "cpu_seconds_per_run": sum(run["cpu_seconds"] for run in runs) / len(runs),
        "runs": runs,
    }


def table(title: str, summaries: dict[str, dict], columns: list[str]) -> str:
    header = ["combiner", *columns, "average", "worst task", "CPU s/run"]
    lines = [f"### {title}", "", "| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for name, summary in summaries.items():
        cells = [name, *(format_percent(summary["tasks"][c], 2) for c in columns),
                 format_percent(summary["average"], 2), format_percent(summary["worst_task"], 2),
                 f"{summary['cpu_seconds_per_run']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def maml_table(title: str, summaries: dict[str, dict]) -> str:
    lines = [f"### {title}", "", "| meta-gradient | test accuracy | per seed (± episode CI) | "
             "CPU s/run |", "|---|---|---|---|"]
    for name, summary in summaries.items():
        seeds = ", ".join(f"{100 * r['accuracy'][0]:.2f} ± {100 * r['episode_ci95']:.2f}"
                          for r in summary["runs"])
        lines.append(f"| {name} | {format_percent(summary['average'], 2)} | {seeds} | "
                     f"{summary['cpu_seconds_per_run']:.0f} |")
    return "\n".join(lines)


def per_task_table(title: str, summaries: dict[str, dict], tasks: list[str]) -> str:
    names = list(summaries)
    lines = [f"### {title}", "", "| task | " + " | ".join(names) + " |",
             "|---" * (len(names) + 1) + "|"]
    for task in tasks:
        lines.append(f"| {task} | " + " | ".join(format_percent(summaries[n]["tasks"][task], 2)
                                                  for n in names) + " |")
    return "\n".join(lines)


def experiment(part: str, combiners, s: Settings, tasks: list[str], runs_dir: Path) -> dict:
    summaries = {}
    for combiner in combiners:
        runs = []
        for seed in s.seeds:
            runs.append(run_one(part, combiner, seed, s, runs_dir))
            print(f"  {part} {combiner} seed {seed}: average accuracy "
                  f"{sum(runs[-1]['accuracy']) / len(runs[-1]['accuracy']):.4f} "
                  f"({runs[-1]['seconds']:.0f} s, {runs[-1]['cpu_seconds']:.0f} s CPU)",
                  flush=True)
        summaries[combiner] = summarize(runs, tasks)
    return summaries


def images_in_tasks(source) -> int:
    """Examples a multi-task source scores (a partition's classes, or the whole dataset)."""
    members = getattr(source, "task_indices", None)
    return len(source.dataset) if members is None else sum(len(m) for m in members)


def run_parts(parts: list[str], s: Settings, runs_dir: Path, results: dict) -> list[str]:
    """Every part's experiment; fills ``results`` and returns the markdown tables."""
    tables = []
    if "multimnist" in parts:
        config = part_config("multimnist", "mean", 0, s)
        train = build_task_source(config, "train", 1, seed=0).dataset
        test = test_source(config, "multimnist", s).dataset
        title = f"MultiMNIST from {train.source} ({len(train)} train / " \
                f"{len(test)} test composites, {s.mnist_steps} steps)"
        print(title, flush=True)
        tasks = task_names("multimnist", s)
        summaries = experiment("multimnist", s.combiners, s, tasks, runs_dir)
        results["multimnist"] = {"source": train.source, "summaries": summaries}
        tables.append(table(title, summaries, tasks))
    if "glyphs" in parts:
        config = part_config("glyphs", "mean", 0, s)
        used = [images_in_tasks(build_task_source(config, split, 1, seed=0))
                for split in ("train", "test")]
        tasks = task_names("glyphs", s)
        title = f"{len(tasks)} glyph alphabets ({used[0]} train / {used[1]} test " \
                f"images, {s.glyph_steps} steps)"
        print(title, flush=True)
        summaries = experiment("glyphs", s.combiners, s, tasks, runs_dir)
        results["glyphs"] = {"tasks": tasks, "summaries": summaries}
        tables.append(table(title, summaries, []))
        tables.append(per_task_table("Glyphs: per-alphabet test accuracy (%)", summaries,
                                     tasks))
    if "maml" in parts:
        title = (f"MAML 5-way 1-shot on glyphs, meta-batch {s.maml_meta_batch}, "
                 f"{s.maml_steps} steps, {s.maml_eval_episodes} test episodes")
        print(title, flush=True)
        summaries = experiment("maml", ("mean", "pcgrad"), s, ["test"], runs_dir)
        results["maml"] = {"summaries": summaries}
        tables.append(maml_table(title, summaries))
    return tables


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny settings (smoke test)")
    parser.add_argument("--seeds", type=int, nargs="+", help="override the seeds")
    parser.add_argument("--combiners", nargs="+", help="override the combiners")
    parser.add_argument("--parts", nargs="+", default=["multimnist", "glyphs", "maml"],
                        choices=["multimnist", "glyphs", "maml"])
    parser.add_argument("--json", type=Path, default=None,
                        help=f"results file (default {RESULTS}; --quick writes none)")
    parser.add_argument("--runs", type=Path, default=None,
                        help="keep the run directories here (PART/COMBINER/seed<N>); "
                             "default: a temporary directory")
    args = parser.parse_args()
    torch.set_num_threads(1)
    s = QUICK if args.quick else Settings()
    if args.seeds:
        s = replace(s, seeds=tuple(args.seeds))
    if args.combiners:
        s = replace(s, combiners=tuple(args.combiners))
    if s.mnist_train_copies != s.mnist_test_copies:
        parser.error("the config's data.copies serves both splits: mnist_train_copies must "
                     "equal mnist_test_copies")
    started, cpu = time.perf_counter(), time.process_time()
    results: dict = {"settings": asdict(s), "machine": platform.processor() or platform.machine(),
                     "torch": torch.__version__, "threads": torch.get_num_threads(),
                     "reference": REFERENCE}
    if args.runs is not None:
        tables = run_parts(args.parts, s, args.runs, results)
    else:
        with tempfile.TemporaryDirectory(prefix="metalab-multitask-") as runs_dir:
            tables = run_parts(args.parts, s, Path(runs_dir), results)
    results["seconds"] = time.perf_counter() - started
    results["cpu_seconds"] = time.process_time() - cpu
    footer = (f"Total {results['seconds']:.0f} s ({results['cpu_seconds']:.0f} s CPU) on "
              f"{results['machine']}, torch {results['torch']}, {results['threads']} "
              f"thread(s). Accuracy in %, mean ± 95% CI over seeds {list(s.seeds)}.")
    report = "\n\n".join(tables) + "\n\n" + footer + "\n"
    print()
    print(report)
    path = args.json or (None if args.quick else RESULTS)
    if path is not None:
        write_json(path, results)
        with atomic_file(path.with_suffix(".md")) as tmp:
            tmp.write_text(report)
        print(f"wrote {path} and {path.with_suffix('.md')}")


if __name__ == "__main__":
    main()
