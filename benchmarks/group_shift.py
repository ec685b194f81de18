"""Group shift: ERM, UW, group DRO, ARM-BN, ARM-CML and ARM-LL on rotated digits,
corrupted glyphs and rotated MNIST (Zhang, Marklund et al., "Adaptive Risk Minimization",
NeurIPS 2021).

Checks the paper's claim that the ARM methods improve worst-group accuracy over ERM and
DRO. For every dataset, method and seed it meta-trains the shipped config
(``configs/<method>-<dataset>.yaml`` with the benchmark's settings as overrides) with
`metalab.train.train_run` and evaluates the run with `metalab.train.evaluate_run` on test
batches that each come from one group (``--support-size``-style evaluation, the same
``--eval-per-group`` examples of every group at each test batch size of ``--batch-sizes``:
the ablation). The main table is at the training batch size ``--support-size``. Reports
average and worst-group accuracy (mean over seeds with a Student-t 95% CI over seeds,
`metalab.train.report`), the paired difference of every ARM method to ERM and DRO, the
per-group accuracies and the test-batch-size ablation, as markdown tables and in
``--json`` (written atomically). ``--runs DIR`` keeps the run directories, so
``metalab report DIR/rotated-digits/* --eval eval-test-support50`` gives the main table.

    OMP_NUM_THREADS=1 python benchmarks/group_shift.py                  # the full run
    OMP_NUM_THREADS=1 python benchmarks/group_shift.py --quick --json /tmp/gs.json
    OMP_NUM_THREADS=1 python benchmarks/group_shift.py --datasets rotated-mnist \
        --data-root ../shared/data/mnist     # ARM's protocol on the 10,000 MNIST test images

Methods (all on the same small ConvNet of the ARM MNIST experiments, scaled down):
ERM (groups drawn in proportion to their training frequency), UW (ERM with groups drawn
uniformly), DRO (UW sampling, online group DRO, step size 0.01, as the official code),
ARM-BN, ARM-CML and ARM-LL (uniform group sampling, as the official code). ARM-CML's
context network has no batch norm (the official one has; see `metalab.nn.arm.ContextNet`).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from metalab.cli.main import resolve_config_path
from metalab.train import evaluate_run, load_config, train_run
from metalab.train.build import build_task_source
from metalab.train.report import format_percent, over_seeds, summarise_runs, write_json
from metalab.train.seeds import seed_run_dir, with_seed

RESULTS = Path(__file__).resolve().parent / "results" / "group_shift.json"
METHODS = ("ERM", "UW", "DRO", "ARM-BN", "ARM-CML", "ARM-LL")
ARM_METHODS = ("ARM-BN", "ARM-CML", "ARM-LL")
DATASETS = ("rotated-digits", "corrupted-glyphs", "rotated-mnist")
DEFAULT_DATASETS = ("rotated-digits", "corrupted-glyphs")  # embedded: no files needed


@dataclass(frozen=True)
class Settings:
    steps: int = 400
    seeds: tuple[int, ...] = (0, 1, 2)
    groups_per_batch: int = 3
    support_size: int = 50
    lr: float = 1e-3
    image_size: int = 14
    hidden: int = 16
    fc_hidden: int = 32
    kernel_size: int = 5
    context_channels: int = 12
    context_hidden: int = 16
    ll_inner_lr: float = 0.1
    ll_inner_steps: int = 1
    dro_step_size: float = 0.01
    eval_per_group: int = 200
    batch_sizes: tuple[int, ...] = (1, 5, 10, 50, 100)
    data_root: str | None = None  # rotated-mnist: the folder with the t10k IDX files
    overrides: tuple[str, ...] = ()  # extra KEY=VALUE overrides, applied last


def config_name(method: str, dataset: str) -> str:
    """The shipped config of ``method`` on ``dataset`` (``erm-rotated-digits`` ...)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {list(METHODS)}, got {method!r}")
    if dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {list(DATASETS)}, got {dataset!r}")
    return f"{method.lower()}-{dataset}"


