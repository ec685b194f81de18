"""Turn a resolved config into a learner and its task sources."""

from __future__ import annotations

import inspect
import json
from functools import lru_cache
from typing import Any

from metalab import datasets
from metalab.algorithms import EMBEDDING_METHODS, MetaLearner, build_learner
from metalab.datasets import GroupDataset
from metalab.nn import build_model
from metalab.tasks import (
    EpisodeSampler,
    GroupBatchSampler,
    GroupEvalSampler,
    Sinusoid,
    TaskSource,
)

REGRESSION_FAMILIES = {"sinusoid": Sinusoid}
SAMPLER_KEYS = {"name", "root", "ways", "shots", "queries", "shuffle_labels", "train_split",
                "val_split", "test_split", "support_size", "sampling", "distinct_groups"}


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


def _group_source(data: dict[str, Any], dataset: GroupDataset, split: str, tasks_per_batch: int,
                  seed: int, support_size: int | None) -> TaskSource:
    """Training: batches of several groups drawn as ``data.sampling`` says; evaluation:
    batches of one group each, cycling through the groups (``support_size`` examples, by
    default ``data.support_size``)."""
    if split == "train":
        return GroupBatchSampler(dataset, tasks_per_batch, data["support_size"],
                                 sampling=data.get("sampling", "frequency"),
                                 distinct_groups=data.get("distinct_groups", False), seed=seed)
    size = data["support_size"] if support_size is None else support_size
    return GroupEvalSampler(dataset, size, groups_per_batch=tasks_per_batch, seed=seed)


def build_task_source(config: dict[str, Any], split: str, tasks_per_batch: int, seed: int,
                      queries: int | None = None, support_size: int | None = None
                      ) -> TaskSource:
    """A seeded task source for ``split`` ("train", "val" or "test") of ``config['data']``.

    ``queries`` (episodes) and ``support_size`` (group batches) override the config's
    for evaluation.
    """
    data = config["data"]
    queries = data.get("queries") if queries is None else queries
    if is_regression(config):
        options = {k: v for k, v in data.items() if k not in SAMPLER_KEYS}
        return REGRESSION_FAMILIES[data["name"]](
            shots=data["shots"], queries=queries, tasks_per_batch=tasks_per_batch, seed=seed,
            **options)
    if "support_size" in data:  # group shift: tasks are unlabelled batches of one group
        options = {k: v for k, v in data.items() if k not in SAMPLER_KEYS}
        dataset = _dataset(data["name"], data[f"{split}_split"], data.get("root"), options)
        if not isinstance(dataset, GroupDataset):
            raise ValueError(f"data.support_size is for group datasets, and {data['name']!r} "
                             f"has no groups; use data.ways/shots/queries for episodes")
        return _group_source(data, dataset, split, tasks_per_batch, seed, support_size)
    for key in ("ways", "shots", "queries"):
        if key not in data:
            raise ValueError(f"config needs data.{key} for an episodic dataset")
    options = {k: v for k, v in data.items() if k not in SAMPLER_KEYS}
    dataset = _dataset(data["name"], data[f"{split}_split"], data.get("root"), options)
    return EpisodeSampler(dataset, ways=data["ways"], shots=data["shots"], queries=queries,
                          tasks_per_batch=tasks_per_batch,
                          shuffle_labels=data["shuffle_labels"], seed=seed)


def build_combiner_for(config: dict[str, Any], source: TaskSource):
    """The combiner of ``train.combiner`` (a name or ``{name: ..., option: ...}``), or None.

    Sizes a combiner needs and the config does not give are read from the task source:
    ``num_groups`` (group DRO) from its dataset's groups, ``num_tasks`` (uncertainty
    weighting, GradNorm) from its number of tasks per batch.
    """
    spec = config["train"]["combiner"]
    if spec is None:
        return None
    from metalab.combiners import COMBINERS, build_combiner

    options = {"name": spec} if isinstance(spec, str) else dict(spec)
    if not isinstance(spec, (str, dict)) or "name" not in options:
        raise ValueError(f"train.combiner must be a name or a mapping with a name, got {spec!r}")
    name = options.pop("name")
    accepted = inspect.signature(COMBINERS[name]).parameters if name in COMBINERS else {}
    dataset = getattr(source, "dataset", None)
    if "num_groups" in accepted and "num_groups" not in options and dataset is not None:
        options["num_groups"] = getattr(dataset, "num_groups", None)
    if "num_tasks" in accepted and "num_tasks" not in options:
        options["num_tasks"] = getattr(source, "num_tasks", source.tasks_per_batch)
    return build_combiner(name, **options)
