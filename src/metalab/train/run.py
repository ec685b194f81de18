"""A run directory: ``config.yaml``, ``metrics.jsonl``, ``checkpoint.pt`` and ``eval.json``.

These functions are what the CLI calls; they are also the library's entry points for
training from a config, reloading a trained learner and evaluating it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from functools import partial
from pathlib import Path
from typing import Any

import torch

from metalab.algorithms import MetaLearner
from metalab.algorithms.pretrained import with_support_head
from metalab.train import distributed
from metalab.train.build import (
    build_combiner_for,
    build_meta_learner,
    build_task_source,
    complete_model_config,
)
from metalab.train.checkpoint import atomic_write_text, load_checkpoint
from metalab.train.config import (
    EvalConfig,
    OnlineConfig,
    TrainConfig,
    load_config,
    save_config,
)
from metalab.train.evaluator import Evaluator
from metalab.train.online import StreamEvaluation, check_stream_steps
from metalab.train.trainer import Trainer

CONFIG_FILE = "config.yaml"


class RunDirError(ValueError):
    """A run directory is missing, or exists where a new run would overwrite it."""


def read_run_config(run_dir: str | Path, overrides: Iterable[str] = ()) -> dict[str, Any]:
    """The saved (completed) config of ``run_dir``, with ``overrides`` applied."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise RunDirError(f"{str(run_dir)!r} is not a metalab run: {CONFIG_FILE} is missing")
    return load_config(path, overrides)


def initial_learner(config: dict[str, Any]) -> MetaLearner:
    """The learner a run of ``config`` starts from: its initial parameters depend on
    ``train.seed`` only (torch's global generator is seeded with it, then the builder runs)."""
    torch.manual_seed(TrainConfig.of(config).seed)
    return build_meta_learner(config)


def make_trainer(config: dict[str, Any], run_dir: str | Path) -> Trainer:
    """The `Trainer` of ``config`` (ideally completed by `complete_model_config`)."""
    train = TrainConfig.of(config)
    learner = initial_learner(config)
    attach_teacher(learner)
    if train.compile:
        learner.compile()
    source = build_task_source(config, "train", train.meta_batch, seed=train.seed)
    val_source = partial(build_task_source, config, "val", EvalConfig.of(config).batch_size,
                         seed=train.seed + 1)
    online = OnlineConfig.of(config)
    hooks = []
    if online is not None:
        check_stream_steps(source, online, train.steps)
        hooks.append(StreamEvaluation(source, online))
    return Trainer(learner, source, run_dir, train, val_source=val_source,
                   combiner=build_combiner_for(config, source), hooks=hooks)


def attach_teacher(learner: MetaLearner) -> None:
    """Load the run a distilling learner names (``algorithm.distill_from``) as its teacher.

    Only training needs the teacher; a trained student is evaluated without it.
    """
    teacher_dir = getattr(learner, "distill_from", None)
    if teacher_dir is None:
        return
    try:
        teacher = load_run(teacher_dir)
    except (RunDirError, FileNotFoundError) as error:
        raise ValueError(f"algorithm.distill_from: the teacher run cannot be loaded: "
                         f"{error}") from error
    learner.attach_teacher(teacher)


# Keys a resumed run may change: how long it runs and whether it shows progress.
RESUMABLE_CHANGES = {"train.steps", "train.progress"}


def _differences(saved: dict[str, Any], config: dict[str, Any]) -> list[str]:
    return sorted(f"{s}.{k}" for s in saved for k in set(saved[s]) | set(config[s])
                  if saved[s].get(k) != config[s].get(k)
                  and f"{s}.{k}" not in RESUMABLE_CHANGES)


def check_run_dir(run_dir: Path, config: dict[str, Any], resume: bool) -> None:
    """A new run needs a new or empty ``run_dir``; a resumed one the same config as saved.

    ``config`` is completed; so is the saved one (a run saves its completed config, so
    completing it again reads no data; a hand-written one is completed like ``config``).
    """
    if resume:
        changed = _differences(complete_model_config(read_run_config(run_dir)), config)
        if changed:
            raise RunDirError(f"cannot resume {str(run_dir)!r} with a different config: "
                              f"{', '.join(changed)} differ from its config.yaml; resume "
                              f"with its own config: metalab train --resume {run_dir}")
    elif run_dir.exists() and any(run_dir.iterdir()):
        if (run_dir / CONFIG_FILE).is_file():
            advice = (f"to continue that run: metalab train --resume {run_dir}; to start "
                      f"another, choose a new --out")
        else:
            advice = "choose another --out"
        raise RunDirError(f"run directory {str(run_dir)!r} exists and is not empty; {advice}")


