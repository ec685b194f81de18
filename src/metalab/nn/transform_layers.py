"""Meta-learned linear transforms after the layers of a network (T-Net, Lee & Choi 2018;
also WarpGrad's linear warp layers, Flennerhag et al. 2020).

`with_transforms(model)` replaces every `nn.Conv2d` and `nn.Linear` of ``model`` by
`Transformed(layer)`: the layer's output followed by a square matrix ``T`` acting on its
channels (output units),

    y = T (W x + b)          for a linear layer,  and a 1x1 convolution by T for a conv,

``T`` initialised at the identity, so the wrapped network computes the same function.
The layer's parameters (``<path>.layer.weight``, ``.bias``) are the task-specific weights
an inner loop adapts; ``T`` (``<path>.transform.weight``) is meta-learned only. A gradient
step on ``W`` under a fixed ``T`` is a step in the metric ``T^T T`` on the layer's output
(Lee & Choi 2018, section 4.1), which is how ``T`` shapes the update.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ChannelTransform(nn.Module):
    """``T`` applied to dimension 1 (channels of ``[N, C, ...]``, features of ``[N, C]``)."""

    def __init__(self, channels: int, like: Tensor | None = None) -> None:
        super().__init__()
        options = {} if like is None else {"dtype": like.dtype, "device": like.device}
        self.weight = nn.Parameter(torch.eye(channels, **options))

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 2:
            return F.linear(x, self.weight)
        if x.dim() == 4:  # a 1x1 convolution (oneDNN's kernel; keeps channels-last inputs)
            return F.conv2d(x, self.weight[:, :, None, None])
        return torch.einsum("oc,nc...->no...", self.weight, x)

    def extra_repr(self) -> str:
        return f"channels={self.weight.shape[0]}"


class Transformed(nn.Module):
    """``transform(layer(x))``: a task layer and the meta-learned transform of its output."""

    def __init__(self, layer: nn.Conv2d | nn.Linear) -> None:
        super().__init__()
        units = layer.out_channels if isinstance(layer, nn.Conv2d) else layer.out_features
        self.layer = layer
        self.transform = ChannelTransform(units, layer.weight)

    @property
    def units(self) -> int:
        return self.transform.weight.shape[0]

    def forward(self, x: Tensor) -> Tensor:
        return self.transform(self.layer(x))


def with_transforms(model: nn.Module) -> nn.Module:
    """``model`` with each `nn.Conv2d` and `nn.Linear` wrapped in `Transformed` (in place;
    returned for convenience). A model with neither is an error."""
    if isinstance(model, (nn.Conv2d, nn.Linear)):
        return Transformed(model)
    found = _wrap_children(model)
    if not found:
        raise ValueError(f"with_transforms needs a model with nn.Conv2d or nn.Linear layers; "
                         f"{type(model).__name__} has none")
    return model


def _wrap_children(module: nn.Module) -> int:
    count = 0
    for name, child in module.named_children():
        if isinstance(child, Transformed):
            count += 1
        elif isinstance(child, (nn.Conv2d, nn.Linear)):
            setattr(module, name, Transformed(child))
            count += 1
        else:
            count += _wrap_children(child)
    return count


def transformed_layers(model: nn.Module) -> dict[str, Transformed]:
    """Every `Transformed` module of ``model`` by its path (``""`` for the model itself)."""
    return {n: m for n, m in model.named_modules() if isinstance(m, Transformed)}


def _joined(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def task_parameter_names(model: nn.Module) -> list[str]:
    """The wrapped layers' own parameters (``<path>.layer.weight``, ``.bias``)."""
    return [_joined(path, "layer." + n) for path, m in transformed_layers(model).items()
            for n, _ in m.layer.named_parameters()]


def transform_parameter_names(model: nn.Module) -> list[str]:
    """The transforms' parameters (``<path>.transform.weight``)."""
    return [_joined(path, "transform.weight") for path in transformed_layers(model)]


__all__ = ["ChannelTransform", "Transformed", "task_parameter_names",
           "transform_parameter_names", "transformed_layers", "with_transforms"]
