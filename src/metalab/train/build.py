"""Turn a resolved config into a learner and the combiner of its tasks.

The data decide what the config may leave out: `complete_model_config` fills the model's
input and output sizes (``in_channels``, ``image_size``, ``in_features``, ``out_features``
or ``num_classes``, ``out_channels``) from one batch of the training source, so a config
names only what is a choice. The run directory saves the completed config, so a trained
run is rebuilt without its data.
"""

from __future__ import annotations

import copy
import inspect
from typing import Any

from metalab.algorithms import MetaLearner, algorithm_class
from metalab.nn import MODELS, build_model, inner_parameter_names
from metalab.tasks import TaskSource
from metalab.train.config import accepted_keywords
from metalab.train.online import complete_online_config
from metalab.train.sources import (
    REGRESSION_FAMILIES,
    build_task_source,
    data_objective,
    is_regression,
)
from metalab.validation import check_choice

__all__ = ["REGRESSION_FAMILIES", "build_combiner_for", "build_meta_learner",
           "build_task_source", "complete_model_config", "is_regression"]

SIZE_KEYS = ("in_channels", "image_size", "in_features", "out_features", "num_classes",
             "ways", "out_channels", "observation_dim", "action_dim")


def _accepted(model_name: str) -> set[str]:
    check_choice("model.name", model_name, sorted(MODELS))
    return set(inspect.signature(MODELS[model_name]).parameters)


def _config_sizes(config: dict[str, Any]) -> dict[str, Any]:
    """Sizes the config itself gives (episodes: ``ways`` outputs); no data is read."""
    data = config["data"]
    episodic = not is_regression(config) and not {"support_size", "batch_size"} & set(data)
    episodic = episodic and data.get("train_batch_size") is None  # else: all classes
    return {"outputs": data["ways"]} if episodic and "ways" in data else {}


def _named_outputs(sizes: dict[str, Any]) -> dict[str, Any]:
    """``sizes`` with the output size under each name a model may take it by."""
    if "outputs" not in sizes:
        return sizes
    return {**sizes, **{key: sizes["outputs"] for key in ("out_features", "num_classes", "ways")}}


def _data_sizes(config: dict[str, Any]) -> dict[str, Any]:
    """Input and output sizes of the training data (`TaskSource.sizes`)."""
    return build_task_source(config, "train", 1, seed=0).sizes()


def complete_model_config(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` with the model's size arguments it leaves out filled from the data.

    Sizes the config gives are kept; the method's own options named by its class fact
    ``options_sized_by_data`` (e.g. ``num_classes``: the training data's classes) are
    completed the same way. A method whose model is an embedding
    (``model_role = "embedding"``) gets ``out_features: null``; a method that
    appends input channels (a context) gets the model's input channels widened by
    them and its own options completed from the data (`MetaLearner.options_from_data`).
    An online run gets its protocol's facts first (`complete_online_config`).
    """
    config = copy.deepcopy(complete_online_config(config))
    model, algorithm = config["model"], config["algorithm"]
    accepted = _accepted(model["name"])
    method = algorithm_class(algorithm["name"])
    if method.model_role == "embedding" and "out_features" in accepted:
        model.setdefault("out_features", None)
    missing = [key for key in SIZE_KEYS if key in accepted and key not in model]
    missing_in_method = [key for key in getattr(method, "options_sized_by_data", ())
                         if key not in algorithm]
    if not missing and not missing_in_method:
        return config
    sizes = _named_outputs(_config_sizes(config))
    if any(key not in sizes for key in [*missing, *missing_in_method]):
        sizes = _named_outputs(_data_sizes(config))
    for key in missing_in_method:
        algorithm[key] = sizes[key]
    extra_channels = method.extra_input_channels(algorithm)
    if extra_channels and "in_channels" in sizes:
        config["algorithm"] = algorithm = method.options_from_data(algorithm, sizes)
        sizes["in_channels"] += extra_channels
    for key in missing:
        if key in sizes:
            model[key] = sizes[key]
    return config


def build_meta_learner(config: dict[str, Any]) -> MetaLearner:
    """The model of ``config['model']`` wrapped by the method of ``config['algorithm']``.

    Inner-loop methods on a model with MSR layers adapt all but the sharing matrices
    (`inner_parameter_names`) unless ``algorithm.adapt`` says otherwise.
    """
    config = complete_model_config(config)
    algorithm = dict(config["algorithm"])
    name = algorithm.pop("name")
    model_kwargs = dict(config["model"])
    model_name = model_kwargs.pop("name")
    method = algorithm_class(name)
    if "loss" in (accepted_keywords(method) or ()):
        algorithm.setdefault("loss", data_objective(config).loss_name)
    try:
        model = build_model(model_name, **model_kwargs)
        if method.chooses_adapted_parameters and "adapt" not in algorithm:
            adapted = inner_parameter_names(model)
            if len(adapted) < len(list(model.parameters())):
                algorithm["adapt"] = adapted
        return method(model, **algorithm)
    except TypeError as error:
        raise ValueError(f"config for {name!r} with model {model_name!r}: {error}") from error


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
