"""The adaptation engine: functional inner loops, update rules and execution strategies."""

from metalab.functional.implicit import (
    conjugate_gradient,
    hessian_vector_products,
    implicit_meta_gradient,
)
from metalab.functional.inner_loop import (
    Params,
    autograd_gradients,
    func_gradients,
    inner_loop,
    inner_trajectory,
)
from metalab.functional.layout import to_channels_last
from metalab.functional.learned_optimizer import LSTMOptimizer, preprocess_gradients
from metalab.functional.tasks import STRATEGIES, check_strategy, gradients_for, map_tasks
from metalab.functional.torch_optimizer import LearnedOptimizer
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
    "LSTMOptimizer",
    "LearnedOptimizer",
    "LearnedRates",
    "Params",
    "PerStepRates",
    "UpdateRule",
    "as_update_rule",
    "autograd_gradients",
    "check_strategy",
    "conjugate_gradient",
    "func_gradients",
    "gradients_for",
    "hessian_vector_products",
    "implicit_meta_gradient",
    "inner_loop",
    "inner_trajectory",
    "map_tasks",
    "parameter_key",
    "preprocess_gradients",
    "to_channels_last",
]
