"""Does a short real run reach the same accuracy with and without metalab's CPU fast paths?

The fast paths compute the same function and gradients as the plain layers (float64 tests in
tests/test_conv4_speed_paths.py; tests/test_allocator.py); this benchmark checks the claim on a
real training run. It trains a shipped config (default ``maml-glyphs-5w1s``) for
``--steps`` meta-iterations with the fast paths (``fast``) or with each of them switched off
(``plain``), evaluates it on ``--episodes`` test episodes and writes the accuracy with its
95% interval over episodes. Each variant runs in its own process, so the two can run side
by side:

    OMP_NUM_THREADS=1 python benchmarks/fast_path_accuracy.py --variant fast &
    OMP_NUM_THREADS=1 python benchmarks/fast_path_accuracy.py --variant plain &
    python benchmarks/fast_path_accuracy.py --table      # after both: the markdown table

The fast paths switched off by ``plain`` (see `PLAIN`):

- ``gather_pool``: `metalab.nn.pool.MaxPool2d` takes the maxima's positions from the
  channels-last kernel and the values with ``gather`` (plain: ``torch.nn.MaxPool2d``);
- ``outer_channels_last``: MAML's query pass, differentiated only once, runs channels-last
  (plain: NCHW, like the support pass);
- ``keep_freed_memory``: the trainer keeps freed memory for reuse (`metalab.train.allocator`;
  plain: glibc's defaults, ``train.keep_freed_memory: false``, the default).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from metalab.cli.main import resolve_config_path
from metalab.nn import Conv4, pool
from metalab.train import evaluate_run, load_config, train_run
from metalab.train.report import format_percent, write_json
from metalab.train.seeds import with_seed

RESULTS = Path(__file__).resolve().parent / "results" / "fast_path_accuracy"


def switch_off_fast_paths() -> list[str]:
    """Make every fast path take its plain form in this process; their names."""
    pool._gather_path = lambda x: False
    Conv4.outer_channels_last = False
    return ["gather_pool", "outer_channels_last", "keep_freed_memory"]


def run_variant(args: argparse.Namespace) -> dict:
    switched_off = switch_off_fast_paths() if args.variant == "plain" else []
    overrides = [f"train.steps={args.steps}", f"train.meta_batch={args.meta_batch}",
                 f"train.val_every={args.steps}", "train.val_episodes=50"]
    if not switched_off:
        overrides.append("train.keep_freed_memory=true")
    config = with_seed(load_config(resolve_config_path(args.config), overrides), args.seed)
    run_dir = args.runs / f"{args.config}-{args.variant}-seed{args.seed}"
    started = time.perf_counter()
    train_run(config, run_dir)
    train_seconds = time.perf_counter() - started
    result = evaluate_run(run_dir, episodes=args.episodes)
    return {"config": args.config, "variant": args.variant, "switched_off": switched_off,
            "steps": args.steps, "meta_batch": args.meta_batch, "seed": args.seed,
            "accuracy": result["mean"], "ci95": result["ci95"], "episodes": result["episodes"],
            "train_seconds": train_seconds, "load_average_end": list(os.getloadavg()),
            "threads": torch.get_num_threads()}


def table(results: Path) -> str:
    rows = ["| config | variant | fast paths off | steps x meta-batch | test accuracy (95% CI) |",
            "|---|---|---|---|---|"]
    for path in sorted(results.glob("*.json")):
        r = json.loads(path.read_text())
        rows.append(f"| {r['config']} | {r['variant']} | {', '.join(r['switched_off']) or '-'} "
                    f"| {r['steps']} x {r['meta_batch']} | "
                    f"{format_percent({'mean': r['accuracy'], 'ci95': r['ci95']})} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", choices=["fast", "plain"])
    parser.add_argument("--table", action="store_true", help="print the table of the results")
    parser.add_argument("--config", default="maml-glyphs-5w1s")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--meta-batch", type=int, default=4)
    parser.add_argument("--episodes", type=int, default=600)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs", type=Path, default=Path("runs/fast_path_accuracy"))
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.table:
        print(table(args.results))
        return
    if args.variant is None:
        parser.error("give --variant fast or --variant plain (or --table)")
    record = run_variant(args)
    path = write_json(args.results / f"{args.config}-{args.variant}-seed{args.seed}.json", record)
    print(f"{args.variant}: {format_percent({'mean': record['accuracy'], 'ci95': record['ci95']})}"
          f" -> {path}")


if __name__ == "__main__":
    main()
