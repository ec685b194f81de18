"""Typed config sections, key checking, YAML errors, old run directories and `--resume RUN`."""

import json
import typing

import pytest
import torch
import yaml

from helpers import logged_records
from metalab.cli.main import main
from metalab.train import ConfigError, Trainer, apply_overrides, load_config, train_run
from metalab.train.config import TrainConfig, accepted_keywords, resolve
from metalab.train.run import read_run_config

TINY = {
    "algorithm": {"name": "maml", "inner_lr": 0.01, "inner_steps": 1, "strategy": "vmap"},
    "model": {"name": "mlp", "hidden": [16, 16]},
    "data": {"name": "sinusoid", "shots": 5, "queries": 5},
    "train": {"steps": 4, "meta_batch": 4, "val_every": 0, "checkpoint_every": 2,
              "log_every": 2, "progress": False, "dtype": "float64"},
    "eval": {"episodes": 30, "batch_size": 10},
}

# What `metalab train` wrote as config.yaml before the typed sections (commit c23ad8c) for
# TINY: the defaults of that time filled in, the model sizes completed, no eval.queries.
OLD_CONFIG_YAML = """\
algorithm:
  name: maml
  inner_lr: 0.01
  inner_steps: 1
  strategy: vmap
model:
  name: mlp
  hidden:
  - 16
  - 16
  in_features: 1
  out_features: 1
data:
  shuffle_labels: true
  train_split: train
  val_split: val
  test_split: test
  name: sinusoid
  shots: 5
  queries: 5
train:
  optimizer: adam
  lr: 0.001
  seed: 0
  device: cpu
  val_every: 0
  val_episodes: 100
  checkpoint_every: 2
  log_every: 2
  grad_clip: null
  task_chunk: null
  compile: false
  progress: false
  combiner: null
  combine_params: all
  diagnostics: false
  steps: 4
  meta_batch: 4
  dtype: float64
eval:
  episodes: 30
  seed: 1234
  batch_size: 10
"""


