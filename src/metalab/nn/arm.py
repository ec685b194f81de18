"""Models of Adaptive Risk Minimization (Zhang, Marklund et al., NeurIPS 2021).

- `ARMConvNet`: the small ConvNet of the paper's rotated-MNIST experiments: 5x5
  convolutions with ``hidden`` (128) channels, each followed by a normalization and a ReLU,
  the last two by a 2x2 max-pool, then global average pooling, a ``hidden -> 200`` ReLU
  layer (``body``) and a linear classifier (``head``). The official code drops the first,
  padded convolution for ARM-CML ("smaller model", ``extra_conv=False``). The
  normalization is a choice: ``"batch"`` (ordinary `nn.BatchNorm2d` with running
  statistics: ERM, UW, DRO, ARM-CML), ``"task"`` (`TaskBatchNorm`, the statistics of the
  group's batch in training and at test: ARM-BN, ARM-LL) or ``"none"``.
- `ContextNet`: ARM-CML's context network, three 5x5 "same" convolutions (64 hidden
  channels, normalization and ReLU between them) whose output has the image's height and
  width and ``out_channels`` channels (12 for MNIST); ARM-CML averages it over the batch
  and appends it to every image as extra input channels.
- `LearnedLoss`: ARM-LL's unsupervised loss, an MLP with three hidden ReLU layers of 32
  units applied to each example's logits, reduced to the L2 norm of its outputs over the
  batch.

It also holds the tools with which ARM-BN takes the statistics of its `TaskBatchNorm`
layers from a chosen batch (`ChannelStatistics`, `task_norm_statistics`): record them on
the unlabelled batch of a group, apply them to any other input, or pool them over batches
that arrive one at a time.
"""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from metalab.nn.norm import BATCH_NORMS, TaskBatchNorm, batch_norm_2d
from metalab.validation import check_choice, check_positive_int

NORMS = ("none", *BATCH_NORMS)
PADDINGS = ("valid", "same")


def check_norm(norm: str) -> str:
    """``norm`` if it is one of :data:`NORMS`."""
    return check_choice("norm", norm, NORMS)


def make_norm(norm: str, channels: int) -> nn.Module:
    """The normalization layer ``norm`` over ``channels`` feature maps."""
    check_norm(norm)
    return nn.Identity() if norm == "none" else batch_norm_2d(norm, channels)


def _odd_kernel(kernel_size) -> int:
    check_positive_int("kernel_size", kernel_size)
    if kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be odd (for 'same' padding), got {kernel_size}")
    return kernel_size


