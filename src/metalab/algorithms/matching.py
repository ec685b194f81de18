"""Matching Networks without full context embeddings (Vinyals et al., NeurIPS 2016).

A query's label distribution is an attention-weighted sum of the support labels (eq. 1),
the attention a softmax over cosine similarities of the embeddings (eq. 2):

    P(y | x, S) = sum_i a(x, x_i) y_i,     a(x, x_i) = softmax_i( s * cos(f(x), f(x_i)) )

with one-hot ``y_i`` and the same embedding ``f`` for queries and support (the paper's
``g = f`` without the context LSTMs). ``s`` scales the cosines (1 in the paper); the
training loss is ``-log P(y | x, S)``, so `predict` returns log-probabilities, which
``cross_entropy`` scores exactly (their log-sum-exp is 0).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metalab.algorithms.base import MetaLearner
from metalab.tasks import TaskBatch


class MatchingNet(MetaLearner, name="matching"):
    """Matching Networks over an embedding ``model`` (e.g. ``Conv4(out_features=None)``).

    Args:
        model: embedding network mapping ``[N, ...]`` inputs to ``[N, D]`` (or more dims,
            flattened).
        scale: the factor ``s`` on the cosine similarities before the softmax.
        strategy: ``"loop"`` over tasks or ``"vmap"``.
    """

    model_role = "embedding"
    adapt_options = ("ways",)

    def __init__(self, model: nn.Module, scale: float = 1.0, strategy: str = "loop") -> None:
        super().__init__("cross_entropy", strategy)
        if not float(scale) > 0:
            raise ValueError(f"scale must be > 0, got {scale!r}")
        self.model = model
        self.scale = float(scale)

    def embed(self, x: Tensor) -> Tensor:
        """Unit-norm embeddings ``[N, D]``."""
        return F.normalize(self.model(x).flatten(1), dim=1)

    def task_options(self, batch: TaskBatch) -> dict[str, int]:
        if batch.num_classes is None:
            raise ValueError("MatchingNet needs a classification TaskBatch (num_classes is None)")
        return {"ways": batch.num_classes}

    def adapt_task(self, support_x: Tensor, support_y: Tensor, *, training: bool,
                   ways: int | None = None) -> tuple[Tensor, Tensor]:
        """The support set's unit embeddings ``[Ns, D]`` and one-hot labels ``[Ns, ways]``."""
        ways = int(support_y.max()) + 1 if ways is None else ways
        one_hot = (support_y.unsqueeze(-1) == torch.arange(ways, device=support_y.device))
        return self.embed(support_x), one_hot.to(support_x.dtype)

    def predict(self, state: tuple[Tensor, Tensor], x: Tensor) -> Tensor:
        """``log P(y | x, S)`` ``[N, ways]``."""
        support, one_hot = state
        attention = torch.softmax(self.scale * self.embed(x) @ support.T, dim=-1)
        return torch.log((attention @ one_hot).clamp_min(torch.finfo(x.dtype).tiny))