def _write(tmp_path, config, name="config.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config))
    return path


# -- the typed sections ---------------------------------------------------------------------
def test_defaults_are_those_old_runs_were_written_with(tmp_path):
    old = yaml.safe_load(OLD_CONFIG_YAML)
    config = load_config(_write(tmp_path, TINY))
    # keys added since: their defaults are the behaviour old runs were trained with
    added = {"lr_schedule": "constant", "lr_final": 0.0, "lr_step_every": None,
             "lr_gamma": 0.1, "keep_freed_memory": False, "keep_best": False}
    assert config["train"] | {"dtype": "float64"} == old["train"] | {"dtype": "float64",
                                                                     **added}
    assert {k: config["eval"][k] for k in old["eval"]} == old["eval"]
    assert config["eval"]["queries"] is None and config["eval"]["inner_steps"] is None
    assert config["data"] == old["data"]


@pytest.mark.parametrize("override, unknown, closest", [
    ("train.stpes=3", "train.stpes", "steps"),
    ("train.lr_rate=0.1", "train.lr_rate", None),
    ("eval.episdoes=3", "eval.episdoes", "episodes"),
    ("algorithm.inner_lrr=0.1", "algorithm.inner_lrr", "inner_lr"),
    ("model.hiden=[4]", "model.hiden", "hidden"),
    ("data.shotss=3", "data.shotss", "shots"),
])
def test_an_unknown_key_is_named_with_its_section_the_known_keys_and_the_closest(
        tmp_path, override, unknown, closest):
    with pytest.raises(ConfigError) as error:
        load_config(_write(tmp_path, TINY), [override])
    message = str(error.value)
    section = unknown.split(".")[0]
    assert message.startswith(f"{unknown} is not ")
    assert f"known {section} keys: " in message
    if closest is None:
        assert "did you mean" not in message
    else:
        assert f"(did you mean {closest}?)" in message
    known = message.split("keys: ")[1].split(", ")
    assert closest is None or closest in known


def test_train_keys_listed_are_exactly_the_documented_ones(tmp_path):
    with pytest.raises(ConfigError) as error:
        load_config(_write(tmp_path, TINY), ["train.stpes=3"])
    known = str(error.value).split("keys: ")[1].split(", ")
    assert known == sorted(["steps", "meta_batch", "optimizer", "lr", "seed", "device",
                            "dtype", "val_every", "val_episodes", "checkpoint_every",
                            "log_every", "grad_clip", "task_chunk", "compile", "progress",
                            "combiner", "combine_params", "diagnostics", "lr_schedule",
                            "lr_final", "lr_step_every", "lr_gamma", "keep_freed_memory",
                            "keep_best"])


@pytest.mark.parametrize("algorithm, key, closest", [
    ("metasgd", "inner_stepz", "inner_steps"),   # **kwargs forwarded to MAML.__init__
    ("fomaml", "inner_lrr", "inner_lr"),        # a function returning a MAML
    ("protonet", "inner_lr", None),
])
def test_algorithm_keys_follow_forwarded_keywords(tmp_path, algorithm, key, closest):
    config = apply_overrides(TINY, [f"algorithm.name={algorithm}", "algorithm.strategy=loop"])
    if algorithm == "protonet":
        config["algorithm"] = {"name": "protonet"}
    config = resolve(config)  # the valid config is accepted
    with pytest.raises(ConfigError, match=f"algorithm.{key} is not an option of {algorithm}"):
        resolve(apply_overrides(config, [f"algorithm.{key}=1"]))


def test_accepted_keywords_of_classes_and_functions():
    class Base:
        def __init__(self, model, a=1, *, b=2):
            pass

    class Child(Base):
        def __init__(self, model, c=3, **kwargs):
            super().__init__(model, **kwargs)

    def returns_child(model, **kwargs) -> Child:
        return Child(model, **kwargs)

    def anything(model, **kwargs):
        return model

    assert accepted_keywords(Base) == {"model", "a", "b"}
    assert accepted_keywords(Child) == {"model", "a", "b", "c"}
    assert accepted_keywords(returns_child) == {"model", "a", "b", "c"}
    assert accepted_keywords(anything) is None


@pytest.mark.parametrize("override, message", [
    ("train.steps=0", "train.steps must be a positive integer, got 0"),
    ("train.steps=true", "train.steps must be a positive integer, got True"),
    ("train.steps=2.5", "train.steps must be a positive integer, got 2.5"),
    ("train.val_every=-1", "train.val_every must be a non-negative integer, got -1"),
    ("train.lr=0", "train.lr must be a positive number, got 0"),
    ("train.grad_clip=-1", "train.grad_clip must be a positive number or null, got -1"),
    ("train.optimizer=adamm", "train.optimizer must be one of ['adam', 'sgd', 'adamw'], "
                              "got 'adamm'"),
    ("train.dtype=float16", "train.dtype must be one of ['float32', 'float64'] or null, "
                            "got 'float16'"),
    ("train.combine_params=heads", "train.combine_params must be one of ['all', 'shared']"),
    ("train.progress=maybe", "train.progress must be true or false, got 'maybe'"),
    ("train.combiner=3", "train.combiner must be a string or a mapping or null, got 3"),
    ("eval.batch_size=0", "eval.batch_size must be a positive integer, got 0"),
    ("train.seed=abc", "train.seed must be an integer, got 'abc'"),
    ("train.device=0", "train.device must be a string, got 0"),
    ("train=null", "config needs train.steps"),
    ("algorithm.name=mamll", "algorithm.name must be one of .* got 'mamll' .did you mean maml"),
    ("data.name=sinusiod", "data.name must be one of .* got 'sinusiod' .did you mean sinusoid"),
])
def test_a_wrong_value_names_the_key_what_it_accepts_and_what_it_got(tmp_path, override,
                                                                     message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")
                       if ".*" not in message else message):
        load_config(_write(tmp_path, TINY), [override])


def test_overrides_keep_their_yaml_types_and_nest(tmp_path):
    config = load_config(_write(tmp_path, TINY), [
        "train.lr=1e-3",  # PyYAML reads 1e-3 as a string; the schema makes it a number
        "train.combiner.name=pcgrad", "train.combiner.seed=3", "model.hidden=[8]"])
    assert config["train"]["lr"] == 0.001 and isinstance(config["train"]["lr"], float)
    assert config["train"]["combiner"] == {"name": "pcgrad", "seed": 3}
    assert config["model"]["hidden"] == [8]


def test_optimizer_names_match_the_trainer():
    from metalab.train.trainer import OPTIMIZERS

    names = typing.get_args(TrainConfig.model_fields["optimizer"].annotation)
    assert set(names) == set(OPTIMIZERS)


# -- malformed YAML -------------------------------------------------------------------------
@pytest.mark.parametrize("text, line, column", [
    ("train:\n  steps: 3\n meta_batch: 2\n", 3, 2),       # a key dedented into nothing
    ("train:\n  steps: [1, 2\neval:\n  episodes: 3\n", 3, 5),  # an unclosed flow sequence
    ("algorithm:\n  name: maml\n  x: 'a\n", 4, 1),        # an unclosed quote, at the end
])
def test_malformed_yaml_is_one_line_naming_file_line_and_column(tmp_path, capsys, text, line,
                                                                column):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as error:
        load_config(path)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"config {str(path)!r}, line {line}, column {column}: ")
    assert main(["train", str(path), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"line {line}, column {column}" in err
    assert "Traceback" not in err


# -- the trainer takes the typed section ----------------------------------------------------
def _learner_and_source(seed=0):
    from metalab.algorithms import MAML
    from metalab.nn import MLP
    from metalab.tasks import Sinusoid

    torch.manual_seed(seed)
    learner = MAML(MLP(1, (8,), 1).double(), inner_lr=0.05, loss="mse")
    return learner, Sinusoid(shots=5, queries=5, tasks_per_batch=3, seed=1)


def test_trainer_keywords_are_the_config_fields(tmp_path):
    options = dict(steps=3, lr=1e-2, dtype="float64", progress=False, grad_clip=0.5,
                   task_chunk=2, log_every=1, optimizer="sgd")
    learner, source = _learner_and_source()
    by_keywords = Trainer(learner, source, tmp_path / "a", **options).fit()
    learner, source = _learner_and_source()
    config = TrainConfig(meta_batch=3, **options)
    by_config = Trainer(learner, source, tmp_path / "b", config).fit()
    for (name, a), b in zip(by_keywords.state_dict().items(), by_config.state_dict().values(),
                            strict=True):
        assert torch.equal(a, b), name
    learner, source = _learner_and_source()
    with pytest.raises(ConfigError, match=r"train.grad_clp is not .*did you mean grad_clip"):
        Trainer(learner, source, tmp_path / "c", steps=3, grad_clp=1.0)
    with pytest.raises(TypeError, match="not both"):
        Trainer(learner, source, tmp_path / "c", config, steps=3)


def test_grad_clip_is_applied(tmp_path):
    """One SGD step with lr 1 moves the parameters by the clipped gradient, of norm 1e-3."""
    learner, source = _learner_and_source()
    before = torch.cat([p.detach().reshape(-1).clone() for p in learner.parameters()])
    Trainer(learner, source, tmp_path / "run", steps=1, lr=1.0, optimizer="sgd",
            grad_clip=1e-3, progress=False, dtype="float64").fit()
    after = torch.cat([p.detach().reshape(-1) for p in learner.parameters()])
    assert (before - after).norm().item() == pytest.approx(1e-3, rel=1e-6)


def test_a_fresh_run_reads_the_data_sizes_once_and_a_resumed_one_never(tmp_path, monkeypatch):
    from metalab.train import build

    reads = []
    original = build.build_task_source

    def counting(config, split, *args, **kwargs):
        reads.append(split)
        return original(config, split, *args, **kwargs)

    monkeypatch.setattr(build, "build_task_source", counting)
    config = load_config(_write(tmp_path, TINY))
    train_run(config, tmp_path / "run")
    assert reads == ["train"]  # complete_model_config's one batch
    reads.clear()
    assert main(["train", "--resume", str(tmp_path / "run"), "train.steps=6"]) == 0
    assert reads == []


# -- old run directories and `metalab train --resume RUN` -----------------------------------
def _parameters(run_dir):
    from metalab.train.checkpoint import load_checkpoint

    state = load_checkpoint(run_dir)
    return state["step"], state["learner"]


def test_an_old_config_yaml_loads_evaluates_and_resumes(tmp_path):
    config = load_config(_write(tmp_path, TINY))
    train_run(config, tmp_path / "new")
    assert main(["eval", str(tmp_path / "new"), "--episodes", "12"]) == 0
    expected = json.loads((tmp_path / "new" / "eval.json").read_text())
    (tmp_path / "new" / "config.yaml").write_text(OLD_CONFIG_YAML)
    assert read_run_config(tmp_path / "new") == resolve(yaml.safe_load(OLD_CONFIG_YAML))
    assert main(["eval", str(tmp_path / "new"), "--episodes", "12"]) == 0
    assert json.loads((tmp_path / "new" / "eval.json").read_text()) == expected
    assert main(["train", "--resume", str(tmp_path / "new"), "train.steps=6"]) == 0
    assert _parameters(tmp_path / "new")[0] == 6


def test_resume_run_equals_an_uninterrupted_run(tmp_path, capsys):
    path = _write(tmp_path, TINY)
    assert main(["train", str(path), "train.steps=6", "--out", str(tmp_path / "whole")]) == 0
    assert main(["train", str(path), "--out", str(tmp_path / "part")]) == 0
    assert main(["train", "--resume", str(tmp_path / "part"), "train.steps=6"]) == 0
    assert "trained 6 steps; run directory: " + str(tmp_path / "part") in capsys.readouterr().out
    step, whole = _parameters(tmp_path / "whole")
    resumed_step, resumed = _parameters(tmp_path / "part")
    assert step == resumed_step == 6
    for name, value in whole.items():
        assert torch.equal(resumed[name], value), name
    # the other spellings of the same thing
    assert main(["train", str(tmp_path / "part"), "--resume", "train.steps=8"]) == 0
    assert main(["train", "--resume", "--out", str(tmp_path / "part"), "train.steps=10"]) == 0
    assert main(["train", "--resume", str(tmp_path / "part" / "config.yaml"),
                 "train.steps=12"]) == 0
    assert _parameters(tmp_path / "part")[0] == 12


def test_resume_before_the_first_checkpoint_starts_over(tmp_path):
    path = _write(tmp_path, TINY)
    assert main(["train", str(path), "--out", str(tmp_path / "whole")]) == 0
    run = tmp_path / "early"
    run.mkdir()
    (run / "config.yaml").write_text((tmp_path / "whole" / "config.yaml").read_text())
    (run / "metrics.jsonl").write_text('{"step": 1, "split": "train", "loss": 9.0}\n')
    assert main(["train", "--resume", str(run)]) == 0
    _, whole = _parameters(tmp_path / "whole")
    _, early = _parameters(run)
    for name, value in whole.items():
        assert torch.equal(early[name], value), name
    assert logged_records(run) == logged_records(tmp_path / "whole")
    assert [r["step"] for r in logged_records(run)] == [2, 4]


def test_train_says_exactly_what_to_type(tmp_path, capsys):
    path = _write(tmp_path, TINY)
    run = tmp_path / "run"
    assert main(["train", str(path), "--out", str(run)]) == 0
    capsys.readouterr()
    assert main(["train", str(path), "--out", str(run)]) == 2
    assert f"to continue that run: metalab train --resume {run}" in capsys.readouterr().err
    assert main(["train", str(run)]) == 2
    assert f"metalab train --resume {run}" in capsys.readouterr().err
    assert main(["train", "--resume", str(run), "--out", str(tmp_path / "other")]) == 2
    assert f"give one: metalab train --resume {run}" in capsys.readouterr().err
    assert main(["train", "--resume"]) == 2
    assert "metalab train --resume RUN" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path / "nowhere")]) == 2
    assert "neither a run directory nor a config" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["train", "--resume", str(empty)]) == 2
    assert f"to start one there: metalab train CONFIG --out {empty}" in capsys.readouterr().err
    assert main(["train", "--resume", str(run), "algorithm.inner_lr=0.5"]) == 2
    assert "algorithm.inner_lr differ" in capsys.readouterr().err
