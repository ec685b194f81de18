"""The operator census behind benchmarks/roofline.py, checked against FLOPs counted by hand."""

import torch
from torch import nn

from metalab.nn import Conv4
from metalab.profiling import OpCensus, peak_allocated_bytes


def conv4_forward_flops_by_hand(images: int, channels: int, size: int, in_channels: int) -> int:
    """2 * Cin * Cout * 3 * 3 * H * W per image and layer ('same' 3x3 convolutions, 2x2 pooling)."""
    total, cin = 0, in_channels
    for _ in range(4):
        total += 2 * cin * channels * 9 * size * size * images
        cin, size = channels, size // 2
    return total


def test_conv4_forward_flops_equal_the_hand_count():
    model = Conv4(in_channels=1, hidden=8, out_features=None, image_size=28).double()
    with OpCensus() as census:
        model(torch.randn(3, 1, 28, 28, dtype=torch.float64))
    assert census.flops_by_operator() == {"convolution": conv4_forward_flops_by_hand(3, 8, 28, 1)}


def test_linear_forward_and_backward_count_three_products():
    batch, fan_in, fan_out = 7, 5, 3
    layer = nn.Linear(fan_in, fan_out).double()
    x = torch.randn(batch, fan_in, dtype=torch.float64, requires_grad=True)
    with OpCensus() as census:
        layer(x).sum().backward()
    # y = x W^T + b; dL/dx = g W; dL/dW = g^T x: three products of 2 * B * in * out FLOPs each
    assert census.total_flops == 3 * 2 * batch * fan_in * fan_out
    assert census.calls > 3


def test_each_distinct_call_is_counted_once_per_layout_with_its_multiplicity():
    weight = torch.randn(4, 4)
    with OpCensus() as census:
        for _ in range(3):
            torch.mm(torch.randn(2, 4), weight)
        torch.mm(torch.randn(6, 4), weight)
    mm = [r for r in census.compute_records() if r.name == "mm"]
    assert sorted((r.count, r.flops) for r in mm) == [(1, 2 * 6 * 4 * 4), (3, 2 * 2 * 4 * 4)]


def test_replay_runs_the_recorded_call_on_fresh_tensors():
    with OpCensus() as census:
        torch.nn.functional.conv2d(torch.randn(2, 3, 9, 9), torch.randn(5, 3, 3, 3), padding=1)
    (record,) = census.compute_records()
    assert record.flops == 2 * 3 * 5 * 9 * 9 * 9 * 2
    assert record.replay_seconds(rounds=1) > 0


def test_peak_allocated_bytes_sees_a_temporary_allocation():
    megabytes = 8

    def allocate_and_free():
        tensor = torch.ones(megabytes * 2**20 // 4)  # float32
        return float(tensor.sum())

    peak = peak_allocated_bytes(allocate_and_free)
    assert megabytes * 2**20 <= peak < (megabytes + 1) * 2**20


def test_timings_warm_up_once_then_time_each_repeat():
    from metalab.profiling import timings

    calls = []
    times = timings(lambda: calls.append(1), 3)
    assert len(calls) == 4 and len(times) == 3 and all(t >= 0 for t in times)


def test_timings_take_the_number_of_warm_up_calls():
    from metalab.profiling import timings

    calls = []
    assert len(timings(lambda: calls.append(1), 2, warmup=0)) == 2 and len(calls) == 2
    calls.clear()
    timings(lambda: calls.append(1), 2, warmup=3)
    assert len(calls) == 5
