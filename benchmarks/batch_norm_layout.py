"""Training-mode batch norm on CPU: NCHW against channels-last, speed and accuracy.

Per-task batch norm (`metalab.nn.norm.TaskBatchNorm`, training-mode statistics) is 13-32% of
the grid cells' operator time (`benchmarks/results/fewshot_profile.md`). This measures, for
Conv4's activation shapes, one thread, the forward (and forward + backward) time of
``F.batch_norm`` on an NCHW tensor and on the same tensor in channels-last layout (ratio of
medians of 15 calls, one layout after the other), and each layout's largest error against
the float64 computation:

    OMP_NUM_THREADS=1 nice -n 5 python benchmarks/batch_norm_layout.py
"""

from __future__ import annotations

import statistics

import torch
import torch.nn.functional as F

from metalab.profiling import timings

SHAPES = [(100, 64, 28, 28), (75, 64, 14, 14), (20, 64, 28, 28), (5, 64, 28, 28)]


def timed(function, rounds: int = 15) -> float:
    return statistics.median(timings(function, rounds))


def main() -> None:
    torch.manual_seed(0)
    print(f"| shape | forward NCHW / NHWC time | fwd+bwd NCHW / NHWC time | NCHW max error | "
          f"NHWC max error |  ({torch.get_num_threads()} thread)")
    print("|---|---|---|---|---|")
    for shape in SHAPES:
        x = torch.randn(shape) * 3 + 1.5
        weight, bias = torch.randn(shape[1]), torch.randn(shape[1])
        layouts = {"nchw": x, "nhwc": x.contiguous(memory_format=torch.channels_last)}
        reference = F.batch_norm(x.double(), None, None, weight.double(), bias.double(),
                                 training=True)
        error, forward, both = {}, {}, {}
        for name, t in layouts.items():
            out = F.batch_norm(t, None, None, weight, bias, training=True)
            error[name] = (out.double() - reference).abs().max().item()
            forward[name] = timed(lambda t=t, w=weight, b=bias: F.batch_norm(
                t, None, None, w, b, training=True))
            leaf = t.clone().requires_grad_(True)
            grad = torch.randn_like(out)
            both[name] = timed(lambda leaf=leaf, grad=grad, w=weight, b=bias: F.batch_norm(
                leaf, None, None, w, b, training=True).backward(grad))
        print(f"| {shape} | {forward['nchw'] / forward['nhwc']:.2f}x | "
              f"{both['nchw'] / both['nhwc']:.2f}x | {error['nchw']:.1e} | "
              f"{error['nhwc']:.1e} |", flush=True)


if __name__ == "__main__":
    main()