def train_run(config: dict[str, Any], run_dir: str | Path, resume: bool = False) -> Trainer:
    """Meta-train ``config`` into ``run_dir`` (new and empty, or a run to resume).

    The model sizes the config leaves out are completed from the data once, here; the
    completed config is saved as ``config.yaml`` and builds the learner.
    """
    run_dir = Path(run_dir)
    config = complete_model_config(config)
    check_run_dir(run_dir, config, resume)
    distributed.barrier()  # every rank has checked the directory before rank 0 writes
    if distributed.is_main_process():
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, run_dir / CONFIG_FILE)
    trainer = make_trainer(config, run_dir)
    trainer.fit(resume=resume)
    return trainer


def _restore(run_dir: str | Path, checkpoint: str = "last"
             ) -> tuple[dict[str, Any], MetaLearner, int]:
    """The config, the learner with the parameters of its ``last`` or ``best`` checkpoint,
    and that checkpoint's step."""
    config = read_run_config(run_dir)
    learner = build_meta_learner(config)
    dtype = TrainConfig.of(config).torch_dtype
    if dtype is not None:
        learner = learner.to(dtype)
    state = load_checkpoint(run_dir, checkpoint)
    learner.load_state_dict(state["learner"])
    return config, learner.eval(), state["step"]


def load_run(run_dir: str | Path, checkpoint: str = "last") -> MetaLearner:
    """The trained `MetaLearner` of ``run_dir``, ready for `adapt`: its ``last``
    checkpoint, or the ``best`` one on validation (a run trained with ``train.keep_best``)."""
    return _restore(run_dir, checkpoint)[1]


def evaluate_run(run_dir: str | Path, episodes: int | None = None, split: str = "test",
                 inner_steps: int | None = None, seed: int | None = None,
                 support_size: int | None = None, within: str | None = None,
                 head: str | None = None, ways: int | None = None,
                 checkpoint: str = "last") -> dict[str, Any]:
    """Meta-test ``run_dir`` on ``split`` and write ``eval.json`` (``eval-<split>.json``).

    ``support_size`` (group data) sets the number of unlabelled examples in each test
    batch, for the test-batch-size ablation; the result goes to
    ``eval-<split>-support<N>.json``. ``within`` (default ``eval.within``) draws every test
    episode's classes from one group of that ``class_info`` key (``alphabet``); ``head``
    (default ``eval.head``) fits that head on the support set's embeddings instead of the
    method's own adaptation (`with_support_head`); ``ways`` sets the test episodes' number
    of classes (a method whose output size is fixed by its training ways cannot take
    another). ``checkpoint="best"`` meta-tests the learner at its best validation
    (``train.keep_best``) instead of the last one. Each adds ``-within-<key>`` /
    ``-head-<name>`` / ``-ways<N>`` / ``-best`` to the name.
    """
    run_dir = Path(run_dir)
    config, learner, step = _restore(run_dir, checkpoint)
    if config.get("online") is not None:
        raise ValueError(f"{str(run_dir)!r} is an online run: each task was scored along the "
                         f"stream (its stream.json; metalab plot --stream {run_dir})")
    if support_size is not None and "support_size" not in config["data"]:
        raise ValueError("support_size is for group data (a config with data.support_size); "
                         f"{config['data']['name']!r} has none")
    evaluation, train = EvalConfig.of(config), TrainConfig.of(config)
    inner_steps = evaluation.inner_steps if inner_steps is None else inner_steps
    if inner_steps is not None and "inner_steps" not in learner.adapt_options:
        raise ValueError(f"{type(learner).__name__} has no inner loop; drop inner_steps")
    episodes = evaluation.episodes if episodes is None else episodes
    if ways is not None:
        if "ways" not in config["data"]:
            raise ValueError(f"ways is for episodes (a config with data.ways); "
                             f"{config['data']['name']!r} has none")
        config = {**config, "data": {**config["data"], "ways": int(ways)}}
    within = evaluation.within if within is None else within
    head = evaluation.head if head is None else head
    if head is not None:
        learner = with_support_head(learner, head)
    source = build_task_source(config, split, evaluation.batch_size,
                               seed=evaluation.seed if seed is None else seed,
                               queries=evaluation.queries, support_size=support_size,
                               within=within)
    options = {"head": head} if head is not None and "head" in learner.adapt_options else {}
    evaluator = Evaluator(episodes, inner_steps=inner_steps, **options)
    result = evaluator.evaluate(learner, source, train.device, train.torch_dtype)
    result.update({"split": split, "step": step})
    if inner_steps is not None:
        result["inner_steps"] = int(inner_steps)
    name = "eval" if split == "test" else f"eval-{split}"
    if support_size is not None:
        result["support_size"] = int(support_size)
        name = f"eval-{split}-support{int(support_size)}"
    for key, value in (("within", within), ("head", head)):
        if value is not None:
            result[key] = value
            name = f"{name}-{key}-{value}"
    if ways is not None:
        result["ways"] = int(ways)
        name = f"{name}-ways{int(ways)}"
    if checkpoint != "last":
        result["checkpoint"] = checkpoint
        name = f"{name}-{checkpoint}"
    atomic_write_text(run_dir / f"{name}.json", json.dumps(result, indent=2) + "\n")
    return result
