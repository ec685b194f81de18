"""Speed ratios from iterations timed in turn inside one process (robust to a noisy machine).

`speed.py` measures each implementation in its own fresh process, one after the other;
on a shared machine whose speed drifts by 20% within minutes, ratios below about 1.2x
from it are ties. This script builds the implementations of one case with `speed.py`'s
builders (same model, parameters and meta-batch), then times one meta-iteration of each
in turn, ``--rounds`` times, and reports each implementation's median time, its speed
against ``--base`` (ratio of medians) and the median of the per-round ratios. Memory is
measured by `speed.py`.

    OMP_NUM_THREADS=1 taskset -c 1 python benchmarks/speed_interleaved.py \\
        --case conv4-maml-1step --impls learn2learn metalab-loop --reference-conv4 torch

``--reference-conv4 torch`` gives the references Conv4 blocks built from torch's layers
(ReLU, then ``nn.MaxPool2d``), as their users write them; ``metalab`` gives them metalab's
Conv4 (pooling before the ReLU, with its faster CPU pooling), which isolates the engine.

``--table`` makes the whole comparison of issue 18 in one command: every case of `TABLE`
(Conv4 MAML 1 and 5 inner steps, FOMAML, each against learn2learn and higher; ProtoNet
against plain PyTorch; the sinusoid with the shipped config's vmap + `train.compile`
against learn2learn, with the first step's compile time) at each of ``--threads``, timed
in turn as above; then, per case, the float64 meta-gradient check and each
implementation's peak tensor memory in one meta-iteration (`peak_tensor_memory`).
It writes ``--out``.md and .json:

    python benchmarks/speed_interleaved.py --table --threads 1 2      # ~15 min, idle machine
    python benchmarks/speed_interleaved.py --table --quick --out /tmp/speed_table   # smoke

``--allocator keep-freed`` (the default) runs every implementation of the process with
glibc keeping freed memory for reuse, as metalab's trainer does (`metalab.train.allocator`);
``glibc`` leaves glibc's defaults, which refault a step's large tensors every task.
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import os
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import speed
import torch

from metalab.profiling import peak_allocated_bytes
from metalab.train.allocator import keep_freed_memory
from metalab.train.checkpoint import atomic_write_text

RESULTS = Path(__file__).resolve().parent / "results" / "speed_table"
CONV4_REFERENCES = ["learn2learn", "higher"]
# (case, implementations, base of the ratios): what issue 18 asks to show
TABLE = [
    ("conv4-maml-1step", [*CONV4_REFERENCES, "metalab-loop"], "learn2learn"),
    ("conv4-maml-5step", [*CONV4_REFERENCES, "metalab-loop"], "learn2learn"),
    ("conv4-fomaml-1step", [*CONV4_REFERENCES, "metalab-loop"], "learn2learn"),
    ("protonet-conv4", ["torch", "metalab-loop"], "torch"),
    ("sine-maml-1step", ["learn2learn", "metalab-vmap-compiled"], "learn2learn"),
]
ITERATIONS_PER_ROUND = {"sine-maml-1step": 20}  # one sinusoid step is milliseconds


def build(case: speed.Case, impl: str, reference_conv4: str):
    model = speed.build_model(case, torch.float32, channels_last=speed._nhwc(case, impl),
                              torch_layers=speed._torch_layers(impl, reference_conv4))
    step = speed.IMPLEMENTATIONS[impl](case, model)
    return model, step, torch.optim.Adam(model.parameters(), lr=1e-3)


def iterate(variant: tuple, batch) -> None:
    """One meta-iteration of a built variant: meta-gradient and Adam step."""
    _, step, optimizer = variant
    optimizer.zero_grad(set_to_none=True)
    step(batch)
    optimizer.step()


def time_in_turn(variants: dict, batch, rounds: int, warmup: int,
                 per_round: int = 1) -> dict[str, list[float]]:
    """Seconds per meta-iteration of each variant, ``warmup + rounds`` rounds taken in turn
    (each the mean of ``per_round`` iterations); the warm-up rounds come first in the lists."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(warmup + rounds):
        for name, variant in variants.items():
            gc.collect()
            started = time.perf_counter()
            for _ in range(per_round):
                iterate(variant, batch)
            times[name].append((time.perf_counter() - started) / per_round)
    return times


