"""Reliability diagrams and coverage plots (`metalab.cli.plot_calibration`): the drawn bars
and curve points against a hand computation on small tables, and both through
`metalab plot` on tiny runs."""

from __future__ import annotations

import matplotlib
import pytest
import torch

from metalab.algorithms.calibration import calibration_bins
from metalab.cli.main import main
from metalab.cli.plot_calibration import (
    coverage_curve,
    draw_coverage,
    draw_reliability,
    reliability_points,
)

matplotlib.use("Agg")

# Six 2-class predictions (confidence, right?): .9 right, .85 wrong, .7 right, .55 right,
# .62 wrong, .78 right. With 5 right-closed bins of width 0.2 (none on a bin edge):
# bin 2 (0.4, 0.6]: {.55 right}                 -> count 1, confidence .55, accuracy 1
# bin 3 (0.6, 0.8]: {.7 right, .62 wrong, .78 right} -> count 3, confidence .70, accuracy 2/3
# bin 4 (0.8, 1.0]: {.9 right, .85 wrong}       -> count 2, confidence .875, accuracy 1/2
# bins 0 and 1 are empty and get no bar. ECE = (.45 + .1 + .75) / 6.
PROBABILITIES = torch.tensor([[0.9, 0.1], [0.85, 0.15], [0.3, 0.7], [0.55, 0.45],
                              [0.38, 0.62], [0.22, 0.78]], dtype=torch.float64)
LABELS = torch.tensor([0, 1, 1, 0, 0, 1])


def _table():
    return calibration_bins(PROBABILITIES, LABELS, bins=5)


def test_reliability_points_by_hand():
    points = reliability_points(_table())
    assert points["index"].tolist() == [2, 3, 4]
    torch.testing.assert_close(points["count"], torch.tensor([1.0, 3.0, 2.0], dtype=torch.float64))
    torch.testing.assert_close(points["confidence"],
                               torch.tensor([0.55, 0.70, 0.875], dtype=torch.float64))
    torch.testing.assert_close(points["accuracy"],
                               torch.tensor([1.0, 2 / 3, 0.5], dtype=torch.float64))
    torch.testing.assert_close(points["lower"], torch.tensor([0.4, 0.6, 0.8], dtype=torch.float64))


def test_the_drawn_reliability_bars_are_the_hand_computed_bins():
    import matplotlib.pyplot as plt

    fig, axis = plt.subplots()
    draw_reliability(axis, _table(), "hand")
    bars = axis.patches
    # one bar per non-empty bin, centred in it, as tall as its accuracy (a bar per empty bin,
    # a bar at the bin's left edge or the count instead of the accuracy would fail)
    assert len(bars) == 3
    assert [round(b.get_x() + b.get_width() / 2, 12) for b in bars] == [0.5, 0.7, 0.9]
    assert [b.get_width() for b in bars] == pytest.approx([0.2] * 3)
    assert [b.get_height() for b in bars] == pytest.approx([1.0, 2 / 3, 0.5])
    markers = axis.lines[0]
    assert list(markers.get_xdata()) == pytest.approx([0.55, 0.70, 0.875])
    assert f"ECE {1.3 / 6:.3f}" in axis.get_title()
    plt.close(fig)


def test_coverage_curve_and_its_drawn_points_by_hand():
    import matplotlib.pyplot as plt

    # sd 2: the 50% interval is +-1.349 (holds |y| = 0.5), the 90% one +-3.290 (holds 0.5,
    # 1.5, 3.0); scaling by the variance instead of the sd gives 2/4 and 4/4
    y = torch.tensor([[0.5], [-1.5], [3.0], [5.0]], dtype=torch.float64)
    curve = coverage_curve(torch.zeros_like(y), torch.full_like(y, 4.0), y, (0.5, 0.9))
    torch.testing.assert_close(curve, torch.tensor([0.25, 0.75], dtype=torch.float64))
    fig, axis = plt.subplots()
    draw_coverage(axis, (0.5, 0.9), curve, "hand")
    assert list(axis.lines[0].get_xdata()) == [0.5, 0.9]
    assert list(axis.lines[0].get_ydata()) == [0.25, 0.75]
    plt.close(fig)


@pytest.mark.slow  # two tiny trainings, a few evaluations (~15 s on the loaded machine)
def test_metalab_plot_reliability_and_coverage_on_tiny_runs(tmp_path, capsys):
    glyphs = tmp_path / "maml-ensemble-glyphs"
    assert main(["train", "maml-ensemble-glyphs-5w1s", "train.steps=1", "train.meta_batch=1",
                 "train.val_every=0", "train.progress=false", "algorithm.particles=2",
                 "model.hidden=4", "--out", str(glyphs)]) == 0
    out = tmp_path / "reliability.png"
    assert main(["plot", "--reliability", str(glyphs), "--episodes", "3",
                 "--out", str(out)]) == 0
    assert out.stat().st_size > 0
    sine = tmp_path / "ensemble-sine"
    assert main(["train", "maml-ensemble-sinusoid", "train.steps=1", "train.meta_batch=2",
                 "train.val_every=0", "train.progress=false", "model.hidden=[8]",
                 "--out", str(sine)]) == 0
    out = tmp_path / "coverage.png"
    assert main(["plot", "--coverage", str(sine), "--episodes", "3", "--out", str(out)]) == 0
    assert out.stat().st_size > 0
    assert main(["plot", "--reliability", str(sine), "--episodes", "2",
                 "--out", str(tmp_path / "x.png")]) != 0
    assert "--reliability needs a classification run" in capsys.readouterr().err
