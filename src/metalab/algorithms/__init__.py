"""Meta-learning methods, each a `MetaLearner`, and the registry the CLI builds them from."""

from __future__ import annotations

from metalab.algorithms.arm import ARMBN, ARMCML, ARMLL, ERM, GroupStream
from metalab.algorithms.base import MetaLearner, Predictor
from metalab.algorithms.maml import ANIL, MAML, MetaSGD, fomaml
from metalab.algorithms.memorization import SupportSwap, derangement, support_swap_loss
from metalab.algorithms.mr_maml import MRMAMLA, MRMAMLW, BodyHead
from metalab.algorithms.multitask import MultiTask, per_task_metrics
from metalab.algorithms.protonet import ProtoNet

ALGORITHMS = {
    "maml": MAML,
    "fomaml": fomaml,
    "metasgd": MetaSGD,
    "anil": ANIL,
    "protonet": ProtoNet,
    "mr-maml-w": MRMAMLW,
    "mr-maml-a": MRMAMLA,
    "erm": ERM,
    "arm-bn": ARMBN,
    "arm-cml": ARMCML,
    "arm-ll": ARMLL,
    "multitask": MultiTask,
}
# Methods that use the model as an embedding (no classification head).
EMBEDDING_METHODS = {"protonet"}
# Methods whose inner loop adapts a chosen set of parameters (``adapt``).
INNER_LOOP_METHODS = {"maml", "fomaml", "metasgd", "anil", "mr-maml-w", "mr-maml-a"}


def build_learner(name: str, model, **kwargs) -> MetaLearner:
    """Construct a registered method around ``model``."""
    if name not in ALGORITHMS:
        raise ValueError(f"algorithm.name must be one of {sorted(ALGORITHMS)}, got {name!r}")
    return ALGORITHMS[name](model, **kwargs)


__all__ = [
    "ALGORITHMS",
    "ANIL",
    "ARMBN",
    "ARMCML",
    "ARMLL",
    "EMBEDDING_METHODS",
    "ERM",
    "INNER_LOOP_METHODS",
    "MAML",
    "MRMAMLA",
    "MRMAMLW",
    "BodyHead",
    "GroupStream",
    "MetaLearner",
    "MetaSGD",
    "MultiTask",
    "Predictor",
    "ProtoNet",
    "SupportSwap",
    "build_learner",
    "derangement",
    "fomaml",
    "per_task_metrics",
    "support_swap_loss",
]
