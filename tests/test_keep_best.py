"""``train.keep_best``: model selection on the val split. ``best.pt`` holds the learner of
the best validation so far (in the metric's own direction, a tie keeping the earlier one),
survives a resume, and ``metalab eval --checkpoint best`` meta-tests it.

Validation values are scripted per step (``Trainer.validate`` patched), so the best step is
known by hand; the reference for the best learner is a run trained to exactly that step."""

from __future__ import annotations

import json

import pytest
import torch

from helpers import interrupted_then_resumed
from metalab import load_run
from metalab.cli.main import main
from metalab.train import ConfigError, load_config
from metalab.train.trainer import Trainer

SINUSOID = {
    "algorithm": {"name": "maml", "inner_lr": 0.01, "inner_steps": 1, "strategy": "vmap"},
    "model": {"name": "mlp", "hidden": [8]},
    "data": {"name": "sinusoid", "shots": 5, "queries": 5},
    "train": {"steps": 12, "meta_batch": 2, "val_every": 3, "val_episodes": 4,
              "checkpoint_every": 4, "log_every": 3, "progress": False, "keep_best": True},
    "eval": {"episodes": 6, "batch_size": 6},
}
GLYPHS = ["train.steps=4", "train.meta_batch=2", "model.hidden=8", "data.queries=2",
          "train.val_every=1", "train.val_episodes=4", "train.progress=false",
          "train.keep_best=true"]


def script_validation(monkeypatch, values_by_step: dict[int, float]) -> None:
    def scripted(trainer):
        return {trainer.learner.metric_name: values_by_step[trainer.step], "ci95": 0.0,
                "val_seconds": 0.0}

    monkeypatch.setattr(Trainer, "validate", scripted)


def same_parameters(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("config, values, best_step", [
    # mse: lower is better; the tie at step 12 keeps step 9
    ("sinusoid", {3: 0.5, 6: 0.6, 9: 0.1, 12: 0.1}, 9),
    # accuracy: higher is better; the tie at step 4 keeps step 2
    ("protonet-glyphs-5w1s", {1: 0.5, 2: 0.6, 3: 0.1, 4: 0.6}, 2),
])
def test_best_checkpoint_is_the_learner_at_the_best_validation(
        config, values, best_step, tmp_path, monkeypatch):
    script_validation(monkeypatch, values)
    if config == "sinusoid":
        (tmp_path / "sinusoid.yaml").write_text(json.dumps(SINUSOID))
        config, overrides = str(tmp_path / "sinusoid.yaml"), []
    else:
        overrides = GLYPHS
    run, reference = tmp_path / "run", tmp_path / "reference"
    assert main(["train", config, *overrides, "--out", str(run)]) == 0
    assert main(["train", config, *overrides, f"train.steps={best_step}",
                 "--out", str(reference)]) == 0
    best = torch.load(run / "best.pt", weights_only=False)
    assert best["step"] == best_step and best["value"] == values[best_step]
    assert same_parameters(best["learner"], load_run(reference).state_dict())
    assert not same_parameters(best["learner"], load_run(run).state_dict())  # last != best
    assert same_parameters(load_run(run, checkpoint="best").state_dict(), best["learner"])

    assert main(["eval", str(run), "--checkpoint", "best", "--episodes", "4"]) == 0
    result = json.loads((run / "eval-best.json").read_text())
    assert (result["checkpoint"], result["step"]) == ("best", best_step)
    assert main(["eval", str(reference), "--episodes", "4"]) == 0
    assert result["mean"] == json.loads((reference / "eval.json").read_text())["mean"]


def test_resumed_run_remembers_its_best(tmp_path, monkeypatch):
    """Interrupted at step 7 (checkpoint at 4, validations at 3 and 6 done): the resumed run
    must still compare later validations with step 3's, the best; one that forgot it would
    take step 6, then 9, then 12."""
    script_validation(monkeypatch, {3: 0.1, 6: 0.5, 9: 0.3, 12: 0.2})
    (tmp_path / "sinusoid.yaml").write_text(json.dumps(SINUSOID))
    config = load_config(tmp_path / "sinusoid.yaml")
    straight, resumed = interrupted_then_resumed(config, tmp_path, interrupt_at=7)
    assert resumed.best == straight.best == {"step": 3, "mse": 0.1}
    best = {run: torch.load(tmp_path / run / "best.pt", weights_only=False)
            for run in ("straight", "broken")}
    assert best["straight"]["step"] == best["broken"]["step"] == 3
    assert same_parameters(best["straight"]["learner"], best["broken"]["learner"])


def test_keep_best_needs_validation_and_eval_says_when_there_is_no_best(tmp_path, capsys):
    path = tmp_path / "sinusoid.yaml"
    path.write_text(json.dumps({**SINUSOID, "train": {**SINUSOID["train"], "val_every": 0}}))
    with pytest.raises(ConfigError, match="keep_best needs validation"):
        load_config(path)
    run = tmp_path / "run"
    assert main(["train", str(path), "train.keep_best=false", "train.steps=2",
                 "--out", str(run)]) == 0
    assert main(["eval", str(run), "--checkpoint", "best"]) != 0
    assert "train.keep_best" in capsys.readouterr().err
    assert not list(run.glob("eval*.json"))
