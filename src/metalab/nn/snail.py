"""SNAIL's sequence network (Mishra et al., ICLR 2018): temporal convolutions and causal
attention over a sequence of steps, every output depending on its step and the earlier ones.

Sequences are ``[B, T, C]`` (batch, steps, channels); each block appends channels:

- `DenseBlock` (dilation d, D filters), the paper's gated activation of two dilated causal
  convolutions of kernel 2, concatenated to its input::

      a_t = tanh(W_f * x)_t  *  sigmoid(W_g * x)_t,     (W * x)_t = W_0 x_{t-d} + W_1 x_t + b

  (``x_{t-d} = 0`` for ``t < d``);
- `TCBlock` (sequence length T, D filters), dense blocks of dilations 1, 2, 4, ...,
  ``2^(L-1)`` with ``L = ceil(log2 T)``: the receptive field ``2^L >= T`` covers the whole
  sequence. (The paper's pseudo-code lists dilations ``2^1 .. 2^L``; starting at ``2^0`` the
  first layer also reaches the step just before.)
- `AttentionBlock` (key size K, value size V), single-head causal soft attention whose read
  is concatenated to its input::

      q, k, v = x W_q, x W_k, x W_v,    read_t = sum_{s <= t} softmax_s(q_t . k_s / sqrt(K)) v_s

`SNAILNet` stacks them as the paper's Omniglot model: attention(64, 32), TC(T, 128),
attention(256, 128), TC(T, 128), attention(512, 256), then a 1x1 convolution (a linear map
per step) to the class logits. ``filters``, ``key_sizes`` and ``value_sizes`` scale it down.

Shared prefix: since every block is causal, the activations of a prefix do not depend on
what follows it. `SNAILNet.last_step_after` runs a prefix of P steps through the stack once
and then only the step after it, for B different last steps at once: the output at step P
of each sequence ``[prefix, last_b]``, the same numbers as ``net(sequences)[:, -1]`` with
``P + B`` steps of work instead of ``B (P + 1)``. Each block gives this through its
``last_step_after(prefix, last) -> (prefix_out, last_out)``, ``prefix [P, C]`` (one
sequence, no batch dimension) and ``last [B, C]``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metalab.validation import check_positive_int


def causal_conv1d(x: Tensor, weight: Tensor, bias: Tensor | None, dilation: int) -> Tensor:
    """Dilated causal convolution of ``x [B, C, T]``: output step t reads inputs
    ``t - (k - 1) d, ..., t - d, t`` (zeros before the start)."""
    pad = (weight.shape[-1] - 1) * dilation
    return F.conv1d(F.pad(x, (pad, 0)), weight, bias, dilation=dilation)


class CausalConv1d(nn.Conv1d):
    """`torch.nn.Conv1d` (kernel 2 by default) made causal by left padding, on ``[B, T, C]``."""

    def __init__(self, in_channels: int, out_channels: int, dilation: int,
                 kernel_size: int = 2) -> None:
        super().__init__(in_channels, out_channels, kernel_size, dilation=dilation)

    def forward(self, x: Tensor) -> Tensor:
        out = causal_conv1d(x.transpose(1, 2), self.weight, self.bias, self.dilation[0])
        return out.transpose(1, 2)

    def last_output(self, prefix: Tensor, last: Tensor) -> Tensor:
        """``[B, out]``: the output at step P of each sequence ``[prefix (P steps), last_b]``::

            y_P = b + W_{k-1} last + sum_{j < k-1} W_j prefix_{P - (k-1-j) d}

        (terms with ``P - (k-1-j) d < 0`` read the zero padding); the prefix terms are
        computed once and broadcast over the B last steps."""
        kernel, dilation, steps = self.weight.shape[-1], self.dilation[0], prefix.shape[-2]
        out = F.linear(last, self.weight[:, :, -1], self.bias)
        for j in range(kernel - 1):
            s = steps - (kernel - 1 - j) * dilation
            if s >= 0:
                out = out + F.linear(prefix[s], self.weight[:, :, j])
        return out


class DenseBlock(nn.Module):
    """``[x, tanh(conv_f(x)) * sigmoid(conv_g(x))]``: ``filters`` channels appended."""

    def __init__(self, in_channels: int, filters: int, dilation: int) -> None:
        super().__init__()
        self.filter_conv = CausalConv1d(in_channels, filters, dilation)
        self.gate_conv = CausalConv1d(in_channels, filters, dilation)
        self.out_channels = in_channels + filters

    def forward(self, x: Tensor) -> Tensor:
        activation = torch.tanh(self.filter_conv(x)) * torch.sigmoid(self.gate_conv(x))
        return torch.cat((x, activation), dim=-1)

    def last_step_after(self, prefix: Tensor, last: Tensor) -> tuple[Tensor, Tensor]:
        """``(self(prefix), output at the step after it for each of last [B, C])``."""
        activation = (torch.tanh(self.filter_conv.last_output(prefix, last))
                      * torch.sigmoid(self.gate_conv.last_output(prefix, last)))
        return self(prefix.unsqueeze(0)).squeeze(0), torch.cat((last, activation), dim=-1)


def tc_dilations(sequence_length: int) -> list[int]:
    """``1, 2, ..., 2^(L-1)`` with ``L = ceil(log2 T)`` (at least one layer)."""
    layers = max(1, math.ceil(math.log2(check_positive_int("sequence_length",
                                                           sequence_length))))
    return [2 ** i for i in range(layers)]


class TCBlock(nn.Sequential):
    """Dense blocks of growing dilation whose receptive field spans ``sequence_length``."""

    def __init__(self, in_channels: int, sequence_length: int, filters: int) -> None:
        blocks = []
        for dilation in tc_dilations(sequence_length):
            blocks.append(DenseBlock(in_channels, filters, dilation))
            in_channels = blocks[-1].out_channels
        super().__init__(*blocks)
        self.out_channels = in_channels

    def last_step_after(self, prefix: Tensor, last: Tensor) -> tuple[Tensor, Tensor]:
        """The dense blocks' `DenseBlock.last_step_after` in turn."""
        return last_step_through(self, prefix, last)


