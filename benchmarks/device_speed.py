"""Meta-training speed on an accelerator (or any device): loop vs vmap, compile, autocast, and
the largest meta-batch that fits, next to learn2learn and higher on the same device.

    python benchmarks/device_speed.py --device cuda --json benchmarks/results/device_speed_cuda.json
    python benchmarks/device_speed.py --device cpu --quick      # the same code paths, on the CPU

Every implementation is one of `speed.py`'s builders (same model, initial parameters and
meta-batch) moved to ``--device``. One meta-iteration is zero_grad, the step (forward,
backward, double backward for second-order MAML) and an Adam step; the device is
synchronised before each clock read. Per (case, implementation, precision):

- iterations/s (1 / median of ``--rounds`` iterations after ``--warmup``), timed in turn in
  one process, and the speed ratio against learn2learn (else the first implementation);
- peak device memory of one iteration (``torch.cuda.max_memory_allocated`` on CUDA, the
  profiler's allocator peak on the CPU);
- with ``--autocast bf16|fp16``, the same step under `torch.autocast`; its meta-gradient's
  relative error against fp32 is printed next to the time (the bar: 1e-3, DESIGN.md);
- with ``--max-meta-batch``, the largest meta-batch (doubling from the case's) whose
  iteration runs without running out of device memory.

Without learn2learn (benchmarks/README.md) or higher, their rows are skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import speed  # noqa: E402

from metalab.profiling import peak_allocated_bytes  # noqa: E402

DEFAULT_CASES = ["conv4-maml-1step", "conv4-maml-5step", "conv4-fomaml-1step", "protonet-conv4",
                 "sine-maml-1step"]
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build(case: speed.Case, impl: str, device: torch.device, tasks: int | None = None):
    """(iteration, model): one meta-iteration of ``impl`` with its model and batch on ``device``."""
    model = speed.build_model(case, torch.float32, channels_last=speed._nhwc(case, impl)).to(device)
    step = speed.IMPLEMENTATIONS[impl](case, model)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    batch = speed.build_batch(case, torch.float32, tasks=tasks).to(device)

    def iteration(autocast: torch.dtype | None = None, optimizer_step: bool = True) -> None:
        optimizer.zero_grad(set_to_none=True)
        context = (torch.autocast(device.type, dtype=autocast) if autocast is not None
                   else nullcontext())
        with context:
            step(batch)
        if optimizer_step:
            optimizer.step()

    return iteration, model


def meta_gradient(iteration, model, autocast: torch.dtype | None) -> torch.Tensor:
    iteration(autocast, optimizer_step=False)
    return torch.cat([p.grad.flatten().float() for p in model.parameters() if p.grad is not None])


def autocast_error(case: speed.Case, impl: str, device: torch.device, dtype: torch.dtype) -> float:
    """max |g_autocast - g_fp32| / max |g_fp32| on the same parameters and meta-batch."""
    iteration, model = build(case, impl, device)
    reference = meta_gradient(iteration, model, None)
    iteration, model = build(case, impl, device)
    mixed = meta_gradient(iteration, model, dtype)
    return float((mixed - reference).abs().max() / reference.abs().max())


def peak_bytes(iteration, device: torch.device, autocast: torch.dtype | None) -> int:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        iteration(autocast)
        synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    return peak_allocated_bytes(lambda: iteration(autocast))


def time_in_turn(variants: dict, device: torch.device, rounds: int, warmup: int,
                 autocast: torch.dtype | None) -> dict[str, float]:
    times: dict[str, list[float]] = {name: [] for name in variants}
    for index in range(warmup + rounds):
        for name, (iteration, _) in variants.items():
            synchronize(device)
            started = time.perf_counter()
            iteration(autocast)
            synchronize(device)
            if index >= warmup:
                times[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in times.items()}


def is_out_of_memory(error: BaseException) -> bool:
    return isinstance(error, torch.cuda.OutOfMemoryError) or "out of memory" in str(error)


def largest_meta_batch(case: speed.Case, impl: str, device: torch.device, limit: int) -> int:
    """The largest meta-batch (doubling from the case's) whose iteration fits, up to ``limit``."""
    fits, tasks = 0, case.tasks
    while tasks <= limit:
        try:
            iteration, _ = build(case, impl, device, tasks=tasks)
            iteration()
            synchronize(device)
        except (RuntimeError, torch.cuda.OutOfMemoryError) as error:
            if not is_out_of_memory(error):
                raise
            break
        finally:
            if device.type == "cuda":
                torch.cuda.empty_cache()
        fits, tasks = tasks, tasks * 2
    return fits


def implementations(case: speed.Case) -> list[str]:
    wanted = [impl for impl in speed.implementations_for(case)]
    if "metalab-vmap-compiled" not in wanted:
        wanted.insert(2, "metalab-vmap-compiled")
    return [impl for impl in wanted if speed.library_available(impl)]


def run_case(case: speed.Case, device: torch.device, args: argparse.Namespace) -> list[dict]:
    impls = implementations(case)
    base = "learn2learn" if "learn2learn" in impls else impls[0]
    rows = []
    for precision in [None, *args.autocast]:
        dtype = AUTOCAST_DTYPES.get(precision)
        variants = {impl: build(case, impl, device) for impl in impls}
        medians = time_in_turn(variants, device, args.rounds, args.warmup, dtype)
        for impl, (iteration, _) in variants.items():
            row = {"case": case.name, "impl": impl, "precision": precision or "fp32",
                   "iterations_per_s": 1 / medians[impl],
                   "speed_vs_" + base: medians[base] / medians[impl],
                   "peak_mib": peak_bytes(iteration, device, dtype) / 2**20}
            if dtype is not None:
                row["meta_gradient_relative_error"] = autocast_error(case, impl, device, dtype)
            if args.max_meta_batch and dtype is None:
                row["largest_meta_batch"] = largest_meta_batch(case, impl, device,
                                                               args.max_meta_batch)
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--cases", nargs="+", choices=sorted(speed.CASES), default=DEFAULT_CASES)
    parser.add_argument("--autocast", nargs="*", choices=sorted(AUTOCAST_DTYPES), default=[])
    parser.add_argument("--max-meta-batch", type=int, default=0,
                        help="search the largest meta-batch up to this many tasks (0: skip)")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="2 rounds, 1 warm-up, 4 tasks")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but torch.cuda.is_available() is False")
    cases = [speed.CASES[name] for name in args.cases]
    if args.quick:
        from dataclasses import replace
        args.rounds, args.warmup = 2, 1
        cases = [replace(case, tasks=4) for case in cases]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device {name}; torch {torch.__version__}; {torch.get_num_threads()} CPU thread(s)")
    rows = [row for case in cases for row in run_case(case, device, args)]
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        temporary = args.json.with_suffix(".tmp")
        temporary.write_text(json.dumps({"device": name, "torch": torch.__version__,
                                         "rows": rows}, indent=1))
        os.replace(temporary, args.json)


if __name__ == "__main__":
    main()
