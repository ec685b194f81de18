"""Conv4's fast paths (pooling before ReLU, gather-based max-pooling) change no number."""

import pytest
import torch
from torch import nn

from helpers import classification_batch
from metalab.algorithms import MAML
from metalab.nn import Conv4
from metalab.nn.pool import MaxPool2d


def _grads_up_to_second_order(pool, x, weight):
    """The output, the gradient and a second-order gradient through ``pool``."""
    y = torch.relu(pool(x * weight.view(1, -1, 1, 1)))
    (grad,) = torch.autograd.grad((y ** 2).sum(), weight, create_graph=True)
    (second,) = torch.autograd.grad((grad ** 2).sum(), (x,))
    return y.detach(), grad.detach(), second


@pytest.mark.parametrize("shape", [(5, 3, 8, 8), (4, 2, 7, 7), (3, 4, 6, 10)])
@pytest.mark.parametrize("ties", [False, True])
def test_gather_max_pool_matches_torch(shape, ties):
    torch.manual_seed(0)
    x = torch.randn(shape, dtype=torch.float64)
    if ties:  # many equal values (zeros after a ReLU, repeated entries)
        x = x.clamp(min=0).round()
    x.requires_grad_(True)
    weight = torch.rand(shape[1], dtype=torch.float64).add_(0.5).requires_grad_(True)
    ours = _grads_up_to_second_order(MaxPool2d(2), x, weight)
    reference = _grads_up_to_second_order(nn.MaxPool2d(2), x, weight)
    for a, b in zip(ours, reference, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_gather_max_pool_other_layouts_and_vmap():
    x = torch.randn(3, 4, 6, 6, dtype=torch.float64)
    expected = nn.MaxPool2d(2)(x)
    pool = MaxPool2d(2)
    torch.testing.assert_close(pool(x.contiguous(memory_format=torch.channels_last)), expected)
    torch.testing.assert_close(torch.func.vmap(pool)(x.unsqueeze(1)).squeeze(1), expected)
    values, indices = MaxPool2d(2, return_indices=True)(x)
    torch.testing.assert_close(values, expected)


def _old_conv4(model: Conv4) -> Conv4:
    """The same parameters with torch's pooling after the ReLU (the original block order)."""
    old = Conv4(hidden=6, image_size=16).double()
    old.load_state_dict(model.state_dict())
    for block in old.body[:4]:
        block[2], block[3] = nn.ReLU(), nn.MaxPool2d(2)
    return old


def test_conv4_second_order_maml_meta_gradient_is_unchanged():
    torch.manual_seed(0)
    model = Conv4(hidden=6, image_size=16).double()
    with torch.no_grad():  # no exact zeros, nothing special about ones
        for block in model.body[:4]:
            block[1].weight.uniform_(0.5, 1.5)
            block[1].bias.uniform_(-0.5, 0.5)
    old = _old_conv4(model)
    batch = classification_batch(tasks=2, ways=5, shots=2, queries=3)
    grads = []
    for net in (model, old):
        loss, _ = MAML(net, inner_lr=0.4, inner_steps=2).meta_loss(batch)
        loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in net.parameters()]))
    assert grads[1].abs().max() > 1e-3
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=1e-12 * grads[1].abs().max())


@pytest.mark.parametrize("channels", [1, 3])
def test_to_channels_last_keeps_values_and_makes_convolutions_nhwc(channels):
    from metalab.functional import to_channels_last

    x = torch.randn(4, 6, channels, 8, 8, dtype=torch.float64)[2]  # a view with an offset
    y = to_channels_last(x)
    assert torch.equal(y, x)
    conv = nn.Conv2d(channels, 4, 3, padding=1).double()
    assert conv(y).is_contiguous(memory_format=torch.channels_last)
    image = x[0]
    assert to_channels_last(image) is image  # other ranks unchanged


def test_channels_last_query_pass_keeps_the_meta_gradient():
    batch = classification_batch(tasks=2, ways=5, shots=2, queries=3)
    grads, layouts = [], []
    for outer in (False, True):
        torch.manual_seed(0)
        model = Conv4(hidden=6, image_size=16).double()
        model.outer_channels_last = outer
        model.body[0][0].register_forward_hook(lambda m, i, out, outer=outer: layouts.append(
            (outer, out.shape[0], out.is_contiguous(memory_format=torch.channels_last))))
        loss, _ = MAML(model, inner_lr=0.4, inner_steps=2).meta_loss(batch)
        loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    # support passes (10 images) NCHW; query passes (15 images) NHWC only when enabled
    assert {(o, n, cl) for o, n, cl in layouts} == {(False, 10, False), (False, 15, False),
                                                    (True, 10, False), (True, 15, True)}
    torch.testing.assert_close(grads[1], grads[0], rtol=0, atol=1e-12 * grads[0].abs().max())
