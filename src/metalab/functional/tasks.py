"""Execution strategies over the task dimension: a per-task loop, or `torch.func.vmap`.

``map_tasks(fn, *tensors, strategy=...)`` applies ``fn`` to the i-th slice of every
tensor and stacks the results (``fn`` returns a tensor or a tuple of tensors). The loop
runs any code; vmap runs one batched program and needs ``fn`` to be vmap-compatible (use
`func_gradients` for inner gradients and affine-free `F.batch_norm`, see ``metalab.nn``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from metalab.functional.inner_loop import GradientFn, autograd_gradients, func_gradients
from metalab.validation import check_choice

STRATEGIES = ("loop", "vmap")


def check_strategy(strategy: str) -> str:
    return check_choice("strategy", strategy, STRATEGIES)


def gradients_for(strategy: str) -> GradientFn:
    """The inner-gradient backend that works under ``strategy``."""
    return func_gradients if check_strategy(strategy) == "vmap" else autograd_gradients


def map_tasks(fn: Callable[..., Tensor | tuple[Tensor, ...]], *tensors: Tensor,
              strategy: str = "loop") -> Tensor | tuple[Tensor, ...]:
    """Apply ``fn`` task by task and stack the outputs along a new leading dimension."""
    if check_strategy(strategy) == "vmap":
        return torch.func.vmap(fn, randomness="different")(*tensors)
    outputs = [fn(*(t[i] for t in tensors)) for i in range(tensors[0].shape[0])]
    if isinstance(outputs[0], tuple):
        return tuple(torch.stack(column) for column in zip(*outputs, strict=True))
    return torch.stack(outputs)
