"""Prototypical Networks (Snell, Swersky, Zemel, NeurIPS 2017).

Each class k is represented by the mean embedding of its support examples,
``c_k = 1/|S_k| sum_{x in S_k} f(x)`` (eq. 1), and a query is classified by a softmax over
negative squared Euclidean distances, ``p(y=k|x) ∝ exp(-||f(x) - c_k||^2)`` (eq. 2).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from metalab.algorithms.base import MetaLearner, Predictor
from metalab.functional import check_strategy, map_tasks
from metalab.tasks import TaskBatch


def prototypes(embeddings: Tensor, labels: Tensor, ways: int) -> Tensor:
    """Class means ``[ways, D]`` of ``embeddings [N, D]`` (vmap-compatible, no indexing)."""
    one_hot = (labels.unsqueeze(-1) == torch.arange(ways, device=labels.device)).to(
        embeddings.dtype)
    return (one_hot.transpose(0, 1) @ embeddings) / one_hot.sum(0).clamp_min(1).unsqueeze(-1)


def negative_squared_distances(queries: Tensor, centers: Tensor) -> Tensor:
    """``-||q_i - c_k||^2`` as logits ``[Nq, ways]``."""
    return -((queries.unsqueeze(1) - centers.unsqueeze(0)) ** 2).sum(-1)


class ProtoNet(MetaLearner):
    """Prototypical Networks over an embedding ``model`` (e.g. ``Conv4(out_features=None)``).

    Args:
        model: embedding network mapping ``[N, ...]`` inputs to ``[N, D]`` (or more dims,
            flattened).
        strategy: ``"loop"`` over tasks or ``"vmap"``.
    """

    def __init__(self, model: nn.Module, strategy: str = "loop") -> None:
        super().__init__("cross_entropy")
        self.model = model
        self.strategy = check_strategy(strategy)

    def embed(self, x: Tensor) -> Tensor:
        return self.model(x).flatten(1)

    def task_losses(self, batch: TaskBatch, training: bool = True
                    ) -> tuple[Tensor, dict[str, Tensor]]:
        if batch.num_classes is None:
            raise ValueError("ProtoNet needs a classification TaskBatch (num_classes is None)")
        ways = batch.num_classes

        def per_task(sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor):
            logits = negative_squared_distances(self.embed(qx),
                                                prototypes(self.embed(sx), sy, ways))
            return self.loss_fn(logits, qy), self.metric_fn(logits, qy)

        with torch.set_grad_enabled(training and torch.is_grad_enabled()):
            losses, metric = map_tasks(per_task, batch.support_x, batch.support_y,
                                       batch.query_x, batch.query_y, strategy=self.strategy)
        return losses, {self.metric_name: metric}

    def adapt(self, support_x: Tensor, support_y: Tensor) -> Predictor:
        ways = int(support_y.max()) + 1
        with torch.no_grad():
            centers = prototypes(self.embed(support_x), support_y, ways)
        return Predictor(lambda x: negative_squared_distances(self.embed(x), centers))
