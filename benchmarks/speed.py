"""Meta-training speed and memory of metalab next to learn2learn 0.2.0 and higher 0.2.1.

The command behind the README table (full settings, about 15 minutes on 2 CPU cores):

    python benchmarks/speed.py --json benchmarks/results.json

Smoke test: ``python benchmarks/speed.py --quick``. Select cases with ``--cases`` (see
``--help`` for the names); learn2learn and higher come from the optional ``bench`` extra
(see benchmarks/README.md) and their columns are skipped when they are not installed.

What is measured, per (case, implementation):

- meta-iterations per second, one meta-iteration being forward + backward + Adam step on a
  fixed meta-batch (random inputs of the right shapes: speed does not depend on the values);
  the rate is 1 / median iteration time over ``--iterations`` timed iterations after
  ``--warmup`` untimed ones;
- peak memory: each measurement runs in a fresh process (multiprocessing ``spawn``) and
  reports ``ru_maxrss`` at the end minus the RSS just before the first iteration (model,
  optimizer, batch and libraries already loaded), i.e. the peak RSS increase caused by
  meta-training; a sampling thread (every 5 ms) cross-checks it and stops a run that goes
  over ``--memory-limit``.

Before any timing, every case checks in float64, in a fresh process, that each
implementation's meta-gradient equals the reference's (learn2learn, else higher, else plain
PyTorch) on the same parameters and batch; an implementation whose gradient differs by more
than ``--tolerance`` (relative to the largest gradient entry) is not timed or reported.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import importlib.metadata
import importlib.util
import json
import multiprocessing
import os
import platform
import resource
import sys
import threading
import time
import traceback
import types
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metalab.algorithms import MAML, ProtoNet
from metalab.nn import MLP, Conv4
from metalab.tasks import Sinusoid, TaskBatch
from metalab.train.allocator import keep_freed_memory

WAYS, SHOTS, QUERIES_PER_CLASS = 5, 1, 15
BENCH_EXTRA = ('install the optional "bench" extra to compare: see benchmarks/README.md '
               '(learn2learn 0.2.0 and higher 0.2.1)')
MiB = 2**20
MEMORY_EXIT_CODE = 3  # a measured process ends with it when it goes over --memory-limit


# -- cases -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    """One benchmark configuration."""

    name: str
    kind: str  # "conv4-maml", "sine-maml" or "protonet"
    inner_steps: int = 1
    first_order: bool = False
    inner_lr: float = 0.4
    tasks: int = 32
    warmup: int = 3
    iterations: int = 10

    @property
    def loss(self) -> str:
        return "mse" if self.kind == "sine-maml" else "cross_entropy"

    def describe(self) -> str:
        if self.kind == "protonet":
            return (f"ProtoNet, Conv4 embedding, {WAYS}-way {SHOTS}-shot, {QUERIES_PER_CLASS} "
                    f"queries/class, meta-batch {self.tasks}")
        order = "first order" if self.first_order else "second order"
        if self.kind == "sine-maml":
            data = "sinusoid, MLP 1-40-40-1, 10-shot, 10 queries"
        else:
            data = (f"Conv4 (64 filters, 1x28x28), {WAYS}-way {SHOTS}-shot, "
                    f"{QUERIES_PER_CLASS} queries/class")
        return (f"MAML {order}, {self.inner_steps} inner step(s), lr {self.inner_lr}, {data}, "
                f"meta-batch {self.tasks}")


CASES = {case.name: case for case in [
    Case("conv4-maml-1step", "conv4-maml", inner_steps=1, warmup=2, iterations=5),
    Case("conv4-maml-5step", "conv4-maml", inner_steps=5, warmup=1, iterations=3),
    Case("conv4-fomaml-1step", "conv4-maml", inner_steps=1, first_order=True, warmup=2,
         iterations=5),
    Case("conv4-fomaml-5step", "conv4-maml", inner_steps=5, first_order=True, warmup=1,
         iterations=3),
    Case("sine-maml-1step", "sine-maml", inner_lr=0.01, tasks=25, warmup=20, iterations=200),
    Case("protonet-conv4", "protonet", warmup=2, iterations=10),
]}


def build_model(case: Case, dtype: torch.dtype, seed: int = 0,
                channels_last: bool = False, torch_layers: bool = False) -> nn.Module:
    """The same architecture and initial parameters for every implementation.

    metalab's ProtoNet runs channels-last (NHWC) as its shipped configs do; everything else
    runs the standard NCHW layout. The values are identical either way. ``torch_layers``
    gives Conv4 blocks torch's own ``ReLU`` then ``nn.MaxPool2d`` instead of metalab's
    pooling before the ReLU with its faster CPU max-pooling (`--reference-conv4 torch`):
    the same function and parameters, as a user of another library would build them.
    """
    torch.manual_seed(seed)
    if case.kind == "sine-maml":
        model = MLP(1, (40, 40), 1)
    else:
        head = None if case.kind == "protonet" else WAYS
        model = Conv4(in_channels=1, hidden=64, out_features=head, image_size=28,
                      channels_last=channels_last)
        if torch_layers:
            for block in model.body[:4]:
                block[2], block[3] = nn.ReLU(), nn.MaxPool2d(2)
    return model.to(dtype)


def _nhwc(case: Case, impl: str) -> bool:
    return impl.startswith("metalab") and case.kind == "protonet"


def _torch_layers(impl: str, reference_conv4: str) -> bool:
    return reference_conv4 == "torch" and not impl.startswith("metalab")


def build_batch(case: Case, dtype: torch.dtype, tasks: int | None = None,
                seed: int = 0) -> TaskBatch:
    """A meta-batch: sinusoid tasks, or random Omniglot-shaped images with balanced labels."""
    tasks = case.tasks if tasks is None else tasks
    if case.kind == "sine-maml":
        return Sinusoid(shots=10, queries=10, tasks_per_batch=tasks, seed=seed).sample().to(dtype)
    generator = torch.Generator().manual_seed(seed)

    def images(count: int) -> Tensor:
        return torch.randn(tasks, count, 1, 28, 28, generator=generator, dtype=dtype)

    support_y = torch.arange(WAYS).repeat_interleave(SHOTS).repeat(tasks, 1)
    query_y = torch.arange(WAYS).repeat_interleave(QUERIES_PER_CLASS).repeat(tasks, 1)
    return TaskBatch(images(WAYS * SHOTS), support_y, images(WAYS * QUERIES_PER_CLASS), query_y,
                     num_classes=WAYS)


# -- implementations ---------------------------------------------------------------------
# Each builder takes (case, model) and returns step(batch), which leaves the meta-gradient
# of the mean query loss in the model's .grad. The references follow their libraries'
# examples: one task at a time, backward per task (their lowest-memory form).
StepFn = Callable[[TaskBatch], None]
LOSSES = {"mse": F.mse_loss, "cross_entropy": F.cross_entropy}


def metalab_builder(strategy: str, compiled: bool = False) -> Callable[[Case, nn.Module], StepFn]:
    """metalab's meta-gradient step; ``compiled`` adds `MetaLearner.compile` (train.compile)."""

    def build(case: Case, model: nn.Module) -> StepFn:
        if case.kind == "protonet":
            learner = ProtoNet(model, strategy=strategy)
        else:
            learner = MAML(model, inner_lr=case.inner_lr, inner_steps=case.inner_steps,
                           first_order=case.first_order, loss=case.loss, strategy=strategy)
        if compiled:
            learner.compile()

        def step(batch: TaskBatch) -> None:
            # the loop back-propagates task by task (the shipped Conv4 configs' task_chunk: 1)
            learner.meta_backward(batch, task_chunk=1 if strategy == "loop" else None)

        return step

    return build


