"""Peak memory of one meta-gradient against the number of inner steps: iMAML, MAML with
gradient checkpointing across steps, and plain second-order MAML, on Conv4.

    python benchmarks/imaml_memory.py                      # steps 1 5 10 20 50 (~10 min, 2 cores)
    python benchmarks/imaml_memory.py --steps 1 5 --quick  # smoke test (hidden 8)

Setting: the shipped configs ``imaml-glyphs-5w1s`` and ``maml-glyphs-5w1s`` (Conv4, 64
filters, 28x28, float32), one 5-way 1-shot task with 15 queries per class (random inputs:
memory does not depend on the values), ``algorithm.inner_steps`` set per row (and
``algorithm.checkpoint_steps=true`` for the checkpointed MAML); iMAML keeps its
``cg_steps: 5``.

What is measured, for each (method, steps) in its own fresh process (multiprocessing
``spawn``):

- **peak allocated** (the table's main column): the largest number of bytes allocated by
  PyTorch and not yet freed during one ``meta_backward`` (forward, inner loop, CG, backward),
  counted from the allocator events of ``torch.profiler`` (``profile_memory=True``), as in
  tests/test_memory.py. Exact, and independent of how the C library reuses freed memory;
  the model, the batch and the libraries loaded before are not counted;
- **peak RSS increase** (in parentheses): ``ru_maxrss`` after the process's first, unprofiled
  ``meta_backward`` minus the RSS just before it: what the operating system saw, including
  allocator slack and one-time allocations of a first call (kernels, thread pools,
  checkpointing's machinery), so it is an upper bound, noisier than the first column.

Writes ``benchmarks/results/imaml_memory.{md,json,png}``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speed import current_rss, run_in_fresh_process  # noqa: E402

from metalab.cli.main import CONFIG_DIR  # noqa: E402
from metalab.profiling import peak_allocated_bytes  # noqa: E402
from metalab.tasks import TaskBatch  # noqa: E402
from metalab.train import load_config  # noqa: E402
from metalab.train.build import build_meta_learner  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
METHODS = {  # label -> (config, overrides)
    "iMAML (cg_steps 5)": ("imaml-glyphs-5w1s", []),
    "MAML, checkpoint_steps": ("maml-glyphs-5w1s", ["algorithm.checkpoint_steps=true"]),
    "MAML": ("maml-glyphs-5w1s", []),
}


def episode(ways: int = 5, shots: int = 1, queries: int = 15, size: int = 28) -> TaskBatch:
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(ways)
    return TaskBatch(torch.randn(1, ways * shots, 1, size, size, generator=g),
                     labels.repeat(shots)[None], torch.randn(1, ways * queries, 1, size, size,
                                                             generator=g),
                     labels.repeat(queries)[None], num_classes=ways)


def profiled_peak_bytes(learner, batch: TaskBatch) -> int:
    return peak_allocated_bytes(lambda: learner.meta_backward(batch))


def measure(label: str, steps: int, hidden: int) -> dict:
    """One setting, in a fresh process: peak RSS increase, then the profiled peak."""
    torch.set_num_threads(1)
    config_name, overrides = METHODS[label]
    config = load_config(CONFIG_DIR / f"{config_name}.yaml",
                         [*overrides, f"algorithm.inner_steps={steps}", f"model.hidden={hidden}"])
    torch.manual_seed(0)
    learner = build_meta_learner(config)
    batch = episode()
    before = current_rss()
    start = time.perf_counter()
    learner.meta_backward(batch)
    seconds = time.perf_counter() - start
    rss_increase = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    learner.zero_grad()
    return {"method": label, "inner_steps": steps, "seconds": seconds,
            "peak_allocated_mib": profiled_peak_bytes(learner, batch) / 2**20,
            "peak_rss_increase_mib": max(rss_increase, 0) / 2**20}


def markdown(rows: list[dict], steps: list[int]) -> str:
    by = {(r["method"], r["inner_steps"]): r for r in rows}
    header = "| method | " + " | ".join(f"{s} steps" for s in steps) + " |"
    lines = [header, "|---" * (len(steps) + 1) + "|"]
    for label in METHODS:
        cells = []
        for s in steps:
            r = by.get((label, s))
            cells.append("n/a" if r is None else
                         f"{r['peak_allocated_mib']:.0f} ({r['peak_rss_increase_mib']:.0f})")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(5.5, 3.8))
    for label in METHODS:
        points = sorted((r["inner_steps"], r["peak_allocated_mib"]) for r in rows
                        if r["method"] == label)
        axis.plot(*zip(*points, strict=True), marker="o", label=label)
    axis.set_xlabel("inner steps")
    axis.set_ylabel("peak allocated (MiB)")
    axis.set_yscale("log")
    axis.set_title("Conv4 5-way 1-shot, one task, float32")
    axis.legend()
    figure.tight_layout()
    temporary = path.with_suffix(".tmp.png")
    figure.savefig(temporary, dpi=110)
    os.replace(temporary, path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 5, 10, 20, 50])
    parser.add_argument("--quick", action="store_true", help="hidden 8 instead of 64")
    parser.add_argument("--out", type=Path, default=RESULTS / "imaml_memory")
    args = parser.parse_args(argv)
    hidden = 8 if args.quick else 64
    rows = []
    for label in METHODS:
        for steps in args.steps:
            row = run_in_fresh_process(measure, label, steps, hidden)
            print(f"{label:24s} steps {steps:3d}: peak allocated {row['peak_allocated_mib']:8.1f}"
                  f" MiB, peak RSS increase {row['peak_rss_increase_mib']:8.1f} MiB,"
                  f" {row['seconds']:.1f} s", flush=True)
            rows.append(row)
    table = markdown(rows, args.steps)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/imaml_memory.py " + " ".join(argv or sys.argv[1:])
    note = (f"Peak memory of one meta-gradient (one 5-way 1-shot task, 15 queries per class, "
            f"Conv4 hidden {hidden}, 28x28, float32), MiB: peak allocated by PyTorch "
            f"(torch.profiler allocator events) and, in parentheses, the peak RSS increase, "
            f"each setting in a fresh process. Command: `{command.strip()}`.")
    args.out.with_suffix(".md").write_text(note + "\n\n" + table + "\n")
    args.out.with_suffix(".json").write_text(json.dumps(
        {"hidden": hidden, "torch": torch.__version__, "rows": rows}, indent=2))
    plot(rows, args.out.with_suffix(".png"))
    print(table)


if __name__ == "__main__":
    main()
