"""Matching Networks' full context embeddings against the paper's appendix, in float64.

The expected side runs the support set through torch's fused bidirectional `nn.LSTM` (a
peer kernel, weights copied from the learner's cells), writes the attention LSTM's gates as
the paper's ``W_x f'(x) + W_h [h_{k-1}, r_{k-1}] + b`` with the sigmoid and tanh by hand,
and the cosine attention over labels in plain Python.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

import metalab
from helpers import classification_batch
from metalab.algorithms.matching import MatchingNet
from metalab.train.build import build_meta_learner
from metalab.train.config import load_config

DIM = 4


class Linear(nn.Module):
    """A fixed linear embedding ``f' = g'`` the expected side recomputes."""

    feature_dim = DIM

    def __init__(self, features: int, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.weight = nn.Parameter(torch.randn(DIM, features, generator=g, dtype=torch.float64)
                                   / math.sqrt(features))

    def forward(self, x):
        return x.flatten(1) @ self.weight.T


def _learner(steps=None, strategy="loop", seed=0):
    torch.manual_seed(seed)
    return MatchingNet(Linear(16, seed), scale=4.0, fce=True, fce_steps=steps,
                       strategy=strategy).double()


def _support_by_torch_lstm(learner, support):
    """h(forward) + h(backward) + g' with torch's fused bidirectional LSTM."""
    lstm = nn.LSTM(DIM, DIM, bidirectional=True).double()
    context = learner.support_context
    with torch.no_grad():
        for suffix, cell in (("l0", context.forward_cell), ("l0_reverse", context.backward_cell)):
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(lstm, f"{name}_{suffix}").copy_(getattr(cell, name))
        out, _ = lstm(support.unsqueeze(1))
    out = out[:, 0]
    return out[:, :DIM] + out[:, DIM:] + support


def _sigmoid(z):
    return 1.0 / (1.0 + torch.exp(-z))


def _query_by_hand(learner, query, support, steps):
    """The appendix's attLSTM: gates = W_x f'(x) + W_h [h_{k-1}, r_{k-1}] + b."""
    cell = learner.query_attention.cell
    w_x = cell.weight_ih[:, :DIM].detach()
    w_h = torch.cat((cell.weight_hh, cell.weight_ih[:, DIM:]), dim=1).detach()
    b = (cell.bias_ih + cell.bias_hh).detach()
    h, c = query.clone(), torch.zeros(DIM, dtype=torch.float64)
    for _ in range(steps):
        logits = torch.stack([h @ g for g in support])
        weights = torch.exp(logits - logits.max())
        r = sum(w * g for w, g in zip(weights / weights.sum(), support, strict=True))
        z = w_x @ query + w_h @ torch.cat((h, r)) + b
        i, f, g, o = z[:DIM], z[DIM:2 * DIM], z[2 * DIM:3 * DIM], z[3 * DIM:]
        c = _sigmoid(f) * c + _sigmoid(i) * torch.tanh(g)
        h = _sigmoid(o) * torch.tanh(c) + query
    return h


def _log_probabilities_by_hand(learner, sx, sy, qx, ways, steps):
    with torch.no_grad():
        support = _support_by_torch_lstm(learner, learner.model(sx))
        queries = [_query_by_hand(learner, q, support, steps or len(sx))
                   for q in learner.model(qx)]
    rows = []
    for query in queries:
        cosines = [float(query @ s) / float(query.norm() * s.norm()) for s in support]
        weights = [math.exp(learner.scale * cos) for cos in cosines]
        rows.append([math.log(sum(w for w, y in zip(weights, sy, strict=True) if int(y) == k)
                              / sum(weights)) for k in range(ways)])
    return torch.tensor(rows, dtype=torch.float64)


@pytest.mark.parametrize("steps", [1, 3, None])
def test_fce_log_probabilities_and_loss_match_the_appendix(steps):
    batch = classification_batch(tasks=2, ways=3, shots=2, queries=2, size=4, seed=3)
    learner = _learner(steps)
    losses, _ = learner.task_losses(batch)
    for t in range(len(batch)):
        expected = _log_probabilities_by_hand(learner, batch.support_x[t], batch.support_y[t],
                                              batch.query_x[t], 3, steps)
        actual = learner.adapt(batch.support_x[t], batch.support_y[t])(batch.query_x[t])
        torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-12)
        nll = -sum(expected[i, int(y)] for i, y in enumerate(batch.query_y[t])) / len(expected)
        assert losses[t].item() == pytest.approx(float(nll), rel=1e-10)


def test_the_steps_and_the_context_change_the_prediction():
    batch = classification_batch(tasks=1, ways=3, shots=2, queries=2, size=4, seed=4)
    sx, sy, qx = batch.support_x[0], batch.support_y[0], batch.query_x[0]
    outputs = [_learner(k).adapt(sx, sy)(qx) for k in (1, 3)]
    assert not torch.allclose(outputs[0], outputs[1])
    plain = MatchingNet(Linear(16), scale=4.0).adapt(sx, sy)(qx)
    assert not torch.allclose(outputs[0], plain)


def test_fce_vmap_matches_the_loop_with_gradients():
    batch = classification_batch(tasks=3, ways=3, shots=2, queries=2, size=4, seed=2)
    loop, vmap = _learner(2), _learner(2, strategy="vmap")
    loop_loss, vmap_loss = loop.meta_loss(batch)[0], vmap.meta_loss(batch)[0]
    torch.testing.assert_close(vmap_loss, loop_loss, rtol=1e-12, atol=1e-12)
    loop_loss.backward()
    vmap_loss.backward()
    for (name, p), q in zip(loop.named_parameters(), vmap.parameters(), strict=True):
        assert p.grad is not None and p.grad.abs().sum() > 0, name
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-9, atol=1e-12, msg=name)


def test_fce_options_are_checked():
    with pytest.raises(ValueError, match="needs embedding_dim"):
        MatchingNet(nn.Flatten(), fce=True)
    with pytest.raises(ValueError, match="fce_steps must be an integer >= 1"):
        MatchingNet(Linear(16), fce=True, fce_steps=0)
    assert MatchingNet(nn.Flatten(), fce=True, embedding_dim=3).support_context is not None


def test_the_fce_config_builds():
    path = Path(metalab.__file__).parent / "configs" / "matching-fce-glyphs-5w1s.yaml"
    learner = build_meta_learner(load_config(path))
    assert learner.query_attention is not None and learner.query_attention.cell.hidden_size == 64
