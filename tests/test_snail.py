"""SNAIL: causal convolution and attention against loops, causality, label equivariance."""

import math

import pytest
import torch
from tests.helpers import FlatEmbedding
from torch import nn

from metalab.algorithms.snail import SNAIL
from metalab.nn.snail import AttentionBlock, CausalConv1d, SNAILNet, tc_dilations

D, WAYS = 3, 4


def _conv_reference(x, weight, bias, dilation):
    """Explicit loops: out[b, t, o] = bias[o] + sum_{c, j} w[o, c, j] x[b, t - (k-1-j) d, c]."""
    batch, steps, _ = x.shape
    out_channels, in_channels, k = weight.shape
    out = torch.zeros(batch, steps, out_channels, dtype=x.dtype)
    for b in range(batch):
        for t in range(steps):
            for o in range(out_channels):
                total = float(bias[o])
                for c in range(in_channels):
                    for j in range(k):
                        s = t - (k - 1 - j) * dilation
                        if s >= 0:
                            total += float(weight[o, c, j] * x[b, s, c])
                out[b, t, o] = total
    return out


@pytest.mark.parametrize("dilation,kernel", [(1, 2), (2, 2), (4, 2), (2, 3)])
def test_causal_conv_matches_explicit_loops(dilation, kernel):
    torch.manual_seed(0)
    conv = CausalConv1d(3, 2, dilation, kernel).double()
    x = torch.randn(2, 7, 3, dtype=torch.float64)
    expected = _conv_reference(x, conv.weight.detach(), conv.bias.detach(), dilation)
    torch.testing.assert_close(conv(x).detach(), expected)


def test_attention_matches_explicit_loops():
    torch.manual_seed(1)
    block = AttentionBlock(3, key_size=4, value_size=2).double()
    x = torch.randn(2, 5, 3, dtype=torch.float64)
    out = block(x).detach()
    with torch.no_grad():
        q, k, v = block.query(x), block.key(x), block.value(x)
    for b in range(2):
        for t in range(5):
            scores = [float(q[b, t] @ k[b, s]) / math.sqrt(4) for s in range(t + 1)]
            top = max(scores)
            weights = [math.exp(s - top) for s in scores]
            read = sum(w * v[b, s] for s, w in enumerate(weights)) / sum(weights)
            torch.testing.assert_close(out[b, t, :3], x[b, t])
            torch.testing.assert_close(out[b, t, 3:], read)


def test_tc_dilations_cover_the_sequence():
    assert tc_dilations(1) == [1]
    assert tc_dilations(6) == [1, 2, 4]
    assert tc_dilations(26) == [1, 2, 4, 8, 16]
    assert tc_dilations(32) == [1, 2, 4, 8, 16]


def _net(steps=6):
    torch.manual_seed(2)
    return SNAILNet(D + WAYS, WAYS, steps, filters=4, key_sizes=(4, 5, 6),
                    value_sizes=(3, 4, 5)).double()


@pytest.mark.parametrize("t", [0, 2, 5])
def test_snail_net_is_causal(t):
    net = _net()
    x = torch.randn(1, 6, D + WAYS, dtype=torch.float64)
    later = x.clone()
    later[:, t + 1:] = torch.randn_like(later[:, t + 1:])
    torch.testing.assert_close(net(later)[:, : t + 1], net(x)[:, : t + 1], rtol=0, atol=1e-12)
    earlier = x.clone()
    earlier[:, t] += 1.0
    assert (net(earlier)[:, t] - net(x)[:, t]).abs().max() > 1e-6  # the test is not trivial


def _learner():
    torch.manual_seed(3)
    return SNAIL(FlatEmbedding(4, D), ways=WAYS, shots=1, filters=4, key_sizes=(4, 5, 6),
                 value_sizes=(3, 4, 5)).double()


def _episode():
    torch.manual_seed(4)
    return (torch.randn(WAYS, 2, 2, dtype=torch.float64), torch.tensor([2, 0, 3, 1]),
            torch.randn(5, 2, 2, dtype=torch.float64))


def test_each_query_is_classified_after_the_support_alone():
    learner = _learner()
    sx, sy, qx = _episode()
    state = learner.adapt_task(sx, sy, training=False, ways=WAYS)
    logits = learner.predict(state, qx)
    other = qx.clone()
    other[1:] = torch.randn_like(other[1:])
    torch.testing.assert_close(learner.predict(state, other)[0], logits[0], rtol=0, atol=1e-12)
    # the same as the network on the explicit sequence [support steps, query 0 with 0 label]
    features = learner.features(torch.cat((sx, qx[:1])))
    labels = torch.zeros(WAYS + 1, WAYS, dtype=torch.float64)
    labels[torch.arange(WAYS), sy] = 1.0
    steps = torch.cat((features, labels), dim=1).unsqueeze(0)
    torch.testing.assert_close(learner.step_logits(steps)[0, -1], logits[0])


def _relabelled_learner(learner, perm):
    """The learner with label channels and output rows permuted: old label c is new perm[c]."""
    new = _learner()
    new.load_state_dict(learner.state_dict())
    with torch.no_grad():
        for module in new.net.modules():
            if isinstance(module, (nn.Conv1d, nn.Linear)) and module is not new.net.output:
                old = module.weight[:, D:D + WAYS].clone()
                module.weight[:, D + perm] = old  # the raw steps stay the first channels
        new.net.output.weight[perm] = learner.net.output.weight.detach()
        new.net.output.bias[perm] = learner.net.output.bias.detach()
    return new


def test_relabelling_classes_permutes_the_scores():
    learner = _learner()
    sx, sy, qx = _episode()
    perm = torch.tensor([1, 3, 0, 2])
    logits = learner.adapt(sx, sy)(qx)
    relabelled = _relabelled_learner(learner, perm)
    new_logits = relabelled.adapt(sx, perm[sy])(qx)
    torch.testing.assert_close(new_logits[:, perm], logits)
    # without the tied weights, relabelling changes the outputs: the check is not trivial
    assert (learner.adapt(sx, perm[sy])(qx)[:, perm] - logits).abs().max() > 1e-6


def test_snail_rejects_other_ways():
    learner = _learner()
    sx, sy, _ = _episode()
    with pytest.raises(ValueError, match="ways=4"):
        learner.adapt_task(sx, sy, training=False, ways=5)
    with pytest.raises(ValueError, match="key_sizes"):
        SNAILNet(7, 4, 6, key_sizes=(4, 5))
    with pytest.raises(ValueError, match="strategy='loop' only, got 'vmap'"):
        SNAIL(FlatEmbedding(4, D), ways=WAYS, shots=1, strategy="vmap")


@pytest.mark.parametrize("name,shots", [("glyphs-5w1s", 1), ("glyphs-5w5s", 5),
                                        ("omniglot-5w1s", 1)])
def test_the_configs_build_the_scaled_down_stack(name, shots):
    from pathlib import Path

    import metalab
    from metalab.train.build import build_meta_learner
    from metalab.train.config import load_config

    path = Path(metalab.__file__).parent / "configs" / f"snail-{name}.yaml"
    learner = build_meta_learner(load_config(path))
    assert isinstance(learner, SNAIL) and learner.shots == shots
    attention = [m for m in learner.net.modules() if isinstance(m, AttentionBlock)]
    assert [a.key_size for a in attention] == [32, 128, 256]
    assert learner.net.blocks[0].query.in_features == 64 + 5  # Conv4 embedding + labels