def method_config(method: str, dataset: str, settings: Settings) -> dict:
    """The shipped config with the benchmark's settings as overrides (every run is one
    checkpoint at the end, no validation; the data's seed is fixed, the seeds vary the
    training)."""
    s = settings
    overrides = [f"train.steps={s.steps}", f"train.meta_batch={s.groups_per_batch}",
                 f"train.lr={s.lr}", "train.val_every=0", f"train.checkpoint_every={s.steps}",
                 f"train.log_every={max(1, s.steps // 10)}", "train.progress=false",
                 f"data.support_size={s.support_size}", f"data.image_size={s.image_size}",
                 f"model.hidden={s.hidden}", f"model.fc_hidden={s.fc_hidden}",
                 f"model.kernel_size={s.kernel_size}"]
    if dataset == "rotated-digits":
        overrides.append(f"data.digit_size={round(s.image_size * 20 / 28)}")
    if dataset == "rotated-mnist":
        overrides.append(f"model.image_size={s.image_size}")
        if s.image_size < 28:
            overrides.append("model.padding=same")
        if s.data_root is not None:
            overrides.append(f"data.root={s.data_root}")
    if method == "ARM-CML":
        overrides += [f"algorithm.context_channels={s.context_channels}",
                      f"algorithm.context_hidden={s.context_hidden}"]
    if method == "ARM-LL":
        overrides += [f"algorithm.inner_lr={s.ll_inner_lr}",
                      f"algorithm.inner_steps={s.ll_inner_steps}"]
    if method == "DRO":
        overrides.append(f"train.combiner.step_size={s.dro_step_size}")
    overrides += list(s.overrides)
    return load_config(resolve_config_path(config_name(method, dataset)), overrides)


def train(config: dict, run_dir: Path) -> dict:
    """Meta-train ``config`` into ``run_dir``; the time and the last logged training step."""
    started = time.perf_counter()
    train_run(config, run_dir)
    log = [json.loads(line) for line in (run_dir / "metrics.jsonl").open()]
    last = [r for r in log if r["split"] == "train"][-1]
    return {"train_seconds": time.perf_counter() - started, "final_train_loss": last["loss"],
            "final_train_accuracy": last["accuracy"]}


def evaluate(run_dir: Path, batch_size: int, test_groups: int, settings: Settings) -> dict:
    """Accuracy on ``eval_per_group`` examples of every test group, in batches of one group
    (`evaluate_run` with ``support_size``: ``eval-test-support<batch_size>.json``)."""
    episodes = test_groups * math.ceil(settings.eval_per_group / batch_size)
    started = time.perf_counter()
    result = evaluate_run(run_dir, episodes=episodes, seed=0, support_size=batch_size)
    names = {int(g): v["name"] for g, v in result["per_group"].items()}
    return {
        "average_accuracy": result["average_accuracy"], "average_ci95": result["average_ci95"],
        "worst_group_accuracy": result["worst_group_accuracy"],
        "worst_group_ci95": result["worst_group_ci95"],
        "worst_group": names[int(result["worst_group"])],
        "per_group": {names[int(g)]: v["mean"] for g, v in result["per_group"].items()},
        "batches": episodes, "seconds": time.perf_counter() - started,
    }


def summarize(run_dirs: list[Path], runs: list[dict], settings: Settings) -> dict:
    """Average and worst-group accuracy over seeds (`metalab.train.report`, Student-t) at
    every test batch size, and the per-group accuracy at the training batch size."""
    def over(batch_size: int) -> dict:
        row = summarise_runs(run_dirs, by=[], eval_name=f"eval-test-support{batch_size}")
        row = row["rows"][0]
        return {key: {k: row[key][k] for k in ("mean", "ci95", "values")}
                for key in ("average_accuracy", "worst_group_accuracy")}

    main = [r["eval"][str(settings.support_size)] for r in runs]
    return {
        **over(settings.support_size),
        "per_group": {g: sum(m["per_group"][g] for m in main) / len(main)
                      for g in main[0]["per_group"]},
        "ablation": {str(b): over(b) for b in settings.batch_sizes},
        "train_seconds": sum(r["train_seconds"] for r in runs) / len(runs),
    }


def paired_differences(results: dict, seeds: int) -> dict:
    """Worst-group and average accuracy of each ARM method minus ERM's and DRO's, paired by seed."""
    out = {}
    for arm in ARM_METHODS:
        for base in ("ERM", "DRO"):
            if arm not in results or base not in results:
                continue
            entry = {}
            for metric in ("worst_group_accuracy", "average_accuracy"):
                a = results[arm]["summary"][metric]["values"]
                b = results[base]["summary"][metric]["values"]
                difference = over_seeds([x - y for x, y in zip(a, b, strict=True)])
                entry[metric] = {k: difference[k] for k in ("mean", "ci95", "values")}
            out[f"{arm} - {base}"] = entry
    return out


