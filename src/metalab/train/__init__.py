"""Training and evaluation, written once for every method."""

from metalab.train.config import (
    ConfigError,
    EvalConfig,
    TrainConfig,
    apply_overrides,
    load_config,
    resolve,
)
from metalab.train.evaluator import Evaluator, mean_ci95
from metalab.train.run import RunDirError, evaluate_run, load_run, train_run
from metalab.train.trainer import Trainer

__all__ = [
    "ConfigError",
    "EvalConfig",
    "Evaluator",
    "RunDirError",
    "TrainConfig",
    "Trainer",
    "apply_overrides",
    "evaluate_run",
    "load_config",
    "load_run",
    "mean_ci95",
    "resolve",
    "train_run",
]
