"""Models: backbones with a ``body`` and a ``head``, and per-task batch norm."""

from __future__ import annotations

from metalab.nn.backbones import MLP, Conv4
from metalab.nn.norm import TaskBatchNorm

MODELS = {"conv4": Conv4, "mlp": MLP}


def build_model(name: str, **kwargs):
    """Construct a registered model by name (``conv4``, ``mlp``)."""
    if name not in MODELS:
        raise ValueError(f"model.name must be one of {sorted(MODELS)}, got {name!r}")
    return MODELS[name](**kwargs)


__all__ = ["MLP", "MODELS", "Conv4", "TaskBatchNorm", "build_model"]
