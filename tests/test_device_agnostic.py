"""The code paths are device-agnostic: nothing inside a meta-training step creates a tensor on
the CPU by default, and the trainer moves the model, batch and optimizer state together.

No GPU is needed. A tensor factory (``torch.zeros``, ``arange``, ``randperm``, ...) called
without ``device=`` inside the step is the bug that works on CPU and fails (or silently
copies every step) on CUDA; the recorder below finds each such call and names the line.
"""

from __future__ import annotations

import traceback
from pathlib import Path

import pytest
import torch
from torch.overrides import TorchFunctionMode

from metalab.train.build import build_meta_learner, complete_model_config
from metalab.train.config import load_config
from metalab.train.sources import build_task_source

CONFIGS = sorted((Path(__file__).parents[1] / "src" / "metalab" / "configs").glob("*.yaml"))
FACTORIES = {torch.zeros, torch.ones, torch.empty, torch.full, torch.arange, torch.eye,
             torch.randn, torch.rand, torch.randint, torch.randperm, torch.tensor,
             torch.linspace, torch.as_tensor}


class DefaultDeviceFactoryCalls(TorchFunctionMode):
    """Records ``(factory, file:line)`` for every factory call that leaves ``device`` unset."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, str]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in FACTORIES and kwargs.get("device") is None:
            frames = [f for f in traceback.extract_stack() if "/src/metalab/" in f.filename]
            last = frames[-1] if frames else None
            where = f"{last.filename.split('/src/')[-1]}:{last.lineno}" if last else "?"
            self.calls.append((func.__name__, where))
        return func(*args, **kwargs)


def embedded_configs() -> list[Path]:
    """Shipped configs whose data needs no files (the embedded datasets and task families)."""
    chosen = []
    for path in CONFIGS:
        data = load_config(path)["data"]
        if "root" not in data:
            chosen.append(path)
    return chosen


def one_training_batch(config):
    source = build_task_source(config, "train", tasks_per_batch=2, seed=0)
    while hasattr(source, "ready") and not source.ready():  # a task stream: let data arrive
        source.stream.advance()
    return source.sample()


def assert_step_creates_no_default_device_tensor(path: Path) -> None:
    config = complete_model_config(load_config(path, ["train.meta_batch=2"]))
    learner = build_meta_learner(config)
    batch = one_training_batch(config)
    with DefaultDeviceFactoryCalls() as recorder:
        learner.meta_backward(batch)
    assert not recorder.calls, f"tensors created without device= in the step: {recorder.calls}"


FAST = ["maml-glyphs-5w1s", "protonet-glyphs-5w1s", "snail-glyphs-5w1s", "mann-glyphs-5w",
        "metanet-glyphs-5w1s", "warpgrad-glyphs-5w1s", "arm-cml-rotated-digits", "cnp-sinusoid"]


@pytest.mark.parametrize("name", FAST)
def test_the_main_methods_create_no_default_device_tensor_in_a_step(name):
    assert_step_creates_no_default_device_tensor(
        next(path for path in CONFIGS if path.stem == name))


@pytest.mark.slow
@pytest.mark.parametrize("path", [p for p in embedded_configs() if p.stem not in FAST],
                         ids=lambda p: p.stem)
def test_every_embedded_config_creates_no_default_device_tensor_in_a_step(path):
    assert_step_creates_no_default_device_tensor(path)


def test_the_recorder_names_a_default_device_factory_call():
    with DefaultDeviceFactoryCalls() as recorder:
        torch.zeros(3)
        torch.zeros(3, device="cpu")
    assert [name for name, _ in recorder.calls] == ["zeros"]


def test_the_trainer_moves_model_batch_and_optimizer_state_together(tmp_path):
    """``train.dtype`` goes through the same ``.to`` calls as ``train.device``: after a step
    in float64, every parameter, gradient and optimizer state tensor is float64."""
    from metalab.train.run import train_run

    config = load_config(CONFIGS[[p.stem for p in CONFIGS].index("maml-glyphs-5w1s")],
                         ["train.steps=1", "train.meta_batch=1", "train.dtype=float64",
                          "train.val_every=0", "train.progress=false"])
    trainer = train_run(config, tmp_path / "run")
    tensors = [*trainer.learner.parameters(), *(p.grad for p in trainer.learner.parameters()
                                                if p.grad is not None)]
    # Adam's ``step`` counter is a float32 scalar by torch's design (kept on the CPU)
    tensors += [value for state in trainer.optimizer.state.values()
                for key, value in state.items() if torch.is_tensor(value) and key != "step"]
    assert tensors and {t.dtype for t in tensors} == {torch.float64}
    batch = trainer.source.sample().to(trainer.device, trainer.dtype)
    assert batch.support_x.dtype == torch.float64
