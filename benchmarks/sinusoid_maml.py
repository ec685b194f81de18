"""Reproduce MAML on the sinusoid family (Finn et al. 2017, appendix table).

Meta-trains `configs/maml-sinusoid-{5,10}shot.yaml` and meta-tests after 1 and 10 inner
steps on 600 tasks (100 query points each), next to the paper's numbers.

    python benchmarks/sinusoid_maml.py --shots 5 --steps 70000 --out runs/bench-sinusoid
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch

from metalab.cli.main import resolve_config_path
from metalab.train import evaluate_run, load_config, train_run
from metalab.train.report import format_plain, write_json

PAPER_MSE = {5: {1: 0.67, 10: 0.35}}  # the reference values for 5-shot MAML


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shots", type=int, default=5, choices=(5, 10))
    parser.add_argument("--steps", type=int, default=70000)
    parser.add_argument("--out", default="runs/bench-sinusoid")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    config_path = resolve_config_path(f"maml-sinusoid-{args.shots}shot")
    run_dir = Path(args.out) / f"{args.shots}shot-seed{args.seed}"
    config = load_config(config_path, [f"train.steps={args.steps}", f"train.seed={args.seed}",
                                       "train.progress=false"])
    started = time.perf_counter()
    train_run(config, run_dir, resume=(run_dir / "checkpoint.pt").exists())
    seconds = time.perf_counter() - started
    rows = []
    for steps in (1, 10):
        result = evaluate_run(run_dir, inner_steps=steps)
        paper = PAPER_MSE.get(args.shots, {}).get(steps)
        rows.append({"inner_steps": steps, "mse": result["mean"], "ci95": result["ci95"],
                     "paper": paper})
    print(f"MAML sinusoid {args.shots}-shot, {args.steps} meta-iterations (meta-batch 25) in "
          f"{seconds:.0f} s on {platform.processor() or platform.machine()}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for row in rows:
        paper = "n/a" if row["paper"] is None else f"{row['paper']:.2f}"
        entry = {"mean": row["mse"], "ci95": row["ci95"]}
        print(f"  {row['inner_steps']:>2} inner steps: MSE {format_plain(entry)}   (paper {paper})")
    write_json(run_dir / "benchmark.json", rows)


if __name__ == "__main__":
    main()