def summarise(times: dict[str, list[float]], base: str) -> dict[str, dict]:
    """Median time and the speed against ``base``: ratio of medians, per-round ratios."""
    medians = {name: statistics.median(values) for name, values in times.items()}
    summary = {}
    for name, values in times.items():
        paired = [b / t for b, t in zip(times[base], values, strict=True)]
        summary[name] = {"median_s": medians[name], "times_s": values,
                         "speed_vs_base": medians[base] / medians[name],
                         "round_ratio_median": statistics.median(paired),
                         "round_ratio_min": min(paired), "round_ratio_max": max(paired)}
    return summary


def report(times: dict[str, list[float]], base: str) -> None:
    for name, r in summarise(times, base).items():
        print(f"{name:>22}: median {r['median_s']:.3f} s/it, {1 / r['median_s']:.3f} it/s; "
              f"speed vs {base} {r['speed_vs_base']:.2f}x (per-round ratios: median "
              f"{r['round_ratio_median']:.2f}, min {r['round_ratio_min']:.2f}, "
              f"max {r['round_ratio_max']:.2f})", flush=True)


def timed_case(case: speed.Case, impls: list[str], base: str, args: argparse.Namespace
               ) -> tuple[dict, dict, object]:
    """One case timed in turn at the current thread count; the first step's time of each
    implementation (compilation for the compiled one) comes with it. Also returns the
    (warm) variants and the batch."""
    variants = {impl: build(case, impl, args.reference_conv4) for impl in impls}
    batch = speed.build_batch(case, torch.float32)
    started = {}
    for impl, variant in variants.items():  # the first step: what a user waits for
        clock = time.perf_counter()
        iterate(variant, batch)
        started[impl] = time.perf_counter() - clock
    times = time_in_turn(variants, batch, args.rounds, args.warmup,
                         ITERATIONS_PER_ROUND.get(case.name, 1))
    timed = {name: values[args.warmup:] for name, values in times.items()}
    summary = summarise(timed, base)
    for impl in impls:
        summary[impl]["first_step_s"] = started[impl]
    report(timed, base)
    return summary, variants, batch


def peak_tensor_memory(variants: dict, batch) -> dict[str, float]:
    """MiB of tensors alive at the peak of one more meta-iteration of each (warm) variant,
    from the allocator's events (`metalab.profiling.peak_allocated_bytes`): exact, and the
    same whatever the C allocator does with freed pages (peak RSS moved by +-30 MiB between
    identical runs on the shared machine)."""
    return {impl: peak_allocated_bytes(functools.partial(iterate, variant, batch)) / 2**20
            for impl, variant in variants.items()}


def table_case(name: str, impls: list[str], base: str, args: argparse.Namespace) -> dict:
    case = speed.CASES[name]
    if args.quick:
        case = replace(case, tasks=min(case.tasks, 4), warmup=1, iterations=1)
    impls = [impl for impl in impls if speed.library_available(impl)]
    if base not in impls:
        print(f"   {base} is not installed: {name} skipped; {speed.BENCH_EXTRA}")
        return {}
    print(f"\n== {name}: {case.describe()}", flush=True)
    result: dict = {"describe": case.describe(), "base": base, "threads": {}}
    for threads in args.threads:
        torch.set_num_threads(threads)
        print(f"-- {threads} thread(s)", flush=True)
        result["threads"][threads], variants, batch = timed_case(case, impls, base, args)
    result["memory"] = peak_tensor_memory(variants, batch)
    check = speed.run_in_fresh_process(speed.gradient_check, case, impls, args.check_tasks,
                                       args.reference_conv4)
    result["check"] = check
    for impl in impls:
        print(f"   {impl:>22}: float64 meta-gradient vs {check[impl]['reference']} "
              f"{check[impl]['max_rel_diff']:.1e} relative; peak tensor memory "
              f"{result['memory'][impl]:.0f} MiB", flush=True)
    return result


def markdown(results: dict, header: str) -> str:
    threads = [t for case in results.values() for t in case["threads"]]
    threads = sorted(set(threads))
    speed_cells = " | ".join(f"{t} thread{'s' * (t > 1)}: s/it, speed vs base (per-round range)"
                             for t in threads)
    lines = [header, "", f"| case | implementation | {speed_cells} | peak tensor MiB (vs base) | "
             "float64 grad rel diff |", "|---" * (4 + len(threads)) + "|"]
    for name, case in results.items():
        base = case["base"]
        for impl in case["memory"]:
            cells = []
            for t in threads:
                r = case["threads"][t][impl]
                cells.append(f"{r['median_s']:.3f}, {r['speed_vs_base']:.2f}x "
                             f"({r['round_ratio_min']:.2f}-{r['round_ratio_max']:.2f})")
            memory, base_memory = case["memory"][impl], case["memory"][base]
            lines.append(f"| {name} | {impl} | {' | '.join(cells)} | {memory:.3g} "
                         f"({memory / max(base_memory, 1e-9):.2f}x) | "
                         f"{case['check'][impl]['max_rel_diff']:.1e} |")
    compiled = [(t, r["metalab-vmap-compiled"]) for case in results.values()
                for t, r in case["threads"].items() if "metalab-vmap-compiled" in r]
    for t, r in compiled:
        lines.append(f"\nsinusoid, shipped config (vmap + `train.compile`), {t} thread(s): "
                     f"first step {r['first_step_s']:.1f} s (compilation), then "
                     f"{1e3 * r['median_s']:.1f} ms per step.")
    return "\n".join(lines) + "\n"


