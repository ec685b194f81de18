"""MAML-RL learning curves on half-cheetah velocity over seeds, with the untrained policy as
the floor (the runs come from benchmarks/maml_rl_cheetah_curve.sh).

    # the floor: each seed's initial policy (the run's own step-0 parameters) meta-tested
    # like a checkpoint: return before adaptation (a random policy) and after one inner
    # step from it (a policy trained from scratch at test time, one step)
    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/maml_rl_cheetah_curve.py \
        floor RUN_DIR_SEED0 RUN_DIR_SEED1 RUN_DIR_SEED2
    # the table: every RUN_DIR/eval-step<K>.json (and eval-step0.json from `floor`)
    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/maml_rl_cheetah_curve.py \
        table RUN_DIR_SEED0 RUN_DIR_SEED1 RUN_DIR_SEED2 --out benchmarks/results/NAME

Environment steps at checkpoint K: K meta-iterations x meta_batch tasks x episodes x
horizon x 2 (pre- and post-update episodes); wall-clock: the trainer's ``seconds`` of the
last training record at step K, summed over the resumed segments. The across-seed interval
is ``t_{0.975, n-1} * sd / sqrt(n)`` over the seeds' mean returns.
"""

from __future__ import annotations

import argparse
import json
import math
import re
from pathlib import Path

import torch

from metalab.train.build import build_task_source
from metalab.train.config import EvalConfig, TrainConfig
from metalab.train.evaluator import Evaluator
from metalab.train.run import initial_learner, read_run_config

T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571}


def floor(run_dir: Path) -> dict:
    """Meta-test the run's initial parameters (`initial_learner`: what `make_trainer` starts
    from) on the run's test tasks; writes ``eval-step0.json``."""
    config = read_run_config(run_dir)
    evaluation = EvalConfig.of(config)
    learner = initial_learner(config).eval()
    source = build_task_source(config, "test", evaluation.batch_size, seed=evaluation.seed,
                               queries=evaluation.queries)
    result = Evaluator(evaluation.episodes).evaluate(learner, source)
    result.update({"split": "test", "step": 0})
    (run_dir / "eval-step0.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def evaluations_by_step(run_dirs: list[Path]) -> dict[int, list[tuple[Path, dict]]]:
    """``{trainer step: [(run directory, its eval-step<N>.json), ...]}`` over the runs."""
    evals: dict[int, list[tuple[Path, dict]]] = {}
    for run_dir in run_dirs:
        for path in run_dir.glob("eval-step*.json"):
            step = int(re.search(r"eval-step(\d+)\.json", path.name).group(1))
            evals.setdefault(step, []).append((run_dir, json.loads(path.read_text())))
    return evals


def training_seconds(run_dir: Path) -> dict[int, float]:
    """Cumulative training wall-clock at each logged step (segments restart the clock)."""
    seconds, offset, last = {}, 0.0, 0.0
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record.get("split") != "train":
            continue
        if record["seconds"] < last:  # a resumed segment
            offset += last
        last = record["seconds"]
        seconds[record["step"]] = offset + record["seconds"]
    return seconds


def across(values: list[float]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, float("nan")
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, T_975.get(n - 1, 1.96) * sd / math.sqrt(n)


def training_summary(run_dir: Path) -> dict:
    """From the training log: mean pre / post-update return over the first and the last 10
    meta-iterations, iterations with post > pre, the median accepted KL and the iterations
    without an improving step (15 backtracks)."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    records = [r for r in records if r.get("split") == "train"]
    first, last = records[:10], records[-10:]

    def mean(rows, key):
        return sum(r[key] for r in rows) / len(rows)

    kls = sorted(r["kl"] for r in records if r["backtracks"] < 15)
    return {"run": str(run_dir), "iterations": len(records),
            "first10": (mean(first, "return_pre"), mean(first, "return")),
            "last10": (mean(last, "return_pre"), mean(last, "return")),
            "post_above_pre": sum(r["return"] > r["return_pre"] for r in records),
            "median_kl": kls[len(kls) // 2] if kls else 0.0,
            "no_step": sum(r["backtracks"] >= 15 for r in records)}


def table(run_dirs: list[Path], out: Path | None) -> str:
    config = read_run_config(run_dirs[0])
    data, train = config["data"], TrainConfig.of(config)
    per_step = train.meta_batch * data["episodes"] * data["horizon"] * 2
    evals = evaluations_by_step(run_dirs)
    seconds = {run_dir: training_seconds(run_dir) for run_dir in run_dirs}
    rows, records = [], []
    for step in sorted(evals):
        runs = evals[step]
        pre = across([r["return_pre"] for _, r in runs])
        post = across([r["mean"] for _, r in runs])
        gain = across([r["mean"] - r["return_pre"] for _, r in runs])
        walls = [seconds[d].get(step, 0.0) for d, _ in runs]
        per_seed = "; ".join(f"{r['return_pre']:.1f} ± {r['return_pre_ci95']:.1f} / "
                             f"{r['mean']:.1f} ± {r['ci95']:.1f}" for _, r in runs)
        rows.append(f"| {step} | {step * per_step / 1e6:.2f} | {max(walls) / 60:.0f} | "
                    f"{len(runs)} | {pre[0]:.1f} ± {pre[1]:.1f} | {post[0]:.1f} ± {post[1]:.1f} | "
                    f"{gain[0]:+.1f} ± {gain[1]:.1f} | {per_seed} |")
        records.append({"step": step, "env_steps": step * per_step,
                        "wall_seconds_max": max(walls), "seeds": len(runs),
                        "return_pre": pre, "return_post": post, "gain": gain,
                        "runs": [{"run": str(d), **r} for d, r in runs]})
    summaries = [training_summary(d) for d in run_dirs]
    log_rows = [f"| {Path(t['run']).name} | {t['iterations']} | {t['first10'][0]:.1f} / "
                f"{t['first10'][1]:.1f} | {t['last10'][0]:.1f} / {t['last10'][1]:.1f} | "
                f"{t['post_above_pre']} / {t['iterations']} | {t['median_kl']:.1e} | "
                f"{t['no_step']} |" for t in summaries]
    text = "\n".join([
        "| meta-iteration | env steps (M) | train wall (min, slowest seed) | seeds | "
        "return before adaptation | after one step | gain | per seed: before / after "
        "(± 95% CI over test velocities) |",
        "|---|---|---|---|---|---|---|---|", *rows, "",
        "| run | meta-iterations | pre / post return, first 10 | pre / post, last 10 | "
        "post > pre | median accepted KL | no improving step |",
        "|---|---|---|---|---|---|---|", *log_rows])
    if out is not None:
        out.with_suffix(".md").write_text(text + "\n")
        out.with_suffix(".json").write_text(
            json.dumps({"meta_test": records, "training": summaries}, indent=2) + "\n")
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["floor", "table"])
    parser.add_argument("run_dirs", nargs="+", type=Path)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.mode == "floor":
        for run_dir in args.run_dirs:
            result = floor(run_dir)
            print(run_dir, f"before {result['return_pre']:.1f} ± {result['return_pre_ci95']:.1f}",
                  f"after one step {result['mean']:.1f} ± {result['ci95']:.1f}")
    else:
        print(table(args.run_dirs, args.out))


if __name__ == "__main__":
    main()
