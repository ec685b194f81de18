"""Meta-learning methods, each a `MetaLearner`, and the registry the CLI builds them from."""

from __future__ import annotations

import importlib
import pkgutil

from metalab.algorithms.arm import ARMBN, ARMCML, ARMLL
from metalab.algorithms.base import REGISTRY, CategoricalPredictive, MetaLearner, Predictor
from metalab.algorithms.erm import ERM
from metalab.algorithms.maml import ANIL, FOMAML, MAML, MetaSGD
from metalab.algorithms.memorization import SupportSwap, derangement, support_swap_loss
from metalab.algorithms.mr_maml import MRMAMLA, MRMAMLW, BodyHead
from metalab.algorithms.multitask import MultiTask, per_task_metrics
from metalab.algorithms.protonet import ProtoNet
from metalab.algorithms.stream import AdaptationStream
from metalab.validation import check_choice


def _import_every_method_module() -> None:
    """Import each module of this package, so that a method in a new file registers itself
    (`MetaLearner.__init_subclass__`) without an edit here."""
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")


_import_every_method_module()
#: ``algorithm.name`` -> method class, filled as the method modules are imported.
ALGORITHMS = REGISTRY


def algorithm_class(name: str) -> type[MetaLearner]:
    """The registered method called ``name``."""
    return ALGORITHMS[check_choice("algorithm.name", name, sorted(ALGORITHMS))]


def build_learner(name: str, model, **kwargs) -> MetaLearner:
    """Construct a registered method around ``model``."""
    return algorithm_class(name)(model, **kwargs)


__all__ = [
    "ALGORITHMS",
    "ANIL",
    "ARMBN",
    "ARMCML",
    "ARMLL",
    "ERM",
    "FOMAML",
    "MAML",
    "MRMAMLA",
    "MRMAMLW",
    "AdaptationStream",
    "BodyHead",
    "CategoricalPredictive",
    "MetaLearner",
    "MetaSGD",
    "MultiTask",
    "Predictor",
    "ProtoNet",
    "SupportSwap",
    "algorithm_class",
    "build_learner",
    "derangement",
    "per_task_metrics",
    "support_swap_loss",
]
