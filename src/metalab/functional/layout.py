"""Memory layout helpers for the execution strategies."""

from __future__ import annotations

import torch
from torch import Tensor


def to_channels_last(x: Tensor) -> Tensor:
    """A 4-D ``(N, C, H, W)`` tensor in channels-last (NHWC) memory layout, same values.

    With one channel, ``x.contiguous(memory_format=torch.channels_last)`` returns the NCHW
    tensor unchanged (its strides fit both layouts) and a convolution then stays NCHW, so
    the strides are set explicitly: the first convolution runs NHWC as well. Tensors of
    another rank are returned unchanged.
    """
    if x.dim() != 4:
        return x
    n, c, h, w = x.shape
    if c == 1 and x.is_contiguous():
        return x.as_strided((n, c, h, w), (h * w, 1, w, 1))
    return x.contiguous(memory_format=torch.channels_last)
