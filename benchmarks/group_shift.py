"""Group shift: ERM, UW, group DRO, ARM-BN, ARM-CML and ARM-LL on rotated digits and
corrupted glyphs (Zhang, Marklund et al., "Adaptive Risk Minimization", NeurIPS 2021).

Checks the paper's claim that the ARM methods improve worst-group accuracy over ERM and
DRO. For every dataset, method and seed it meta-trains with `metalab.train.Trainer` and
evaluates with `metalab.train.Evaluator` on test batches that each come from one group
(`GroupEvalSampler`), the same ``--eval-per-group`` examples of every group at each test
batch size of ``--batch-sizes`` (the ablation). The main table is at the training batch
size ``--support-size``. Reports average and worst-group accuracy (mean over seeds with a
Student-t 95% CI over seeds), the paired difference of every ARM method to ERM and DRO,
the per-group accuracies and the test-batch-size ablation, as markdown tables and in
``--json`` (written atomically).

    OMP_NUM_THREADS=1 python benchmarks/group_shift.py                  # the full run
    OMP_NUM_THREADS=1 python benchmarks/group_shift.py --quick --json /tmp/gs.json

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
from scipy import stats

from metalab.algorithms.arm import ARMBN, ARMCML, ARMLL, ERM
from metalab.combiners import build_combiner
from metalab.datasets.atomic import atomic_file
from metalab.datasets.corrupted_glyphs import corrupted_glyphs
from metalab.datasets.rotated import rotated_digits
from metalab.nn.arm import ARMConvNet, ContextNet, LearnedLoss
from metalab.tasks.groups import GroupBatchSampler, GroupEvalSampler
from metalab.train import Evaluator, Trainer

RESULTS = Path(__file__).resolve().parent / "results" / "group_shift.json"
METHODS = ("ERM", "UW", "DRO", "ARM-BN", "ARM-CML", "ARM-LL")
ARM_METHODS = ("ARM-BN", "ARM-CML", "ARM-LL")
SAMPLING = {"ERM": "frequency"}  # every other method draws groups uniformly
DATASETS = ("rotated-digits", "corrupted-glyphs")


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


def load_dataset(name: str, split: str, settings: Settings):
    """The group dataset ``name`` (its data seed is fixed: the seeds vary the training)."""
    if name == "rotated-digits":
        return rotated_digits(split, image_size=settings.image_size,
                              digit_size=round(settings.image_size * 20 / 28))
    if name == "corrupted-glyphs":
        return corrupted_glyphs(split, image_size=settings.image_size)
    raise ValueError(f"dataset must be one of {list(DATASETS)}, got {name!r}")


def build_learner(method: str, num_classes: int, channels: int, settings: Settings):
    net = dict(num_classes=num_classes, hidden=settings.hidden, fc_hidden=settings.fc_hidden,
               kernel_size=settings.kernel_size, image_size=settings.image_size,
               padding="same")
    if method in ("ERM", "UW", "DRO"):
        return ERM(ARMConvNet(channels, norm="batch", **net))
    if method == "ARM-BN":
        return ARMBN(ARMConvNet(channels, norm="task", **net))
    if method == "ARM-CML":
        context = ContextNet(channels, settings.context_channels, settings.context_hidden,
                             kernel_size=settings.kernel_size, norm="none")
        model = ARMConvNet(channels + settings.context_channels, norm="batch",
                           extra_conv=False, **net)
        return ARMCML(model, context)
    if method == "ARM-LL":
        return ARMLL(ARMConvNet(channels, norm="task", **net), LearnedLoss(num_classes),
                     inner_lr=settings.ll_inner_lr, inner_steps=settings.ll_inner_steps)
    raise ValueError(f"method must be one of {list(METHODS)}, got {method!r}")


def train(method: str, train_set, seed: int, settings: Settings) -> tuple[object, dict]:
    torch.manual_seed(seed)
    learner = build_learner(method, train_set.num_classes, train_set.image_shape[0], settings)
    source = GroupBatchSampler(train_set, settings.groups_per_batch, settings.support_size,
                               sampling=SAMPLING.get(method, "uniform"), seed=seed)
    combiner = None
    if method == "DRO":
        combiner = build_combiner("group_dro", num_groups=train_set.num_groups,
                                  step_size=settings.dro_step_size)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="group-shift-") as run_dir:
        Trainer(learner, source, run_dir, steps=settings.steps, lr=settings.lr,
                progress=False, seed=seed, combiner=combiner,
                log_every=max(1, settings.steps // 10), checkpoint_every=settings.steps).fit()
        log = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").open()]
    last = [r for r in log if r["split"] == "train"][-1]
    info = {"train_seconds": time.perf_counter() - started, "final_train_loss": last["loss"],
            "final_train_accuracy": last["accuracy"]}
    return learner, info


def evaluate(learner, test_set, batch_size: int, settings: Settings) -> dict:
    """Accuracy on ``eval_per_group`` examples of every test group, in batches of one group."""
    sampler = GroupEvalSampler(test_set, batch_size, groups_per_batch=len(
        [g for g in test_set.group_counts().tolist() if g]), seed=0)
    episodes = len(sampler.cycle) * math.ceil(settings.eval_per_group / batch_size)
    started = time.perf_counter()
    result = Evaluator(episodes).evaluate(learner, sampler)
    names = test_set.group_names
    return {
        "average_accuracy": result["average_accuracy"], "average_ci95": result["average_ci95"],
        "worst_group_accuracy": result["worst_group_accuracy"],
        "worst_group_ci95": result["worst_group_ci95"],
        "worst_group": names[result["worst_group"]],
        "per_group": {names[g]: v["mean"] for g, v in result["per_group"].items()},
        "batches": episodes, "seconds": time.perf_counter() - started,
    }


def over_seeds(values: list[float]) -> dict:
    """Mean and the Student-t 95% half-width over seeds (0 for one seed)."""
    t = torch.tensor(values, dtype=torch.float64)
    n = len(values)
    half = float(stats.t.ppf(0.975, n - 1) * t.std() / math.sqrt(n)) if n > 1 else 0.0
    return {"mean": float(t.mean()), "ci95": half, "values": values}


def summarize(runs: list[dict], settings: Settings) -> dict:
    main = [r["eval"][str(settings.support_size)] for r in runs]
    summary = {
        "average_accuracy": over_seeds([m["average_accuracy"] for m in main]),
        "worst_group_accuracy": over_seeds([m["worst_group_accuracy"] for m in main]),
        "per_group": {g: sum(m["per_group"][g] for m in main) / len(main)
                      for g in main[0]["per_group"]},
        "ablation": {},
        "train_seconds": sum(r["train_seconds"] for r in runs) / len(runs),
    }
    for b in settings.batch_sizes:
        rows = [r["eval"][str(b)] for r in runs]
        summary["ablation"][str(b)] = {
            "average_accuracy": over_seeds([x["average_accuracy"] for x in rows]),
            "worst_group_accuracy": over_seeds([x["worst_group_accuracy"] for x in rows])}
    return summary


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
                entry[metric] = over_seeds([x - y for x, y in zip(a, b, strict=True)])
            out[f"{arm} - {base}"] = entry
    return out


def pct(entry: dict) -> str:
    return f"{100 * entry['mean']:.1f} ± {100 * entry['ci95']:.1f}"


def print_tables(dataset: str, results: dict, differences: dict, settings: Settings) -> None:
    seeds = len(settings.seeds)
    print(f"\n### {dataset}: test batch size {settings.support_size}, {seeds} seeds "
          f"(accuracy %, mean ± 95% CI over seeds)\n")
    print("| method | average | worst group | train s/seed |")
    print("|---|---|---|---|")
    for method, r in results.items():
        s = r["summary"]
        print(f"| {method} | {pct(s['average_accuracy'])} | {pct(s['worst_group_accuracy'])} "
              f"| {s['train_seconds']:.0f} |")
    if differences:
        print("\nPaired differences over seeds (percentage points, mean ± 95% CI):\n")
        print("| comparison | worst group | average |")
        print("|---|---|---|")
        for name, d in differences.items():
            print(f"| {name} | {pct(d['worst_group_accuracy'])} | {pct(d['average_accuracy'])} |")
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


def run(settings: Settings, datasets: list[str], methods: list[str], out: Path) -> dict:
    if settings.support_size not in settings.batch_sizes:
        raise ValueError(f"--support-size {settings.support_size} must be one of the test "
                         f"--batch-sizes {list(settings.batch_sizes)} (the main table)")
    started = time.perf_counter()
    report = {"settings": asdict(settings), "environment": {
        "machine": platform.processor() or platform.machine(), "torch": torch.__version__,
        "threads": torch.get_num_threads()}, "datasets": {}}
    for dataset in datasets:
        train_set, test_set = load_dataset(dataset, "train", settings), load_dataset(
            dataset, "test", settings)
        results = {}
        for method in methods:
            runs = []
            for seed in settings.seeds:
                learner, info = train(method, train_set, seed, settings)
                info["seed"] = seed
                info["eval"] = {str(b): evaluate(learner, test_set, b, settings)
                                for b in settings.batch_sizes}
                runs.append(info)
                main = info["eval"][str(settings.support_size)]
                print(f"[{time.perf_counter() - started:7.0f} s] {dataset} {method} seed {seed}: "
                      f"train {info['train_seconds']:.0f} s, average "
                      f"{100 * main['average_accuracy']:.1f}, worst group "
                      f"{100 * main['worst_group_accuracy']:.1f} ({main['worst_group']})",
                      flush=True)
            results[method] = {"runs": runs, "summary": summarize(runs, settings)}
        differences = paired_differences(results, len(settings.seeds))
        report["datasets"][dataset] = {
            "train": {"groups": train_set.num_groups, "images": len(train_set),
                      "group_sizes": dict(zip(train_set.group_names,
                                              train_set.group_counts().tolist(), strict=True))},
            "test": {"groups": test_set.num_groups, "images": len(test_set)},
            "methods": results, "differences": differences}
        print_tables(dataset, results, differences, settings)
    report["total_seconds"] = time.perf_counter() - started
    with atomic_file(out) as tmp:
        tmp.write_text(json.dumps(report, indent=1) + "\n")
    print(f"\nTotal {report['total_seconds'] / 60:.1f} min; wrote {out}")
    return report


def main() -> None:
    defaults = Settings()
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--steps", type=int, default=defaults.steps)
    parser.add_argument("--seeds", type=int, nargs="+", default=list(defaults.seeds))
    parser.add_argument("--groups-per-batch", type=int, default=defaults.groups_per_batch)
    parser.add_argument("--support-size", type=int, default=defaults.support_size)
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--eval-per-group", type=int, default=defaults.eval_per_group)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=list(defaults.batch_sizes))
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: 5 steps, 1 seed, 10 examples per group")
    parser.add_argument("--json", type=Path, default=RESULTS)
    args = parser.parse_args()
    settings = Settings(steps=args.steps, seeds=tuple(args.seeds),
                        groups_per_batch=args.groups_per_batch, support_size=args.support_size,
                        lr=args.lr, eval_per_group=args.eval_per_group,
                        batch_sizes=tuple(args.batch_sizes))
    if args.quick:
        settings = Settings(steps=5, seeds=(0,), groups_per_batch=2, support_size=5,
                            eval_per_group=10, batch_sizes=(1, 5, 10))
    run(settings, args.datasets, args.methods, args.json)


if __name__ == "__main__":
    main()
