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
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time

import speed
import torch


def build(case: speed.Case, impl: str, reference_conv4: str):
    model = speed.build_model(case, torch.float32, channels_last=speed._nhwc(case, impl),
                              torch_layers=speed._torch_layers(impl, reference_conv4))
    step = speed.IMPLEMENTATIONS[impl](case, model)
    return model, step, torch.optim.Adam(model.parameters(), lr=1e-3)


def time_in_turn(variants: dict, batch, rounds: int, warmup: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {name: [] for name in variants}
    for index in range(warmup + rounds):
        for name, (_, step, optimizer) in variants.items():
            gc.collect()
            started = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            step(batch)
            optimizer.step()
            if index >= warmup:
                times[name].append(time.perf_counter() - started)
    return times


def report(times: dict[str, list[float]], base: str) -> None:
    medians = {name: statistics.median(values) for name, values in times.items()}
    for name, values in times.items():
        paired = [b / t for b, t in zip(times[base], values, strict=True)]
        print(f"{name:>14}: median {medians[name]:.3f} s/it, {1 / medians[name]:.3f} it/s; "
              f"speed vs {base} {medians[base] / medians[name]:.2f}x (per-round ratios: "
              f"median {statistics.median(paired):.2f}, min {min(paired):.2f}, "
              f"max {max(paired):.2f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=sorted(speed.CASES), default="conv4-maml-1step")
    parser.add_argument("--impls", nargs="+", choices=sorted(speed.IMPLEMENTATIONS),
                        default=["learn2learn", "metalab-loop"])
    parser.add_argument("--base", help="the implementation ratios are against (default: first)")
    parser.add_argument("--reference-conv4", choices=["metalab", "torch"], default="torch")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=1)
    args = parser.parse_args()
    missing = [impl for impl in args.impls if not speed.library_available(impl)]
    if missing:
        parser.error(f"not installed: {missing} (see benchmarks/README.md, the bench extra)")
    case = speed.CASES[args.case]
    print(f"{case.describe()}; {torch.get_num_threads()} thread(s); references on the "
          f"{args.reference_conv4} Conv4")
    variants = {impl: build(case, impl, args.reference_conv4) for impl in args.impls}
    batch = speed.build_batch(case, torch.float32)
    report(time_in_turn(variants, batch, args.rounds, args.warmup), args.base or args.impls[0])


if __name__ == "__main__":
    main()
