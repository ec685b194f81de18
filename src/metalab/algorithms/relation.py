"""Relation Networks (Sung, Yang, Zhang, Xiang, Torr, Hospedales, CVPR 2018, "Learning to
Compare").

An embedding module ``f`` maps images to feature maps; for K shots the class feature map
is the element-wise sum of its support examples' maps (section 3.2),

    F_i = sum_{x in S_i} f(x),

and a relation module ``g`` scores a query ``x_j`` against class ``i`` from their maps
concatenated along the depth (channel) axis, eq. 1 / eq. 2:

    r_{i,j} = g( C(F_i, f(x_j)) ),     r in [0, 1] (g ends in a sigmoid),

with the class map's channels first and the query's second, as ``C(f(x_i), f(x_j))`` with
``x_i`` from the sample set (the authors' code concatenates ``(sample, query)`` likewise).
Training regresses the scores on the one-hot match, eq. 3:

    phi, theta <- argmin sum_i sum_j ( r_{i,j} - 1(y_i == y_j) )^2,

here the mean over the ``Nq x ways`` pairs of a task (the authors' code uses
``nn.MSELoss``, a mean; the sum differs by a constant factor absorbed by the learning rate).

Why `loss_fn` is overridden: the scores are not logits, and the paper's loss is MSE to a
one-hot target, which neither shared objective gives (``cross_entropy`` would apply a
softmax to the scores; ``mse`` compares with integer labels and reports MSE as the metric).
The learner keeps the classification objective (the metric is accuracy, the argmax of the
scores, and the data's labels are class indices) and replaces only the training loss, on
the class, so training and evaluation score the same way.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metalab.algorithms.base import MetaLearner, support_ways
from metalab.nn.relation import RelationModule


def one_hot(labels: Tensor, ways: int, dtype: torch.dtype) -> Tensor:
    """``[N, ways]`` indicator of ``labels [N]`` (vmap-compatible, no indexing)."""
    return (labels.unsqueeze(-1) == torch.arange(ways, device=labels.device)).to(dtype)


def class_feature_maps(features: Tensor, labels: Tensor, ways: int) -> Tensor:
    """``F_i = sum_{x in S_i} f(x)``: ``[ways, C, H, W]`` from support maps ``[N, C, H, W]``."""
    return torch.einsum("nk,nchw->kchw", one_hot(labels, ways, features.dtype), features)


def relation_pairs(class_maps: Tensor, query_maps: Tensor) -> Tensor:
    """``C(F_i, f(x_j))`` for every query ``j`` and class ``i``: ``[Nq * ways, 2C, H, W]``,
    query-major (row ``j * ways + i``), the class map's channels first."""
    queries, ways = query_maps.shape[0], class_maps.shape[0]
    classes = class_maps.unsqueeze(0).expand(queries, -1, -1, -1, -1)
    query = query_maps.unsqueeze(1).expand(-1, ways, -1, -1, -1)
    return torch.cat((classes, query), dim=2).flatten(0, 1)


class RelationNet(MetaLearner, name="relation"):
    """Relation Networks over an embedding ``model`` that keeps feature maps.

    ``model`` must declare ``feature_shape = (C, H, W)`` of its output maps (e.g.
    `metalab.nn.RelationEmbedding`, ``model.name: relation-embedding``). The relation
    module ``g`` is this learner's ``relation`` attribute, meta-learned with the embedding.

    Args:
        model: embedding module ``f``: ``[N, ...]`` inputs to ``[N, C, H, W]`` maps.
        relation_hidden: filters of the relation module's two conv blocks (64 in the paper).
        fc_hidden: width of its first fully connected layer (8 in the paper).
        relation: a relation module to use instead (``[P, 2C, H, W]`` pairs to ``[P]``
            scores in [0, 1]); ``None`` builds the paper's from ``model.feature_shape``.
        strategy: ``"loop"`` over tasks or ``"vmap"``.
    """

    model_role = "embedding"
    adapt_options = ("ways",)

    def __init__(self, model: nn.Module, relation_hidden: int = 64, fc_hidden: int = 8,
                 relation: nn.Module | None = None, strategy: str = "loop") -> None:
        super().__init__("cross_entropy", strategy)
        self.model = model
        if relation is None:
            shape = getattr(model, "feature_shape", None)
            if shape is None or len(shape) != 3:
                raise ValueError(f"model must keep feature maps and declare feature_shape "
                                 f"(C, H, W) (e.g. model.name: relation-embedding), got "
                                 f"{type(model).__name__} with feature_shape={shape!r}")
            relation = RelationModule(tuple(shape), relation_hidden, fc_hidden)
        self.relation = relation

    def adapt_task(self, support_x: Tensor, support_y: Tensor, *, training: bool,
                   ways: int | None = None) -> Tensor:
        """The class feature maps ``[ways, C, H, W]`` (``ways``: the batch's, else the
        largest label + 1)."""
        ways = support_ways(support_y, ways)
        return class_feature_maps(self.model(support_x), support_y, ways)

    def predict(self, class_maps: Tensor, x: Tensor) -> Tensor:
        """Relation scores ``r [N, ways]`` in [0, 1] of the queries ``x`` to each class."""
        pairs = relation_pairs(class_maps, self.model(x))
        return self.relation(pairs).reshape(x.shape[0], class_maps.shape[0])

    @property
    def loss_name(self) -> str:
        return "mse_one_hot"

    def loss_fn(self, outputs: Tensor, targets: Tensor) -> Tensor:
        """Eq. 3: mean of ``(r_{i,j} - 1(y_j == i))^2`` over the queries and classes."""
        return F.mse_loss(outputs, one_hot(targets, outputs.shape[-1], outputs.dtype))
