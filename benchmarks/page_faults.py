"""CPU time and minor page faults per task of a meta-iteration, with glibc's defaults or with
freed memory kept for reuse (`metalab.train.allocator`): what found that a quarter of a
second-order Conv4 MAML step was the kernel faulting the same pages in every task.

    OMP_NUM_THREADS=1 python benchmarks/page_faults.py                        # glibc defaults
    OMP_NUM_THREADS=1 python benchmarks/page_faults.py --allocator keep-freed

Each (case, implementation) is built with `speed.py`'s builders (references on torch's own
Conv4 layers), warmed up by one iteration, then timed ``--repeats`` times; the best repeat
is reported. CPU time (``time.process_time``) is what one thread spends, so it is much less
sensitive to other jobs on the machine than the wall time (printed too).
"""

from __future__ import annotations

import argparse
import resource
import time
from dataclasses import replace

import speed
import torch
from speed_interleaved import build, iterate

from metalab.train.allocator import keep_freed_memory

PAIRS = {"conv4-maml-1step": "learn2learn", "conv4-fomaml-1step": "learn2learn",
         "protonet-conv4": "torch"}


def minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def per_task(case: speed.Case, impl: str, repeats: int) -> tuple[float, float, float]:
    """Best (wall ms, CPU ms, minor faults) per task over ``repeats`` meta-iterations."""
    variant = build(case, impl, "torch")
    batch = speed.build_batch(case, torch.float32)
    iterate(variant, batch)
    runs = []
    for _ in range(repeats):
        wall, cpu, faults = time.perf_counter(), time.process_time(), minor_faults()
        iterate(variant, batch)
        runs.append(((time.perf_counter() - wall) * 1e3 / case.tasks,
                     (time.process_time() - cpu) * 1e3 / case.tasks,
                     (minor_faults() - faults) / case.tasks))
    return min(runs, key=lambda run: run[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--allocator", choices=["glibc", "keep-freed"], default="glibc")
    parser.add_argument("--tasks", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if args.allocator == "keep-freed":
        keep_freed_memory()
    print(f"allocator {args.allocator}, {torch.get_num_threads()} thread(s), "
          f"{args.tasks}-task batches, best of {args.repeats}")
    for name, reference in PAIRS.items():
        case = replace(speed.CASES[name], tasks=args.tasks)
        for impl in ("metalab-loop", reference):
            if not speed.library_available(impl):
                continue
            wall, cpu, faults = per_task(case, impl, args.repeats)
            print(f"{name:20} {impl:13} per task: CPU {cpu:6.1f} ms, wall {wall:6.1f} ms, "
                  f"{faults:8.0f} minor page faults", flush=True)


if __name__ == "__main__":
    main()