def import_learn2learn_maml() -> type:
    """``learn2learn.algorithms.MAML``, importable even where ``import learn2learn`` is not.

    learn2learn's package ``__init__`` imports its vision, gym and text modules, which need
    torchvision and gym; on a CPU-only torch the PyPI torchvision wheel (built for CUDA) does
    not load. MAML itself needs only torch, so when the full import fails the algorithm
    modules are loaded without running the package ``__init__`` files.
    """
    try:
        import learn2learn
        return learn2learn.algorithms.MAML
    except Exception:  # noqa: BLE001 - torchvision raises RuntimeError as well
        pass
    for name in [n for n in sys.modules if n == "learn2learn" or n.startswith("learn2learn.")]:
        del sys.modules[name]
    spec = importlib.util.find_spec("learn2learn")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("learn2learn is not installed")
    root = spec.submodule_search_locations[0]
    for package, path in (("learn2learn", root), ("learn2learn.algorithms",
                                                  os.path.join(root, "algorithms"))):
        module = types.ModuleType(package)
        module.__path__ = [path]
        sys.modules[package] = module
    return importlib.import_module("learn2learn.algorithms.maml").MAML


def learn2learn_builder(case: Case, model: nn.Module) -> StepFn:
    maml = import_learn2learn_maml()(model, lr=case.inner_lr, first_order=case.first_order)
    loss_fn = LOSSES[case.loss]

    def step(batch: TaskBatch) -> None:
        tasks = len(batch)
        for sx, sy, qx, qy in (batch[t] for t in range(tasks)):
            learner = maml.clone()
            for _ in range(case.inner_steps):
                learner.adapt(loss_fn(learner(sx), sy))
            (loss_fn(learner(qx), qy) / tasks).backward()

    return step


