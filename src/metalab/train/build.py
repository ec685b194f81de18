"""Turn a resolved config into a learner and its task sources."""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

from metalab import datasets
from metalab.algorithms import EMBEDDING_METHODS, MetaLearner, build_learner
from metalab.nn import build_model
from metalab.tasks import EpisodeSampler, Sinusoid, TaskSource

REGRESSION_FAMILIES = {"sinusoid": Sinusoid}
SAMPLER_KEYS = {"name", "root", "ways", "shots", "queries", "shuffle_labels", "train_split",
                "val_split", "test_split"}


def is_regression(config: dict[str, Any]) -> bool:
    return config["data"]["name"] in REGRESSION_FAMILIES


def build_meta_learner(config: dict[str, Any]) -> MetaLearner:
    """The model of ``config['model']`` wrapped by the method of ``config['algorithm']``."""
    algorithm = dict(config["algorithm"])
    name = algorithm.pop("name")
    model_kwargs = dict(config["model"])
    model_name = model_kwargs.pop("name")
    if name in EMBEDDING_METHODS:
        model_kwargs.setdefault("out_features", None)
    elif is_regression(config):
        model_kwargs.setdefault("out_features", 1)
        algorithm.setdefault("loss", "mse")
    else:
        model_kwargs.setdefault("out_features", config["data"]["ways"])
    try:
        model = build_model(model_name, **model_kwargs)
        return build_learner(name, model, **algorithm)
    except TypeError as error:
        raise ValueError(f"config for {name!r} with model {model_name!r}: {error}") from error


@lru_cache(maxsize=8)
def _cached_dataset(name: str, split: str, root: str | None, options_json: str):
    return datasets.build(name, split=split, root=root, **json.loads(options_json))


def _dataset(name: str, split: str, root: str | None, options: dict[str, Any]):
    """Datasets are built once per process (train, val and test sources share them)."""
    return _cached_dataset(name, split, root, json.dumps(options, sort_keys=True))


def build_task_source(config: dict[str, Any], split: str, tasks_per_batch: int, seed: int,
                      queries: int | None = None) -> TaskSource:
    """A seeded task source for ``split`` ("train", "val" or "test") of ``config['data']``."""
    data = config["data"]
    queries = data.get("queries") if queries is None else queries
    if is_regression(config):
        options = {k: v for k, v in data.items() if k not in SAMPLER_KEYS}
        return REGRESSION_FAMILIES[data["name"]](
            shots=data["shots"], queries=queries, tasks_per_batch=tasks_per_batch, seed=seed,
            **options)
    for key in ("ways", "shots", "queries"):
        if key not in data:
            raise ValueError(f"config needs data.{key} for an episodic dataset")
    options = {k: v for k, v in data.items() if k not in SAMPLER_KEYS}
    dataset = _dataset(data["name"], data[f"{split}_split"], data.get("root"), options)
    return EpisodeSampler(dataset, ways=data["ways"], shots=data["shots"], queries=queries,
                          tasks_per_batch=tasks_per_batch,
                          shuffle_labels=data["shuffle_labels"], seed=seed)
