"""Models: backbones with a ``body`` and a ``head``, per-task batch norm, multi-task models,
the ARM networks, the MSR layers and
the Relation Networks modules; `build_model` builds any of them from a config."""

from __future__ import annotations

from typing import Any

from metalab.nn.arm import ARMConvNet, ContextNet, LearnedLoss
from metalab.nn.backbones import MLP, BodyHead, Conv4
from metalab.nn.msr import (
    KroneckerMSRConv2d,
    LocallyConnected1d,
    MSRConv2d,
    MSRLinear,
    conv_classifier,
    inner_parameter_names,
    rotation_model,
    translation_model,
)
from metalab.nn.multitask import (
    FiLM,
    FiLMNet,
    MultiHead,
    film_conv,
    film_lenet,
    multi_head_conv,
    multi_head_lenet,
)
from metalab.nn.neural_process import MultiHeadCrossAttention, NeuralProcessNet
from metalab.nn.norm import TaskBatchNorm
from metalab.nn.optimizees import OptimizeeMLP
from metalab.nn.relation import RelationEmbedding, RelationModule
from metalab.nn.resnet12 import DropBlock, ResNet12
from metalab.nn.resnet18 import ResNet18
from metalab.rl.pearl_agent import PEARLAgent
from metalab.rl.policies import GaussianMLPPolicy
from metalab.rl.recurrent import GRUGaussianPolicy
from metalab.validation import check_choice


def body_head(body: dict[str, Any], head: dict[str, Any]) -> BodyHead:
    """`BodyHead` of two registered models, each given as ``{name: ..., option: ...}``."""
    parts = []
    for part, spec in (("body", body), ("head", head)):
        if not isinstance(spec, dict) or "name" not in spec:
            raise ValueError(f"model.{part} must be a mapping with a name, got {spec!r}")
        options = dict(spec)
        parts.append(build_model(options.pop("name"), **options))
    return BodyHead(*parts)


MODELS = {
    "conv4": Conv4,
    "resnet12": ResNet12,
    "resnet18": ResNet18,
    "mlp": MLP,
    "body-head": body_head,
    "arm-convnet": ARMConvNet,
    "multi-head-lenet": multi_head_lenet,
    "multi-head-conv": multi_head_conv,
    "film-lenet": film_lenet,
    "film-conv": film_conv,
    "translation": translation_model,
    "rotation": rotation_model,
    "conv-classifier": conv_classifier,
    "relation-embedding": RelationEmbedding,
    "neural-process": NeuralProcessNet,
    "optimizee-mlp": OptimizeeMLP,
    "gaussian-mlp-policy": GaussianMLPPolicy,
    "gru-gaussian-policy": GRUGaussianPolicy,
    "pearl-agent": PEARLAgent,
}


def build_model(name: str, **kwargs):
    """Construct a registered model by name (see ``MODELS``)."""
    check_choice("model.name", name, sorted(MODELS))
    return MODELS[name](**kwargs)


__all__ = [
    "MLP",
    "MODELS",
    "ARMConvNet",
    "BodyHead",
    "ContextNet",
    "Conv4",
    "DropBlock",
    "FiLM",
    "FiLMNet",
    "KroneckerMSRConv2d",
    "LearnedLoss",
    "LocallyConnected1d",
    "MSRConv2d",
    "OptimizeeMLP",
    "MSRLinear",
    "MultiHeadCrossAttention",
    "NeuralProcessNet",
    "MultiHead",
    "RelationEmbedding",
    "RelationModule",
    "ResNet12",
    "ResNet18",
    "TaskBatchNorm",
    "body_head",
    "build_model",
    "conv_classifier",
    "film_conv",
    "film_lenet",
    "inner_parameter_names",
    "multi_head_conv",
    "multi_head_lenet",
    "rotation_model",
    "translation_model",
]