def higher_builder(case: Case, model: nn.Module) -> StepFn:
    import higher

    inner_optimizer = torch.optim.SGD(model.parameters(), lr=case.inner_lr)
    loss_fn = LOSSES[case.loss]
    # First order: the inner gradients are constants (higher's documented grad_callback).
    detach = (lambda grads: [g.detach() for g in grads]) if case.first_order else None

    def step(batch: TaskBatch) -> None:
        tasks = len(batch)
        for sx, sy, qx, qy in (batch[t] for t in range(tasks)):
            with higher.innerloop_ctx(model, inner_optimizer,
                                      copy_initial_weights=False) as (fmodel, diffopt):
                for _ in range(case.inner_steps):
                    diffopt.step(loss_fn(fmodel(sx), sy), grad_callback=detach)
                (loss_fn(fmodel(qx), qy) / tasks).backward()

    return step


def torch_protonet_builder(case: Case, model: nn.Module) -> StepFn:
    """Prototypical Networks in plain PyTorch, one task at a time."""

    def step(batch: TaskBatch) -> None:
        tasks = len(batch)
        for sx, sy, qx, qy in (batch[t] for t in range(tasks)):
            support, query = model(sx).flatten(1), model(qx).flatten(1)
            one_hot = F.one_hot(sy, WAYS).to(support.dtype)
            centers = (one_hot.T @ support) / one_hot.sum(0).unsqueeze(1)
            distances = ((query.unsqueeze(1) - centers.unsqueeze(0)) ** 2).sum(-1)
            (F.cross_entropy(-distances, qy) / tasks).backward()

    return step


IMPLEMENTATIONS = {
    "metalab-loop": metalab_builder("loop"),
    "metalab-vmap": metalab_builder("vmap"),
    "metalab-vmap-compiled": metalab_builder("vmap", compiled=True),
    "learn2learn": learn2learn_builder,
    "higher": higher_builder,
    "torch": torch_protonet_builder,
}
REFERENCES = {"maml": ("learn2learn", "higher"), "protonet": ("torch",)}


def library_available(impl: str) -> bool:
    if impl == "learn2learn":
        try:
            import_learn2learn_maml()
        except ImportError:
            return False
        return True
    if impl == "higher":
        return importlib.util.find_spec("higher") is not None
    return True