def last_step_through(blocks: nn.Sequential, prefix: Tensor, last: Tensor
                      ) -> tuple[Tensor, Tensor]:
    """Blocks that each have ``last_step_after``, applied in order to ``(prefix, last)``."""
    for block in blocks:
        prefix, last = block.last_step_after(prefix, last)
    return prefix, last


def causal_mask(steps: int, device: torch.device | None = None) -> Tensor:
    """``[T, T]`` booleans, True where step t may attend to step s (``s <= t``)."""
    return torch.ones(steps, steps, dtype=torch.bool, device=device).tril()


class AttentionBlock(nn.Module):
    """``[x, read]`` with ``read`` the causal attention of ``value_size`` channels."""

    def __init__(self, in_channels: int, key_size: int, value_size: int) -> None:
        super().__init__()
        self.query = nn.Linear(in_channels, key_size)
        self.key = nn.Linear(in_channels, key_size)
        self.value = nn.Linear(in_channels, value_size)
        self.key_size = key_size
        self.out_channels = in_channels + value_size

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat((x, self._causal_read(self.query(x), self.key(x), self.value(x))),
                         dim=-1)

    def _causal_read(self, queries: Tensor, keys: Tensor, values: Tensor) -> Tensor:
        logits = queries @ keys.transpose(-1, -2) / math.sqrt(self.key_size)
        allowed = causal_mask(keys.shape[-2], keys.device)
        logits = logits.masked_fill(~allowed, float("-inf"))
        return torch.softmax(logits, dim=-1) @ values

    def last_step_after(self, prefix: Tensor, last: Tensor) -> tuple[Tensor, Tensor]:
        """``(self(prefix), [last, read_P])`` for each of ``last [B, C]``: the step after
        the prefix attends to the P prefix keys (computed once) and to its own::

            read_P = sum_{s <= P} softmax_s(q_P . k_s / sqrt(K)) v_s,   k_P, v_P from last_b
        """
        keys, values = self.key(prefix), self.value(prefix)
        prefix_out = torch.cat((prefix, self._causal_read(self.query(prefix), keys, values)),
                               dim=-1)
        query = self.query(last)
        logits = torch.cat((query @ keys.transpose(-1, -2),
                            (query * self.key(last)).sum(-1, keepdim=True)), dim=-1)
        weights = torch.softmax(logits / math.sqrt(self.key_size), dim=-1)
        read = weights[:, :-1] @ values + weights[:, -1:] * self.value(last)
        return prefix_out, torch.cat((last, read), dim=-1)


class SNAILNet(nn.Module):
    """The paper's Omniglot stack over ``in_channels``-wide steps, ``[B, T, ways]`` logits.

    Args:
        in_channels: channels of a step (embedding dimension + ``ways`` label channels).
        ways: classes (the output size).
        sequence_length: T, the longest sequence (support size + 1); sets the TC depth.
        filters: D of each dense block (128 in the paper).
        key_sizes, value_sizes: of the three attention blocks ((64, 256, 512) and
            (32, 128, 256) in the paper).
    """

    def __init__(self, in_channels: int, ways: int, sequence_length: int, filters: int = 128,
                 key_sizes: Sequence[int] = (64, 256, 512),
                 value_sizes: Sequence[int] = (32, 128, 256)) -> None:
        super().__init__()
        if len(key_sizes) != 3 or len(value_sizes) != 3:
            raise ValueError(f"key_sizes and value_sizes must have 3 entries (one per "
                             f"attention block), got {list(key_sizes)} and {list(value_sizes)}")
        check_positive_int("filters", filters)
        blocks: list[nn.Module] = []
        channels = in_channels
        for i in range(3):
            blocks.append(AttentionBlock(channels, key_sizes[i], value_sizes[i]))
            channels = blocks[-1].out_channels
            if i < 2:
                blocks.append(TCBlock(channels, sequence_length, filters))
                channels = blocks[-1].out_channels
        self.blocks = nn.Sequential(*blocks)
        self.output = nn.Linear(channels, check_positive_int("ways", ways))

    def forward(self, steps: Tensor) -> Tensor:
        """``steps [B, T, in_channels]`` to logits ``[B, T, ways]``."""
        return self.output(self.blocks(steps))

    def last_step_after(self, prefix: Tensor, last_steps: Tensor) -> Tensor:
        """Logits ``[B, ways]`` at the last step of each sequence ``[prefix, last_steps[b]]``.

        ``prefix [P, in_channels]`` is shared by the B sequences and goes through each block
        once; ``last_steps [B, in_channels]``. Equal to
        ``self(cat(prefix expanded to B, last_steps[:, None]))[:, -1]`` (the network is
        causal), gradients included.
        """
        if prefix.dim() != 2 or last_steps.dim() != 2 or prefix.shape[1] != last_steps.shape[1]:
            raise ValueError(f"prefix must be [P, C] and last_steps [B, C] with the same C, "
                             f"got {tuple(prefix.shape)} and {tuple(last_steps.shape)}")
        if len(prefix) == 0:  # nothing to share (and a convolution cannot run on 0 steps)
            return self(last_steps[:, None])[:, -1]
        return self.output(last_step_through(self.blocks, prefix, last_steps)[1])
