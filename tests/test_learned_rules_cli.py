"""The learned inner-update-rule configs (Meta-Curvature, T-Net, MT-Net, WarpGrad) train,
evaluate and reload through the CLI, and their learned parts move in training."""

import json

import pytest
import torch

from metalab import load_run
from metalab.cli.main import main

TINY = ["train.steps=2", "train.meta_batch=2", "model.hidden=4", "data.queries=2",
        "train.val_every=0", "train.progress=false", "algorithm.eval_inner_steps=1"]
LEARNED_PART = {"metacurvature": "curvatures", "tnet": "transform", "mtnet": "logits",
                "warpgrad": "transform"}


@pytest.mark.slow  # a glyphs run through the CLI: minutes on the shared 2-core machine
@pytest.mark.parametrize("method", sorted(LEARNED_PART))
def test_learned_rule_configs_train_evaluate_and_reload(method, tmp_path):
    run = tmp_path / method
    assert main(["train", f"{method}-glyphs-5w1s", *TINY, "--out", str(run)]) == 0
    assert main(["eval", str(run), "--episodes", "4"]) == 0
    result = json.loads((run / "eval.json").read_text())
    assert result["metric"] == "accuracy" and 0.0 <= result["mean"] <= 1.0
    learner = load_run(run)
    fresh = learner.state_dict()
    moved = [name for name, value in fresh.items() if LEARNED_PART[method] in name
             and value.dim() == 2 and not torch.equal(value, torch.eye(value.shape[0]))]
    if method == "mtnet":
        moved = [name for name, value in fresh.items() if "logits" in name
                 and value.abs().sum() > 0]
    assert moved, f"no learned {LEARNED_PART[method]} parameter moved in training"
