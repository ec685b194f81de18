"""The networks of the neural-process family: CNP, NP and ANP share these parts.

- a deterministic encoder ``r_i = h(x_i, y_i)`` over the context pairs, aggregated by the
  mean ``r = (1/n) sum_i r_i`` (CNP, Garnelo et al. 2018a, eq. 2-3) or by multi-head
  cross-attention from each target input to the context inputs (ANP, Kim et al. 2019);
- a latent encoder ``s = (1/n) sum_i s(x_i, y_i)`` giving a diagonal Gaussian
  ``q(z | context) = N(mu(s), diag(sigma(s)^2))`` with ``sigma = 0.1 + 0.9 sigmoid(.)``
  (NP, Garnelo et al. 2018b; the ANP paper's parametrisation);
- a decoder ``g(x, r, z) -> (mu, sigma^2)`` with ``sigma = min_std + (1 - min_std)
  softplus(.)``, a floor that keeps the predictive variance positive.

Shapes are per task: contexts ``[n, d]``, targets ``[m, d]``; a latent sample may carry
leading sample dimensions ``[..., latent]``, which the decoder's output keeps.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metalab.validation import check_positive_int


def mlp(sizes: Sequence[int]) -> nn.Sequential:
    """Linear layers of ``sizes`` with ReLU between them (none after the last)."""
    layers: list[nn.Module] = []
    for index, (width, size) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(width, size))
        if index < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class MultiHeadCrossAttention(nn.Module):
    """Multi-head scaled dot-product attention (Vaswani et al. 2017) of queries to keys.

    ``head_h = softmax(Q W_q^h (K W_k^h)^T / sqrt(d_h)) V W_v^h`` for ``h = 1..heads``;
    the output is ``concat_h(head_h) W_o``, of width ``width`` (``d_h = width / heads``).
    """

    def __init__(self, key_features: int, value_features: int, width: int, heads: int) -> None:
        super().__init__()
        self.heads = check_positive_int("attention_heads", heads)
        if width % heads:
            raise ValueError(f"representation ({width}) must be divisible by attention_heads "
                             f"({heads})")
        self.head_width = width // heads
        self.query = nn.Linear(key_features, width, bias=False)
        self.key = nn.Linear(key_features, width, bias=False)
        self.value = nn.Linear(value_features, width, bias=False)
        self.output = nn.Linear(width, width)

    def _split(self, x: Tensor) -> Tensor:
        """``[..., n, width] -> [..., heads, n, head_width]``."""
        return x.unflatten(-1, (self.heads, self.head_width)).transpose(-3, -2)

    def forward(self, queries: Tensor, keys: Tensor, values: Tensor) -> Tensor:
        q, k, v = (self._split(layer(x)) for layer, x in
                   ((self.query, queries), (self.key, keys), (self.value, values)))
        weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(self.head_width), dim=-1)
        heads = (weights @ v).transpose(-3, -2).flatten(-2)
        return self.output(heads)


class NeuralProcessNet(nn.Module):
    """Encoders and decoder of a conditional, latent or attentive neural process.

    Args:
        in_features, out_features: sizes of ``x`` and ``y``.
        hidden: widths of the hidden layers of every MLP (encoders and decoder).
        representation: width of ``r_i``, ``s_i`` (and of the attention).
        deterministic: whether the deterministic path ``r`` exists (CNP, ANP).
        latent: width of ``z``; 0: no latent path (CNP).
        attention_heads: 0: mean aggregation; ``h > 0``: ``h``-head cross-attention (ANP).
        min_std: floor of the decoder's standard deviation.
    """

    def __init__(self, in_features: int = 1, out_features: int = 1,
                 hidden: Sequence[int] = (128, 128), representation: int = 128,
                 deterministic: bool = True, latent: int = 0, attention_heads: int = 0,
                 min_std: float = 0.01) -> None:
        super().__init__()
        check_positive_int("in_features", in_features)
        check_positive_int("out_features", out_features)
        check_positive_int("representation", representation)
        if latent < 0 or attention_heads < 0:
            raise ValueError(f"latent and attention_heads must be >= 0, got {latent} and "
                             f"{attention_heads}")
        if not deterministic and latent == 0:
            raise ValueError("a neural process needs a deterministic path or latent > 0")
        if attention_heads and not deterministic:
            raise ValueError("attention_heads > 0 needs the deterministic path "
                             "(deterministic: true)")
        if not 0 < min_std < 1:
            raise ValueError(f"min_std must be in (0, 1), got {min_std}")
        self.in_features, self.out_features = in_features, out_features
        self.latent, self.attention_heads, self.min_std = latent, attention_heads, min_std
        self.deterministic = deterministic
        pair = in_features + out_features
        hidden = list(hidden)
        self.deterministic_encoder = (mlp([pair, *hidden, representation])
                                      if deterministic else None)
        self.attention = None
        if attention_heads:
            self.input_embedding = mlp([in_features, representation, representation])
            self.attention = MultiHeadCrossAttention(representation, representation,
                                                     representation, attention_heads)
        self.latent_encoder = mlp([pair, *hidden, representation]) if latent else None
        self.latent_head = nn.Linear(representation, 2 * latent) if latent else None
        width = in_features + (representation if deterministic else 0) + latent
        self.decoder = mlp([width, *hidden, 2 * out_features])

    def deterministic_representation(self, context_x: Tensor, context_y: Tensor,
                                     target_x: Tensor) -> Tensor | None:
        """``r`` for each target input ``[m, representation]`` (``None`` without the path):
        the mean of ``r_i`` (CNP, NP) or attention from ``target_x`` to ``context_x`` (ANP)."""
        if self.deterministic_encoder is None:
            return None
        check_context(context_x, context_y)
        r_i = self.deterministic_encoder(torch.cat([context_x, context_y], dim=-1))
        if self.attention is None:
            return r_i.mean(dim=-2, keepdim=True).expand(*target_x.shape[:-1], -1)
        return self.attention(self.input_embedding(target_x), self.input_embedding(context_x),
                              r_i)

    def latent_distribution(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """``(mu, sigma)`` of ``q(z | {(x_i, y_i)})``, each ``[latent]``."""
        if self.latent_encoder is None:
            raise ValueError("this network has no latent path (latent: 0)")
        check_context(x, y)
        s = self.latent_encoder(torch.cat([x, y], dim=-1)).mean(dim=-2)
        mu, raw = self.latent_head(s).chunk(2, dim=-1)
        return mu, 0.1 + 0.9 * torch.sigmoid(raw)

    def decode(self, target_x: Tensor, representation: Tensor | None, z: Tensor | None
               ) -> tuple[Tensor, Tensor]:
        """``(mean, variance)`` at ``target_x [m, in]``, each ``[..., m, out]`` where ``...``
        are the leading sample dimensions of ``z [..., latent]``."""
        lead = z.shape[:-1] if z is not None else ()
        pieces = [target_x.expand(*lead, *target_x.shape)]
        if representation is not None:
            pieces.append(representation.expand(*lead, *representation.shape))
        if z is not None:
            pieces.append(z.unsqueeze(-2).expand(*lead, target_x.shape[-2], z.shape[-1]))
        mean, raw = self.decoder(torch.cat(pieces, dim=-1)).chunk(2, dim=-1)
        std = self.min_std + (1 - self.min_std) * F.softplus(raw)
        return mean, std ** 2


def check_context(x: Tensor, y: Tensor) -> None:
    """Context inputs ``[..., n, in]`` and targets ``[..., n, out]`` with ``n >= 1`` points."""
    if x.shape[-2] == 0:
        raise ValueError("a neural process needs at least one context point, got 0")
    if x.shape[:-1] != y.shape[:-1]:
        raise ValueError(f"context x and y must have the same number of points, got "
                         f"{tuple(x.shape)} and {tuple(y.shape)}")