def run_table(args: argparse.Namespace) -> None:
    # the compile time a new user pays: no compiled kernels from earlier runs on the disk
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="speed-table-"))
    started = time.perf_counter()
    results = {}
    for name, impls, base in TABLE:
        if args.cases and name not in args.cases:
            continue
        case_result = table_case(name, impls, base, args)
        if case_result:
            results[name] = case_result
    machine = speed.machine_info()
    header = (f"Machine: {machine['cpu']}, {machine['cores']} cores, torch {machine['torch']}, "
              f"learn2learn {machine.get('learn2learn', 'absent')}, higher "
              f"{machine.get('higher', 'absent')}; allocator: {args.allocator}; "
              f"{args.rounds} rounds timed in turn after the first step and {args.warmup} "
              f"warm-up round(s); speed: base "
              f"median / median (> 1 is faster); peak: MiB of tensors alive at the peak of "
              f"one meta-iteration; "
              f"{time.perf_counter() - started:.0f} s in all.")
    text = markdown(results, header)
    print("\n" + text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out.with_suffix(".md"), text)
    atomic_write_text(out.with_suffix(".json"), json.dumps(
        {"machine": machine, "args": {k: v for k, v in vars(args).items()},
         "results": results}, indent=2, default=str) + "\n")
    print(f"written: {out.with_suffix('.md')}, {out.with_suffix('.json')}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=sorted(speed.CASES), default="conv4-maml-1step")
    parser.add_argument("--impls", nargs="+", choices=sorted(speed.IMPLEMENTATIONS),
                        default=["learn2learn", "metalab-loop"])
    parser.add_argument("--base", help="the implementation ratios are against (default: first)")
    parser.add_argument("--reference-conv4", choices=["metalab", "torch"], default="torch")
    parser.add_argument("--rounds", type=int, default=None,
                        help="timed rounds (default 6; with --table 4)")
    parser.add_argument("--warmup", type=int, default=None,
                        help="untimed rounds (default 1; with --table 0: the first step, "
                             "timed apart, is the warm-up)")
    parser.add_argument("--allocator", choices=["keep-freed", "glibc"], default="glibc",
                        help="glibc: its defaults, what every library gets out of the box; "
                             "keep-freed: keep freed memory (train.keep_freed_memory) for all")
    parser.add_argument("--table", action="store_true", help="the whole issue-18 table")
    parser.add_argument("--cases", nargs="+", choices=[name for name, _, _ in TABLE],
                        help="with --table: only these cases")
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2],
                        help="with --table: the thread counts")
    parser.add_argument("--quick", action="store_true",
                        help="with --table: 4 tasks, 1 round (a smoke test)")
    parser.add_argument("--check-tasks", type=int, default=4)
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    if args.rounds is None:
        args.rounds = 1 if args.quick else 4 if args.table else 6
    if args.warmup is None:
        args.warmup = 0 if args.table else 1
    if args.allocator == "keep-freed":
        keep_freed_memory()
    if args.table:
        run_table(args)
        return
    missing = [impl for impl in args.impls if not speed.library_available(impl)]
    if missing:
        parser.error(f"not installed: {missing} (see benchmarks/README.md, the bench extra)")
    case = speed.CASES[args.case]
    print(f"{case.describe()}; {torch.get_num_threads()} thread(s); references on the "
          f"{args.reference_conv4} Conv4; allocator {args.allocator}")
    variants = {impl: build(case, impl, args.reference_conv4) for impl in args.impls}
    batch = speed.build_batch(case, torch.float32)
    times = time_in_turn(variants, batch, args.rounds, args.warmup)
    report({name: values[args.warmup:] for name, values in times.items()},
           args.base or args.impls[0])


if __name__ == "__main__":
    main()
