"""Fast weights generated from gradients, and layers that add them to slow weights.

The parts of Meta Networks (Munkhdalai & Yu, ICML 2017) that are not specific to the method:

- `log_and_sign`: the gradient preprocessing of Andrychowicz et al. (2016, appendix A),
  which Meta Networks feeds to its weight generators:

      g -> (log|g| / p, sign(g))   if |g| >= exp(-p)
      g -> (-1, exp(p) * g)        otherwise;

- `CoordinateMLP` (the example-level generator ``m``) and `CoordinateLSTM` (the task-level
  generator ``d``): networks applied to each coordinate of a weight tensor independently,
  so one small network produces a fast weight for every slow weight of any shape;
- `augmented_block` / `mixed_linear`: layer augmentation (section 3.3): a layer's output is
  the sum of the layer applied with its slow weights and with its fast weights,
  ``h = a(W x) + a(W* x)``, where ``W*`` may differ per input (each query has its own mix of
  the support examples' fast weights, ``W*_q = sum_i a_qi W*_i``). A convolution is linear
  in its weight, so ``conv(x_q, sum_i a_qi W*_i) = sum_i a_qi conv(x_q, W*_i)``: one
  convolution with the N fast kernels stacked gives every query's output at once.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def log_and_sign(gradient: Tensor, p: float = 7.0) -> Tensor:
    """``[..., 2]``: each entry of ``gradient`` preprocessed as in the module doc."""
    magnitude = gradient.abs()
    large = magnitude >= math.exp(-p)
    log_part = torch.where(large, torch.log(magnitude.clamp_min(math.exp(-p))) / p,
                           torch.full_like(gradient, -1.0))
    sign_part = torch.where(large, torch.sign(gradient), math.exp(p) * gradient)
    return torch.stack((log_part, sign_part), dim=-1)


class CoordinateMLP(nn.Module):
    """``m``: preprocessed gradient ``[..., 2]`` -> fast weight ``[...]``, per coordinate
    (two ReLU layers of ``hidden`` units and a linear output, as in the released code)."""

    def __init__(self, hidden: int = 20) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, hidden), nn.ReLU(), nn.Linear(hidden, hidden),
                                 nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, preprocessed: Tensor) -> Tensor:
        return self.net(preprocessed).squeeze(-1)


class CoordinateLSTM(nn.Module):
    """``d``: a sequence of preprocessed gradients ``[T, C, 2]`` (T support chunks, C
    coordinates) -> task-level fast weights ``[C]``: an LSTM cell run over the T steps for
    every coordinate, its last hidden state mapped linearly to one number."""

    def __init__(self, hidden: int = 20) -> None:
        super().__init__()
        self.cell = nn.LSTMCell(2, hidden)
        self.out = nn.Linear(hidden, 1)

    def forward(self, sequence: Tensor) -> Tensor:
        h = c = sequence.new_zeros(sequence.shape[1], self.cell.hidden_size)
        for step in sequence:
            h, c = self.cell(step, (h, c))
        return self.out(h).squeeze(-1)


def mixed_conv(conv: nn.Conv2d, x: Tensor, fast: Tensor, mix: Tensor | None) -> Tensor:
    """``conv`` applied to ``x [Q, C, H, W]`` with the fast kernels ``fast`` in place of its
    weight: one kernel for every input (``mix=None``, ``fast`` shaped like the weight) or,
    for input q, ``sum_i mix[q, i] * fast[i]`` (``fast [N, *weight.shape]``, ``mix [Q, N]``
    rows summing to 1, so the bias is added once)."""
    if mix is None:
        return conv._conv_forward(x, fast, conv.bias)
    n, out_channels = fast.shape[0], fast.shape[1]
    stacked = conv._conv_forward(x, fast.reshape(n * out_channels, *fast.shape[2:]), None)
    per_kernel = stacked.unflatten(1, (n, out_channels))
    out = torch.einsum("qn,qnchw->qchw", mix, per_kernel)
    return out if conv.bias is None else out + conv.bias.view(1, -1, 1, 1)


def mixed_linear(x: Tensor, fast: Tensor, mix: Tensor | None) -> Tensor:
    """``x [Q, D_in] @ W*^T`` with ``W* = fast`` (``mix=None``) or, for row q,
    ``W*_q = sum_i mix[q, i] * fast[i]``."""
    if mix is None:
        return x @ fast.T
    return torch.einsum("qd,qn,nod->qo", x, mix, fast)


def augmented_block(block: nn.Sequential, x: Tensor, fast: Tensor, mix: Tensor | None
                    ) -> Tensor:
    """Layer augmentation of a convolution block ``[Conv2d, *rest]``:
    ``rest(conv(x; W)) + rest(conv(x; W*))`` (``rest``: normalisation, pooling, ReLU)."""
    conv, rest = block[0], block[1:]
    return rest(conv(x)) + rest(mixed_conv(conv, x, fast, mix))
