"""ResNet-18 (He et al. 2016), the backbone of "A closer look at few-shot classification"
(Chen et al. 2019), with a ``body`` and a ``head`` and a width option.

A stem, then four stages of two basic blocks with ``c_i`` channels (64-128-256-512, times
``width``); the first block of stages 2-4 halves the side with stride 2. A basic block is

    y = ReLU(BN(conv3x3(ReLU(BN(conv3x3_s(x))))) + shortcut(x))

with ``shortcut(x) = x`` where the shape is kept, else ``BN(conv1x1_s(x))`` (option B of
the paper). Convolutions have no bias. The stem is ``"7x7"`` (ImageNet: a 7x7 stride-2
convolution, BN, ReLU and a 3x3 stride-2 max-pool) or ``"3x3"`` (CIFAR-style, for small
images: a 3x3 stride-1 convolution, BN, ReLU, no pooling). The body ends with a global
average pool: ``feature_dim = c_4``; padding keeps every map at least 1x1, so any input side
works. Batch norm is per task (`TaskBatchNorm`,
``norm="task"``) or ordinary with running statistics (``norm="batch"``).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from metalab.nn.norm import BATCH_NORMS, batch_norm_2d
from metalab.nn.widths import stage_channels
from metalab.validation import check_choice

CHANNELS = (64, 128, 256, 512)
STEMS = ("7x7", "3x3")



class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers and a shortcut (identity, or 1x1 conv-BN when the shape
    changes), ReLU after the sum."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, norm: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = batch_norm_2d(norm, out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = batch_norm_2d(norm, out_channels)
        self.relu = nn.ReLU()
        self.shortcut = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                batch_norm_2d(norm, out_channels))

    def forward(self, x: Tensor) -> Tensor:
        h = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(h)) + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18 with a ``body`` (features) and a ``head`` (linear, or none).

    Args:
        in_channels: image channels.
        out_features: classes of the linear head; ``None``: no head (an embedding).
        width: channel multiplier of 64-128-256-512 (``channels`` overrides).
        channels: the four stages' channels.
        norm: ``"task"`` (per-task, transductive) or ``"batch"`` (ordinary, running stats).
        stem: ``"7x7"`` (ImageNet) or ``"3x3"`` (small images, no pooling).
    """

    def __init__(self, in_channels: int = 3, out_features: int | None = 5,
                 width: float = 1.0,
                 channels: Sequence[int] | None = None, norm: str = "batch",
                 stem: str = "7x7") -> None:
        super().__init__()
        check_choice("norm", norm, BATCH_NORMS)
        check_choice("stem", stem, STEMS)
        channels = stage_channels(CHANNELS, width, channels, "stage")
        first = channels[0]
        if stem == "7x7":
            head = [nn.Conv2d(in_channels, first, 7, 2, 3, bias=False), batch_norm_2d(norm, first),
                    nn.ReLU(), nn.MaxPool2d(3, 2, 1)]
        else:
            head = [nn.Conv2d(in_channels, first, 3, 1, 1, bias=False), batch_norm_2d(norm, first),
                    nn.ReLU()]
        stages, previous = [], first
        for i, c in enumerate(channels):
            stride = 1 if i == 0 else 2
            stages += [BasicBlock(previous, c, stride, norm), BasicBlock(c, c, 1, norm)]
            previous = c
        self.body = nn.Sequential(*head, *stages, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.feature_dim = channels[-1]
        self.head = nn.Identity() if out_features is None else nn.Linear(self.feature_dim,
                                                                         out_features)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))
