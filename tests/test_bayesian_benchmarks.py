"""The Bayesian benchmarks' own logic: the ambiguity test of the PLATIPUS experiment
(`benchmarks/platipus_ambiguous.py`), the stored cells of the seeds table
(`benchmarks/bayesian_table.py`) and the extra interval coverages of `predictive_scores`."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from helpers import load_benchmark
from metalab.algorithms.predictive import GaussianPredictive
from metalab.algorithms.predictive_scores import Z90, central_z, predictive_scores

pa = load_benchmark("platipus_ambiguous")
bt = load_benchmark("bayesian_table")


def test_line_fit_is_exact_for_a_line_on_the_grid_and_respects_the_ranges():
    x = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0], dtype=torch.float64)
    line_rms, _ = pa.family_fit_rms(x, 0.5 * x + 1.0)
    assert line_rms == pytest.approx(0.0, abs=1e-12)
    # y = -6 at x = 0: the best intercept in [-3, 3] is -3, an error of 3 (an unbounded least
    # squares fit would give 0; the sinusoid's amplitude is at most 5: error >= 1)
    line_rms, sine_rms = pa.family_fit_rms(torch.zeros(3, dtype=torch.float64),
                                           torch.full((3,), -6.0, dtype=torch.float64))
    assert line_rms == pytest.approx(3.0, abs=1e-12)
    assert sine_rms == pytest.approx(1.0, abs=1e-12)


def test_a_narrow_linear_support_is_ambiguous_and_a_wide_sinusoid_is_not():
    narrow = torch.linspace(-0.5, 0.5, 5, dtype=torch.float64)
    # sin(x) ~ x near 0: the line y = x and the sinusoid sin(x - 0) both fit
    assert pa.is_ambiguous(narrow, narrow, tolerance=0.05)
    wide = torch.tensor([-4.0, -2.0, 0.0, 2.0, 4.0], dtype=torch.float64)
    y = 4.0 * torch.sin(wide - 1.0)
    line_rms, sine_rms = pa.family_fit_rms(wide, y)
    # the sinusoid on the grid (amplitude step 4.9/240, phase step pi/240) is close; by hand,
    # the best least-squares line on these five points leaves an RMS error above 2
    assert sine_rms < 0.05
    design = torch.stack([wide, torch.ones_like(wide)], 1)
    residual = design @ torch.linalg.lstsq(design, y[:, None]).solution - y[:, None]
    assert line_rms >= residual.pow(2).mean().sqrt().item() - 1e-12 > 2.0
    assert not pa.is_ambiguous(wide, y, tolerance=0.6)


def test_family_distances_and_hypothesis_labels_by_hand():
    x = pa.GRID.double()[:, 0]
    line = 0.5 * x + 1.0  # on the parameter grid (slope and intercept steps 0.05)
    amplitude, phase = 0.1 + 4.9 * 60 / 120, math.pi * 60 / 120  # on the grid: 2.55, pi/2
    sine = amplitude * torch.sin(x - phase)
    constant = torch.full_like(x, 8.0)
    line_d, sine_d = pa.family_distances(torch.stack([line, sine, constant]))
    assert line_d[0].item() == pytest.approx(0.0, abs=1e-6)
    assert sine_d[1].item() == pytest.approx(0.0, abs=1e-6)
    # the nearest in-range line to the constant 8 is the intercept 3: distance 5
    assert line_d[2].item() == pytest.approx(5.0, abs=1e-6)
    # no family line is nearer the sinusoid than the unbounded least-squares line
    design = torch.stack([x, torch.ones_like(x)], 1)
    residual = design @ torch.linalg.lstsq(design, sine[:, None]).solution - sine[:, None]
    assert line_d[1].item() >= residual.pow(2).mean().sqrt().item() - 1e-9 > 1.0
    # by hand: the sinusoid nearest a line y = 0.5 x + 1 leaves at least the constant's RMS
    # of 1 (sin is odd about its phase; the mean of A sin(x - phi) over [-5, 5] is small)
    assert sine_d[0].item() > 1.0
    is_line, is_sine = pa.hypotheses(torch.stack([line, sine, constant]), tolerance=1.0)
    assert is_line.tolist() == [True, False, False]
    assert is_sine.tolist() == [False, True, False]
    # a flat function is near both kinds (slope 0; amplitude 0.1): it is neither
    flat = torch.full_like(x, 0.05)[None]
    assert max(d.item() for d in pa.family_distances(flat)) < 0.2
    assert not (pa.hypotheses(flat, 1.0)[0] | pa.hypotheses(flat, 1.0)[1]).item()
    # 0.5 x + 3.9 is 0.9 from the nearest family line (intercept 3; on the symmetric grid a
    # slope change only adds): a line at tolerance 1, not at 0.5
    shifted = (0.5 * x + 3.9)[None]
    assert pa.family_distances(shifted)[0].item() == pytest.approx(0.9, abs=1e-6)
    assert pa.hypotheses(shifted, tolerance=1.0)[0].item()
    assert not pa.hypotheses(shifted, tolerance=0.5)[0].item()


def test_seed_rows_are_the_mean_and_t_interval_of_the_per_seed_means():
    rows = [{"both": {"mean": m, "ci95": 9.0}} for m in (0.1, 0.2, 0.6)]
    row = pa.over_seed_rows(rows)["both"]
    sd = math.sqrt(((0.1 - 0.3) ** 2 + (0.2 - 0.3) ** 2 + (0.6 - 0.3) ** 2) / 2)
    assert row["mean"] == pytest.approx(0.3)
    assert row["ci95"] == pytest.approx(4.302652729911275 * sd / math.sqrt(3))


def test_stored_cell_scores_are_read_back_and_keyed_by_settings(tmp_path):
    calls = []

    def measure_now():
        calls.append(1)
        return {"mse": float(len(calls))}

    assert bt.cell_scores(tmp_path, "a", measure_now) == {"mse": 1.0}
    assert bt.cell_scores(tmp_path, "a", measure_now) == {"mse": 1.0}  # not measured again
    assert bt.cell_scores(tmp_path, "b", measure_now) == {"mse": 2.0}  # other settings
    assert len(calls) == 2
    assert bt.cell_scores(tmp_path, "a", measure_now) == {"mse": 1.0}  # "a" kept beside "b"


def test_cell_key_names_every_setting_the_scores_depend_on():
    class Args:
        episodes, context, inner_steps = 100, 5, 10
    keys = {bt.cell_key("gp", "llama", Args, 0.1), bt.cell_key("gp", "maml", Args, 0.1),
            bt.cell_key("gp", "llama", Args, 0.3), bt.cell_key("ambiguous", "llama", Args, 0.1)}
    assert len(keys) == 4  # llama and maml share a run directory


def test_central_z_and_extra_coverages_by_hand():
    assert central_z(0.9) == pytest.approx(Z90, abs=1e-12)
    assert central_z(0.5) == pytest.approx(0.6744897501960817, abs=1e-12)
    assert central_z(0.95) == pytest.approx(1.959963984540054, abs=1e-12)
    with pytest.raises(ValueError, match="level"):
        central_z(1.0)
    # unit variance, mean 0: |y| = 0.5 is inside the 50% interval (z 0.674), 1.0 is not;
    # 1.9 is inside the 95% interval (z 1.96), 2.5 inside none
    y = torch.tensor([[0.5], [1.0], [1.9], [2.5]], dtype=torch.float64)
    predictive = GaussianPredictive(lambda x, z: (torch.zeros_like(x), torch.ones_like(x)))
    scores = predictive_scores(predictive, torch.zeros_like(y), y, (0.5, 0.95))
    assert scores["coverage_50"].item() == pytest.approx(1 / 4)
    assert scores["coverage_90"].item() == pytest.approx(2 / 4)
    assert scores["coverage_95"].item() == pytest.approx(3 / 4)


def test_prior_scale_multiplies_platipus_prior_std_and_refuses_other_learners():
    from torch import nn

    from metalab.algorithms.platipus import PLATIPUS

    torch.manual_seed(0)
    learner = PLATIPUS(nn.Sequential(nn.Linear(1, 4), nn.ReLU(), nn.Linear(4, 1)),
                       inner_lr=0.01, prior_std=0.1, inference_std=0.2)
    pa.scale_prior_std(learner, 4.0)
    for log_std in learner.log_prior_std.values():
        assert torch.allclose(log_std.exp(), torch.full_like(log_std, 0.4))
    for log_std in learner.log_inference_std.values():  # the inference std is untouched
        assert torch.allclose(log_std.exp(), torch.full_like(log_std, 0.2))
    with pytest.raises(ValueError, match="prior-scales"):
        pa.scale_prior_std(nn.Linear(1, 1), 2.0)


bg = load_benchmark("bayesian_glyphs")


def test_glyph_rows_over_fewer_seeds_use_the_seeds_measured(tmp_path):
    """`rows_over_seeds`: stored cells are read back (nothing measured); a method without a
    run for some seed is left out by default and, with ``fewer_seeds``, gets a row over the
    seeds it has, by the t interval over those, the others named as missing."""
    cells = {0: {"mean": 0.50, "nll": 1.40, "ece": 0.20, "confidence": 0.30},
             1: {"mean": 0.60, "nll": 1.20, "ece": 0.10, "confidence": 0.45}}
    for seed in (0, 1, 2):
        (tmp_path / f"seed{seed}").mkdir()
    for seed, cell in cells.items():
        bg.cell_path(tmp_path / f"seed{seed}", "platipus", 100).write_text(json.dumps(cell))
    rows, _, _, missing = bg.rows_over_seeds(["platipus"], tmp_path, [0, 1, 2], 100)
    assert rows == {} and len(missing) == 1 and "seed2" in missing[0]
    rows, per_seed, seeds_of, missing = bg.rows_over_seeds(["platipus"], tmp_path, [0, 1, 2],
                                                           100, fewer_seeds=True)
    assert seeds_of == {"platipus": [0, 1]} and per_seed["platipus"] == [cells[0], cells[1]]
    assert len(missing) == 1 and "seed2" in missing[0]
    row = rows["platipus"]
    half = 12.706204736174698 * math.sqrt(0.005) / math.sqrt(2)  # t_{0.975,1} s / sqrt(2)
    assert math.isclose(row["mean"]["mean"], 0.55) and math.isclose(row["mean"]["ci95"], half)
    assert math.isclose(row["gap"]["mean"], ((0.30 - 0.50) + (0.45 - 0.60)) / 2)
    assert row["nll"]["values"] == [1.40, 1.20]


def test_support_width_override_of_the_test_tasks(tmp_path):
    config = Path(__file__).parents[1] / "configs" / "platipus-ambiguous-reimpl.yaml"
    (tmp_path / "config.yaml").write_text(config.read_text())  # support_width: null

    def spans(width):
        batch = pa.test_tasks(tmp_path, 50, width)[0]
        return (batch.support_x.amax(dim=1) - batch.support_x.amin(dim=1)).flatten()

    assert spans(None).max() > 4.0  # the run's own: supports over all of [-5, 5]
    assert spans("2").max() <= 2.0
    assert spans("none").max() > 4.0
    assert pa.parse_support_width("None") is None
    with pytest.raises(ValueError, match="--support-width must be a number or 'none'"):
        pa.parse_support_width("wide")


def test_checkpoint_snapshots_copy_each_multiple_once(tmp_path):
    """`checkpoint_snapshots.snapshot` copies the checkpoint (with the config) to
    ``step<N>`` only when ``N`` is a multiple of ``every``, and once."""
    snapshots = load_benchmark("checkpoint_snapshots")
    run, out = tmp_path / "run", tmp_path / "run-snapshots"
    run.mkdir()
    (run / "config.yaml").write_text("algorithm: {name: platipus}\n")
    for step, copied in ((250, None), (500, 500), (500, None), (1000, 1000)):
        torch.save({"step": step, "learner": {"w": torch.tensor(float(step))}},
                   run / "checkpoint.pt")
        assert snapshots.snapshot(run, out, every=500) == copied, step
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["step1000", "step500"]
    saved = torch.load(out / "step500" / "checkpoint.pt", weights_only=False)
    assert saved["step"] == 500 and saved["learner"]["w"].item() == 500.0
    assert (out / "step500" / "config.yaml").read_text() == "algorithm: {name: platipus}\n"


def test_support_fit_is_each_functions_mean_squared_error_on_the_support_by_hand():
    targets = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    outputs = torch.tensor([[1.0, 2.0, 3.0],    # exact: MSE 0
                            [1.0, 2.0, 4.0],    # one point off by 1: MSE 1/3
                            [0.0, 0.0, 0.0]],   # (1 + 4 + 9) / 3 = 14/3
                           dtype=torch.float64)
    mse, fraction = pa.support_fit(outputs, targets, threshold=0.5)
    assert torch.allclose(mse, torch.tensor([0.0, 1 / 3, 14 / 3], dtype=torch.float64))
    assert fraction.item() == pytest.approx(2 / 3)  # a summed error (1 > 0.5) would give 1/3
    # the threshold is inclusive and on the MSE, not the RMS (sqrt(1/3) = 0.577 > 1/3)
    assert pa.support_fit(outputs, targets, threshold=1 / 3)[1].item() == pytest.approx(2 / 3)
    assert pa.support_fit(outputs, targets, threshold=0.3)[1].item() == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="outputs"):
        pa.support_fit(outputs, targets[:2], threshold=0.5)


def test_fitting_hypotheses_count_only_functions_that_fit_the_support():
    fits = torch.tensor([True, False, True, True])
    is_line = torch.tensor([True, False, False, False])
    is_sine = torch.tensor([False, True, False, False])  # the one sinusoid misses the support
    scores = pa.fitting_hypotheses(fits, is_line, is_sine)
    assert scores == {"two_fitting": 1.0, "fitting_line": 1.0, "fitting_sine": 0.0}
    one = pa.fitting_hypotheses(torch.tensor([False, True]), torch.tensor([False, True]),
                                torch.tensor([True, False]))
    assert one == {"two_fitting": 0.0, "fitting_line": 1.0, "fitting_sine": 0.0}


def test_inner_lr_scale_changes_the_test_time_step_by_hand():
    from torch import nn

    from metalab.algorithms.maml import MAML

    model = nn.Linear(1, 1).double()
    with torch.no_grad():
        model.weight.fill_(1.0)
        model.bias.fill_(0.0)
    learner = MAML(model, inner_lr=0.01, loss="mse")
    pa.scale_inner_lr(learner, 5.0)
    x = torch.tensor([[1.0], [2.0]], dtype=torch.float64)
    y = torch.tensor([[3.0], [5.0]], dtype=torch.float64)
    # L = mean((w x + b - y)^2) at w = 1, b = 0: residuals -2, -3; dL/dw = mean(2 r x) = -8,
    # dL/db = mean(2 r) = -5; one step of 5 * 0.01 gives w = 1.4, b = 0.25
    adapted = learner.adapt_task(x, y, training=False, inner_steps=1)
    assert adapted["weight"].item() == pytest.approx(1.4, abs=1e-12)
    assert adapted["bias"].item() == pytest.approx(0.25, abs=1e-12)
    pa.scale_inner_lr(learner, 1.0)  # the identity leaves the scaled rule as it is
    assert learner.update_rule.lr == pytest.approx(0.05)
    with pytest.raises(ValueError, match="inner-lr-scales"):
        pa.scale_inner_lr(nn.Linear(1, 1), 2.0)


def test_settings_parse_and_label_the_rows():
    assert pa.parse_setting("100x5") == (100, 5.0)
    with pytest.raises(ValueError, match="STEPSxSCALE"):
        pa.parse_setting("100")
    assert pa.setting_label("platipus", (1.0, pa.INNER_STEPS, 1.0)) == "platipus"
    assert pa.setting_label("platipus", (1.0, 50, 2.0)) == "platipus (50 steps, lr x2)"
    assert pa.setting_label("platipus", (4.0, 10, 1.0)) == "platipus (prior std x4)"


def test_prior_scale_rows_cross_every_test_time_setting_for_platipus_only():
    rows = pa.setting_rows(["maml", "platipus"], ["platipus"], [10, 100], [1.0],
                           [1.0, 2.0, 4.0])
    assert rows == [("maml", (1.0, 10, 1.0)), ("maml", (1.0, 100, 1.0)),
                    ("platipus", (1.0, 10, 1.0)), ("platipus", (1.0, 100, 1.0)),
                    ("platipus", (2.0, 10, 1.0)), ("platipus", (2.0, 100, 1.0)),
                    ("platipus", (4.0, 10, 1.0)), ("platipus", (4.0, 100, 1.0))]
    labels = [pa.setting_label(n, c) for n, c in rows]
    assert len(set(labels)) == len(labels)
    assert "platipus (prior std x4, 100 steps, lr x1)" in labels


def test_strict_holds_needs_a_fitting_line_and_a_fitting_sinusoid():
    """Support at x = 0, pi/2 with y = 0, 3: the line y = 6x/pi and 3 sin x both pass
    through it; a sinusoid shifted off the support does not fit."""
    sx = torch.tensor([0.0, math.pi / 2], dtype=torch.float64)
    sy = torch.tensor([0.0, 3.0], dtype=torch.float64)
    grid = pa.GRID[:, 0].double()

    def on(f):
        return torch.cat([f(grid), f(sx)])

    line = on(lambda x: 6 * x / math.pi)
    sine = on(lambda x: 3 * torch.sin(x))
    off = on(lambda x: 3 * torch.sin(x - 1.0))
    assert pa.strict_holds(torch.stack([line, sine]), sy, 0.6, 1.0)
    assert not pa.strict_holds(torch.stack([line, off]), sy, 0.6, 1.0)
    assert not pa.strict_holds(torch.stack([line, line]), sy, 0.6, 1.0)


def test_line_like_labels_a_diverged_function_not_line_and_keeps_the_others():
    x = pa.GRID[:, 0]
    functions = torch.stack([2 * x + 1, 3 * torch.sin(x), torch.full_like(x, float("nan"))])
    assert pa.is_line_like(functions).tolist() == [True, False, False]