class ARMConvNet(nn.Module):
    """The small ConvNet of the ARM MNIST experiments, with a choice of normalization.

    Layers (Zhang et al. 2021, appendix; official code's ``ConvNet``): [conv k x k "same"
    -> norm -> ReLU] (``extra_conv``), then twice [conv k x k -> norm -> ReLU -> 2x2
    max-pool], global average pooling, ``Linear(hidden, fc_hidden)`` and ReLU (the
    ``body``), ``Linear(fc_hidden, num_classes)`` (the ``head``).

    Args:
        in_channels: input channels (image channels, plus the context channels for CML).
        num_classes: outputs of the head.
        hidden: channels of every convolution (128 in the paper).
        fc_hidden: width of the penultimate layer (200 in the paper).
        kernel_size: odd side of the convolutions (5 in the paper).
        norm: ``"batch"``, ``"task"`` or ``"none"`` (see the module docstring).
        image_size: side of the square input; checked against the layers.
        extra_conv: include the first, padded convolution (the paper's larger model).
        padding: ``"valid"`` (the paper: the two pooled convolutions are unpadded, for
            28x28) or ``"same"`` (every convolution keeps the size; for small images such
            as the 8x8 digits).

    Every normalized feature map is at least 2x2 (checked at construction), so with one
    image a `TaskBatchNorm` still has several values per channel.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, hidden: int = 128,
                 fc_hidden: int = 200, kernel_size: int = 5, norm: str = "batch",
                 image_size: int = 28, extra_conv: bool = True, padding: str = "valid") -> None:
        super().__init__()
        for name, value in (("in_channels", in_channels), ("num_classes", num_classes),
                            ("hidden", hidden), ("fc_hidden", fc_hidden),
                            ("image_size", image_size)):
            check_positive_int(name, value)
        _odd_kernel(kernel_size)
        check_norm(norm)
        check_choice("padding", padding, PADDINGS)
        self.norm = norm
        same = (kernel_size - 1) // 2
        pooled_pad = same if padding == "same" else 0
        layers: list[nn.Module] = []
        side, width = image_size, in_channels
        blocks = ([(same, False)] if extra_conv else []) + [(pooled_pad, True)] * 2
        for index, (pad, pool) in enumerate(blocks):
            side = side + 2 * pad - kernel_size + 1
            if side < 2:
                raise ValueError(
                    f"image_size={image_size} is too small for convolution {index + 1} "
                    f"(kernel_size={kernel_size}, padding={padding!r}): its output would be "
                    f"{max(side, 0)}x{max(side, 0)}, and every normalized map must be at "
                    f"least 2x2; use padding='same' or a larger image")
            layers += [nn.Conv2d(width, hidden, kernel_size, padding=pad),
                       make_norm(norm, hidden), nn.ReLU()]
            if pool:
                layers.append(nn.MaxPool2d(2))
                side //= 2
            width = hidden
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(hidden, fc_hidden),
                   nn.ReLU()]
        self.body = nn.Sequential(*layers)
        self.feature_dim = fc_hidden
        self.head = nn.Linear(fc_hidden, num_classes)
        self.in_channels = in_channels
        self.num_classes = num_classes

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))


class ContextNet(nn.Module):
    """ARM-CML's context network: per-example context maps of the input's height and width.

    Three k x k "same" convolutions, ``in -> hidden -> hidden -> out_channels``, with a
    normalization and a ReLU after the first two (official code: 64 hidden channels, k=5;
    12 output channels for MNIST). With ``norm="none"`` (the default here) or ``"batch"``
    (running statistics) the context of an example in `eval()` mode does not depend on the
    other examples of the batch, so averaging it over batches that arrive one by one is
    exact.

    The official code uses ordinary batch norm (``norm="batch"``). Trained on meta-batches
    of a few groups, its training-mode statistics make each group's context relative to
    the other groups of its meta-batch, which the running statistics of `eval()` do not
    reproduce. Measured (corrupted glyphs, 3 groups x 50 per step, 400 steps, seed 1): in
    eval mode on the *training* groups ARM-CML reached 16.7% accuracy with ``"batch"`` and
    41.0% with ``"none"``; hence ``"none"`` by default.
    """

    def __init__(self, in_channels: int = 1, out_channels: int = 12, hidden: int = 64,
                 kernel_size: int = 5, norm: str = "none") -> None:
        super().__init__()
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels),
                            ("hidden", hidden)):
            check_positive_int(name, value)
        pad = (_odd_kernel(kernel_size) - 1) // 2
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.layers = nn.Sequential(
            nn.Conv2d(in_channels, hidden, kernel_size, padding=pad), make_norm(norm, hidden),
            nn.ReLU(),
            nn.Conv2d(hidden, hidden, kernel_size, padding=pad), make_norm(norm, hidden),
            nn.ReLU(),
            nn.Conv2d(hidden, out_channels, kernel_size, padding=pad),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


class LearnedLoss(nn.Module):
    """ARM-LL's learned unsupervised loss of a batch of logits ``[B, num_classes]``.

    ``h`` (``num_classes -> hidden x layers -> 1``, ReLU) maps each example's logits to one
    number and the loss is the L2 norm of ``(h(z_1), ..., h(z_B))`` (official code:
    ``MLP(..., norm_reduce=True)``, 3 hidden layers of 32). The norm is computed as
    ``sqrt(sum_i h_i^2 + eps)`` so that its first and second derivatives stay finite when
    every ``h_i`` is 0; ``eps = 1e-12`` changes the value by at most 1e-6.
    """

    def __init__(self, num_classes: int, hidden: int = 32, layers: int = 3,
                 eps: float = 1e-12) -> None:
        super().__init__()
        check_positive_int("num_classes", num_classes)
        check_positive_int("hidden", hidden)
        check_positive_int("layers", layers)
        parts: list[nn.Module] = []
        width = num_classes
        for _ in range(layers):
            parts += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        parts.append(nn.Linear(width, 1))
        self.mlp = nn.Sequential(*parts)
        self.num_classes = num_classes
        self.eps = eps

    def forward(self, logits: Tensor) -> Tensor:
        if logits.dim() != 2 or logits.shape[1] != self.num_classes:
            raise ValueError(f"LearnedLoss expects logits of shape [batch, {self.num_classes}], "
                             f"got {tuple(logits.shape)}")
        values = self.mlp(logits)
        return torch.sqrt(values.pow(2).sum() + self.eps)


# -- batch-norm statistics taken from a chosen batch (ARM-BN) -------------------------------


@dataclass(frozen=True)
class ChannelStatistics:
    """Per-channel mean and (biased) variance of ``count`` values per channel."""

    count: int
    mean: Tensor
    var: Tensor

    @staticmethod
    def of(x: Tensor) -> ChannelStatistics:
        """Statistics over every dimension of ``x`` but the channel dimension 1.

        A single value per channel (one example, no spatial positions) has mean that value
        and variance 0, so the normalized value is 0 and the layer outputs its bias.
        """
        dims = [0] + list(range(2, x.dim()))
        mean = x.mean(dim=dims)
        var = (x - _per_channel(mean, x)).pow(2).mean(dim=dims)
        return ChannelStatistics(x.numel() // x.shape[1], mean, var)

    def merge(self, other: ChannelStatistics) -> ChannelStatistics:
        """The statistics of the union of both sets of values (Chan et al.'s pooling).

        ``mean = (n1 m1 + n2 m2) / n``, ``var = (n1 v1 + n2 v2) / n + n1 n2 (m2 - m1)^2 / n^2``.
        """
        total = self.count + other.count
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.count / total)
        var = ((self.count * self.var + other.count * other.var) / total
               + delta.pow(2) * (self.count * other.count / total ** 2))
        return ChannelStatistics(total, mean, var)

    def normalize(self, x: Tensor, layer: TaskBatchNorm) -> Tensor:
        """``(x - mean) / sqrt(var + eps) * weight + bias`` per channel."""
        scale = torch.rsqrt(self.var + layer.eps)
        normalized = (x - _per_channel(self.mean, x)) * _per_channel(scale, x)
        return normalized * _per_channel(layer.weight, x) + _per_channel(layer.bias, x)


def _per_channel(values: Tensor, like: Tensor) -> Tensor:
    return values.view((1, -1) + (1,) * (like.dim() - 2))


STATISTICS_MODES = ("batch", "record", "apply")


def task_norm_layers(model: nn.Module) -> dict[str, TaskBatchNorm]:
    """The `TaskBatchNorm` layers of ``model`` by name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, TaskBatchNorm)}