def print_tables(dataset: str, results: dict, differences: dict, settings: Settings) -> None:
    seeds = len(settings.seeds)
    print(f"\n### {dataset}: test batch size {settings.support_size}, {seeds} seeds "
          f"(accuracy %, mean ± 95% CI over seeds)\n")
    print("| method | average | worst group | train s/seed |")
    print("|---|---|---|---|")
    for method, r in results.items():
        s = r["summary"]
        print(f"| {method} | {format_percent(s['average_accuracy'])} | "
              f"{format_percent(s['worst_group_accuracy'])} | {s['train_seconds']:.0f} |")
    if differences:
        print("\nPaired differences over seeds (percentage points, mean ± 95% CI):\n")
        print("| comparison | worst group | average |")
        print("|---|---|---|")
        for name, d in differences.items():
            print(f"| {name} | {format_percent(d['worst_group_accuracy'])} | "
                  f"{format_percent(d['average_accuracy'])} |")
    print(f"\nTest-batch-size ablation, {dataset} (average / worst-group accuracy %):\n")
    print("| method | " + " | ".join(f"b={b}" for b in settings.batch_sizes) + " |")
    print("|---|" + "---|" * len(settings.batch_sizes))
    for method, r in results.items():
        cells = [f"{100 * a['average_accuracy']['mean']:.1f} / "
                 f"{100 * a['worst_group_accuracy']['mean']:.1f}"
                 for a in r["summary"]["ablation"].values()]
        print(f"| {method} | " + " | ".join(cells) + " |")
    groups = list(next(iter(results.values()))["summary"]["per_group"])
    print(f"\nPer-group accuracy %, {dataset}, test batch size {settings.support_size} "
          f"(mean over seeds):\n")
    print("| group | " + " | ".join(results) + " |")
    print("|---|" + "---|" * len(results))
    for g in groups:
        cells = [f"{100 * r['summary']['per_group'][g]:.1f}" for r in results.values()]
        print(f"| {g} | " + " | ".join(cells) + " |")


def data_info(config: dict) -> dict:
    """Group counts of the config's training and test data (from its task sources)."""
    train_set = build_task_source(config, "train", 1, seed=0).dataset
    test_set = build_task_source(config, "test", 1, seed=0).dataset
    return {"train": {"groups": train_set.num_groups, "images": len(train_set),
                      "group_sizes": dict(zip(train_set.group_names,
                                              train_set.group_counts().tolist(), strict=True))},
            "test": {"groups": test_set.num_groups, "images": len(test_set),
                     "groups_with_examples": int((test_set.group_counts() > 0).sum())}}


RUN_RECORD = "group-shift-run.json"


def reused(run_dir: Path, settings: Settings, config: dict) -> dict | None:
    """The record of an earlier run in ``run_dir`` made with the same settings (but for
    the list of seeds) and the same config (so an edited shipped config is retrained; a
    record without its config is trusted on the settings alone), or None."""
    path = run_dir / RUN_RECORD
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    made, wanted = record.pop("settings"), json.loads(json.dumps(asdict(settings)))
    made.pop("seeds"), wanted.pop("seeds")  # a run is one seed; more seeds may come later
    made_config = record.pop("config", None)
    if made_config is not None and made_config != json.loads(json.dumps(config)):
        return None
    return record if made == wanted else None


