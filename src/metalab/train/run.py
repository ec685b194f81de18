"""A run directory: ``config.yaml``, ``metrics.jsonl``, ``checkpoint.pt`` and ``eval.json``.

These functions are what the CLI calls; they are also the library's entry points for
training from a config, reloading a trained learner and evaluating it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import yaml

from metalab.algorithms import MetaLearner
from metalab.train import distributed
from metalab.train.build import (
    build_combiner_for,
    build_meta_learner,
    build_task_source,
    complete_model_config,
)
from metalab.train.checkpoint import atomic_write_text, load_checkpoint
from metalab.train.config import ConfigError, resolve, save_config
from metalab.train.evaluator import Evaluator
from metalab.train.trainer import Trainer

CONFIG_FILE = "config.yaml"
DTYPES = {"float32": torch.float32, "float64": torch.float64}


class RunDirError(ValueError):
    """A run directory is missing, or exists where a new run would overwrite it."""


def read_run_config(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise RunDirError(f"{str(run_dir)!r} is not a metalab run: {CONFIG_FILE} is missing")
    return resolve(yaml.safe_load(path.read_text()))


def _dtype(config: dict[str, Any]) -> torch.dtype | None:
    name = config["train"].get("dtype")
    if name is None:
        return None
    if name not in DTYPES:
        raise ConfigError(f"train.dtype must be one of {sorted(DTYPES)}, got {name!r}")
    return DTYPES[name]


def make_trainer(config: dict[str, Any], run_dir: str | Path) -> Trainer:
    train = config["train"]
    torch.manual_seed(train["seed"])  # the initial parameters depend on the seed only
    learner = build_meta_learner(config)
    if train["compile"]:
        learner.compile()
    source = build_task_source(config, "train", train["meta_batch"], seed=train["seed"])

    def val_source():
        return build_task_source(config, "val", config["eval"]["batch_size"],
                                 seed=train["seed"] + 1)

    return Trainer(
        learner, source, run_dir, steps=train["steps"], optimizer=train["optimizer"],
        lr=train["lr"], val_source=val_source if train["val_every"] else None,
        val_every=train["val_every"] or 1, val_episodes=train["val_episodes"],
        checkpoint_every=train["checkpoint_every"], log_every=train["log_every"],
        grad_clip=train["grad_clip"], task_chunk=train["task_chunk"], device=train["device"],
        dtype=_dtype(config),
        progress=train["progress"], seed=train["seed"],
        combiner=build_combiner_for(config, source), combine_params=train["combine_params"],
        diagnostics=train["diagnostics"],
    )


def train_run(config: dict[str, Any], run_dir: str | Path, resume: bool = False) -> Trainer:
    """Meta-train ``config`` into ``run_dir`` (new and empty, or a run to resume)."""
    run_dir = Path(run_dir)
    config = complete_model_config(config)
    if resume:
        saved = complete_model_config(read_run_config(run_dir))
        changed = sorted(f"{s}.{k}" for s in saved for k in set(saved[s]) | set(config[s])
                         if saved[s].get(k) != config[s].get(k)
                         and f"{s}.{k}" not in {"train.steps", "train.progress"})
        if changed:
            raise RunDirError(f"cannot resume {str(run_dir)!r} with a different config: "
                              f"{', '.join(changed)} differ from its config.yaml")
    elif run_dir.exists() and any(run_dir.iterdir()):
        raise RunDirError(f"run directory {str(run_dir)!r} exists and is not empty; pass "
                          f"--resume to continue it or choose another --out")
    distributed.barrier()  # every rank has checked the directory before rank 0 writes
    if distributed.is_main_process():
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, run_dir / CONFIG_FILE)
    trainer = make_trainer(config, run_dir)
    trainer.fit(resume=resume)
    return trainer


def _restore(run_dir: str | Path) -> tuple[dict[str, Any], MetaLearner, int]:
    """The config, the learner with its last checkpoint's parameters, and that step."""
    config = read_run_config(run_dir)
    learner = build_meta_learner(config)
    dtype = _dtype(config)
    if dtype is not None:
        learner = learner.to(dtype)
    state = load_checkpoint(run_dir)
    learner.load_state_dict(state["learner"])
    return config, learner.eval(), state["step"]


def load_run(run_dir: str | Path) -> MetaLearner:
    """The trained `MetaLearner` of ``run_dir`` (its last checkpoint), ready for `adapt`."""
    return _restore(run_dir)[1]


def evaluate_run(run_dir: str | Path, episodes: int | None = None, split: str = "test",
                 inner_steps: int | None = None, seed: int | None = None,
                 support_size: int | None = None) -> dict[str, Any]:
    """Meta-test ``run_dir`` on ``split`` and write ``eval.json`` (``eval-<split>.json``).

    ``support_size`` (group data) sets the number of unlabelled examples in each test
    batch, for the test-batch-size ablation; the result goes to
    ``eval-<split>-support<N>.json``.
    """
    run_dir = Path(run_dir)
    config, learner, step = _restore(run_dir)
    if support_size is not None and "support_size" not in config["data"]:
        raise ValueError("support_size is for group data (a config with data.support_size); "
                         f"{config['data']['name']!r} has none")
    evaluation = config["eval"]
    inner_steps = evaluation.get("inner_steps") if inner_steps is None else inner_steps
    if inner_steps is not None and "inner_steps" not in learner.adapt_options:
        raise ValueError(f"{type(learner).__name__} has no inner loop; drop inner_steps")
    episodes = evaluation["episodes"] if episodes is None else episodes
    source = build_task_source(config, split, evaluation["batch_size"],
                               seed=evaluation["seed"] if seed is None else seed,
                               queries=evaluation.get("queries"), support_size=support_size)
    evaluator = Evaluator(episodes, inner_steps=inner_steps)
    result = evaluator.evaluate(learner, source, config["train"]["device"], _dtype(config))
    result.update({"split": split, "step": step})
    if inner_steps is not None:
        result["inner_steps"] = int(inner_steps)
    name = "eval" if split == "test" else f"eval-{split}"
    if support_size is not None:
        result["support_size"] = int(support_size)
        name = f"eval-{split}-support{int(support_size)}"
    atomic_write_text(run_dir / f"{name}.json", json.dumps(result, indent=2) + "\n")
    return result
