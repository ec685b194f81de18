"""MT-Net's learned masks: which output units of a layer adapt (Lee & Choi 2018, sec. 4.2).

Each masked layer ``l`` has meta-learned logits ``zeta_l`` (one per output unit). A task
draws one binary mask per layer, ``m_j ~ Bernoulli(sigmoid(zeta_j))``, with the
Gumbel-softmax (binary Concrete) relaxation so that ``zeta`` gets a gradient:

    s_j = sigmoid((zeta_j + log u_j - log(1 - u_j)) / tau),    u_j ~ Uniform(0, 1)
    m_j = 1[s_j > 1/2] + (s_j - stopgrad(s_j))                 (straight-through)

(a two-class Gumbel-softmax over {adapt, keep} with logits ``(zeta_j, 0)`` is the same
thing). The inner step on the unit's weights (the row ``j`` of ``W`` and the bias ``b_j``)
is multiplied by ``m_j``: ``W_j <- W_j - alpha m_j grad_{W_j} L``, so a unit with ``m_j = 0``
keeps its meta-learned weights. The mask is drawn once per task (`init`) and used for every
inner step. The forward values are exactly 0 or 1 (straight-through, hard); in evaluation
mode (``rule.eval()``) the mask is deterministic, ``m_j = 1[sigmoid(zeta_j) >= 1/2]``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from metalab.functional.update_rules import Params, State, UpdateRule, parameter_key
from metalab.validation import check_real


class UnitMasks(UpdateRule):
    """``d = m o g``: the directions of each masked layer's units multiplied by its mask.

    Args:
        layers: ``{parameter name: (layer key, number of units)}``: the parameters whose
            leading dimension indexes a layer's output units, and the layer they belong to
            (a weight and its bias share one mask). Other parameters pass unmasked.
        init_logit: every ``zeta``'s initial value (0: each unit adapts with probability 1/2).
        temperature: the relaxation's ``tau``.
    """

    def __init__(self, layers: dict[str, tuple[str, int]], init_logit: float = 0.0,
                 temperature: float = 1.0) -> None:
        super().__init__()
        self.layer_of = {name: key for name, (key, _) in layers.items()}
        units = {key: count for key, count in layers.values()}
        self.logits = nn.ParameterDict({
            parameter_key(key): nn.Parameter(torch.full((count,), float(init_logit)))
            for key, count in units.items()})
        self.temperature = check_real("mask_temperature", temperature, minimum=0.0,
                                      inclusive=False)

    def sample(self, logits: Tensor) -> Tensor:
        """One mask of the units of a layer with ``logits`` (see the module doc)."""
        if not self.training:
            return (logits >= 0).to(logits.dtype)
        u = torch.rand_like(logits).clamp(1e-10, 1 - 1e-10)
        soft = torch.sigmoid((logits + torch.log(u) - torch.log1p(-u)) / self.temperature)
        hard = (soft > 0.5).to(soft.dtype)
        return hard + (soft - soft.detach())  # exactly 0 or 1, with the gradient of soft

    def init(self, params: Params) -> dict[str, Tensor]:
        like = next(iter(params.values()))
        return {key: self.sample(logits.to(like.dtype)) for key, logits in self.logits.items()}

    def transform(self, grads: Params, state: State, params: Params) -> tuple[Params, State]:
        directions = {}
        for name, g in grads.items():
            layer = self.layer_of.get(name)
            if layer is None:
                directions[name] = g
                continue
            mask = state[parameter_key(layer)]
            directions[name] = mask.reshape(-1, *([1] * (g.dim() - 1))) * g
        return directions, state

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"


__all__ = ["UnitMasks"]
