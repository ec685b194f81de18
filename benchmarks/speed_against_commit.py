"""Meta-iteration speed of this tree against an earlier commit, timed in turn in one process.

For a refactor, "unchanged or faster" is a ratio measured in one process on the same
model weights and meta-batch. This script extracts ``src/metalab`` of COMMIT with
``git archive`` into a temporary folder as the package ``metalab_at_commit`` (its imports
rewritten), builds the same learner from both packages, checks that their meta-gradients
are identical, then times ``meta_backward`` of each in alternating order:

    python benchmarks/speed_against_commit.py c23ad8c --cases conv4-maml protonet sine-maml

Cases: Conv4 second-order MAML, 1 inner step, 5-way 1-shot, 15 queries per class,
meta-batch 32 with ``task_chunk=1`` (the shipped configs); ProtoNet on Conv4 (NHWC),
same episodes; the sinusoid MLP 1-40-40-1, 10-shot, meta-batch 25, vmap.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import io
import re
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import torch

from metalab.nn import MLP, Conv4
from metalab.tasks import Sinusoid

OLD = "metalab_at_commit"
ROOT = Path(__file__).resolve().parents[1]


def import_commit(commit: str, folder: Path):
    """The package ``src/metalab`` of ``commit`` importable as `OLD` (imports rewritten)."""
    archive = subprocess.run(["git", "archive", commit, "src/metalab"], cwd=ROOT, check=True,
                             capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(folder, filter="data")
    package = folder / OLD
    (folder / "src" / "metalab").rename(package)
    for path in package.rglob("*.py"):
        path.write_text(re.sub(r"\bmetalab(?=[. ])", OLD, path.read_text()))
    sys.path.insert(0, str(folder))
    return importlib.import_module(f"{OLD}.algorithms"), importlib.import_module(f"{OLD}.tasks")


def episodes(tasks: int = 32, ways: int = 5, queries: int = 15):
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(ways)
    return (torch.randn(tasks, ways, 1, 28, 28, generator=g), labels.expand(tasks, -1),
            torch.randn(tasks, ways * queries, 1, 28, 28, generator=g),
            labels.repeat(queries).expand(tasks, -1), ways)


def case(name: str):
    """(model factory, learner factory(model, algorithms module), data, task_chunk)."""
    if name == "conv4-maml":
        return (Conv4, lambda m, a: a.MAML(m, inner_lr=0.4, inner_steps=1), episodes(), 1)
    if name == "protonet":
        return (lambda: Conv4(out_features=None, channels_last=True),
                lambda m, a: a.ProtoNet(m), episodes(), 1)
    batch = Sinusoid(10, 10, tasks_per_batch=25, seed=0).sample()
    return (lambda: MLP(1, (40, 40), 1),
            lambda m, a: a.MAML(m, inner_lr=0.01, loss="mse", strategy="vmap"),
            (batch.support_x, batch.support_y, batch.query_x, batch.query_y, None), None)


def run(name: str, packages: dict, rounds: int, warmup: int) -> None:
    make_model, make_learner, data, chunk = case(name)
    torch.manual_seed(0)
    state = make_model().state_dict()
    learners, batches = {}, {}
    for label, (algorithms, tasks) in packages.items():
        model = make_model()
        model.load_state_dict(state)
        learners[label] = make_learner(model, algorithms)
        batches[label] = tasks.TaskBatch(*data[:4], num_classes=data[4])
    times: dict[str, list[float]] = {label: [] for label in learners}
    for index in range(warmup + rounds):
        order = list(learners) if index % 2 else list(reversed(learners))
        for label in order:
            learner = learners[label]
            learner.zero_grad(set_to_none=True)
            gc.collect()
            started = time.perf_counter()
            learner.meta_backward(batches[label], task_chunk=chunk)
            if index >= warmup:
                times[label].append(time.perf_counter() - started)
    grads = [[p.grad for p in learner.parameters()] for learner in learners.values()]
    same = all(torch.equal(a, b) for a, b in zip(*grads, strict=True))
    old, new = (statistics.median(times[label]) for label in learners)
    rounds_ratio = [o / n for o, n in zip(*times.values(), strict=True)]
    print(f"{name:>10} ({torch.get_num_threads()} threads): commit {old:.3f} s/it, this tree "
          f"{new:.3f} s/it, this tree {old / new:.2f}x as fast (per-round ratios: median "
          f"{statistics.median(rounds_ratio):.2f}, {min(rounds_ratio):.2f}-"
          f"{max(rounds_ratio):.2f}); identical meta-gradient: {same}",
          flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("commit", help="the earlier commit (e.g. c23ad8c)")
    parser.add_argument("--cases", nargs="+", default=["conv4-maml", "protonet", "sine-maml"],
                        choices=["conv4-maml", "protonet", "sine-maml"])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        old = import_commit(args.commit, Path(folder))
        new = (importlib.import_module("metalab.algorithms"), importlib.import_module(
            "metalab.tasks"))
        for name in args.cases:
            rounds = args.rounds * (10 if name == "sine-maml" else 1)
            run(name, {"commit": old, "tree": new}, rounds, args.warmup)


if __name__ == "__main__":
    main()
