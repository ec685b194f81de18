"""Optimizees: the small models a learned optimizer trains (Andrychowicz et al. 2016).

`OptimizeeMLP` covers both of the paper's problems:

- the 10-D quadratic ``f(theta) = ||W theta - y||^2`` is ``OptimizeeMLP(10, hidden=(),
  out_features=1, bias=False)`` on the rows of ``W`` (its weight is ``theta``);
- the MNIST classifier is one hidden layer of 20 sigmoid units (``hidden=(20,)``,
  ``activation="sigmoid"``); the paper's generalisation tests change the activation
  (ReLU) and the width.

``init_std`` draws weights from ``N(0, init_std^2)`` and biases at zero; ``None`` keeps
PyTorch's default initialisation. A learned optimizer starts every task from a fresh draw
(`reset_parameters`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from metalab.validation import check_choice, check_positive_int, check_real

ACTIVATIONS = {"sigmoid": nn.Sigmoid, "relu": nn.ReLU, "tanh": nn.Tanh}


class OptimizeeMLP(nn.Module):
    """A multilayer perceptron on flat inputs with a chosen activation (module docstring).

    Args:
        in_features: input size (784 for flattened MNIST, 10 for the quadratic's rows).
        hidden: hidden layer widths (``()``: a linear model).
        out_features: outputs (classes, or 1).
        activation: ``"sigmoid"`` (the paper), ``"relu"`` or ``"tanh"``.
        bias: whether the layers have biases (the quadratic has none).
        init_std: weights ``~ N(0, init_std^2)`` (the paper's quadratic: 0.01); ``None``:
            PyTorch's default initialisation.
    """

    def __init__(self, in_features: int = 784, hidden: Sequence[int] = (20,),
                 out_features: int = 10, activation: str = "sigmoid", bias: bool = True,
                 init_std: float | None = None) -> None:
        super().__init__()
        check_choice("activation", activation, sorted(ACTIVATIONS))
        self.init_std = None if init_std is None else check_real("init_std", init_std)
        layers: list[nn.Module] = []
        width = check_positive_int("in_features", in_features)
        for size in hidden:
            layers += [nn.Linear(width, check_positive_int("hidden", size), bias=bias),
                       ACTIVATIONS[activation]()]
            width = size
        layers.append(nn.Linear(width, check_positive_int("out_features", out_features),
                                bias=bias))
        self.layers = nn.Sequential(*layers)
        self.reset_parameters()

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """A fresh initialisation (``init_std`` or PyTorch's default)."""
        for layer in self.layers:
            if not isinstance(layer, nn.Linear):
                continue
            if self.init_std is None:
                layer.reset_parameters()
                continue
            with torch.no_grad():
                layer.weight.normal_(0.0, self.init_std, generator=generator)
                if layer.bias is not None:
                    layer.bias.zero_()

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x.flatten(start_dim=1) if x.dim() > 2 else x)


__all__ = ["ACTIVATIONS", "OptimizeeMLP"]
