"""Meta-RL adaptation curves: MAML-RL's return after each inner step, and ``metalab plot
--adaptation`` over evaluation files, against hand computations."""

from __future__ import annotations

import json
import math

import pytest
import torch

from metalab.algorithms.maml_rl import MAMLRL
from metalab.cli.main import main
from metalab.cli.plot_adaptation import adaptation_curve, mean_curve
from metalab.rl import GaussianMLPPolicy, build_family
from metalab.rl.task_source import EnvironmentTaskSource

T_975_2 = 4.302652729911275  # Student-t 0.975 quantile, 2 degrees of freedom


def test_maml_rl_reports_the_return_after_each_inner_step():
    family = build_family("nav2d")
    torch.manual_seed(0)
    learner = MAMLRL(GaussianMLPPolicy(2, 2, hidden=(16,)), inner_lr=0.1)

    def batch():  # the same tasks and rollout noise each time
        return EnvironmentTaskSource(family, 3, 4, seed=5).sample()

    _, three = learner.task_losses(batch(), training=False, inner_steps=3)
    _, one = learner.task_losses(batch(), training=False, inner_steps=1)
    assert sorted(k for k in three if k.startswith("return_step")) == [
        f"return_step{k}" for k in range(4)]
    assert torch.equal(three["return_step0"], three["return_pre"])
    assert torch.equal(three["return_step3"], three["return"])
    # step 1's episodes are the one-step meta-test's final episodes (same noise stream)
    assert torch.equal(three["return_step1"], one["return"])
    assert not torch.equal(three["return_step1"], three["return_step0"])
    assert not any(k.startswith("return_step") for k in one)  # one step: pre and after


def test_curves_of_each_evaluation_kind_and_their_mean():
    trial = {"mean": -3.0, "ci95": 0.5, "return_episode1": -9.0, "return_episode1_ci95": 1.0,
             "return_episode2": -4.0, "return_episode2_ci95": 0.7, "return_episode3": -3.0,
             "return_episode3_ci95": 0.5}
    assert adaptation_curve(trial) == ("episode of the trial", [1, 2, 3], [-9.0, -4.0, -3.0],
                                       [1.0, 0.7, 0.5])
    one_step = {"mean": -20.0, "ci95": 2.0, "return_pre": -40.0, "return_pre_ci95": 4.0}
    assert adaptation_curve(one_step) == ("inner steps", [0, 1], [-40.0, -20.0], [4.0, 2.0])
    steps = {"return_step0": -40.0, "return_step1": -30.0, "return_step2": -25.0}
    assert adaptation_curve(steps)[1:3] == ([0, 1, 2], [-40.0, -30.0, -25.0])
    seeds = [dict(trial, return_episode1=v) for v in (-9.0, -7.0, -11.0)]
    _, points, means, intervals = mean_curve(seeds)
    assert points == [1, 2, 3] and means[0] == pytest.approx(-9.0)
    assert intervals[0] == pytest.approx(T_975_2 * 2.0 / math.sqrt(3))
    assert intervals[1] == 0.0  # every seed has -4.0 at episode 2
    with pytest.raises(ValueError, match="adaptation points differ"):
        mean_curve([trial, one_step])
    with pytest.raises(ValueError, match="no adaptation curve"):
        adaptation_curve({"mean": 0.8, "ci95": 0.01})


def test_cli_draws_evaluation_files_and_names_a_missing_one(tmp_path, capsys):
    files = []
    for seed in range(3):
        path = tmp_path / f"eval-seed{seed}.json"
        path.write_text(json.dumps({"mean": -3.0 - seed, "ci95": 0.5, "return_pre": -9.0,
                                    "return_pre_ci95": 1.0}))
        files.append(str(path))
    assert main(["plot", "--adaptation", *files]) == 0
    assert (tmp_path / "adaptation.png").read_bytes().startswith(b"\x89PNG")
    capsys.readouterr()
    assert main(["plot", "--adaptation", str(tmp_path)]) == 2
    assert "eval.json' does not exist; run `metalab eval" in capsys.readouterr().err
