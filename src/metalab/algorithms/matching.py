"""Matching Networks, with or without full context embeddings (Vinyals et al., NeurIPS 2016).

A query's label distribution is an attention-weighted sum of the support labels (eq. 1),
the attention a softmax over cosine similarities of the embeddings (eq. 2):

    P(y | x, S) = sum_i a(x, x_i) y_i,     a(x, x_i) = softmax_i( s * cos(f(x), f(x_i)) )

with one-hot ``y_i`` and the same embedding ``f`` for queries and support (the paper's
``g = f`` without the context LSTMs). ``s`` scales the cosines (1 in the paper); the
training loss is ``-log P(y | x, S)``, so `predict` returns log-probabilities, which
``cross_entropy`` scores exactly (their log-sum-exp is 0).

Full context embeddings (``fce=True``, the paper's appendix A) make both embeddings depend
on the support set S. With ``g'`` = ``f'`` = the model's features (dimension D):

- support, a bidirectional LSTM over ``g'(x_1), ..., g'(x_n)`` in the support set's order:
  ``g(x_i, S) = h_i(forward) + h_i(backward) + g'(x_i)`` (each direction an LSTM of hidden
  size D started from zeros);
- query, an attention LSTM unrolled for K steps (``fce_steps``; ``None``: K = n):

      r_{k-1} = sum_i softmax_i( h_{k-1}^T g(x_i, S) ) g(x_i, S)
      h^_k, c_k = LSTM( f'(x), [h_{k-1}, r_{k-1}], c_{k-1} )
      h_k = h^_k + f'(x),            f(x, S) = h_K,

  started from ``h_0 = f'(x)`` (``h^_0 = 0``) and ``c_0 = 0``. The LSTM's gates are affine
  in ``(f'(x), h_{k-1}, r_{k-1})``; it is computed as a cell whose input is ``[f'(x),
  r_{k-1}]`` and whose hidden state is ``h_{k-1}`` (the same function class).

The LSTM steps are written with tensor operations (`lstm_step`) so that the ``"vmap"``
strategy works (torch's fused LSTM kernels have no batching rule); the parameters live in
`torch.nn.LSTMCell` modules, and the tests compare with torch's own cells. With FCE the
prediction depends on the order of the support set (the bidirectional LSTM reads it as a
sequence), as in the paper.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metalab.algorithms.base import MetaLearner, embedding_dimension, support_ways


def lstm_step(cell: nn.LSTMCell, x: Tensor, h: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    """One step of ``cell`` (gates i, f, g, o as in `torch.nn.LSTMCell`), vmap-compatible."""
    gates = x @ cell.weight_ih.T + cell.bias_ih + h @ cell.weight_hh.T + cell.bias_hh
    i, f, g, o = gates.chunk(4, dim=-1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


def lstm_states(cell: nn.LSTMCell, inputs: Tensor) -> Tensor:
    """The hidden states ``[n, D]`` of ``cell`` run over ``inputs [n, D_in]`` from zeros."""
    h = c = inputs.new_zeros(cell.hidden_size)
    states = []
    for x in inputs:
        h, c = lstm_step(cell, x, h, c)
        states.append(h)
    return torch.stack(states)


class SupportContext(nn.Module):
    """``g(x_i, S) = h_i(forward) + h_i(backward) + g'(x_i)`` (bidirectional LSTM)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.forward_cell = nn.LSTMCell(dim, dim)
        self.backward_cell = nn.LSTMCell(dim, dim)

    def forward(self, support: Tensor) -> Tensor:
        backward = lstm_states(self.backward_cell, support.flip(0)).flip(0)
        return lstm_states(self.forward_cell, support) + backward + support


class QueryAttention(nn.Module):
    """``f(x, S) = h_K`` of the attention LSTM over the support's ``g(x_i, S)``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.cell = nn.LSTMCell(2 * dim, dim)

    def forward(self, queries: Tensor, support: Tensor, steps: int) -> Tensor:
        h, c = queries, torch.zeros_like(queries)
        for _ in range(steps):
            read = torch.softmax(h @ support.T, dim=-1) @ support
            hidden, c = lstm_step(self.cell, torch.cat((queries, read), dim=-1), h, c)
            h = hidden + queries
        return h


class MatchingNet(MetaLearner, name="matching"):
    """Matching Networks over an embedding ``model`` (e.g. ``Conv4(out_features=None)``).

    Args:
        model: embedding network mapping ``[N, ...]`` inputs to ``[N, D]`` (or more dims,
            flattened).
        scale: the factor ``s`` on the cosine similarities before the softmax.
        fce: full context embeddings (module doc); needs the embedding's dimension D from
            ``embedding_dim`` or the model's ``feature_dim``.
        fce_steps: the attention LSTM's unrolling steps K (``None``: the support size).
        embedding_dim: D, when the model does not declare ``feature_dim``.
        strategy: ``"loop"`` over tasks or ``"vmap"``.
    """

    model_role = "embedding"
    adapt_options = ("ways",)

    def __init__(self, model: nn.Module, scale: float = 1.0, fce: bool = False,
                 fce_steps: int | None = None, embedding_dim: int | None = None,
                 strategy: str = "loop") -> None:
        super().__init__("cross_entropy", strategy)
        if not float(scale) > 0:
            raise ValueError(f"scale must be > 0, got {scale!r}")
        if fce_steps is not None and not (isinstance(fce_steps, int) and fce_steps >= 1):
            raise ValueError(f"fce_steps must be an integer >= 1 or None, got {fce_steps!r}")
        self.model = model
        self.scale = float(scale)
        self.fce_steps = fce_steps
        self.support_context: SupportContext | None = None
        self.query_attention: QueryAttention | None = None
        if fce:
            dim = embedding_dimension(model, embedding_dim, "fce=True")
            self.support_context = SupportContext(dim)
            self.query_attention = QueryAttention(dim)

    def features(self, x: Tensor) -> Tensor:
        """The model's embeddings ``[N, D]`` (``g'`` and ``f'``)."""
        return self.model(x).flatten(1)

    def embed(self, x: Tensor) -> Tensor:
        """Unit-norm embeddings ``[N, D]`` (without context)."""
        return F.normalize(self.features(x), dim=1)

    def adapt_task(self, support_x: Tensor, support_y: Tensor, *, training: bool,
                   ways: int | None = None) -> tuple[Tensor, Tensor]:
        """The support set's embeddings ``g(x_i, S)`` ``[Ns, D]`` and one-hot labels
        ``[Ns, ways]``."""
        ways = support_ways(support_y, ways)
        one_hot = (support_y.unsqueeze(-1) == torch.arange(ways, device=support_y.device))
        support = self.features(support_x)
        if self.support_context is not None:
            support = self.support_context(support)
        return support, one_hot.to(support_x.dtype)

    def predict(self, state: tuple[Tensor, Tensor], x: Tensor) -> Tensor:
        """``log P(y | x, S)`` ``[N, ways]``."""
        support, one_hot = state
        queries = self.features(x)
        if self.query_attention is not None:
            steps = self.fce_steps if self.fce_steps is not None else support.shape[0]
            queries = self.query_attention(queries, support, steps)
        cosines = F.normalize(queries, dim=1) @ F.normalize(support, dim=1).T
        attention = torch.softmax(self.scale * cosines, dim=-1)
        return torch.log((attention @ one_hot).clamp_min(torch.finfo(x.dtype).tiny))
