"""Running a model with the batch-norm statistics of a chosen batch (ARM-BN, ARM-LL).

Built on `metalab.nn.arm.task_norm_statistics`: record the statistics of every
`TaskBatchNorm` on one batch, then normalize other inputs with them.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.func import functional_call

from metalab.nn.arm import ChannelStatistics, task_norm_statistics

Statistics = dict[str, ChannelStatistics]


def _run(model: nn.Module, x: Tensor, params: dict[str, Tensor] | None) -> Tensor:
    return model(x) if params is None else functional_call(model, params, (x,))


def same_inputs(a: Tensor, b: Tensor) -> bool:
    """Whether ``a`` and ``b`` hold the same values (the query set is the support set)."""
    return a is b or (a.shape == b.shape and torch.equal(a, b))


def record_statistics(model: nn.Module, x: Tensor, params: dict[str, Tensor] | None = None
                      ) -> tuple[Tensor, Statistics]:
    """Outputs of ``model`` on ``x`` normalized by ``x``'s own statistics, and those statistics."""
    statistics: Statistics = {}
    with task_norm_statistics(model, "record", statistics):
        return _run(model, x, params), statistics


def apply_statistics(model: nn.Module, x: Tensor, statistics: Statistics,
                     params: dict[str, Tensor] | None = None) -> Tensor:
    """Outputs of ``model`` on ``x`` with every `TaskBatchNorm` using ``statistics``."""
    with task_norm_statistics(model, "apply", statistics):
        return _run(model, x, params)


def predict_from_support(model: nn.Module, support_x: Tensor, query_x: Tensor,
                         params: dict[str, Tensor] | None = None) -> Tensor:
    """Outputs on ``query_x`` with batch-norm statistics taken from ``support_x``.

    When the query is the support batch itself (ARM's training and test protocol) one
    pass normalizes it with its own statistics.
    """
    if same_inputs(query_x, support_x):
        with task_norm_statistics(model, "batch", {}):
            return _run(model, query_x, params)
    _, statistics = record_statistics(model, support_x, params)
    return apply_statistics(model, query_x, statistics, params)
