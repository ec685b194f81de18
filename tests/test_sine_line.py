"""The ambiguous sine/line family of PLATIPUS (`metalab.tasks.SineOrLine`)."""

from __future__ import annotations

import math

import pytest
import torch

from metalab.tasks import SineOrLine
from metalab.tasks.regression import LINE, SINE
from metalab.train.sources import build_task_source, is_regression


def _all_points(batch):
    x = torch.cat([batch.support_x, batch.query_x], 1).double()
    y = torch.cat([batch.support_y, batch.query_y], 1).double()
    return x, y


def _residual(design: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Largest absolute least-squares residual per task of ``y ~ design @ coef``."""
    coef = torch.linalg.lstsq(design, y).solution
    return (design @ coef - y).abs().amax(dim=(1, 2)), coef.squeeze(-1)


def test_tasks_are_the_stated_lines_and_sinusoids():
    batch = SineOrLine(shots=5, queries=20, tasks_per_batch=2000, noise=0.0, seed=0).sample()
    x, y = _all_points(batch)
    assert batch.support_x.shape == (2000, 5, 1) and batch.query_y.shape == (2000, 20, 1)
    assert set(batch.task_id.tolist()) == {SINE, LINE}
    line = batch.task_id == LINE
    # the stated mixture: half lines (binomial sd of the fraction is 0.011)
    assert abs(line.double().mean().item() - 0.5) < 0.04
    # lines: y = a x + b exactly, a and b in [-3, 3]
    residual, coef = _residual(torch.cat([x, torch.ones_like(x)], -1), y)
    assert residual[line].max() < 1e-5  # float32 data
    assert coef[line].abs().max() <= 3 + 1e-9
    # sinusoids: y = A sin(x - phi) = (A cos phi) sin x - (A sin phi) cos x exactly
    residual_sin, coef_sin = _residual(torch.cat([torch.sin(x), torch.cos(x)], -1), y)
    assert residual_sin[~line].max() < 1e-5
    amplitude = coef_sin[~line].norm(dim=-1)
    phase = torch.atan2(-coef_sin[~line, 1], coef_sin[~line, 0])
    assert amplitude.min() >= 0.1 - 1e-6 and amplitude.max() <= 5 + 1e-6
    assert phase.min() >= -1e-6 and phase.max() <= math.pi + 1e-6
    # and no sinusoid is a line (over 25 points in [-5, 5])
    assert residual[~line].min() > 1e-3
    assert x.min() >= -5 and x.max() <= 5


def test_line_fraction_and_noise():
    only_lines = SineOrLine(5, 5, tasks_per_batch=50, line_fraction=1.0, seed=1).sample()
    assert (only_lines.task_id == LINE).all()
    only_sines = SineOrLine(5, 5, tasks_per_batch=50, line_fraction=0.0, seed=1).sample()
    assert (only_sines.task_id == SINE).all()
    # the noise is N(0, 0.3^2): residuals of a line fit over 200 points per task
    batch = SineOrLine(5, 195, tasks_per_batch=200, line_fraction=1.0, noise=0.3,
                       seed=2).sample()
    x, y = _all_points(batch)
    design = torch.cat([x, torch.ones_like(x)], -1)
    coef = torch.linalg.lstsq(design, y).solution
    std = (y - design @ coef).std()
    assert abs(std.item() - 0.3) < 0.01


def test_reproducible_from_a_seed():
    first = SineOrLine(5, 10, tasks_per_batch=8, support_width=1.0, seed=3)
    second = SineOrLine(5, 10, tasks_per_batch=8, support_width=1.0, seed=3)
    for _ in range(2):
        a, b = first.sample(), second.sample()
        for name in ("support_x", "support_y", "query_x", "query_y", "task_id"):
            assert torch.equal(getattr(a, name), getattr(b, name))
    other = SineOrLine(5, 10, tasks_per_batch=8, support_width=1.0, seed=4).sample()
    assert not torch.equal(other.support_y, a.support_y)
    # the position in the stream is checkpointed
    state = first.state_dict()
    expected = first.sample()
    second.load_state_dict(state)
    assert torch.equal(second.sample().query_y, expected.query_y)


def test_support_width_narrows_the_support_only():
    wide = SineOrLine(5, 50, tasks_per_batch=500, seed=5).sample()
    narrow = SineOrLine(5, 50, tasks_per_batch=500, support_width=1.5, seed=5).sample()
    span = narrow.support_x.amax(dim=1) - narrow.support_x.amin(dim=1)
    assert span.max() <= 1.5 + 1e-6
    wide_span = wide.support_x.amax(dim=1) - wide.support_x.amin(dim=1)
    assert wide_span.median() > 4.0  # 5 points in [-5, 5]: median span about 6.7
    assert narrow.support_x.min() >= -5 and narrow.support_x.max() <= 5
    # the windows move over the whole range, and the queries still cover it
    centres = narrow.support_x.mean(dim=1)
    assert centres.min() < -3.5 and centres.max() > 3.5
    query_span = narrow.query_x.amax(dim=1) - narrow.query_x.amin(dim=1)
    assert query_span.median() > 8.0


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="support_width must be in \\(0, 10.0\\]"):
        SineOrLine(5, 5, support_width=20.0)
    with pytest.raises(ValueError, match="line_fraction must be in \\[0, 1\\]"):
        SineOrLine(5, 5, line_fraction=1.5)
    with pytest.raises(ValueError, match="slope must be a \\(low, high\\) pair"):
        SineOrLine(5, 5, slope=(3, -3))
    with pytest.raises(ValueError, match="noise must be >= 0"):
        SineOrLine(5, 5, noise=-1.0)


def test_usable_from_a_config():
    config = {"data": {"name": "sine-line", "shots": 5, "queries": 7, "support_width": 2.0,
                       "noise": 0.3}}
    assert is_regression(config)
    source = build_task_source(config, "train", tasks_per_batch=4, seed=0)
    assert isinstance(source, SineOrLine) and source.support_width == 2.0
    batch = source.sample()
    assert batch.support_x.shape == (4, 5, 1) and batch.query_x.shape == (4, 7, 1)
    evaluation = build_task_source(config, "test", tasks_per_batch=2, seed=1, queries=100)
    assert evaluation.sample().query_x.shape == (2, 100, 1)
