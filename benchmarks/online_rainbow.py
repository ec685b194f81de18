"""Online meta-learning: FTML against follow-the-leader (FTL), train-on-everything (TOE) and
from-scratch on the same stream (Finn et al. 2019, Fig. 3), through the shipped configs.

For each protocol and seed, ``<protocol>-<stream>`` (``ftml-rainbow-digits``, ...) runs
through `metalab.train.run.train_run` (the CLI's path) with ``--set`` overrides into
``RUNS/<out name>/<protocol>/seed<N>``; its ``metrics.jsonl`` stream records are summarised per
task index at each of ``--thresholds`` (examples to threshold, censored at the task's
examples + 1 when never reached; its area = the sum over task indices), with the accuracy
after ``online.budget`` examples and the cumulative held-out loss. Mean ± Student-t 95% CI
over seeds.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/online_rainbow.py --stream digits \
        --seeds 0,1,2 --thresholds 0.5,0.7,0.9 --out benchmarks/results/online_rainbow_digits

writes ``OUT.json``, ``OUT.md`` and ``OUT.png`` (`metalab plot --stream` of the runs).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch

from metalab.cli.plot_stream import plot_stream
from metalab.train.config import load_config
from metalab.train.online import read_stream_records, summarise_stream
from metalab.train.report import format_plain, over_seeds
from metalab.train.run import train_run
from metalab.train.seeds import with_seed

CONFIGS = Path(__file__).resolve().parents[1] / "src" / "metalab" / "configs"
ORDER = ("ftml", "ftl", "toe", "scratch")


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stream", choices=("digits", "glyphs", "mnist"), default="digits")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--protocols", default=",".join(ORDER))
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="overrides for every protocol (data.tasks=6 train.steps=...)")
    parser.add_argument("--ftml-set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="overrides for FTML only (algorithm.inner_steps=5)")
    parser.add_argument("--thresholds", default="0.5,0.7,0.9")
    parser.add_argument("--out", default="benchmarks/results/online_rainbow_digits")
    parser.add_argument("--from-json", dest="from_json", default=None,
                        help="only rewrite OUT.md from this benchmark JSON (no training)")
    parser.add_argument("--merge", nargs="*", default=None, metavar="JSON",
                        help="no training: join these benchmark JSONs (protocols run as "
                             "separate processes) into OUT.json / OUT.md / OUT.png")
    parser.add_argument("--runs", default="/tmp/online_rainbow_runs",
                        help="where the run directories go (checkpoints: not results)")
    return parser.parse_args()


def run(args: argparse.Namespace) -> dict:
    seeds = [int(s) for s in args.seeds.split(",")]
    runs_root = Path(args.runs) / Path(args.out).name
    results: dict = {}
    for name in args.protocols.split(","):
        overrides = list(args.set) + (list(args.ftml_set) if name == "ftml" else [])
        config = load_config(CONFIGS / f"{name}-rainbow-{args.stream}.yaml",
                             overrides + ["train.progress=false"])
        results[name] = {}
        for seed in seeds:
            run_dir = runs_root / name / f"seed{seed}"
            shutil.rmtree(run_dir, ignore_errors=True)
            started = time.perf_counter()
            train_run(with_seed(config, seed), run_dir)
            seconds = time.perf_counter() - started
            records = read_stream_records(run_dir)
            online = config["online"]
            results[name][seed] = {
                "seconds": seconds, "run_dir": str(run_dir),
                "summaries": {t: summarise_stream(records, float(t), online["budget"])
                              for t in args.thresholds.split(",")}}
            print(f"{args.stream} seed {seed} {name}: {seconds:.1f}s", flush=True)
    return {"args": vars(args), "results": results}


def merge(reports: list[dict]) -> dict:
    """One report from several runs of this script on the same stream and overrides, each
    with its own protocols or seeds (protocols in ``ORDER``, seeds in order)."""
    args = dict(reports[0]["args"])
    for report in reports[1:]:
        for key in ("stream", "set", "thresholds"):
            if report["args"][key] != args[key]:
                raise ValueError(f"--merge: the JSONs differ in {key!r}: "
                                 f"{report['args'][key]!r} and {args[key]!r}")
    results: dict = {}
    for report in reports:
        for name, per_seed in report["results"].items():
            results.setdefault(name, {}).update(per_seed)
    ordered = {name: dict(sorted(results[name].items(), key=lambda item: int(item[0])))
               for name in ORDER if name in results}
    seeds = sorted({int(s) for per in ordered.values() for s in per})
    args.update(protocols=",".join(ordered), seeds=",".join(map(str, seeds)),
                ftml_set=next((r["args"]["ftml_set"] for r in reports
                               if "ftml" in r["results"]), args["ftml_set"]))
    return {"args": args, "results": ordered,
            "seconds": sum(r.get("seconds", 0.0) for r in reports)}


def censored(task: dict) -> float:
    reached = task["examples_to_threshold"]
    return float(task["examples"] + 1 if reached is None else reached)


def summary_markdown(report: dict) -> str:
    args, results = report["args"], report["results"]
    first = next(iter(next(iter(results.values())).values()))
    tasks = len(next(iter(first["summaries"].values()))["tasks"])
    examples = next(iter(first["summaries"].values()))["tasks"][0]["examples"]
    budget = next(iter(first["summaries"].values()))["budget"]
    half = tasks // 2
    lines = [f"Rainbow {args['stream']}: {tasks} tasks x {examples} examples, seeds "
             f"{args['seeds']}, overrides {args['set']} (FTML also {args['ftml_set']}); "
             f"mean ± Student-t 95% CI over seeds; area = sum over task indices of the "
             f"examples to threshold, never reached counted as {examples + 1}.", "",
             "| protocol | " + " | ".join(f"area to {t}" for t in args["thresholds"].split(","))
             + f" | acc. after {budget} ex. | final acc. | cumulative loss | s/seed |",
             "|---" * (len(args["thresholds"].split(",")) + 5) + "|"]
    thresholds = args["thresholds"].split(",")
    trend = ["", f"Examples to threshold: mean per task over the first {half} and the last "
             f"{tasks - half} task indices (a learner that learns to learn comes down; "
             f"never = {examples + 1}), and the final accuracy:", "",
             "| protocol | " + " | ".join(f"to {t}, first half | to {t}, second half"
                                         for t in thresholds)
             + " | final acc., first half | final acc., second half |",
             "|---" * (2 * len(thresholds) + 3) + "|"]
    for name, per_seed in results.items():
        runs = list(per_seed.values())
        areas = [format_plain(over_seeds([sum(censored(t) for t in r["summaries"][k]["tasks"])
                                          for r in runs]), 0)
                 for k in thresholds]
        any_summary = [next(iter(r["summaries"].values())) for r in runs]
        acc = over_seeds([sum(t["accuracy_at_budget"] for t in s["tasks"]) / len(s["tasks"])
                          for s in any_summary])
        final = over_seeds([sum(t["final_accuracy"] for t in s["tasks"]) / len(s["tasks"])
                            for s in any_summary])
        loss = over_seeds([s["cumulative_loss"][-1] for s in any_summary])
        secs = sum(r["seconds"] for r in runs) / len(runs)
        lines.append(f"| {name} | " + " | ".join(areas) + f" | {format_plain(acc, 3)} | "
                     f"{format_plain(final, 3)} | {format_plain(loss, 2)} | {secs:.0f} |")
        cells = []
        for key in thresholds:
            per_run = [[censored(t) for t in r["summaries"][key]["tasks"]] for r in runs]
            cells += [format_plain(over_seeds([sum(v[:half]) / half for v in per_run]), 1),
                      format_plain(over_seeds([sum(v[half:]) / (tasks - half)
                                               for v in per_run]), 1)]
        finals = [[t["final_accuracy"] for t in s["tasks"]] for s in any_summary]
        cells += [format_plain(over_seeds([sum(v[:half]) / half for v in finals]), 3),
                  format_plain(over_seeds([sum(v[half:]) / (tasks - half) for v in finals]), 3)]
        trend.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += trend
    for key in args["thresholds"].split(","):
        lines += ["", f"Examples to {key} per task index (mean over seeds; "
                  f"{examples + 1} = never):", "",
                  "| task | " + " | ".join(results) + " |", "|---" * (len(results) + 1) + "|"]
        for t in range(tasks):
            cells = [sum(censored(r["summaries"][key]["tasks"][t]) for r in per.values())
                     / len(per) for per in results.values()]
            lines.append(f"| {t} | " + " | ".join(f"{c:.0f}" for c in cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    torch.set_num_threads(1)
    args = parse()
    if args.from_json:
        report = json.loads(Path(args.from_json).read_text())
        Path(args.from_json).with_name(Path(args.from_json).name[:-len(".json")] + ".md"
                                       ).write_text(summary_markdown(report))
        return
    if args.merge:
        report = merge([json.loads(Path(p).read_text()) for p in args.merge])
    else:
        started = time.perf_counter()
        report = run(args)
        report["seconds"] = time.perf_counter() - started
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    named = {kind: out.parent / f"{out.name}.{kind}" for kind in ("json", "md", "png")}
    named["json"].write_text(json.dumps(report, indent=1))
    markdown = summary_markdown(report)
    named["md"].write_text(markdown)
    run_dirs = [Path(r["run_dir"]) for per in report["results"].values() for r in per.values()]
    plot_stream(run_dirs, named["png"])
    print(markdown)
    print(f"total {report['seconds']:.0f}s")


if __name__ == "__main__":
    main()
