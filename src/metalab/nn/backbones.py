"""Backbones. Every model has a ``body`` (features) and a ``head`` (the last layer), so
methods that adapt only the head (ANIL) or use only the features (ProtoNet) can split it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from metalab.nn.norm import BATCH_NORMS, batch_norm_2d, is_vmapped
from metalab.nn.pool import MaxPool2d
from metalab.validation import check_choice


def _conv_block(in_channels: int, out_channels: int, norm: str = "task") -> nn.Sequential:
    # Pooling before the ReLU gives the same values and gradients as ReLU then pooling
    # (ReLU is monotone, so it commutes with the max), with the ReLU on 4x fewer elements.
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
        batch_norm_2d(norm, out_channels),
        MaxPool2d(2),
        nn.ReLU(),
    )


class Conv4(nn.Module):
    """Four [3x3 conv, batch norm, ReLU, 2x2 max-pool] blocks and a linear head.

    The backbone of the MAML (Finn et al. 2017) and Prototypical Networks (Snell et al.
    2017) experiments: 64 filters on 28x28 Omniglot, 32 filters on 84x84 miniImageNet.
    Batch norm is transductive per task (`TaskBatchNorm`, ``norm="task"``, the default), or
    ordinary `torch.nn.BatchNorm2d` with running statistics (``norm="batch"``: for methods
    that do not adapt, such as the pretrained-embedding baselines). ``hidden`` is the width
    (64 filters, or 32 ...). With ``out_features=None`` the
    head is the identity and the model returns the flattened features (an embedding).
    Each block pools before its ReLU, which computes the same function with the same
    gradients, and pools with `metalab.nn.pool.MaxPool2d` (the same results as
    `torch.nn.MaxPool2d`, faster on CPU NCHW tensors).
    ``channels_last=True`` runs the convolutions in NHWC layout. On CPU it sped up
    first-order passes (ProtoNet, ANIL's body: x1.38, measured before the faster NCHW
    pooling) but slows the second-order double backward of MAML (x0.9), hence off by
    default; results are the same either way. ``outer_channels_last`` tells `MAML` that
    its query pass, which is differentiated only once, may run NHWC (faster on CPU, x1.2
    per meta-iteration measured) while the twice-differentiated support pass stays NCHW.
    """

    outer_channels_last = True

    def __init__(self, in_channels: int = 1, hidden: int = 64, out_features: int | None = 5,
                 image_size: int = 28, channels_last: bool = False,
                 norm: str = "task") -> None:
        super().__init__()
        check_choice("norm", norm, BATCH_NORMS)
        if not isinstance(hidden, int) or isinstance(hidden, bool) or hidden < 1:
            raise ValueError(f"hidden (the width) must be a positive integer, got {hidden!r}")
        self.channels_last = channels_last
        self.body = nn.Sequential(
            _conv_block(in_channels, hidden, norm),
            _conv_block(hidden, hidden, norm),
            _conv_block(hidden, hidden, norm),
            _conv_block(hidden, hidden, norm),
            nn.Flatten(),
        )
        side = image_size
        for _ in range(4):
            side //= 2
        if side < 1:
            raise ValueError(f"image_size must be >= 16 for four 2x2 poolings, got {image_size}")
        self.feature_dim = hidden * side * side
        self.head = nn.Identity() if out_features is None else nn.Linear(self.feature_dim,
                                                                         out_features)
        if channels_last:  # NHWC weights make oneDNN keep every activation NHWC
            self.to(memory_format=torch.channels_last)

    def forward(self, x: Tensor) -> Tensor:
        if self.channels_last and x.dim() == 4 and not is_vmapped(x):
            x = x.contiguous(memory_format=torch.channels_last)
        return self.head(self.body(x))


class MLP(nn.Module):
    """A ReLU multilayer perceptron, e.g. 1-40-40-1 for the MAML sinusoid; with ``flatten``
    it takes images ``[N, C, H, W]`` as vectors of ``in_features = C H W``."""

    def __init__(self, in_features: int = 1, hidden: Sequence[int] = (40, 40),
                 out_features: int | None = 1, flatten: bool = False) -> None:
        super().__init__()
        self.flatten = flatten
        layers: list[nn.Module] = []
        width = in_features
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU()]
            width = size
        self.body = nn.Sequential(*layers)
        self.feature_dim = width
        self.head = nn.Identity() if out_features is None else nn.Linear(width, out_features)

    def forward(self, x: Tensor) -> Tensor:
        if self.flatten:
            x = x.flatten(-3)  # [..., C, H, W] -> [..., C H W], batched or not
        return self.head(self.body(x))


class BodyHead(nn.Module):
    """``head(body(x))``: an encoder and the network that adapts on its output.

    Methods that treat the two parts differently (ANIL adapts the head; MR-MAML puts a
    distribution on the body) take any model with ``body`` and ``head``; this one joins two.
    """

    def __init__(self, body: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.body = body
        self.head = head

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))
