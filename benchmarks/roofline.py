"""How far one meta-training step is from what this machine can do: a roofline per case.

    OMP_NUM_THREADS=2 python benchmarks/roofline.py --threads 1 2 \\
        --json benchmarks/results/roofline.json --markdown benchmarks/results/roofline.md

For each case of `speed.py` (metalab's loop path, the shipped configs' ``task_chunk: 1``) and
each thread count, in one process:

1. **Count.** One meta-iteration (zero_grad, forward, backward and, for second-order MAML,
   double backward, Adam step) runs under `metalab.profiling.OpCensus`: every ATen call with
   its shapes and torch's own FLOP formula (a multiply-add is 2 FLOPs). The Conv4 forward
   count equals the hand count 2·Cin·Cout·9·H·W per image (tests/test_profiling.py).
2. **Time the step**: median of ``--rounds`` meta-iterations after a warm-up.
3. **Time each compute call alone**: every distinct convolution / matrix-product call of the
   step is replayed on fresh tensors of the same shapes, in its recorded layout and, for 4-D
   tensors, in the other one (NCHW <-> channels-last); the faster counts. The sum over calls
   of count × isolated time is the *kernel bound*: the step's time if every FLOP-carrying call
   ran as fast as it does alone, with nothing else in between. ``kernel bound / step`` is the
   fraction of that limit the step reaches.
4. **Peaks**: the best GFLOP/s of any of the step's calls in isolation, and a large square
   matrix product (``--gemm``) as the machine's practical fp32 peak.
5. **Overhead floor** (for the overhead-bound sinusoid MLP): calls per step times the cost of
   one trivial ATen call (a 1-element add, timed in a loop) is the time the dispatcher alone
   needs; Python's own time comes on top.

Machines differ: compare the fractions, not the absolute times, across sessions.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import speed  # noqa: E402  (the benchmark cases and builders live there)

from metalab.profiling import OpCensus, OpRecord, TensorSpec, timings  # noqa: E402

# case:implementation; the sinusoid also runs compiled, as its shipped config does (train.compile)
DEFAULT_CASES = ["conv4-maml-1step", "conv4-maml-5step", "conv4-fomaml-1step",
                 "conv4-fomaml-5step", "protonet-conv4", "sine-maml-1step",
                 "sine-maml-1step:metalab-vmap-compiled"]


def parse_case(text: str) -> tuple[speed.Case, str]:
    name, _, impl = text.partition(":")
    impl = impl or "metalab-loop"
    if name not in speed.CASES or impl not in speed.IMPLEMENTATIONS:
        raise argparse.ArgumentTypeError(
            f"--cases takes CASE or CASE:IMPL with CASE in {sorted(speed.CASES)} and IMPL in "
            f"{sorted(speed.IMPLEMENTATIONS)}; got {text!r}")
    return speed.CASES[name], impl


def build_iteration(case: speed.Case, impl: str):
    model = speed.build_model(case, torch.float32, channels_last=speed._nhwc(case, impl))
    step = speed.IMPLEMENTATIONS[impl](case, model)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    batch = speed.build_batch(case, torch.float32)

    def iteration() -> None:
        optimizer.zero_grad(set_to_none=True)
        step(batch)
        optimizer.step()

    return iteration


def median_seconds(fn, rounds: int, warmup: int) -> float:
    return statistics.median(timings(fn, rounds, warmup))


def other_layout(spec: TensorSpec) -> TensorSpec:
    """The same 4-D tensor in the other memory format (NCHW <-> channels-last)."""
    if len(spec.shape) != 4:
        return spec
    probe = torch.empty_strided(spec.shape, spec.stride)
    target = (torch.contiguous_format if probe.is_contiguous(memory_format=torch.channels_last)
              and not probe.is_contiguous() else torch.channels_last)
    return TensorSpec(spec.shape, probe.contiguous(memory_format=target).stride(), spec.dtype)


def best_layout_seconds(record: OpRecord, rounds: int) -> tuple[float, str]:
    """Isolated time of one call in its recorded layout and in the other one (the faster)."""
    recorded = record.replay_seconds(rounds)
    swapped_args = tuple(other_layout(a) if isinstance(a, TensorSpec) else a for a in record.args)
    if swapped_args == record.args:
        return recorded, "as recorded"
    swapped = OpRecord(record.op, swapped_args, record.kwargs, record.flops)
    try:
        alternative = swapped.replay_seconds(rounds)
    except RuntimeError:  # some backward kernels insist on their recorded layout
        return recorded, "as recorded"
    return (alternative, "other layout") if alternative < recorded else (recorded, "as recorded")


def gemm_gflops(size: int, rounds: int) -> float:
    a, b = torch.randn(size, size), torch.randn(size, size)
    seconds = median_seconds(lambda: a @ b, rounds, warmup=2)
    return 2 * size**3 / seconds / 1e9


def dispatch_seconds(calls: int = 20000) -> float:
    """Cost of one trivial ATen call (1-element add), the dispatcher's floor per call."""
    x = torch.zeros(1)
    for _ in range(1000):
        torch.add(x, x)
    started = time.perf_counter()
    for _ in range(calls):
        torch.add(x, x)
    return (time.perf_counter() - started) / calls


