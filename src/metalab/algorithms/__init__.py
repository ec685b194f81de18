"""Meta-learning methods, each a `MetaLearner`, and the registry the CLI builds them from."""

from __future__ import annotations

from metalab.algorithms.base import MetaLearner, Predictor
from metalab.algorithms.maml import ANIL, MAML, MetaSGD, fomaml
from metalab.algorithms.protonet import ProtoNet

ALGORITHMS = {
    "maml": MAML,
    "fomaml": fomaml,
    "metasgd": MetaSGD,
    "anil": ANIL,
    "protonet": ProtoNet,
}
# Methods that use the model as an embedding (no classification head).
EMBEDDING_METHODS = {"protonet"}


def build_learner(name: str, model, **kwargs) -> MetaLearner:
    """Construct a registered method around ``model``."""
    if name not in ALGORITHMS:
        raise ValueError(f"algorithm.name must be one of {sorted(ALGORITHMS)}, got {name!r}")
    return ALGORITHMS[name](model, **kwargs)


__all__ = [
    "ALGORITHMS",
    "ANIL",
    "EMBEDDING_METHODS",
    "MAML",
    "MetaLearner",
    "MetaSGD",
    "Predictor",
    "ProtoNet",
    "build_learner",
    "fomaml",
]
