"""SNAIL's shared-prefix path against the full sequences it replaces, values and gradients."""

import pytest
import torch
from tests.helpers import FlatEmbedding

from metalab.algorithms.snail import SNAIL
from metalab.nn.snail import SNAILNet
from metalab.tasks.sequence import queries_after_support, with_label_channel

C, WAYS, QUERIES = 7, 4, 5


def _net(steps):
    torch.manual_seed(steps)
    return SNAILNet(C, WAYS, steps, filters=4, key_sizes=(4, 5, 6),
                    value_sizes=(3, 4, 5)).double()


def _full_sequences(net, prefix, last):
    """The reference: one whole sequence ``[prefix, last_b]`` per last step, its final output."""
    return net(queries_after_support(prefix, last))[:, -1]


def _value_and_grads(net, logits_of, prefix, last, probe):
    prefix, last = prefix.clone().requires_grad_(), last.clone().requires_grad_()
    logits = logits_of(net, prefix, last)
    inputs = [prefix, last, *net.parameters()]
    return logits.detach(), torch.autograd.grad((logits * probe).sum(), inputs)


# 6, 26, 21: the 5w1s, 5w5s and 20w1s sequences; 2, 3, 5, 9, 17 put the query just past a
# power of two, where the largest dilation first reaches into the prefix (or does not).
@pytest.mark.parametrize("steps", [2, 3, 5, 6, 9, 17, 21, 26])
def test_last_step_after_equals_the_full_sequences_values_and_gradients(steps):
    net = _net(steps)
    gen = torch.Generator().manual_seed(100 + steps)
    prefix = torch.randn(steps - 1, C, dtype=torch.float64, generator=gen)
    last = torch.randn(QUERIES, C, dtype=torch.float64, generator=gen)
    probe = torch.randn(QUERIES, WAYS, dtype=torch.float64, generator=gen)
    expected, expected_grads = _value_and_grads(net, _full_sequences, prefix, last, probe)
    logits, grads = _value_and_grads(net, SNAILNet.last_step_after, prefix, last, probe)
    torch.testing.assert_close(logits, expected, rtol=0, atol=1e-12)
    names = ["prefix", "last_steps", *(name for name, _ in net.named_parameters())]
    for name, grad, want in zip(names, grads, expected_grads, strict=True):
        assert want.abs().max() > 0, name  # every parameter and input matters here
        torch.testing.assert_close(grad, want, rtol=0, atol=1e-10, msg=name)


def test_last_step_after_an_empty_prefix_is_the_one_step_sequences():
    net = _net(6)
    last = torch.randn(QUERIES, C, dtype=torch.float64,
                       generator=torch.Generator().manual_seed(1))
    prefix = last.new_zeros(0, C)
    torch.testing.assert_close(net.last_step_after(prefix, last),
                               _full_sequences(net, prefix, last), rtol=0, atol=1e-12)


def test_snail_predict_equals_each_query_after_the_support_with_gradients():
    torch.manual_seed(3)
    learner = SNAIL(FlatEmbedding(4, 3), ways=WAYS, shots=2, filters=4, key_sizes=(4, 5, 6),
                    value_sizes=(3, 4, 5)).double()
    sx = torch.randn(2 * WAYS, 2, 2, dtype=torch.float64)
    sy = torch.arange(WAYS).repeat(2)
    qx = torch.randn(QUERIES, 2, 2, dtype=torch.float64)
    probe = torch.randn(QUERIES, WAYS, dtype=torch.float64)

    def reference(state):
        features = learner.features(qx)
        steps = with_label_channel(features, features.new_zeros(QUERIES, WAYS))
        return _full_sequences(learner.net, state, steps)

    results = []
    for logits_of in (lambda state: learner.predict(state, qx), reference):
        logits = logits_of(learner.adapt_task(sx, sy, training=False, ways=WAYS))
        grads = torch.autograd.grad((logits * probe).sum(), list(learner.parameters()))
        results.append((logits.detach(), grads))
    (logits, grads), (expected, expected_grads) = results
    torch.testing.assert_close(logits, expected, rtol=0, atol=1e-12)
    for grad, want in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(grad, want, rtol=0, atol=1e-10)


def test_last_step_after_rejects_batched_prefixes():
    net = _net(6)
    with pytest.raises(ValueError, match=r"prefix must be \[P, C\]"):
        net.last_step_after(torch.zeros(1, 5, C, dtype=torch.float64),
                            torch.zeros(3, C, dtype=torch.float64))