def roofline(case: speed.Case, impl: str, rounds: int, replay_rounds: int, gemm: float) -> dict:
    iteration = build_iteration(case, impl)
    step_seconds = median_seconds(iteration, rounds, warmup=max(1, case.warmup))
    with OpCensus() as census:
        iteration()
    kernel_bound, best_gflops, per_operator = 0.0, 0.0, {}
    for record in census.compute_records():
        seconds, layout = best_layout_seconds(record, replay_rounds)
        kernel_bound += record.count * seconds
        best_gflops = max(best_gflops, record.flops / seconds / 1e9)
        entry = per_operator.setdefault(record.name, {"flops": 0, "isolated_seconds": 0.0})
        entry["flops"] += record.flops * record.count
        entry["isolated_seconds"] += record.count * seconds
    flops = census.total_flops
    floor = census.calls * dispatch_seconds()
    return {
        "case": case.name if impl == "metalab-loop" else f"{case.name} ({impl})",
        "describe": case.describe(), "threads": torch.get_num_threads(),
        "flops": flops, "step_seconds": step_seconds,
        "achieved_gflops": flops / step_seconds / 1e9,
        "best_isolated_gflops": best_gflops, "gemm_gflops": gemm,
        "fraction_of_gemm_peak": flops / step_seconds / 1e9 / gemm,
        "kernel_bound_seconds": kernel_bound,
        "fraction_of_kernel_bound": kernel_bound / step_seconds,
        "calls": census.calls, "dispatch_floor_seconds": floor,
        "fraction_of_dispatch_floor": floor / step_seconds,
        "per_operator": per_operator,
    }


def markdown(rows: list[dict]) -> str:
    lines = ["| case | threads | GFLOP/step | step (ms) | achieved GFLOP/s | best isolated call "
             "GFLOP/s | GEMM peak GFLOP/s | % of GEMM peak | kernel bound (ms) | % of kernel "
             "bound | ATen calls/step | dispatch floor (ms) |",
             "|---" * 12 + "|"]
    for r in rows:
        lines.append(
            f"| {r['case']} | {r['threads']} | {r['flops'] / 1e9:.3f} | "
            f"{r['step_seconds'] * 1e3:.1f} | {r['achieved_gflops']:.1f} | "
            f"{r['best_isolated_gflops']:.1f} | {r['gemm_gflops']:.1f} | "
            f"{100 * r['fraction_of_gemm_peak']:.0f}% | {r['kernel_bound_seconds'] * 1e3:.1f} | "
            f"{100 * r['fraction_of_kernel_bound']:.0f}% | {r['calls']} | "
            f"{r['dispatch_floor_seconds'] * 1e3:.1f} |")
    return "\n".join(lines)


def operator_table(rows: list[dict]) -> str:
    lines = ["| case | threads | operator | GFLOP | isolated ms | isolated GFLOP/s |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        for name, entry in sorted(r["per_operator"].items(), key=lambda kv: -kv[1]["flops"]):
            seconds = entry["isolated_seconds"]
            lines.append(f"| {r['case']} | {r['threads']} | {name} | {entry['flops'] / 1e9:.3f} | "
                         f"{seconds * 1e3:.1f} | {entry['flops'] / seconds / 1e9:.1f} |")
    return "\n".join(lines)


def write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(path.suffix + ".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", type=parse_case,
                        default=[parse_case(text) for text in DEFAULT_CASES],
                        help="CASE or CASE:IMPL (implementation default metalab-loop)")
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--rounds", type=int, default=5, help="timed meta-iterations per case")
    parser.add_argument("--replay-rounds", type=int, default=5)
    parser.add_argument("--gemm", type=int, default=1024, help="square GEMM size for the peak")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args(argv)
    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        gemm = gemm_gflops(args.gemm, rounds=5)
        for case, impl in args.cases:
            row = roofline(case, impl, args.rounds, args.replay_rounds, gemm)
            rows.append(row)
            print(markdown([row]).splitlines()[-1], flush=True)
    machine = {"processor": platform.processor() or platform.machine(), "torch": torch.__version__,
               "cpus": os.cpu_count(), "load_average": os.getloadavg()}
    text = (f"Machine: {machine}\n\n" + markdown(rows) + "\n\nPer operator (isolated, best "
            "layout):\n\n" + operator_table(rows) + "\n")
    print(text)
    if args.markdown:
        write_atomically(args.markdown, text)
    if args.json:
        write_atomically(args.json, json.dumps({"machine": machine, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
