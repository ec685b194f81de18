"""Matching Networks against the paper's equations written out by hand, in float64."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from helpers import classification_batch
from metalab.algorithms import ALGORITHMS
from metalab.algorithms.matching import MatchingNet


class Flatten(nn.Module):
    """A fixed linear embedding, so the expected side can recompute f(x) by hand."""

    def __init__(self, features: int, dim: int = 6, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.weight = nn.Parameter(torch.randn(dim, features, generator=g, dtype=torch.float64))

    def forward(self, x):
        return x.flatten(1) @ self.weight.T


def _cosine(a, b):
    dot = sum(float(p) * float(q) for p, q in zip(a, b, strict=True))
    norm = math.sqrt(sum(float(p) ** 2 for p in a)) * math.sqrt(sum(float(q) ** 2 for q in b))
    return dot / norm


def _log_probabilities_by_hand(f, sx, sy, qx, ways, scale):
    """log sum_i a(x, x_i) [y_i = k] with a = softmax over scale * cosine, per query."""
    with torch.no_grad():
        support = [f(x[None])[0] for x in sx]
        queries = [f(x[None])[0] for x in qx]
    rows = []
    for query in queries:
        weights = [math.exp(scale * _cosine(query, s)) for s in support]
        total = sum(weights)
        rows.append([math.log(sum(w for w, y in zip(weights, sy, strict=True) if int(y) == k)
                              / total) for k in range(ways)])
    return torch.tensor(rows, dtype=torch.float64)


@pytest.mark.parametrize("scale", [1.0, 7.5])
def test_log_probabilities_and_loss_match_the_equations(scale):
    batch = classification_batch(tasks=2, ways=3, shots=2, queries=2, size=4, seed=3)
    embedding = Flatten(16)
    learner = MatchingNet(embedding, scale=scale)
    losses, metrics = learner.task_losses(batch)
    for t in range(len(batch)):
        expected = _log_probabilities_by_hand(embedding, batch.support_x[t], batch.support_y[t],
                                              batch.query_x[t], 3, scale)
        actual = learner.adapt(batch.support_x[t], batch.support_y[t])(batch.query_x[t])
        torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-12)
        nll = -sum(expected[i, int(y)] for i, y in enumerate(batch.query_y[t])) / len(expected)
        assert losses[t].item() == pytest.approx(float(nll), rel=1e-12)
        accuracy = (expected.argmax(1) == batch.query_y[t]).double().mean().item()
        assert metrics["accuracy"][t].item() == pytest.approx(accuracy)


def test_registered_from_its_own_file_and_meta_gradient_reaches_the_embedding():
    assert ALGORITHMS["matching"] is MatchingNet
    batch = classification_batch(tasks=2, ways=3, shots=2, queries=2, size=4, seed=1)
    learner = MatchingNet(Flatten(16), scale=5.0)
    learner.meta_loss(batch)[0].backward()
    assert learner.model.weight.grad.abs().sum() > 0


def test_vmap_matches_the_loop():
    batch = classification_batch(tasks=3, ways=3, shots=2, queries=2, size=4, seed=2)
    loop = MatchingNet(Flatten(16), scale=3.0).task_losses(batch)[0]
    vmap = MatchingNet(Flatten(16), scale=3.0, strategy="vmap").task_losses(batch)[0]
    torch.testing.assert_close(vmap, loop, rtol=1e-12, atol=1e-12)


def test_bad_scale_is_a_clear_error():
    with pytest.raises(ValueError, match="scale must be > 0"):
        MatchingNet(Flatten(16), scale=0.0)
