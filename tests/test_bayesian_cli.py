"""PLATIPUS and ABML through the CLI on the sine/line family: train, evaluate (MSE,
log-likelihood, 90% coverage), reload and adapt, and the PLATIPUS figure with a MAML run
beside them (`metalab plot --predictive` with several tasks per context size)."""

import json

import pytest
import torch

from metalab import load_run
from metalab.cli.main import main

FAST = ["train.steps=2", "train.meta_batch=2", "train.val_every=0", "train.log_every=1",
        "train.progress=false", "model.hidden=[8]", "eval.queries=7", "algorithm.samples=3"]


@pytest.mark.slow  # 40-70 s each on the loaded 2-core machine (three runs, eval, a figure)
@pytest.mark.parametrize("config", ["platipus-ambiguous", "abml-ambiguous"])
def test_train_evaluate_reload_and_plot(config, tmp_path):
    run = tmp_path / config
    assert main(["train", config, *FAST, "--out", str(run)]) == 0
    assert main(["eval", str(run), "--episodes", "4"]) == 0
    result = json.loads((run / "eval.json").read_text())
    assert result["metric"] == "mse" and result["mean"] > 0
    assert 0 <= result["coverage_90"] <= 1 and result["log_likelihood"] < 10
    learner = load_run(run)
    x = torch.linspace(-1, 1, 5)[:, None]
    predictive = learner.adapt(x[:3], torch.sin(x[:3]), seed=1)
    assert predictive(x).shape == (5, 1) and (predictive.variance(x) > 0).all()

    maml = tmp_path / "maml"
    assert main(["train", "maml-sinusoid-5shot", "train.steps=1", "train.meta_batch=2",
                 "train.val_every=0", "train.progress=false", "train.compile=false",
                 "model.hidden=[8]", "data.name=sine-line", "data.support_width=2.0",
                 "--out", str(maml)]) == 0
    out = tmp_path / "figure.png"
    assert main(["plot", "--predictive", str(run), str(maml), "--out", str(out),
                 "--contexts", "5", "--tasks", "2", "--samples", "3"]) == 0
    assert out.stat().st_size > 0
