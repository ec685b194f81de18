"""ResNet-12: shapes, DropBlock, parameter count, batch norm kinds."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from metalab.nn import DropBlock, ResNet12, TaskBatchNorm, build_model


def hand_count(in_channels: int, channels: list[int], out_features: int | None,
               feature_dim: int) -> int:
    """Per block: three 3x3 convs without bias, a 1x1 shortcut conv, four batch norms with
    a weight and a bias per channel; then the linear head."""
    total, previous = 0, in_channels
    for c in channels:
        total += 9 * previous * c + 9 * c * c + 9 * c * c + previous * c + 4 * 2 * c
        previous = c
    if out_features is not None:
        total += feature_dim * out_features + out_features
    return total


@pytest.mark.parametrize("width", [1.0, 0.25])
def test_parameter_count_matches_a_hand_count(width):
    model = ResNet12(in_channels=3, out_features=5, image_size=84, width=width)
    channels = [round(c * width) for c in (64, 160, 320, 640)]
    assert sum(p.numel() for p in model.parameters()) == hand_count(3, channels, 5, channels[-1])
    if width == 1.0:  # the RFS / MetaOptNet ResNet-12 body: 12.4M parameters
        assert sum(p.numel() for p in model.body.parameters()) == 12_424_320


def test_output_shapes_for_28_and_84_pixel_inputs():
    small = ResNet12(in_channels=1, out_features=None, image_size=28, width=0.25).eval()
    assert small(torch.randn(2, 1, 28, 28)).shape == (2, 160)
    assert small.feature_dim == 160
    big = ResNet12(in_channels=3, out_features=7, image_size=84, width=0.25).eval()
    assert big(torch.randn(2, 3, 84, 84)).shape == (2, 7)
    flat = ResNet12(in_channels=3, out_features=None, image_size=84, width=0.25,
                    pool="flatten").eval()
    assert flat(torch.randn(2, 3, 84, 84)).shape == (2, 160 * 5 * 5) == (2, flat.feature_dim)
    built = build_model("resnet12", in_channels=1, image_size=28, out_features=None, width=0.25)
    assert isinstance(built, ResNet12)
    with pytest.raises(ValueError, match="image_size must be >= 16"):
        ResNet12(image_size=8)


def test_batch_norm_kinds_and_where_dropblock_sits():
    task = ResNet12(in_channels=1, image_size=28, width=0.25, norm="task")
    ordinary = ResNet12(in_channels=1, image_size=28, width=0.25, norm="batch")
    assert any(isinstance(m, TaskBatchNorm) for m in task.modules())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in task.modules())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in ordinary.modules()) == 16
    drops = [isinstance(block.drop, DropBlock) for block in list(task.body)[:4]]
    assert drops == [False, False, True, True]
    with pytest.raises(ValueError, match="norm must be one of"):
        ResNet12(norm="group")


def test_dropblock_is_off_in_eval_and_on_in_training():
    torch.manual_seed(0)
    model = ResNet12(in_channels=1, image_size=28, width=0.25, out_features=None, norm="batch")
    x = torch.randn(4, 1, 28, 28)
    model.eval()
    assert torch.equal(model(x), model(x))
    model.train()
    torch.manual_seed(1)
    first = model(x)
    torch.manual_seed(2)
    assert not torch.allclose(first, model(x))
    drop = DropBlock(0.5, 3).eval()
    y = torch.randn(2, 3, 6, 6)
    assert torch.equal(drop(y), y)


def test_dropblock_mask_by_hand():
    """Seeds at (0, 0) and (2, 3) of a 5x6 map with block size 2 drop [0,2)x[0,2) and
    [2,4)x[3,5); the kept units are scaled by numel / kept."""
    drop = DropBlock(0.2, 2)
    seeds = torch.zeros(1, 1, 4, 5)
    seeds[0, 0, 0, 0] = 1
    seeds[0, 0, 2, 3] = 1
    expected = torch.zeros(1, 1, 5, 6)
    expected[0, 0, 0:2, 0:2] = 1
    expected[0, 0, 2:4, 3:5] = 1
    assert torch.equal(drop.block_mask(seeds, 2), expected)

    torch.manual_seed(0)
    x = torch.ones(8, 1, 5, 6, dtype=torch.float64)
    out = drop.train()(x)
    kept = out != 0
    assert (~kept).any() and kept.any()
    torch.testing.assert_close(out[kept], torch.full_like(out[kept], x.numel() / int(kept.sum())))
    # every dropped unit lies in a 2x2 square of dropped units (whole blocks are dropped)
    for d in (~kept)[:, 0]:
        for i, j in d.nonzero().tolist():
            assert any(d[a: a + 2, b: b + 2].all()
                       for a in range(max(0, i - 1), min(4, i + 1))
                       for b in range(max(0, j - 1), min(5, j + 1)))


def test_dropblock_drops_about_the_drop_rate():
    torch.manual_seed(0)
    out = DropBlock(0.1, 5).train()(torch.ones(200, 8, 21, 21))
    # gamma is Ghiasi et al.'s approximation (overlaps and borders drop a little less or more)
    assert 0.07 < (out == 0).double().mean().item() < 0.13
