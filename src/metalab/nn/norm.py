"""Transductive, per-task batch normalization.

Meta-learning batch norm (MAML's convention) normalizes with the statistics of the batch
being processed: the support set during the inner loop, the query set when it is scored.
There are no running statistics, and `train()` and `eval()` behave the same, so a model
adapts at meta-test exactly as it did at meta-training. Predictions therefore depend on
the other examples of the batch (transductive), which is the published protocol.

The affine part is applied separately from `F.batch_norm`: under `torch.func.vmap`,
`F.batch_norm(x, weight=..., bias=...)` yields a wrong second-order gradient (see
DESIGN.md), while normalizing first and then computing ``x_hat * weight + bias`` is exact.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class TaskBatchNorm(nn.Module):
    """``y = (x - mean_batch) / sqrt(var_batch + eps) * weight + bias`` per channel (dim 1)."""

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))

    def forward(self, x: Tensor) -> Tensor:
        normalized = F.batch_norm(x, None, None, training=True, momentum=0.0, eps=self.eps)
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return normalized * self.weight.view(shape) + self.bias.view(shape)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, transductive=True"
