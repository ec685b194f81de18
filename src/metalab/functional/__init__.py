"""The adaptation engine: functional inner loops, update rules and execution strategies."""

from metalab.functional.inner_loop import (
    Params,
    autograd_gradients,
    func_gradients,
    inner_loop,
    inner_trajectory,
)
from metalab.functional.layout import to_channels_last
from metalab.functional.tasks import STRATEGIES, check_strategy, gradients_for, map_tasks
from metalab.functional.update_rules import (
    SGD,
    Adam,
    Chain,
    LearnedRates,
    PerStepRates,
    UpdateRule,
    as_update_rule,
    parameter_key,
)

__all__ = [
    "SGD",
    "Adam",
    "STRATEGIES",
    "Chain",
    "LearnedRates",
    "Params",
    "PerStepRates",
    "UpdateRule",
    "as_update_rule",
    "autograd_gradients",
    "check_strategy",
    "func_gradients",
    "gradients_for",
    "inner_loop",
    "inner_trajectory",
    "map_tasks",
    "parameter_key",
    "to_channels_last",
]
