"""Class-probability scores against hand computations (float64): NLL, the expected
calibration error (15 equal-width bins), its pooling over tasks, and the evaluator's report."""

from __future__ import annotations

import math

import pytest
import torch

from metalab.algorithms.calibration import (
    bootstrap_ece,
    calibration_bins,
    ece_from_bins,
    expected_calibration_error,
    negative_log_likelihood,
)

F64 = torch.float64

# Six predictions over three classes. Confidences (max prob): 0.9, 0.9, 0.9, 0.5, 0.5, 0.35.
# With 15 bins of width 1/15: 0.9 -> (13/15, 14/15] = bin 14 (1-based), 0.5 -> (7/15, 8/15]
# = bin 8, 0.35 -> (5/15, 6/15] = bin 6.
PROBS = torch.tensor([[0.9, 0.05, 0.05],    # predicts 0, label 0: correct
                      [0.05, 0.9, 0.05],    # predicts 1, label 1: correct
                      [0.9, 0.05, 0.05],    # predicts 0, label 2: wrong
                      [0.5, 0.3, 0.2],      # predicts 0, label 0: correct
                      [0.2, 0.5, 0.3],      # predicts 1, label 0: wrong
                      [0.35, 0.33, 0.32]],  # predicts 0, label 1: wrong
                     dtype=F64)
LABELS = torch.tensor([0, 1, 2, 0, 0, 1])


def test_ece_by_hand():
    # bin 14: 3 points, accuracy 2/3, confidence 0.9 -> |2/3 - 0.9| = 0.2333...
    # bin 8:  2 points, accuracy 1/2, confidence 0.5 -> 0
    # bin 6:  1 point,  accuracy 0,   confidence 0.35 -> 0.35
    # ECE = 3/6 * 0.23333 + 2/6 * 0 + 1/6 * 0.35 = 0.116667 + 0.058333 = 0.175
    expected = 3 / 6 * abs(2 / 3 - 0.9) + 2 / 6 * 0.0 + 1 / 6 * 0.35
    assert expected == pytest.approx(0.175)
    assert expected_calibration_error(PROBS, LABELS).item() == pytest.approx(expected)
    # an unweighted mean over the occupied bins (a bin-count bug) would give 0.19444
    assert expected_calibration_error(PROBS, LABELS).item() != pytest.approx(
        (abs(2 / 3 - 0.9) + 0 + 0.35) / 3)


def test_calibration_bins_by_hand():
    table = calibration_bins(PROBS, LABELS)
    assert table.shape == (15, 3)
    expected = torch.zeros(15, 3, dtype=F64)
    expected[13] = torch.tensor([3, 2.7, 2], dtype=F64)
    expected[7] = torch.tensor([2, 1.0, 1], dtype=F64)
    expected[5] = torch.tensor([1, 0.35, 0], dtype=F64)
    assert torch.allclose(table, expected)


def test_a_confidence_of_one_is_in_the_last_bin():
    probs = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=F64)
    table = calibration_bins(probs, torch.tensor([0, 0]))
    assert table[14].tolist() == [2.0, 2.0, 1.0]
    assert expected_calibration_error(probs, torch.tensor([0, 0])).item() == pytest.approx(0.5)


def test_perfect_calibration_gives_zero():
    # four predictions of confidence 0.75, three right: accuracy = confidence in their bin
    probs = torch.tensor([[0.75, 0.25]] * 4, dtype=F64)
    assert expected_calibration_error(probs, torch.tensor([0, 0, 0, 1])).item() == (
        pytest.approx(0.0))


def test_nll_by_hand():
    expected = -(math.log(0.9) + math.log(0.9) + math.log(0.05) + math.log(0.5)
                 + math.log(0.2) + math.log(0.33)) / 6
    assert negative_log_likelihood(PROBS, LABELS).item() == pytest.approx(expected)


def test_pooled_ece_of_per_task_bins_is_the_ece_of_all_predictions():
    first, second = calibration_bins(PROBS[:2], LABELS[:2]), calibration_bins(PROBS[2:],
                                                                             LABELS[2:])
    pooled = ece_from_bins(torch.stack([first, second])).item()
    assert pooled == pytest.approx(expected_calibration_error(PROBS, LABELS).item())
    mean_of_tasks = (ece_from_bins(first) + ece_from_bins(second)).item() / 2
    assert mean_of_tasks == pytest.approx((0.1 + (0.9 + 0.35) / 4) / 2)
    assert pooled != pytest.approx(mean_of_tasks)  # not a mean of per-task ECEs


def test_bootstrap_ece_of_identical_tasks_has_no_spread():
    tables = calibration_bins(PROBS, LABELS).expand(20, 15, 3)
    ece, half_width = bootstrap_ece(tables)
    assert ece == pytest.approx(0.175)
    assert half_width == pytest.approx(0.0, abs=1e-12)


def test_bootstrap_interval_covers_the_pooled_value():
    tables = torch.stack([calibration_bins(PROBS[i:i + 1], LABELS[i:i + 1]) for i in range(6)])
    ece, half_width = bootstrap_ece(tables, resamples=500, seed=3)
    assert ece == pytest.approx(0.175)
    assert 0 < half_width < 0.5


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="probabilities must be"):
        expected_calibration_error(PROBS[0], LABELS)
    with pytest.raises(ValueError, match="bins must be"):
        calibration_bins(PROBS, LABELS, bins=0)


def test_bins_are_closed_on_the_right():
    # with 4 bins (exact binary edges) a confidence of 0.5 is in (0.25, 0.5], not (0.5, 0.75]
    probs = torch.tensor([[0.5, 0.5], [0.75, 0.25]], dtype=F64)
    table = calibration_bins(probs, torch.tensor([0, 1]), bins=4)
    assert table[:, 0].tolist() == [0.0, 1.0, 1.0, 0.0]
