"""The trainer, evaluator, run directories and the CLI, end to end on tiny configs."""

import json
from pathlib import Path

import pytest
import torch
import yaml

from helpers import interrupted_then_resumed
from metalab import load_run
from metalab.cli.main import main
from metalab.train import ConfigError, Evaluator, apply_overrides, load_config, mean_ci95
from metalab.train.run import initial_learner, make_trainer, train_run

TINY_SINUSOID = {
    "algorithm": {"name": "maml", "inner_lr": 0.01, "inner_steps": 1, "strategy": "vmap"},
    "model": {"name": "mlp", "hidden": [16, 16]},
    "data": {"name": "sinusoid", "shots": 5, "queries": 5},
    "train": {"steps": 12, "meta_batch": 4, "val_every": 6, "val_episodes": 20,
              "checkpoint_every": 4, "log_every": 3, "progress": False},
    "eval": {"episodes": 30, "batch_size": 10},
}


@pytest.fixture
def tiny_config(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY_SINUSOID))
    return path


def test_cli_train_then_eval_then_plot(tiny_config, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", str(tiny_config), "train.steps=8", "--out", str(run)]) == 0
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["split"] == "train"] == [3, 6, 8]
    assert [r["step"] for r in records if r["split"] == "val"] == [6, 8]
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["steps"] == 8
    assert main(["eval", str(run), "--episodes", "25"]) == 0
    result = json.loads((run / "eval.json").read_text())
    assert result["metric"] == "mse" and result["episodes"] == 25 and result["ci95"] > 0
    assert set(result) >= {"metric", "mean", "ci95", "episodes"}
    assert main(["plot", str(run)]) == 0
    assert (run / "curves.png").stat().st_size > 1000
    learner = load_run(run)
    x = torch.linspace(-5, 5, 5).unsqueeze(-1)
    assert learner.adapt(x, torch.sin(x))(x).shape == (5, 1)


