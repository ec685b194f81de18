"""The shipped neural-process configs through the CLI: train, evaluate (MSE with the
log-likelihood beside it), reload and adapt, and the predictive plot."""

import json

import pytest
import torch

from metalab import load_run
from metalab.cli.main import main

FAST = ["train.steps=3", "train.meta_batch=2", "train.val_every=2", "train.val_episodes=4",
        "train.log_every=1", "train.progress=false", "model.hidden=[8]", "model.representation=8"]


def _train_and_eval(config, run, *overrides, episodes=6):
    assert main(["train", config, *FAST, *overrides, "--out", str(run)]) == 0
    assert main(["eval", str(run), "--episodes", str(episodes)]) == 0
    return json.loads((run / "eval.json").read_text())


@pytest.mark.parametrize("config", ["cnp-sinusoid", "cnp-gp", "np-gp", "anp-gp",
                                    "np-sinusoid", "anp-sinusoid"])
def test_neural_process_configs_report_mse_and_log_likelihood(config, tmp_path):
    run = tmp_path / config
    extra = ["model.latent=4", "model.attention_heads=2"] if config.startswith("anp") else (
        ["model.latent=4"] if config.startswith("np") else [])
    result = _train_and_eval(config, run, *extra, "eval.queries=7")
    assert result["metric"] == "mse" and result["mean"] > 0
    assert result["log_likelihood"] < 10 and result["log_likelihood_ci95"] >= 0
    learner = load_run(run)
    x = torch.linspace(-2, 2, 5)[:, None]
    predictive = learner.adapt(x[:3], torch.sin(x[:3]))
    assert predictive(x).shape == (5, 1) and (predictive.variance(x) > 0).all()


@pytest.mark.slow  # builds three Glyphs splits and evaluates 784-pixel targets: ~1 min loaded
def test_glyphs_completion_config_and_the_predictive_plot(tmp_path):
    run = tmp_path / "completion"
    result = _train_and_eval("cnp-glyphs-completion", run, "data.max_shots=20", episodes=2)
    assert result["metric"] == "mse" and 0 < result["mean"] < 1
    assert main(["plot", "--predictive", str(run)]) == 0
    assert (run / "predictive.png").stat().st_size > 0


def test_predictive_plot_of_curves_with_changed_test_data(tmp_path):
    run = tmp_path / "np"
    assert main(["train", "np-sinusoid", *FAST, "model.latent=4", "--out", str(run)]) == 0
    out = tmp_path / "ood.png"
    assert main(["plot", "--predictive", str(run), "--out", str(out),
                 "--data", "data.amplitude=[5,10]"]) == 0
    assert out.stat().st_size > 0
