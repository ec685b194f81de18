"""Where a few-shot grid cell's time goes: cProfile of a short version of the cell.

Builds the cell's config with `fewshot_table.cell_config` (the grid's overrides) at a short
budget (``--steps`` meta-iterations, ``--episodes`` test episodes), then trains and evaluates
it under cProfile, separately, and prints the wall-clock of each phase and the functions
with the most own time (``tottime``) and the most inclusive time (``cumtime``):

    OMP_NUM_THREADS=1 nice -n 5 python benchmarks/fewshot_profile.py Meta-Curvature glyphs \\
        20w1s --steps 8 --episodes 20 --omniglot-root ../shared/data/omniglot

Profile one process at a time, one thread: the numbers are fractions of one cell's time.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import tempfile
import time
from pathlib import Path

import fewshot_table as ft
import torch

from metalab.train import evaluate_run, train_run
from metalab.train.seeds import with_seed


class _OpProfile:
    """`torch.profiler` with cProfile's ``runcall``; its report is the operator table."""

    def __init__(self) -> None:
        self.profile = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])

    def runcall(self, function, *args, **kwargs):
        with self.profile:
            return function(*args, **kwargs)

    def report(self, top: int) -> str:
        return self.profile.key_averages().table(sort_by="self_cpu_time_total", row_limit=top)


def _report(profile, top: int) -> str:
    if isinstance(profile, _OpProfile):
        return profile.report(top)
    out = io.StringIO()
    stats = pstats.Stats(profile, stream=out)
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
    return out.getvalue()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("method", choices=list(ft.METHODS))
    parser.add_argument("dataset", choices=list(ft.DATASETS))
    parser.add_argument("setting", choices=list(ft.SETTINGS))
    parser.add_argument("--backbone", default=None)
    parser.add_argument("--augment", default=None, choices=list(ft.AUGMENTS))
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--omniglot-root", default=None)
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--phase", choices=["train", "eval", "both"], default="both")
    parser.add_argument("--ops", action="store_true",
                        help="torch.profiler's operator table (self CPU time) instead of cProfile")
    args = parser.parse_args(argv)
    budget = ft.Budget(args.steps, 4, args.episodes)
    variant, _ = ft.resolve_variant(args.method, args.dataset, args.setting, args.backbone,
                                    args.augment)
    _, _, config = ft.cell_config(args.method, args.dataset, args.setting, budget,
                                  args.omniglot_root, variant)
    config = with_seed(config, 0)
    print(f"threads {torch.get_num_threads()}; {args.method} {args.dataset} {args.setting} "
          f"{variant.label}: {args.steps} steps, {args.episodes} episodes")
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        train = _OpProfile() if args.ops else cProfile.Profile()
        started = time.perf_counter()
        train.runcall(train_run, config, run_dir)
        train_seconds = time.perf_counter() - started
        if args.phase in ("train", "both"):
            print(f"== train: {train_seconds:.2f} s for {config['train']['steps']} steps")
            print(_report(train, args.top))
        if args.phase in ("eval", "both"):
            evaluation = _OpProfile() if args.ops else cProfile.Profile()
            started = time.perf_counter()
            result = evaluation.runcall(evaluate_run, run_dir, episodes=args.episodes)
            print(f"== eval: {time.perf_counter() - started:.2f} s for {args.episodes} "
                  f"episodes (accuracy {result['mean']:.3f})")
            print(_report(evaluation, args.top))


if __name__ == "__main__":
    main()