@contextmanager
def task_norm_statistics(model: nn.Module, mode: str,
                         statistics: MutableMapping[str, ChannelStatistics]) -> Iterator[None]:
    """Within the block, every `TaskBatchNorm` of ``model`` normalizes as ``mode`` says.

    - ``"batch"``: with its input's own statistics, like `TaskBatchNorm` (the fused kernel),
      except that one value per channel is defined (see `ChannelStatistics.of`) instead of
      an error; nothing is stored;
    - ``"record"``: with its input's own statistics, stored in ``statistics[name]``;
    - ``"apply"``: with ``statistics[name]`` (recorded earlier on another batch);

    The layers' own ``forward`` is restored on exit. Works under
    `torch.func.functional_call` (the layer's current weight and bias are read at call
    time) and is twice differentiable.
    """
    check_choice("mode", mode, STATISTICS_MODES)
    layers = task_norm_layers(model)
    if mode == "apply":
        missing = sorted(set(layers) - set(statistics))
        if missing:
            raise ValueError(f"statistics has no entry for the TaskBatchNorm layers {missing}; "
                             f"record them on a batch first")

    def forward_of(name: str, layer: TaskBatchNorm):
        def forward(x: Tensor) -> Tensor:
            if x.shape[1] != layer.num_features:
                raise ValueError(f"TaskBatchNorm {name!r} expects {layer.num_features} channels, "
                                 f"got input of shape {tuple(x.shape)}")
            if mode == "batch" and x.numel() > x.shape[1]:
                return TaskBatchNorm.forward(layer, x)
            if mode == "apply":
                stats = statistics[name]
            else:
                stats = ChannelStatistics.of(x)
                if mode != "batch":
                    statistics[name] = stats
            return stats.normalize(x, layer)
        return forward

    try:
        for name, layer in layers.items():
            layer.forward = forward_of(name, layer)
        yield
    finally:
        for layer in layers.values():
            layer.__dict__.pop("forward", None)
