"""Measuring what a step costs: its time against another way, peak allocated memory, and a
census of the operators it runs.

Tools used by the benchmarks and the memory tests (no metalab imports: any layer may use
them).

- `time_in_turn(old, new, rounds)`: two callables timed in alternation, for speed ratios.
- `peak_allocated_bytes(fn)`: the peak of bytes allocated and not yet freed while ``fn()``
  runs, read from the profiler's allocator events. It is exact and does not depend on how
  the C allocator reuses freed pages (peak RSS does).
- `OpCensus`: a dispatch mode that records every ATen operator a step runs, with its
  argument shapes, strides and dtypes, its floating-point operation count (torch's own FLOP
  formulas, ``torch.utils.flop_counter``; a multiply-add counts as 2), and enough to replay
  it alone on fresh tensors of the same layout. Replaying each compute operator in isolation
  gives the time the step would take if every convolution and matrix product ran as fast as
  it does alone: the step's roofline under its own shapes (`benchmarks/roofline.py`).
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map
from torch.utils.flop_counter import flop_registry


def timings(function: Callable[[], Any], repeats: int, warmup: int = 1) -> list[float]:
    """Wall-clock seconds of ``repeats`` calls of ``function``, after ``warmup`` calls."""
    for _ in range(warmup):
        function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return times


def time_in_turn(run_old: Callable[[], Any], run_new: Callable[[], Any], rounds: int
                 ) -> tuple[list[float], list[float]]:
    """Seconds of ``rounds`` calls each of ``run_old()`` and ``run_new()``, alternating which
    goes first (after one warm-up round), so that a machine shared with other jobs slows both
    alike: compare them as a ratio."""
    times: tuple[list[float], list[float]] = ([], [])
    for index in range(rounds + 1):
        order = [(0, run_old), (1, run_new)]
        for slot, run in (order if index % 2 else order[::-1]):
            gc.collect()
            started = time.perf_counter()
            run()
            if index:
                times[slot].append(time.perf_counter() - started)
    return times


def peak_allocated_bytes(fn: Callable[[], Any]) -> int:
    """Peak of bytes allocated and not yet freed while ``fn()`` runs (CPU allocator events)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    live = peak = 0
    for event in events:
        live += event.nbytes()
        peak = max(peak, live)
    return peak


@dataclass(frozen=True)
class TensorSpec:
    """What a replayed argument must look like: shape, strides and dtype (values are random)."""

    shape: tuple[int, ...]
    stride: tuple[int, ...]
    dtype: torch.dtype

    def make(self, generator: torch.Generator) -> torch.Tensor:
        tensor = torch.empty_strided(self.shape, self.stride, dtype=self.dtype)
        if self.dtype.is_floating_point:
            return tensor.normal_(generator=generator)
        return tensor.zero_()

    def describe(self) -> str:
        layout = "" if torch.empty_strided(self.shape, self.stride).is_contiguous() else " (NHWC)"
        return "x".join(map(str, self.shape)) + layout


def _spec(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return TensorSpec(tuple(value.shape), tuple(value.stride()), value.dtype)
    return value


def _hashable(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return tuple(_hashable(item) for item in value)
    if isinstance(value, dict):
        return tuple(sorted((key, _hashable(item)) for key, item in value.items()))
    return value


@dataclass
class OpRecord:
    """One distinct call (operator and argument layout) and how often the step made it."""

    op: torch._ops.OpOverload
    args: tuple
    kwargs: dict
    flops: int
    count: int = 0

    @property
    def name(self) -> str:
        return str(self.op.overloadpacket).removeprefix("aten.")

    def shapes(self) -> str:
        specs = [arg for arg in self.args if isinstance(arg, TensorSpec)]
        return ", ".join(spec.describe() for spec in specs)

    def replay_seconds(self, rounds: int = 5, generator: torch.Generator | None = None) -> float:
        """Median time of this call alone, on fresh random tensors of the recorded layout."""
        generator = generator or torch.Generator().manual_seed(0)

        def make(value: Any) -> Any:
            return value.make(generator) if isinstance(value, TensorSpec) else value

        args = tree_map(make, self.args)
        kwargs = tree_map(make, self.kwargs)
        with torch.no_grad():
            self.op(*args, **kwargs)  # warm-up (allocations, kernel selection)
            times = []
            for _ in range(rounds):
                started = time.perf_counter()
                self.op(*args, **kwargs)
                times.append(time.perf_counter() - started)
        return statistics.median(times)


@dataclass
class OpCensus(TorchDispatchMode):
    """Record every ATen call made inside ``with OpCensus() as census:``.

    ``census.records`` maps each distinct (operator, argument layout) to an `OpRecord` with
    its FLOPs per call and its count; ``census.calls`` is the number of operator calls, the
    quantity that bounds an overhead-bound step (each call pays the dispatcher once).
    """

    records: dict[tuple, OpRecord] = field(default_factory=dict)
    calls: int = 0

    def __post_init__(self) -> None:
        super().__init__()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        self.calls += 1
        spec_args, spec_kwargs = tree_map(_spec, args), tree_map(_spec, kwargs)
        key = (func, _hashable(spec_args), _hashable(spec_kwargs))
        record = self.records.get(key)
        if record is None:
            formula = flop_registry.get(func._overloadpacket)
            flops = int(formula(*args, **kwargs, out_val=out)) if formula else 0
            record = self.records[key] = OpRecord(func, spec_args, spec_kwargs, flops)
        record.count += 1
        return out

    @property
    def total_flops(self) -> int:
        return sum(record.flops * record.count for record in self.records.values())

    def compute_records(self) -> list[OpRecord]:
        """The calls that do floating-point work (convolutions, matrix products), largest first."""
        work = [record for record in self.records.values() if record.flops > 0]
        return sorted(work, key=lambda record: record.flops * record.count, reverse=True)

    def flops_by_operator(self) -> dict[str, int]:
        totals: dict[str, int] = {}
        for record in self.compute_records():
            totals[record.name] = totals.get(record.name, 0) + record.flops * record.count
        return totals
