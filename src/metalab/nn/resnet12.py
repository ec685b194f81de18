"""ResNet-12 (Oreshkin et al. 2018; Lee et al. 2019, MetaOptNet; Tian et al. 2020, RFS).

Four residual blocks; block ``i`` has ``c_i`` output channels (64-160-320-640, times
``width``) and computes

    h = LReLU(BN(conv3x3(LReLU(BN(conv3x3(LReLU(BN(conv3x3(x)))))))) ... (three convs)
    y = DropBlock(MaxPool2(LReLU(BN(conv3(...)) + BN(conv1x1(x)))))

with leaky ReLU slope 0.1, convolutions without bias, a 1x1 convolution and batch norm on
the shortcut, 2x2 max-pooling, and DropBlock (Ghiasi et al. 2018) in the last two blocks
in training (the identity in `eval()`). The body ends with a global average pool (RFS) or a
flatten (MetaOptNet); ``feature_dim`` is its output size. Batch norm is per task
(`TaskBatchNorm`, the meta-learning convention) with ``norm="task"`` or ordinary
`torch.nn.BatchNorm2d` with running statistics with ``norm="batch"`` (methods that do not
adapt, such as the pretrained-embedding baselines).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metalab.nn.norm import BATCH_NORMS, batch_norm_2d
from metalab.nn.pool import MaxPool2d
from metalab.nn.widths import stage_channels
from metalab.validation import check_choice

CHANNELS = (64, 160, 320, 640)
POOLS = ("avg", "flatten")


class DropBlock(nn.Module):
    """Zero ``block_size x block_size`` squares of each channel (Ghiasi et al. 2018, alg. 1).

    Block centres are Bernoulli(``gamma``) on the positions where a whole block fits,
    ``gamma = drop_rate / block_size^2 * H W / ((H - block_size + 1) (W - block_size + 1))``
    so that about ``drop_rate`` of the units are dropped; the kept units are rescaled by
    ``numel / kept``. The block is clipped to the feature map; the identity in `eval()`.
    """

    def __init__(self, drop_rate: float = 0.1, block_size: int = 5) -> None:
        super().__init__()
        if not 0 <= drop_rate < 1:
            raise ValueError(f"drop_rate must be in [0, 1), got {drop_rate}")
        if block_size < 1:
            raise ValueError(f"block_size must be a positive integer, got {block_size}")
        self.drop_rate = float(drop_rate)
        self.block_size = int(block_size)

    def block_mask(self, seeds: Tensor, size: int) -> Tensor:
        """1 where a unit is dropped: each seed at ``(i, j)`` of ``seeds [N, C, H-s+1, W-s+1]``
        drops ``[i, i + size) x [j, j + size)``."""
        padded = F.pad(seeds, (size - 1,) * 4)
        return F.max_pool2d(padded, kernel_size=size, stride=1)

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.drop_rate == 0:
            return x
        height, width = x.shape[-2:]
        size = min(self.block_size, height, width)
        valid = (height - size + 1) * (width - size + 1)
        gamma = self.drop_rate / size ** 2 * height * width / valid
        seeds = torch.bernoulli(torch.full((*x.shape[:-2], height - size + 1, width - size + 1),
                                           min(gamma, 1.0), dtype=x.dtype, device=x.device))
        keep = 1 - self.block_mask(seeds, size)
        return x * keep * (keep.numel() / keep.sum().clamp_min(1))

    def extra_repr(self) -> str:
        return f"drop_rate={self.drop_rate}, block_size={self.block_size}"



def _conv3x3(in_channels: int, out_channels: int) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False)


class ResidualBlock(nn.Module):
    """Three 3x3 conv-BN-leaky-ReLU layers, a 1x1 conv-BN shortcut, max-pool, DropBlock."""

    def __init__(self, in_channels: int, out_channels: int, norm: str = "task",
                 drop_rate: float = 0.0, block_size: int = 5) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_channels, out_channels)
        self.conv2 = _conv3x3(out_channels, out_channels)
        self.conv3 = _conv3x3(out_channels, out_channels)
        self.bn1, self.bn2, self.bn3 = (batch_norm_2d(norm, out_channels) for _ in range(3))
        self.shortcut = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False),
            batch_norm_2d(norm, out_channels))
        self.pool = MaxPool2d(2)
        self.drop = DropBlock(drop_rate, block_size) if drop_rate > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        h = F.leaky_relu(self.bn1(self.conv1(x)), 0.1)
        h = F.leaky_relu(self.bn2(self.conv2(h)), 0.1)
        h = self.bn3(self.conv3(h))
        h = F.leaky_relu(h + self.shortcut(x), 0.1)
        return self.drop(self.pool(h))


class ResNet12(nn.Module):
    """ResNet-12 with a ``body`` (features) and a ``head`` (linear, or none).

    Args:
        in_channels: image channels.
        out_features: classes of the linear head; ``None``: no head (an embedding).
        image_size: input side (four 2x2 poolings: at least 16).
        width: channel multiplier of 64-160-320-640 (``channels`` overrides).
        channels: the four blocks' output channels.
        norm: ``"task"`` (per-task, transductive) or ``"batch"`` (ordinary, running stats).
        drop_rate / block_size: DropBlock in the last two blocks (0: none).
        pool: ``"avg"`` (global average, RFS: ``feature_dim = channels[-1]``) or
            ``"flatten"`` (MetaOptNet: ``channels[-1] * side^2``).
    """

    def __init__(self, in_channels: int = 3, out_features: int | None = 5,
                 image_size: int = 84, width: float = 1.0,
                 channels: Sequence[int] | None = None, norm: str = "task",
                 drop_rate: float = 0.1, block_size: int = 5, pool: str = "avg") -> None:
        super().__init__()
        check_choice("norm", norm, BATCH_NORMS)
        check_choice("pool", pool, POOLS)
        channels = stage_channels(CHANNELS, width, channels, "block")
        side = image_size
        for _ in range(4):
            side //= 2
        if side < 1:
            raise ValueError(f"image_size must be >= 16 for four 2x2 poolings, got {image_size}")
        widths = [in_channels, *channels]
        blocks = [ResidualBlock(widths[i], widths[i + 1], norm,
                                drop_rate if i >= 2 else 0.0, block_size) for i in range(4)]
        tail = [nn.AdaptiveAvgPool2d(1), nn.Flatten()] if pool == "avg" else [nn.Flatten()]
        self.body = nn.Sequential(*blocks, *tail)
        self.feature_dim = channels[-1] * (1 if pool == "avg" else side * side)
        self.head = nn.Identity() if out_features is None else nn.Linear(self.feature_dim,
                                                                         out_features)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="leaky_relu")

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))