def implementations_for(case: Case) -> list[str]:
    family = "protonet" if case.kind == "protonet" else "maml"
    compiled = ["metalab-vmap-compiled"] if case.kind == "sine-maml" else []
    return ["metalab-loop", "metalab-vmap", *compiled, *REFERENCES[family]]


# -- child processes ---------------------------------------------------------------------
def current_rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class RssSampler(threading.Thread):
    """Samples RSS every ``interval`` s; ends the process when it exceeds ``limit`` bytes."""

    def __init__(self, limit: int, interval: float = 0.005) -> None:
        super().__init__(daemon=True)
        self.limit, self.interval, self.peak = limit, interval, current_rss()
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.wait(self.interval):
            self.peak = max(self.peak, current_rss())
            if self.peak > self.limit:
                os._exit(MEMORY_EXIT_CODE)

    def stop(self) -> int:
        self._done.set()
        self.join()
        return self.peak



def measure(case: Case, impl: str, threads: int, memory_limit: int,
            reference_conv4: str = "metalab", keep_freed: bool = False) -> dict:
    """Time ``case.iterations`` meta-iterations of ``impl`` (run in a fresh process);
    ``keep_freed``: glibc keeps freed memory for reuse (`metalab.train.allocator`)."""
    torch.set_num_threads(threads)
    if keep_freed:
        keep_freed_memory()
    model = build_model(case, torch.float32, channels_last=_nhwc(case, impl),
                        torch_layers=_torch_layers(impl, reference_conv4))
    step = IMPLEMENTATIONS[impl](case, model)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    batch = build_batch(case, torch.float32)

    def iteration() -> None:
        optimizer.zero_grad(set_to_none=True)
        step(batch)
        optimizer.step()

    gc.collect()
    baseline = current_rss()
    sampler = RssSampler(baseline + memory_limit)
    sampler.start()
    for _ in range(case.warmup):
        iteration()
    load = os.getloadavg()[0]
    times, cpu_start, wall_start = [], time.process_time(), time.perf_counter()
    for _ in range(case.iterations):
        start = time.perf_counter()
        iteration()
        times.append(time.perf_counter() - start)
    wall, cpu = time.perf_counter() - wall_start, time.process_time() - cpu_start
    sampled_peak = sampler.stop()
    max_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    median = sorted(times)[len(times) // 2]
    return {
        "iterations_per_s": 1.0 / median,
        "mean_iterations_per_s": len(times) / sum(times),
        "times_s": times,
        "peak_increase_mib": (max_rss - baseline) / MiB,
        "sampled_peak_increase_mib": (sampled_peak - baseline) / MiB,
        "peak_rss_mib": max_rss / MiB,
        "cpu_utilization": cpu / (wall * threads),
        "load_1min": load,
        "threads": threads,
    }


def gradient_check(case: Case, impls: list[str], tasks: int,
                   reference_conv4: str = "metalab") -> dict[str, dict]:
    """Float64 meta-gradients of every implementation vs the first reference (fresh process)."""
    batch = build_batch(case, torch.float64, tasks=tasks, seed=1)
    gradients = {}
    for impl in impls:
        model = build_model(case, torch.float64, channels_last=_nhwc(case, impl),
                            torch_layers=_torch_layers(impl, reference_conv4))
        IMPLEMENTATIONS[impl](case, model)(batch)
        gradients[impl] = [p.grad.detach().clone() for p in model.parameters()]
    references = [i for i in impls if not i.startswith("metalab")]
    reference = references[0] if references else impls[0]  # no library: loop vs vmap only
    scale = max(g.abs().max().item() for g in gradients[reference])
    report = {}
    for impl, grads in gradients.items():
        max_abs = max((a - b).abs().max().item()
                      for a, b in zip(grads, gradients[reference], strict=True))
        report[impl] = {"reference": reference, "max_abs_diff": max_abs,
                        "max_rel_diff": max_abs / scale, "tasks": tasks}
    return report


def machine_info() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                if line.startswith("model name")), platform.processor())
    info = {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "python": platform.python_version()}
    if library_available("learn2learn"):
        info["learn2learn"] = importlib.metadata.version("learn2learn")
    if library_available("higher"):
        info["higher"] = importlib.metadata.version("higher")
    return info