def test_cli_refuses_to_overwrite_a_run_and_reports_bad_input(tiny_config, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("keep me")
    assert main(["train", str(tiny_config), "--out", str(run)]) == 2
    assert "exists and is not empty" in capsys.readouterr().err
    assert (run / "notes.txt").read_text() == "keep me"
    assert main(["train", str(tiny_config), "algorithm.name=nope", "--out",
                 str(tmp_path / "r2")]) == 2
    assert "algorithm.name must be one of" in capsys.readouterr().err
    assert main(["train", str(tmp_path / "missing.yaml")]) == 2
    assert "neither a file nor a shipped config" in capsys.readouterr().err
    assert main(["eval", str(tmp_path / "nowhere")]) == 2
    assert "is not a metalab run" in capsys.readouterr().err


def test_config_overrides_and_errors(tiny_config):
    config = load_config(tiny_config, ["train.steps=200", "data.shots=10", "model.hidden=[1, 2]"])
    assert config["train"]["steps"] == 200 and config["data"]["shots"] == 10
    assert config["model"]["hidden"] == [1, 2]
    with pytest.raises(ConfigError, match="algorithm.x is not an option of maml"):
        load_config(tiny_config, ["algorithm.x=[1, 2]"])
    assert config["train"]["optimizer"] == "adam"  # default filled in
    with pytest.raises(ConfigError, match="must look like section.key=value"):
        apply_overrides({}, ["steps"])
    with pytest.raises(ConfigError, match="train.steps must be a positive integer"):
        load_config(tiny_config, ["train.steps=0"])
    with pytest.raises(ConfigError, match="config needs eval.episodes"):
        load_config(tiny_config, ["eval=null"])
    with pytest.raises(ConfigError, match="unknown config sections"):
        load_config(tiny_config, ["extra.a=1"])


def _parameters(learner):
    return {k: v.clone() for k, v in learner.state_dict().items()}


def test_interrupted_then_resumed_run_matches_uninterrupted(tmp_path, monkeypatch):
    config = load_config_from(TINY_SINUSOID, tmp_path)
    # after the checkpoint at step 4, before the one at step 8
    straight, resumed = interrupted_then_resumed(config, tmp_path, interrupt_at=7)
    straight, resumed = straight.learner, resumed.learner
    for name, value in _parameters(straight).items():
        assert torch.equal(resumed.state_dict()[name], value), name
    steps = [json.loads(line)["step"]
             for line in (tmp_path / "broken" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [json.loads(line)["step"] for line in
                     (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]


def test_resume_refuses_a_changed_config(tmp_path):
    config = load_config_from(TINY_SINUSOID, tmp_path)
    train_run(config, tmp_path / "run")
    changed = apply_overrides(config, ["algorithm.inner_lr=0.5"])
    from metalab.train import RunDirError

    with pytest.raises(RunDirError, match="algorithm.inner_lr differ"):
        train_run(changed, tmp_path / "run", resume=True)
    longer = apply_overrides(config, ["train.steps=14"])
    assert train_run(longer, tmp_path / "run", resume=True).step == 14
    # the CLI form: no CONFIG, the run's own config.yaml (already complete: nothing to do)
    assert main(["train", "--resume", "--out", str(tmp_path / "run"), "train.steps=16"]) == 0
    assert load_run_step(tmp_path / "run") == 16


def load_run_step(run_dir):
    from metalab.train.checkpoint import load_checkpoint

    return load_checkpoint(run_dir)["step"]


def load_config_from(raw, tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load_config(path)


def test_mean_ci95_and_evaluator_episode_count():
    mean, ci = mean_ci95(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    assert mean == 2.5 and ci == pytest.approx(1.96 * 1.2909944 / 2, rel=1e-6)
    from metalab.algorithms import MAML
    from metalab.nn import MLP
    from metalab.tasks import Sinusoid

    learner = MAML(MLP(1, (8,), 1), inner_lr=0.01, loss="mse")
    result = Evaluator(episodes=13).evaluate(learner, Sinusoid(5, 5, tasks_per_batch=5, seed=0))
    assert result["episodes"] == 13 and result["metric"] == "mse"


SHARED_OMNIGLOT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "omniglot"
TINY_IMAGE_RUN = ["train.steps=3", "train.meta_batch=2", "model.hidden=8", "data.queries=2",
                  "train.val_every=2", "train.val_episodes=4", "train.progress=false"]


@pytest.mark.parametrize("config", ["maml-glyphs-5w1s", "protonet-glyphs-5w1s"])
def test_shipped_glyph_configs_train_and_evaluate_end_to_end(config, tmp_path):
    run = tmp_path / config
    assert main(["train", config, *TINY_IMAGE_RUN, "--out", str(run)]) == 0
    assert main(["eval", str(run), "--episodes", "6"]) == 0
    result = json.loads((run / "eval.json").read_text())
    assert result["metric"] == "accuracy" and 0 <= result["mean"] <= 1
    learner = load_run(run)
    from metalab.datasets import Glyphs
    from metalab.tasks import EpisodeSampler

    task = EpisodeSampler(Glyphs("test"), 5, 1, 2, seed=0).sample()[0]
    assert learner.adapt(task.support_x, task.support_y)(task.query_x).shape == (10, 5)


@pytest.mark.skipif(not SHARED_OMNIGLOT.is_dir(),
                    reason=f"real Omniglot subsets not found at {SHARED_OMNIGLOT}")
def test_omniglot_config_on_the_real_subsets(tmp_path):
    run = tmp_path / "omniglot"
    overrides = [f"data.root={SHARED_OMNIGLOT}", "data.split_by=alphabet",
                 "data.train_sources=[small1]", "data.test_sources=[small2]",
                 "data.rotations=false", *TINY_IMAGE_RUN]
    assert main(["train", "maml-omniglot-5w1s", *overrides, "--out", str(run)]) == 0
    assert main(["eval", str(run), "--episodes", "4"]) == 0


def test_every_shipped_config_resolves():
    from metalab.cli.main import CONFIG_DIR
    from metalab.train.build import build_meta_learner

    paths = sorted(CONFIG_DIR.glob("*.yaml"))
    assert len(paths) >= 12
    for path in paths:
        build_meta_learner(load_config(path))


def test_task_chunks_accumulate_to_the_same_update(tmp_path):
    base = apply_overrides(TINY_SINUSOID, ["train.dtype=float64", "train.steps=4",
                                           "train.meta_batch=5", "train.val_every=0"])
    whole = train_run(load_config_from(base, tmp_path), tmp_path / "whole").learner
    chunked_config = apply_overrides(base, ["train.task_chunk=2"])
    chunked = train_run(load_config_from(chunked_config, tmp_path), tmp_path / "chunked").learner
    for name, value in whole.state_dict().items():
        torch.testing.assert_close(chunked.state_dict()[name], value, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="train.task_chunk must be a positive integer"):
        make_trainer(load_config_from(apply_overrides(base, ["train.task_chunk=0"]), tmp_path),
                     tmp_path / "bad")


def test_meta_backward_rejects_a_bad_task_chunk():
    from metalab.algorithms import MAML
    from metalab.nn import MLP
    from metalab.tasks import Sinusoid

    learner = MAML(MLP(1, (8,), 1), inner_lr=0.01, loss="mse")
    with pytest.raises(ValueError, match="task_chunk must be an integer >= 1, got 0"):
        learner.meta_backward(Sinusoid(5, 5, tasks_per_batch=2, seed=0).sample(), task_chunk=0)


def test_initial_learner_is_what_a_run_starts_from_and_depends_on_the_seed_only(tmp_path):
    config = load_config_from(apply_overrides(TINY_SINUSOID, ["train.seed=7"]), tmp_path)
    torch.manual_seed(123)  # whatever the global generator held before
    initial = initial_learner(config).state_dict()
    trained_from = make_trainer(config, tmp_path / "run").learner.state_dict()
    assert initial.keys() == trained_from.keys()
    for name, value in initial.items():
        assert torch.equal(trained_from[name], value), name
    other = initial_learner(apply_overrides(config, ["train.seed=8"])).state_dict()
    assert any(not torch.equal(other[n], v) for n, v in initial.items())


def test_validation_records_its_own_duration_which_the_train_clock_includes(
        tiny_config, tmp_path, monkeypatch):
    """A slowed validation: its records carry the time it took, and the train records'
    ``seconds`` (the clock since the start) include it, so training time alone is
    ``seconds`` minus the validations before."""
    import time

    evaluate = Evaluator.evaluate

    def slow_evaluate(self, *args, **kwargs):
        time.sleep(0.25)
        return evaluate(self, *args, **kwargs)

    monkeypatch.setattr(Evaluator, "evaluate", slow_evaluate)
    assert main(["train", str(tiny_config), "train.val_every=3", "--out",
                 str(tmp_path / "run")]) == 0
    records = [json.loads(line)
               for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in records if r["split"] == "val"]
    assert [r["step"] for r in val] == [3, 6, 9, 12]
    assert all(0.25 <= r["val_seconds"] < 5 for r in val)
    last_train = [r for r in records if r["split"] == "train" and r["step"] == 12][0]
    before = sum(r["val_seconds"] for r in val if r["step"] < 12)  # logged after step 12's
    assert last_train["seconds"] >= before