def run(settings: Settings, datasets: list[str], methods: list[str], out: Path,
        runs_dir: Path, reuse: bool = False) -> dict:
    """Every (dataset, method, seed) as a run directory ``runs_dir/<dataset>/<method>/seed<N>``
    trained from its config and evaluated at every test batch size. With ``reuse``, a run
    directory that holds the record of a run with the same settings is read, not retrained
    (so several processes can train disjoint methods into one ``--runs`` folder and a last
    one with every method writes the tables)."""
    if settings.support_size not in settings.batch_sizes:
        raise ValueError(f"--support-size {settings.support_size} must be one of the test "
                         f"--batch-sizes {list(settings.batch_sizes)} (the main table)")
    started = time.perf_counter()
    report = {"settings": asdict(settings), "environment": {
        "machine": platform.processor() or platform.machine(), "torch": torch.__version__,
        "threads": torch.get_num_threads()}, "datasets": {}}
    for dataset in datasets:
        info = data_info(method_config(methods[0], dataset, settings))
        test_groups = info["test"].pop("groups_with_examples")
        results = {}
        for method in methods:
            config = method_config(method, dataset, settings)
            runs, run_dirs = [], []
            for seed in settings.seeds:
                run_dir = seed_run_dir(runs_dir / dataset / method, seed)
                seeded = with_seed(config, seed)
                one = reused(run_dir, settings, seeded) if reuse else None
                if one is None:
                    one = {**train(seeded, run_dir), "seed": seed}
                    one["eval"] = {str(b): evaluate(run_dir, b, test_groups, settings)
                                   for b in settings.batch_sizes}
                    write_json(run_dir / RUN_RECORD,
                               {"settings": asdict(settings), "config": seeded, **one})
                runs.append(one)
                run_dirs.append(run_dir)
                main = one["eval"][str(settings.support_size)]
                print(f"[{time.perf_counter() - started:7.0f} s] {dataset} {method} seed {seed}: "
                      f"train {one['train_seconds']:.0f} s, average "
                      f"{100 * main['average_accuracy']:.1f}, worst group "
                      f"{100 * main['worst_group_accuracy']:.1f} ({main['worst_group']})",
                      flush=True)
            results[method] = {"runs": runs,
                               "summary": summarize(run_dirs, runs, settings)}
        differences = paired_differences(results, len(settings.seeds))
        report["datasets"][dataset] = {**info, "methods": results, "differences": differences}
        print_tables(dataset, results, differences, settings)
    report["total_seconds"] = time.perf_counter() - started
    write_json(out, report)
    print(f"\nTotal {report['total_seconds'] / 60:.1f} min; wrote {out}")
    return report


def main() -> None:
    defaults = Settings()
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=list(DEFAULT_DATASETS),
                        choices=DATASETS)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--steps", type=int, default=defaults.steps)
    parser.add_argument("--seeds", type=int, nargs="+", default=list(defaults.seeds))
    parser.add_argument("--groups-per-batch", type=int, default=defaults.groups_per_batch)
    parser.add_argument("--support-size", type=int, default=defaults.support_size)
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--eval-per-group", type=int, default=defaults.eval_per_group)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=list(defaults.batch_sizes))
    parser.add_argument("--image-size", type=int, default=defaults.image_size)
    parser.add_argument("--hidden", type=int, default=defaults.hidden)
    parser.add_argument("--fc-hidden", type=int, default=defaults.fc_hidden)
    parser.add_argument("--context-hidden", type=int, default=defaults.context_hidden)
    parser.add_argument("--data-root", default=None,
                        help="rotated-mnist: the folder with the MNIST t10k IDX files")
    parser.add_argument("--set", dest="overrides", nargs="*", default=[], metavar="KEY=VALUE",
                        help="config overrides for every run, applied after the benchmark's "
                             "(e.g. algorithm.context_norm=batch with --methods ARM-CML)")
    parser.add_argument("--reuse", action="store_true",
                        help="with --runs: read runs already made with the same settings")
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: 5 steps, 1 seed, 10 examples per group")
    parser.add_argument("--json", type=Path, default=RESULTS)
    parser.add_argument("--runs", type=Path, default=None,
                        help="keep the run directories here (DATASET/METHOD/seed<N>; "
                             "`metalab report` reads them); default: a temporary directory")
    args = parser.parse_args()
    settings = Settings(steps=args.steps, seeds=tuple(args.seeds),
                        groups_per_batch=args.groups_per_batch, support_size=args.support_size,
                        lr=args.lr, eval_per_group=args.eval_per_group,
                        batch_sizes=tuple(args.batch_sizes), image_size=args.image_size,
                        hidden=args.hidden, fc_hidden=args.fc_hidden,
                        context_hidden=args.context_hidden,
                        data_root=args.data_root, overrides=tuple(args.overrides))
    if args.quick:
        settings = Settings(steps=5, seeds=(0,), groups_per_batch=2, support_size=5,
                            eval_per_group=10, batch_sizes=(1, 5, 10),
                            data_root=args.data_root, overrides=tuple(args.overrides))
    if args.runs is not None:
        run(settings, args.datasets, args.methods, args.json, args.runs, reuse=args.reuse)
        return
    with tempfile.TemporaryDirectory(prefix="group-shift-") as runs_dir:
        run(settings, args.datasets, args.methods, args.json, Path(runs_dir))


if __name__ == "__main__":
    main()
