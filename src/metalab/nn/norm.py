"""Transductive, per-task batch normalization.

Meta-learning batch norm (MAML's convention) normalizes with the statistics of the batch
being processed: the support set during the inner loop, the query set when it is scored.
There are no running statistics, and `train()` and `eval()` behave the same, so a model
adapts at meta-test exactly as it did at meta-training. Predictions therefore depend on
the other examples of the batch (transductive), which is the published protocol.

Under `torch.func.vmap` the affine part is applied separately from `F.batch_norm`:
there, `F.batch_norm(x, weight=..., bias=...)` yields a wrong second-order gradient (see
DESIGN.md), while normalizing first and then computing ``x_hat * weight + bias`` is exact.
Outside vmap the fused kernel is exact and faster, so it is used there; the tests compare
both paths in float64.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def is_vmapped(x: Tensor) -> bool:
    """Whether ``x`` is inside a `torch.func` transform (vmap, or grad within vmap).

    Under ``torch.func.grad`` a batched tensor is wrapped again, so any functorch wrapper
    counts; outside the transforms the answer is always False.
    """
    functorch = torch._C._functorch
    is_wrapped = getattr(functorch, "is_functorch_wrapped_tensor", None)
    if is_wrapped is not None:
        return bool(is_wrapped(x))
    return bool(functorch.is_batchedtensor(x))


class TaskBatchNorm(nn.Module):
    """``y = (x - mean_batch) / sqrt(var_batch + eps) * weight + bias`` per channel (dim 1)."""

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))

    def forward(self, x: Tensor) -> Tensor:
        if not is_vmapped(x):
            return F.batch_norm(x, None, None, self.weight, self.bias, training=True,
                                momentum=0.0, eps=self.eps)
        normalized = F.batch_norm(x, None, None, training=True, momentum=0.0, eps=self.eps)
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return normalized * self.weight.view(shape) + self.bias.view(shape)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, transductive=True"


# The batch norms a convolutional backbone can be built with (``norm=`` of Conv4, ResNet-12,
# ResNet-18): per-task transductive statistics, or ordinary running statistics.
BATCH_NORMS = ("task", "batch")


def batch_norm_2d(kind: str, channels: int) -> nn.Module:
    """`TaskBatchNorm` for ``kind="task"`` (methods that adapt per task), else
    `torch.nn.BatchNorm2d` (running statistics: methods that do not adapt)."""
    return TaskBatchNorm(channels) if kind == "task" else nn.BatchNorm2d(channels)
