"""The adaptation engine: functional inner loops and execution strategies over tasks."""

from metalab.functional.inner_loop import (
    Params,
    autograd_gradients,
    func_gradients,
    inner_loop,
)
from metalab.functional.layout import to_channels_last
from metalab.functional.tasks import STRATEGIES, check_strategy, gradients_for, map_tasks

__all__ = [
    "STRATEGIES",
    "Params",
    "autograd_gradients",
    "check_strategy",
    "func_gradients",
    "gradients_for",
    "inner_loop",
    "map_tasks",
    "to_channels_last",
]
