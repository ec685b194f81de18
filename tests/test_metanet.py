"""Meta Networks: each part against a plain reference, then the whole prediction against a
re-derivation of Algorithm 1 written out below with explicit loops (float64)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from tests.helpers import classification_batch
from torch import nn

from metalab.algorithms import ALGORITHMS
from metalab.algorithms.metanet import MetaNet
from metalab.nn import Conv4
from metalab.nn.fast_weights import CoordinateLSTM, log_and_sign, mixed_conv, mixed_linear
from metalab.train.build import build_meta_learner
from metalab.train.config import load_config

CONFIGS = __import__("pathlib").Path(__file__).parents[1] / "src" / "metalab" / "configs"


def test_gradient_preprocessing_is_the_papers_formula():
    p = 7.0
    g = torch.tensor([1.0, -0.5, 1e-4, -2e-4, 0.0, math.exp(-p)], dtype=torch.float64)
    expected = torch.tensor([
        [0.0, 1.0],                      # |g| >= e^-p: (log|g| / p, sign g)
        [math.log(0.5) / p, -1.0],
        [-1.0, math.exp(p) * 1e-4],      # |g| < e^-p: (-1, e^p g)
        [-1.0, -math.exp(p) * 2e-4],
        [-1.0, 0.0],
        [-1.0, 1.0],                     # the boundary belongs to the large branch
    ], dtype=torch.float64)
    torch.testing.assert_close(log_and_sign(g, p), expected)


def test_a_convolution_with_per_query_mixed_kernels_equals_one_convolution_per_query():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, padding=1).double()
    x = torch.randn(5, 3, 6, 6, dtype=torch.float64)
    fast = torch.randn(2, 4, 3, 3, 3, dtype=torch.float64)
    mix = torch.softmax(torch.randn(5, 2, dtype=torch.float64), dim=1)
    expected = torch.cat([F.conv2d(x[q:q + 1], mix[q, 0] * fast[0] + mix[q, 1] * fast[1],
                                   conv.bias, padding=1) for q in range(5)])
    torch.testing.assert_close(mixed_conv(conv, x, fast, mix), expected)
    torch.testing.assert_close(mixed_conv(conv, x, fast[1], None),
                               F.conv2d(x, fast[1], conv.bias, padding=1))


def test_a_linear_map_with_per_row_mixed_weights():
    torch.manual_seed(1)
    x = torch.randn(4, 3, dtype=torch.float64)
    fast = torch.randn(2, 5, 3, dtype=torch.float64)
    mix = torch.softmax(torch.randn(4, 2, dtype=torch.float64), dim=1)
    expected = torch.stack([(mix[q, 0] * fast[0] + mix[q, 1] * fast[1]) @ x[q]
                            for q in range(4)])
    torch.testing.assert_close(mixed_linear(x, fast, mix), expected)


def test_the_coordinatewise_lstm_is_torchs_lstm_run_over_the_chunks_of_each_coordinate():
    torch.manual_seed(2)
    generator = CoordinateLSTM(hidden=6).double()
    peer = nn.LSTM(2, 6).double()
    for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
        getattr(peer, f"{name}_l0").data.copy_(getattr(generator.cell, name))
    sequence = torch.randn(3, 7, 2, dtype=torch.float64)      # 3 chunks, 7 coordinates
    hidden = peer(sequence)[0][-1]                             # last step, every coordinate
    expected = hidden @ generator.out.weight[0] + generator.out.bias
    torch.testing.assert_close(generator(sequence), expected)


class TinyNet(nn.Module):
    """One convolution block (no batch norm, so one example's loss does not depend on the
    others') and a linear head: the smallest model Meta Networks accepts."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU()),
                                  nn.Flatten())
        self.head = nn.Linear(2 * 4 * 4, 3)


def _reference_prediction(learner: MetaNet, sx, sy, qx):
    """Algorithm 1 of the paper, written out with loops and explicit weights."""
    p = learner.preprocess_p

    def pre(g):
        small = g.abs() < math.exp(-p)
        return torch.stack((torch.where(small, -1.0, torch.log(g.abs().clamp_min(1e-300)) / p),
                            torch.where(small, math.exp(p) * g, torch.sign(g))), dim=-1)

    def net_logits(net, x, conv_w, fc1_w, head_w):
        h = F.relu(F.conv2d(x, conv_w, net.body[0][0].bias, padding=1)).flatten(1)
        return F.linear(F.relu(h @ fc1_w.T), head_w, net.head.bias)

    def weights(net):
        return [net.body[0][0].weight, net.fc1.weight, net.head.weight]

    base, rep = learner.base, learner.representation
    # Task-level fast weights Q*: chunk losses' gradients through the LSTM, per coordinate.
    chunks = [[0, 1], [2, 3]]
    grads = [torch.autograd.grad(F.cross_entropy(net_logits(rep, sx[c], *weights(rep)), sy[c]),
                                 weights(rep)) for c in chunks]
    task_fast = []
    for k, generator in enumerate((learner.task_conv, learner.task_fc, learner.task_fc)):
        lstm = nn.LSTM(2, generator.cell.hidden_size).double()
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(lstm, f"{name}_l0").data.copy_(getattr(generator.cell, name))
        sequence = torch.stack([pre(g[k].flatten()) for g in grads])
        task_fast.append(generator.out(lstm(sequence)[0][-1]).view_as(grads[0][k]))

    def key(x):
        q_conv, q_fc1 = rep.body[0][0], task_fast[1]
        h = (F.relu(F.conv2d(x, q_conv.weight, q_conv.bias, padding=1))
             + F.relu(F.conv2d(x, task_fast[0], q_conv.bias, padding=1))).flatten(1)
        return h @ rep.fc1.weight.T + h @ q_fc1.T

    # Example-level fast weights W*_i from each support example's own loss gradient.
    memory = []
    for i in range(len(sx)):
        g = torch.autograd.grad(F.cross_entropy(net_logits(base, sx[i:i + 1], *weights(base)),
                                                sy[i:i + 1]), weights(base))
        memory.append([learner.example_conv(pre(g[0])), learner.example_fc(pre(g[1])),
                       learner.example_fc(pre(g[2]))])
    support_keys = key(sx)
    rows = []
    for q in range(len(qx)):
        r = key(qx[q:q + 1])[0]
        cos = torch.stack([torch.dot(r, k) / (r.norm() * k.norm()) for k in support_keys])
        a = torch.exp(cos) / torch.exp(cos).sum()
        w_conv, w_fc1, w_head = (sum(a[i] * memory[i][j] for i in range(len(sx)))
                                 for j in range(3))
        conv = base.body[0][0]
        h = (F.relu(F.conv2d(qx[q:q + 1], conv.weight, conv.bias, padding=1))
             + F.relu(F.conv2d(qx[q:q + 1], w_conv, conv.bias, padding=1))).flatten(1)
        h = F.relu(h @ base.fc1.weight.T) + F.relu(h @ w_fc1.T)
        rows.append((base.head(h) + h @ w_head.T)[0])
    return torch.stack(rows)