def _child(connection, function: Callable, args: tuple) -> None:
    try:
        connection.send({"ok": function(*args)})
    except Exception:  # noqa: BLE001 - reported to the parent
        connection.send({"error": traceback.format_exc()})
    connection.close()


def run_in_fresh_process(function: Callable, *args):
    """``function(*args)`` in a new interpreter; raises RuntimeError if it fails or dies."""
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=_child, args=(sender, function, args))
    process.start()
    sender.close()
    try:
        message = receiver.recv()
    except EOFError:
        message = None
    process.join()
    if message is None:
        reason = ("went over --memory-limit" if process.exitcode == MEMORY_EXIT_CODE
                  else f"died with exit code {process.exitcode}")
        raise RuntimeError(reason)
    if "error" in message:
        raise RuntimeError(message["error"].strip().splitlines()[-1])
    return message["ok"]


# -- the run -----------------------------------------------------------------------------
def run_case(case: Case, args: argparse.Namespace) -> dict:
    print(f"\n== {case.name}: {case.describe()}", flush=True)
    impls = [i for i in implementations_for(case) if i in args.impls]
    missing = [i for i in impls if not library_available(i)]
    if missing:
        print(f"   {', '.join(missing)} not installed: skipped; {BENCH_EXTRA}")
    impls = [i for i in impls if i not in missing]
    checks = run_in_fresh_process(gradient_check, case, impls, args.check_tasks,
                                  args.reference_conv4)
    results = {}
    for impl in impls:
        check = checks[impl]
        agrees = check["max_rel_diff"] <= args.tolerance
        print(f"   gradient check {impl:>13} vs {check['reference']}: max abs diff "
              f"{check['max_abs_diff']:.2e}, relative {check['max_rel_diff']:.2e} "
              f"({'ok' if agrees else 'DISAGREES: not timed'})", flush=True)
        results[impl] = {"check": check}
        if not agrees:
            results[impl]["error"] = "meta-gradient disagrees with the reference"
    for impl in impls:
        if "error" in results[impl]:
            continue
        try:
            results[impl].update(run_in_fresh_process(
                measure, case, impl, args.threads, int(args.memory_limit * 2**30),
                args.reference_conv4))
        except RuntimeError as error:
            results[impl]["error"] = str(error)
            print(f"   {impl}: failed ({error})", flush=True)
            continue
        r = results[impl]
        print(f"   {impl:>13}: {r['iterations_per_s']:8.3f} it/s, peak +"
              f"{r['peak_increase_mib']:7.1f} MiB (cpu {100 * r['cpu_utilization']:.0f}%, "
              f"load {r['load_1min']:.1f})", flush=True)
    return results


def ratio(results: dict, impl: str, base: str, key: str) -> str:
    if key not in results.get(impl, {}) or key not in results.get(base, {}):
        return "-"
    return f"{results[impl][key] / results[base][key]:.2f}x"


def cpu_cell(result: dict) -> str:
    return f"{100 * result['cpu_utilization']:.0f}%" if "cpu_utilization" in result else "-"


