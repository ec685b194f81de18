"""Reptile's meta-test evaluation: episodes adapted together (``strategy: vmap``) or one
after the other (``strategy: loop``), timed in turn in one process.

The grid's Reptile cells (`fewshot_table.py`) spend most of their time in evaluation: 50
full-batch inner Adam steps (``beta1 = 0``) per test episode. This script times
``learner.task_losses(batch, training=False)`` (what the evaluator calls) on one batch of
``--episodes`` Omniglot-shaped episodes (random 1x28x28 images, balanced labels; Conv4 with
64 filters) under both strategies of the same learner, alternating loop and vmap
``--rounds`` times, at each of ``--threads`` (``0``: the machine's core count, torch's
default when ``OMP_NUM_THREADS`` is unset). It
reports the per-round ratio loop time / vmap time (above 1: vmap faster) with its median,
minimum and maximum, the medians' ratio, and the largest difference between the two
strategies' per-episode query losses (float32). Ratios, not absolute times, are the result:
the machine may be shared.

    OMP_NUM_THREADS=1 nice -n 5 python benchmarks/reptile_eval_strategy.py \\
        --threads 1 0 --rounds 2            # writes results/reptile_eval_strategy.{md,json}
    python benchmarks/reptile_eval_strategy.py --quick --out /tmp/reptile_eval   # smoke
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import time
from pathlib import Path

import torch
from speed import machine_info
from speed_interleaved import summarise

from metalab.algorithms.reptile import Reptile
from metalab.nn import Conv4
from metalab.tasks import TaskBatch
from metalab.train.checkpoint import atomic_write_text

RESULTS = Path(__file__).resolve().parent / "results" / "reptile_eval_strategy"
# (ways, shots, queries per class): fewshot_table's 5w1s and 20w1s test episodes
SETTINGS = {"5w1s": (5, 1, 15), "20w1s": (20, 1, 5)}
STRATEGIES = ("loop", "vmap")


def episodes(setting: str, count: int, seed: int = 0) -> TaskBatch:
    """``count`` episodes of random 1x28x28 images with balanced labels."""
    ways, shots, queries = SETTINGS[setting]
    generator = torch.Generator().manual_seed(seed)

    def images(n: int) -> torch.Tensor:
        return torch.randn(count, n, 1, 28, 28, generator=generator)

    def labels(per_class: int) -> torch.Tensor:
        return torch.arange(ways).repeat(per_class).repeat(count, 1)

    return TaskBatch(images(ways * shots), labels(shots), images(ways * queries),
                     labels(queries), num_classes=ways)


def learners(ways: int, steps: int, seed: int = 0) -> dict[str, Reptile]:
    """The shipped config's Reptile (Adam, beta1 = 0, lr 1e-3) on one Conv4-64, once per
    strategy (the same model object: the same parameters)."""
    torch.manual_seed(seed)
    model = Conv4(in_channels=1, hidden=64, out_features=ways, image_size=28)
    return {s: Reptile(model, inner_lr=1e-3, inner_optimizer="adam", inner_betas=(0.0, 0.999),
                       eval_inner_steps=steps, strategy=s).eval() for s in STRATEGIES}


def time_in_turn(variants: dict[str, Reptile], batch: TaskBatch, rounds: int
                 ) -> tuple[dict[str, list[float]], float]:
    """Seconds of each strategy's evaluation of ``batch``, taken in turn ``rounds`` times,
    and the largest difference of their per-episode query losses."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    losses: dict[str, torch.Tensor] = {}
    for _ in range(rounds):
        for name, learner in variants.items():
            gc.collect()
            started = time.perf_counter()
            losses[name], _ = learner.task_losses(batch, training=False)
            times[name].append(time.perf_counter() - started)
    return times, (losses["loop"] - losses["vmap"]).abs().max().item()


def measure(setting: str, threads: int, args: argparse.Namespace) -> dict:
    torch.set_num_threads(threads)
    ways = SETTINGS[setting][0]
    variants = learners(ways, args.steps)
    for learner in variants.values():  # warm-up: first-call costs, not timed
        learner.task_losses(episodes(setting, 2, seed=1), training=False, inner_steps=2)
    times, difference = time_in_turn(variants, episodes(setting, args.episodes), args.rounds)
    summary = summarise(times, base="loop")["vmap"]  # ratios loop time / vmap time
    result = {"setting": setting, "threads": threads, "episodes": args.episodes,
              "inner_steps": args.steps, "rounds": args.rounds, "times_s": times,
              "loop_over_vmap_round_median": summary["round_ratio_median"],
              "loop_over_vmap_round_min": summary["round_ratio_min"],
              "loop_over_vmap_round_max": summary["round_ratio_max"],
              "loop_over_vmap_medians": summary["speed_vs_base"],
              "max_query_loss_difference": difference}
    print(f"{setting} threads {threads}: loop/vmap time ratio per round median "
          f"{result['loop_over_vmap_round_median']:.2f} (min "
          f"{result['loop_over_vmap_round_min']:.2f}, max "
          f"{result['loop_over_vmap_round_max']:.2f}); loss difference {difference:.1e}",
          flush=True)
    return result


def markdown(results: list[dict], info: dict, command: str) -> str:
    lines = ["# Reptile evaluation: vmap over episodes against the per-episode loop", "",
             f"`{command}`", "",
             f"Machine: {info} (``threads``: the process's count when it ended). "
             f"Conv4-64, 1x28x28, Adam (beta1 = 0, lr 1e-3), one batch of "
             f"episodes per timing; loop and vmap timed in turn in one process. Ratio = loop "
             f"seconds / vmap seconds (above 1: vmap faster).", "",
             "| setting | threads | episodes | inner steps | rounds | ratio per round: "
             "median (min-max) | loop s (median) | vmap s (median) | max query-loss diff |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        loop, vmap = (statistics.median(r["times_s"][s]) for s in STRATEGIES)
        lines.append(f"| {r['setting']} | {r['threads']} | {r['episodes']} | "
                     f"{r['inner_steps']} | {r['rounds']} | "
                     f"{r['loop_over_vmap_round_median']:.2f} "
                     f"({r['loop_over_vmap_round_min']:.2f}-"
                     f"{r['loop_over_vmap_round_max']:.2f}) | {loop:.1f} | {vmap:.1f} | "
                     f"{r['max_query_loss_difference']:.1e} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=SETTINGS)
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 0],
                        help="thread counts; 0: the machine's core count (torch's default)")
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="4 episodes, 3 steps, 1 round")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.quick:
        args.episodes, args.steps, args.rounds = 4, 3, 1
    default_threads = os.cpu_count() or 1
    info = {**machine_info(), "default_threads": default_threads}
    command = ("python benchmarks/reptile_eval_strategy.py --settings "
               f"{' '.join(args.settings)} --threads {' '.join(map(str, args.threads))} "
               f"--episodes {args.episodes} --steps {args.steps} --rounds {args.rounds}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    results = []
    for setting in args.settings:
        for threads in args.threads:  # the files are rewritten after every measurement
            results.append(measure(setting, threads or default_threads, args))
            atomic_write_text(args.out.with_suffix(".json"), json.dumps(
                {"machine": info, "command": command, "results": results}, indent=2) + "\n")
            atomic_write_text(args.out.with_suffix(".md"), markdown(results, info, command))


if __name__ == "__main__":
    main()
