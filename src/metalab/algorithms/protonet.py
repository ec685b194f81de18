"""Prototypical Networks (Snell, Swersky, Zemel, NeurIPS 2017).

Each class k is represented by the mean embedding of its support examples,
``c_k = 1/|S_k| sum_{x in S_k} f(x)`` (eq. 1), and a query is classified by a softmax over
negative squared Euclidean distances, ``p(y=k|x) ∝ exp(-||f(x) - c_k||^2)`` (eq. 2).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from metalab.algorithms.base import MetaLearner, support_ways


def prototypes(embeddings: Tensor, labels: Tensor, ways: int) -> Tensor:
    """Class means ``[ways, D]`` of ``embeddings [N, D]`` (vmap-compatible, no indexing)."""
    one_hot = (labels.unsqueeze(-1) == torch.arange(ways, device=labels.device)).to(
        embeddings.dtype)
    return (one_hot.transpose(0, 1) @ embeddings) / one_hot.sum(0).clamp_min(1).unsqueeze(-1)


def negative_squared_distances(queries: Tensor, centers: Tensor) -> Tensor:
    """``-||q_i - c_k||^2`` as logits ``[Nq, ways]``."""
    return -((queries.unsqueeze(1) - centers.unsqueeze(0)) ** 2).sum(-1)


class ProtoNet(MetaLearner, name="protonet"):
    """Prototypical Networks over an embedding ``model`` (e.g. ``Conv4(out_features=None)``).

    The adapted state of a task is its prototype table (eq. 1); a prediction is eq. 2's
    logits.

    Args:
        model: embedding network mapping ``[N, ...]`` inputs to ``[N, D]`` (or more dims,
            flattened).
        strategy: ``"loop"`` over tasks or ``"vmap"``.
    """

    model_role = "embedding"
    adapt_options = ("ways",)

    def __init__(self, model: nn.Module, strategy: str = "loop") -> None:
        super().__init__("cross_entropy", strategy)
        self.model = model

    def embed(self, x: Tensor) -> Tensor:
        return self.model(x).flatten(1)

    def adapt_task(self, support_x: Tensor, support_y: Tensor, *, training: bool,
                   ways: int | None = None) -> Tensor:
        """The prototypes ``[ways, D]`` (``ways``: the batch's, else the largest label + 1)."""
        ways = support_ways(support_y, ways)
        return prototypes(self.embed(support_x), support_y, ways)

    def predict(self, centers: Tensor, x: Tensor) -> Tensor:
        return negative_squared_distances(self.embed(x), centers)
