"""Small builders shared by the tests."""

from __future__ import annotations

import gzip
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

from metalab.tasks import TaskBatch


class ToyImages(torch.utils.data.Dataset):
    """A labelled image dataset: each class a fixed random pattern plus noise."""

    def __init__(self, classes: int = 12, per_class: int = 20, size: int = 16, seed: int = 0,
                 split: str | None = None) -> None:
        g = torch.Generator().manual_seed(seed)
        patterns = torch.rand(classes, 1, size, size, generator=g)
        self.labels = [c for c in range(classes) for _ in range(per_class)]
        noise = 0.3 * torch.rand(len(self.labels), 1, size, size, generator=g)
        self.images = patterns[torch.tensor(self.labels)] + noise
        self.class_names = [f"class{c}" for c in range(classes)]
        self.split = split

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.images[i], self.labels[i]


def classification_batch(tasks=3, ways=5, shots=1, queries=3, size=16, seed=0,
                         dtype=torch.float64) -> TaskBatch:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(ways)

    def images(n):
        return torch.randn(tasks, n, 1, size, size, generator=g, dtype=dtype)

    return TaskBatch(images(ways * shots), labels.repeat(shots).expand(tasks, -1).contiguous(),
                     images(ways * queries), labels.repeat(queries).expand(tasks, -1).contiguous(),
                     num_classes=ways)


class Interrupt(Exception):
    """Raised by `interrupted_then_resumed` in the middle of a run."""


def logged_records(run_dir: Path) -> list[dict]:
    """A run's ``metrics.jsonl`` records without their wall-clock ``seconds``: what a
    resumed run must log exactly as one straight through."""
    lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in lines]


def interrupted_then_resumed(config: dict, root, interrupt_at: int = 7):
    """Trainers of ``config``: one run straight through (``root/straight``), and one
    interrupted at its ``interrupt_at``-th step then resumed (``root/broken``) from a
    process with other RNG state. Returns ``(straight, resumed)``."""
    import pytest
    import yaml

    from metalab.train.run import make_trainer, train_run

    straight = train_run(config, root / "straight")
    trainer = make_trainer(config, root / "broken")
    original, calls = trainer.train_step, {"n": 0}

    def failing_step():
        calls["n"] += 1
        if calls["n"] == interrupt_at:
            raise Interrupt
        return original()

    trainer.train_step = failing_step
    (root / "broken").mkdir()
    (root / "broken" / "config.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(Interrupt):
        trainer.fit()
    torch.manual_seed(999)  # a resumed process starts with other RNG state
    return straight, train_run(config, root / "broken", resume=True)


class FlatEmbedding(nn.Module):
    """A batch-norm-free embedding (one linear map of the flattened input): each example's
    features depend on it alone, so sequence learners can be tested for causality."""

    def __init__(self, in_features: int, dim: int) -> None:
        super().__init__()
        self.feature_dim = dim
        self.linear = nn.Linear(in_features, dim)

    def forward(self, x):
        return self.linear(x.flatten(1))


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write ``array`` as a gzipped MNIST idx file of unsigned bytes (LeCun's format: two
    zero bytes, type 0x08, the number of dimensions, each dimension as a big-endian int32)."""
    header = bytes([0, 0, 8, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


def load_benchmark(name: str):
    """``benchmarks/<name>.py`` as the module ``name``, loaded once per test session: the
    scripts import each other by that name (``import fewshot_table``), so their folder goes
    on ``sys.path``, and dataclasses look their module up in ``sys.modules``."""
    benchmarks = Path(__file__).parents[1] / "benchmarks"
    if str(benchmarks) not in sys.path:
        sys.path.insert(0, str(benchmarks))
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, benchmarks / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]
