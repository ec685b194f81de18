"""T-Net and MT-Net (Lee & Choi, ICML 2018, "Gradient-Based Meta-Learning with Learned
Layerwise Metric and Subspace").

T-Net: every layer ``W`` of the model is followed by a meta-learned linear transform ``T``
(`metalab.nn.transform_layers`, initialised at the identity). The inner loop adapts only
the task-specific weights ``W`` (and biases); ``T`` is fixed within a task and learned by
the outer loop through the inner steps, like MAML's initialisation:

    W'_t = W - alpha * grad_W L(f_{W, T}; support_t)          (T not adapted)
    min_{W, T}  sum_t L(f_{W'_t, T}; query_t)

so the step on ``W`` is a gradient step in the metric ``T^T T`` of the layer's output.

MT-Net adds a meta-learned binary mask per layer over the output units that adapt
(`metalab.functional.unit_masks.UnitMasks`, drawn per task by Gumbel-softmax):
``W'_j = W_j - alpha m_j grad_{W_j} L``.

Differences from the paper said plainly: everything else of the backbone that is not a
``Conv2d``/``Linear`` weight (the batch-norm scales and shifts of `Conv4`) is meta-learned
and not adapted, as in the authors' TensorFlow code (built on MAML's, whose batch-norm
variables are outside the adapted weights). The transform of a convolution is a 1x1
convolution (a ``C_out x C_out`` matrix on the channels). The masks use the
straight-through (hard) relaxation at temperature ``mask_temperature``, and at meta-test
the deterministic mask ``1[zeta >= 0]``.
"""

from __future__ import annotations

from torch import nn

from metalab.algorithms.maml import MAML
from metalab.functional import SGD, Chain, UpdateRule
from metalab.functional.unit_masks import UnitMasks
from metalab.nn.transform_layers import (
    task_parameter_names,
    transformed_layers,
    with_transforms,
)


class TNet(MAML, name="tnet"):
    """MAML on ``with_transforms(model)`` adapting only the task layers' weights.

    Takes MAML's arguments except ``adapt`` (the task layers are the adapted set).
    """

    chooses_adapted_parameters = False

    def __init__(self, model: nn.Module, adapt: None = None, **kwargs) -> None:
        if adapt is not None:
            raise ValueError(f"{type(self).__name__} adapts the task layers' weights only; "
                             f"algorithm.adapt must be left out, got {adapt!r}")
        model = with_transforms(model)
        super().__init__(model, adapt=task_parameter_names(model), **kwargs)


class MTNet(TNet, name="mtnet"):
    """T-Net whose inner step is masked per output unit by learned Gumbel-softmax masks.

    Args:
        mask_init_logit: initial ``zeta`` of every unit (0: each adapts with probability 1/2).
        mask_temperature: the Gumbel-softmax temperature ``tau``.
        (the rest): `TNet`'s.
    """

    def __init__(self, model: nn.Module, mask_init_logit: float = 0.0,
                 mask_temperature: float = 1.0, **kwargs) -> None:
        if kwargs.get("strategy", "loop") != "loop":
            raise ValueError(f"mtnet draws random masks per task and supports "
                             f"strategy='loop' only, got {kwargs['strategy']!r}")
        self._mask_options = (float(mask_init_logit), float(mask_temperature))
        super().__init__(model, **kwargs)

    def default_rule(self) -> UpdateRule:
        layers = {}
        for path, module in transformed_layers(self.inner_module).items():
            for name, _ in module.layer.named_parameters():
                full_name = f"{path}.layer.{name}" if path else f"layer.{name}"
                layers[full_name] = (path or "layer", module.units)
        init_logit, temperature = self._mask_options
        return Chain(UnitMasks(layers, init_logit, temperature), SGD(self.inner_lr))

    @property
    def masks(self) -> UnitMasks:
        return self.update_rule.rules[0]