def test_the_prediction_is_algorithm_one_of_the_paper():
    torch.manual_seed(3)
    learner = MetaNet(TinyNet(), generator_hidden=5, key_chunks=2).double()
    sx = torch.randn(4, 1, 4, 4, dtype=torch.float64)
    sy = torch.tensor([0, 1, 2, 0])
    qx = torch.randn(3, 1, 4, 4, dtype=torch.float64)
    state = learner.adapt_task(sx, sy, training=True)
    torch.testing.assert_close(learner.predict(state, qx),
                               _reference_prediction(learner, sx, sy, qx))


def test_only_the_linear_layers_get_fast_weights_when_asked():
    learner = MetaNet(TinyNet(), generator_hidden=3, key_chunks=2, fast_layers="linear")
    assert [tuple(w.shape) for w in learner.base.fast_parameterised()] == [(32, 32), (3, 32)]
    sx, sy = torch.randn(4, 1, 4, 4), torch.tensor([0, 1, 2, 0])
    keys, memory, task_fast = learner.adapt_task(sx, sy, training=False)
    assert [tuple(m.shape) for m in memory] == [(4, 32, 32), (4, 3, 32)]
    assert learner.predict((keys, memory, task_fast), torch.randn(2, 1, 4, 4)).shape == (2, 3)


def test_meta_training_reaches_the_slow_weights_and_both_generators():
    torch.manual_seed(4)
    learner = MetaNet(Conv4(1, hidden=4, out_features=3, image_size=16), generator_hidden=3,
                      key_chunks=3).double()
    batch = classification_batch(tasks=2, ways=3, shots=1, queries=2, size=16, seed=1)
    learner.meta_loss(batch)[0].backward()
    without_gradient = {n for n, p in learner.named_parameters() if p.grad is None
                        or not p.grad.abs().sum() > 0}
    # The representation network's classifier only produces meta information, which
    # enters the generators as an input (no gradient flows back through it).
    assert without_gradient == {"representation.head.weight", "representation.head.bias"}


def test_adapting_at_meta_test_needs_no_graph_and_predicts_every_query():
    learner = MetaNet(Conv4(1, hidden=4, out_features=5, image_size=16), generator_hidden=3)
    batch = classification_batch(tasks=1, ways=5, shots=1, queries=2, size=16,
                                 dtype=torch.float32)
    predictor = learner.adapt(batch.support_x[0], batch.support_y[0])
    outputs = predictor(batch.query_x[0])
    assert outputs.shape == (10, 5) and not outputs.requires_grad


@pytest.mark.parametrize("kwargs, message", [
    ({"strategy": "vmap"}, "strategy='loop' only"),
    ({"fast_layers": "conv"}, "fast_layers must be one of"),
    ({"key_chunks": 0}, "key_chunks"),
])
def test_bad_options_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MetaNet(TinyNet(), **kwargs)


def test_a_model_without_convolution_blocks_is_a_clear_error():
    with pytest.raises(ValueError, match="Sequential `body` and a Linear `head`"):
        MetaNet(Conv4(out_features=None))
    with pytest.raises(ValueError, match="metanet needs a model whose body"):
        model = TinyNet()
        model.body.insert(1, nn.Linear(2, 2))
        MetaNet(model)


def test_an_unlabelled_support_set_is_a_clear_error():
    with pytest.raises(ValueError, match="support_y is None"):
        MetaNet(TinyNet()).adapt(torch.randn(4, 1, 4, 4))


def test_the_config_builds_both_networks_from_the_model_section():
    assert ALGORITHMS["metanet"] is MetaNet
    shipped = build_meta_learner(load_config(CONFIGS / "metanet-glyphs-5w1s.yaml"))
    assert shipped.base.head.out_features == 5 and shipped.base.blocks == []
    learner = build_meta_learner(load_config(CONFIGS / "metanet-glyphs-5w1s.yaml",
                                             ["algorithm.fast_layers=all"]))
    assert len(learner.base.blocks) == len(learner.representation.blocks) == 4
    base, rep = learner.base.body[0][0].weight, learner.representation.body[0][0].weight
    assert base.shape == rep.shape and not torch.equal(base, rep)  # a fresh copy
