"""ResNet-18 and Conv4's width and batch-norm options: parameter counts against hand counts
and the published ResNet-18 size, the forward pass against a plain functional reference."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from metalab.nn import Conv4, ResNet18, TaskBatchNorm, build_model


def hand_count(in_channels: int, channels: list[int], stem: int) -> int:
    """The stem conv (``stem x stem``) and its BN; per stage two basic blocks of two 3x3
    convs with a BN each; a 1x1 conv and BN on the shortcut where the shape changes."""
    total = stem * stem * in_channels * channels[0] + 2 * channels[0]
    previous = channels[0]
    for i, c in enumerate(channels):
        total += 9 * previous * c + 9 * c * c + 2 * 2 * c  # first block
        if i > 0 or previous != c:
            total += previous * c + 2 * c  # projection shortcut
        total += 2 * (9 * c * c) + 2 * 2 * c  # second block
        previous = c
    return total


def test_parameter_count_is_the_published_resnet18():
    # He et al.'s ImageNet ResNet-18: 11,689,512 parameters with its 1000-way classifier.
    model = ResNet18(in_channels=3, out_features=1000, width=1.0, stem="7x7")
    assert sum(p.numel() for p in model.parameters()) == 11_689_512
    assert sum(p.numel() for p in model.body.parameters()) == hand_count(
        3, [64, 128, 256, 512], 7) == 11_689_512 - (512 * 1000 + 1000)


@pytest.mark.parametrize(("width", "stem"), [(0.25, "3x3"), (0.5, "7x7")])
def test_width_and_stem_variants_match_a_hand_count(width, stem):
    model = ResNet18(in_channels=1, out_features=None, width=width, stem=stem)
    channels = [round(c * width) for c in (64, 128, 256, 512)]
    assert sum(p.numel() for p in model.parameters()) == hand_count(
        1, channels, 7 if stem == "7x7" else 3)
    assert model.feature_dim == channels[-1]
    assert model.eval()(torch.randn(3, 1, 28, 28)).shape == (3, channels[-1])


def _reference_block(x, block):
    """A basic block written with plain functional calls (ordinary BN in eval mode)."""
    def bn(h, m):
        return F.batch_norm(h, m.running_mean, m.running_var, m.weight, m.bias, False)

    h = F.relu(bn(F.conv2d(x, block.conv1.weight, stride=block.conv1.stride, padding=1),
                  block.bn1))
    h = bn(F.conv2d(h, block.conv2.weight, padding=1), block.bn2)
    if isinstance(block.shortcut, nn.Identity):
        short = x
    else:
        conv, norm = block.shortcut
        short = bn(F.conv2d(x, conv.weight, stride=conv.stride), norm)
    return F.relu(h + short)


def test_forward_matches_a_plain_functional_reference():
    torch.manual_seed(0)
    model = ResNet18(in_channels=3, out_features=4, width=0.125, norm="batch").double()
    with torch.no_grad():  # move the batch norms off their initial statistics
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    model.eval()
    x = torch.randn(2, 3, 40, 40, dtype=torch.float64)
    stem_conv, stem_bn = model.body[0], model.body[1]
    h = F.conv2d(x, stem_conv.weight, stride=2, padding=3)
    h = F.relu(F.batch_norm(h, stem_bn.running_mean, stem_bn.running_var, stem_bn.weight,
                            stem_bn.bias, False))
    h = F.max_pool2d(h, 3, 2, 1)
    for block in list(model.body)[4:12]:
        h = _reference_block(h, block)
    features = h.mean(dim=(2, 3))
    expected = features @ model.head.weight.T + model.head.bias
    assert torch.allclose(model(x), expected, atol=1e-12)
    assert h.shape[-2:] == (2, 2)  # 40 -> 20 -> 10 -> 10 -> 5 -> 3 -> 2


def test_batch_norm_kinds_options_and_the_builder():
    task = ResNet18(in_channels=1, width=0.125, norm="task", stem="3x3")
    assert any(isinstance(m, TaskBatchNorm) for m in task.modules())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in task.modules())
    # 1 stem + 16 block convs + 3 shortcuts = 20 batch norms
    assert sum(isinstance(m, TaskBatchNorm) for m in task.modules()) == 20
    built = build_model("resnet18", in_channels=1, out_features=None, width=0.125)
    assert isinstance(built, ResNet18) and built.feature_dim == 64
    with pytest.raises(ValueError, match="norm must be one of"):
        ResNet18(norm="group")
    with pytest.raises(ValueError, match="stem must be one of"):
        ResNet18(stem="5x5")
    with pytest.raises(ValueError, match="width must be positive"):
        ResNet18(width=0)


def test_conv4_width_and_ordinary_batch_norm():
    narrow = Conv4(in_channels=1, hidden=32, out_features=None, norm="batch")
    assert sum(isinstance(m, nn.BatchNorm2d) for m in narrow.modules()) == 4
    assert not any(isinstance(m, TaskBatchNorm) for m in narrow.modules())
    assert narrow.feature_dim == 32 and narrow.eval()(torch.randn(2, 1, 28, 28)).shape == (2, 32)
    # 4 convs (9 * in * out + out) and 4 BNs (2 * out), 32 filters, 1 input channel
    assert sum(p.numel() for p in narrow.parameters()) == (
        9 * 32 + 32 + 3 * (9 * 32 * 32 + 32) + 4 * 2 * 32)
    # Running statistics: eval() predictions do not depend on the rest of the batch.
    narrow.train()
    narrow(torch.randn(16, 1, 28, 28))
    narrow.eval()
    x = torch.randn(4, 1, 28, 28)
    assert torch.allclose(narrow(x)[:1], narrow(x[:1]), atol=1e-6)
    assert any(isinstance(m, TaskBatchNorm) for m in Conv4().modules())  # the default
    with pytest.raises(ValueError, match="norm must be one of"):
        Conv4(norm="layer")
    with pytest.raises(ValueError, match="hidden"):
        Conv4(hidden=0)