def print_table(all_results: dict, machine: dict) -> None:
    print(f"\nMachine: {machine['cpu']}, {machine['cores']} cores; torch {machine['torch']}, "
          f"{machine['threads']} threads; Python {machine['python']}; learn2learn "
          f"{machine.get('learn2learn', 'absent')}; higher {machine.get('higher', 'absent')}")
    header = (f"| {'case':<19} | {'implementation':<14} | {'it/s':>8} | {'peak MiB':>8} | "
              f"{'speed vs ref':>12} | {'mem vs ref':>10} | {'speed vs higher':>15} | "
              f"{'mem vs higher':>13} | {'grad rel diff':>13} | {'cpu':>4} |")
    print(header)
    print("|" + "|".join("-" * (len(cell) + 0) for cell in header.split("|")[1:-1]) + "|")
    for case_name, results in all_results.items():
        for impl, r in results.items():
            if "error" in r:
                speed, memory = "failed", r["error"][:8]
            else:
                speed, memory = f"{r['iterations_per_s']:.3f}", f"{r['peak_increase_mib']:.0f}"
            cells = [speed, memory]
            reference = "torch" if "torch" in results else "learn2learn"
            for base in (reference, "higher"):
                cells += [ratio(results, impl, base, "iterations_per_s"),
                          ratio(results, impl, base, "peak_increase_mib")]
            print(f"| {case_name:<19} | {impl:<14} | {cells[0]:>8} | {cells[1]:>8} | "
                  f"{cells[2]:>12} | {cells[3]:>10} | {cells[4]:>15} | {cells[5]:>13} | "
                  f"{r['check']['max_rel_diff']:>13.1e} | {cpu_cell(r):>4} |")
    print("\nit/s: meta-iterations (forward + backward + Adam step) per second, 1 / median time; "
          "peak MiB: peak RSS increase during meta-training, fresh process per row; ref: "
          "learn2learn for MAML, plain PyTorch for ProtoNet; memory ratio < 1 means less memory; "
          "grad rel diff: float64 meta-gradient vs the reference; cpu: CPU time / (wall time x "
          "threads) while timed, well under 100% when other jobs shared the cores.")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", nargs="+", choices=sorted(CASES), default=list(CASES))
    parser.add_argument("--impls", nargs="+", choices=sorted(IMPLEMENTATIONS),
                        default=list(IMPLEMENTATIONS), help="implementations to run")
    parser.add_argument("--iterations", type=int, help="timed iterations (default: per case)")
    parser.add_argument("--warmup", type=int, help="untimed iterations (default: per case)")
    parser.add_argument("--quick", action="store_true",
                        help="1 warm-up and 2 timed iterations per case, for smoke tests")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--check-tasks", type=int, default=4,
                        help="tasks in the float64 gradient-check batch")
    parser.add_argument("--tolerance", type=float, default=1e-8,
                        help="largest relative meta-gradient difference accepted")
    parser.add_argument("--memory-limit", type=float, default=8.0,
                        help="GiB of RSS increase after which a run is stopped")
    parser.add_argument("--reference-conv4", choices=["metalab", "torch"], default="metalab",
                        help="Conv4 of the references (learn2learn, higher, plain PyTorch): "
                             "metalab's, or built from torch's ReLU and MaxPool2d in the usual "
                             "order (same function and parameters)")
    parser.add_argument("--json", metavar="OUT", help="write the results as JSON")
    return parser.parse_args(argv)


def selected_cases(args: argparse.Namespace) -> list[Case]:
    cases = []
    for name in args.cases:
        case = CASES[name]
        if args.quick:
            case = replace(case, warmup=1, iterations=2)
        if args.warmup is not None:
            case = replace(case, warmup=args.warmup)
        if args.iterations is not None:
            case = replace(case, iterations=args.iterations)
        cases.append(case)
    return cases


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    machine = machine_info()
    for missing in ("learn2learn", "higher"):
        if missing not in machine:
            print(f"{missing} is not installed: its columns are skipped; {BENCH_EXTRA}")
    cases = selected_cases(args)
    all_results = {case.name: run_case(case, args) for case in cases}
    print_table(all_results, machine)
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"machine": machine, "command": " ".join(sys.argv),
                       "cases": {c.name: asdict(c) for c in cases},
                       "results": all_results}, out, indent=2)
        print(f"results written to {args.json}")


if __name__ == "__main__":
    main()
