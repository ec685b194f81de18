"""A learned optimizer: the coordinatewise LSTM of Andrychowicz et al. (2016), "Learning to
learn by gradient descent by gradient descent", as an update rule.

The optimizer ``m`` with parameters ``phi`` maps each coordinate's gradient to its step
(eq. 1 of the paper):

    theta_{t+1} = theta_t + g_t,     [g_t; h_{t+1}] = m(grad_t, h_t, phi)

``m`` is a two-layer LSTM (hidden size 20 in the paper) applied to every coordinate of
``theta`` separately, with the same weights for all coordinates and a hidden state per
coordinate; a linear layer maps its top hidden state to one number, scaled by
``output_scale`` (the paper: 0.1). Before the LSTM each gradient coordinate ``x`` is
preprocessed into two inputs (the paper's appendix A, ``p = 10``):

    (log|x| / p, sign(x))    if |x| >= e^{-p}
    (-1, e^p x)              otherwise

As a `metalab.functional.UpdateRule` the descent direction is ``d = -g_t`` (the rule
subtracts it), the state is the LSTM's ``(h1, c1, h2, c2)``, one row per coordinate of all
the adapted parameters concatenated, and ``phi`` are ordinary `nn.Parameter`s, so a
MAML-style method takes it as its inner rule (``MAML(model, update_rule=LSTMOptimizer())``)
and the ``l2o`` learner trains it. The gradients are the LSTM's *inputs*: with
``detach_gradients=True`` (the paper's choice, "dropping second derivatives") no
meta-gradient flows through them.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from metalab.functional.update_rules import Params, UpdateRule
from metalab.validation import check_positive_int, check_real

LSTMState = tuple[Tensor, Tensor, Tensor, Tensor]


def preprocess_gradients(grads: Tensor, p: float = 10.0) -> Tensor:
    """The paper's gradient preprocessing: ``[..., 2]`` inputs for ``grads [...]``.

    ``(log|x| / p, sign(x))`` where ``|x| >= exp(-p)``, else ``(-1, exp(p) x)``. The log is
    taken of ``max(|x|, exp(-p))`` so that the branch not chosen stays finite (and so does
    its gradient, when gradients are not detached).
    """
    threshold = math.exp(-p)
    magnitude = grads.abs()
    large = magnitude >= threshold
    log_part = torch.where(large, magnitude.clamp_min(threshold).log() / p,
                           torch.full_like(grads, -1.0))
    sign_part = torch.where(large, torch.sign(grads), grads * math.exp(p))
    return torch.stack([log_part, sign_part], dim=-1)


def flatten(tensors: Params) -> Tensor:
    """Every tensor of ``tensors`` flattened and concatenated, in the dict's order."""
    return torch.cat([t.reshape(-1) for t in tensors.values()])


def unflatten(flat: Tensor, like: Params) -> Params:
    """``flat`` cut into tensors of the shapes of ``like`` (the inverse of `flatten`)."""
    pieces = torch.split(flat, [t.numel() for t in like.values()])
    return {n: piece.reshape(t.shape) for (n, t), piece in zip(like.items(), pieces,
                                                                strict=True)}


class LSTMOptimizer(UpdateRule):
    """The coordinatewise two-layer LSTM optimizer (module docstring).

    Args:
        hidden_size: units of each LSTM layer (the paper: 20).
        preprocess: ``p`` of the gradient preprocessing (the paper: 10); ``None`` feeds
            the raw gradient as one input instead.
        output_scale: the factor on the LSTM's output (the paper: 0.1).
        detach_gradients: treat gradients as inputs only (no second derivatives).
    """

    def __init__(self, hidden_size: int = 20, preprocess: float | None = 10.0,
                 output_scale: float = 0.1, detach_gradients: bool = True) -> None:
        super().__init__()
        self.hidden_size = check_positive_int("hidden_size", hidden_size)
        self.preprocess = None if preprocess is None else check_real(
            "preprocess", preprocess, minimum=0.0, inclusive=False)
        self.output_scale = check_real("output_scale", output_scale)
        self.detach_gradients = bool(detach_gradients)
        inputs = 1 if self.preprocess is None else 2
        self.layer1 = nn.LSTMCell(inputs, self.hidden_size)
        self.layer2 = nn.LSTMCell(self.hidden_size, self.hidden_size)
        self.output = nn.Linear(self.hidden_size, 1)

    def init(self, params: Params) -> LSTMState:
        """Zero hidden and cell states of both layers, one row per coordinate."""
        like = next(iter(params.values()))
        rows = sum(p.numel() for p in params.values())
        zeros = torch.zeros(rows, self.hidden_size, dtype=like.dtype, device=like.device)
        return zeros, zeros, zeros, zeros

    def inputs(self, flat_grads: Tensor) -> Tensor:
        """The LSTM's inputs ``[N, 2]`` (or ``[N, 1]`` without preprocessing)."""
        if self.preprocess is None:
            return flat_grads.unsqueeze(-1)
        return preprocess_gradients(flat_grads, self.preprocess)

    def steps(self, flat_grads: Tensor, state: LSTMState) -> tuple[Tensor, LSTMState]:
        """``g_t`` (``[N]``, already scaled) and the next state for flat gradients ``[N]``."""
        h1, c1, h2, c2 = state
        if h1.shape[0] != flat_grads.shape[0]:
            raise ValueError(f"LSTMOptimizer state has {h1.shape[0]} coordinates but the "
                             f"gradients have {flat_grads.shape[0]}; call init(params) with "
                             f"the parameters it updates")
        if self.detach_gradients:
            flat_grads = flat_grads.detach()
        h1, c1 = self.layer1(self.inputs(flat_grads), (h1, c1))
        h2, c2 = self.layer2(h1, (h2, c2))
        return self.output_scale * self.output(h2).squeeze(-1), (h1, c1, h2, c2)

    def transform(self, grads: Params, state: LSTMState, params: Params
                  ) -> tuple[Params, LSTMState]:
        step, state = self.steps(flatten(grads), state)
        return unflatten(-step, grads), state

    def extra_repr(self) -> str:
        return (f"hidden_size={self.hidden_size}, preprocess={self.preprocess}, "
                f"output_scale={self.output_scale}, detach_gradients={self.detach_gradients}")


__all__ = ["LSTMOptimizer", "flatten", "preprocess_gradients", "unflatten"]
