"""Experiment configs: YAML with the sections algorithm, model, data, train and eval.

``train`` and ``eval`` have fixed keys: each is a typed schema (`TrainConfig`,
`EvalConfig`) whose fields and defaults are written once, here. The keys of
``algorithm``, ``model`` and ``data`` depend on the chosen method, model and dataset, so
they are checked against what those accept: the constructor's signature of
``ALGORITHMS[algorithm.name]`` / ``MODELS[model.name]``, and for ``data`` the keys the task
sources read (``sources.SAMPLER_KEYS``) plus the signature of the task family or dataset
factory (a factory that only forwards ``**kwargs`` cannot be checked: its options reach the
dataset unchecked). An unknown or misspelt key is a `ConfigError` naming it, its section,
the known keys and the closest one (``train.stpes``: "did you mean steps?").

The schema library is pydantic v2 (``extra="forbid"``, strict integers and booleans):
field constraints (``ge=1``), ``Literal`` choices and unions such as ``combiner: name |
{name: ..., options} | null`` are one annotation each, and its errors are structured
(location, kind, input), so each becomes one sentence here. OmegaConf's structured configs
were the alternative; they lack value constraints and, in 2.3, unions of a string and a
mapping, so ``combiner`` and every ``>= 1`` would have stayed hand-written checks.

A config travels as a plain dict of sections (what ``config.yaml`` holds and the builders
read); `resolve` fills the defaults from the schemas and `TrainConfig.of(config)` /
`EvalConfig.of(config)` give the typed sections. Dotted ``key=value`` overrides
(``train.steps=200``) are parsed as YAML scalars, so numbers, booleans and lists keep their
types. A malformed YAML file is a one-line error naming the file, line and column.
"""

from __future__ import annotations

import copy
import difflib
import inspect
import typing
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from metalab import datasets
from metalab.algorithms import ALGORITHMS
from metalab.nn import MODELS
from metalab.rl import FAMILIES
from metalab.tasks.unsupervised import parse_unsupervised
from metalab.train.sources import (
    REGRESSION_FAMILIES,
    SAMPLER_KEYS,
    STREAM_FAMILIES,
    STREAM_FIXED,
)

SECTIONS = ("algorithm", "model", "data", "train", "eval")
OPTIONAL_SECTIONS = ("online",)  # present only in configs that use them
DATA_DEFAULTS: dict[str, Any] = {"shuffle_labels": True, "train_split": "train",
                                 "val_split": "val", "test_split": "test"}


class ConfigError(ValueError):
    """A config is malformed, misses a key, names an unknown one or has a wrong value."""


# -- the typed sections ---------------------------------------------------------------------
PositiveInt = Annotated[int, Field(ge=1)]
NonNegativeInt = Annotated[int, Field(ge=0)]
PositiveFloat = Annotated[float, Field(gt=0, strict=False)]
NonNegativeFloat = Annotated[float, Field(ge=0, strict=False)]
LrSchedule = Literal["constant", "linear", "cosine", "step"]
OptimizerName = Literal["adam", "sgd", "adamw"]
CombineParams = Literal["all", "shared"]
DTYPES = {"float32": torch.float32, "float64": torch.float64}


def _dtype_name(value: Any) -> Any:
    """``torch.float64`` (a Trainer keyword) is accepted as its config name ``float64``."""
    return str(value).removeprefix("torch.") if isinstance(value, torch.dtype) else value


def _device_name(value: Any) -> Any:
    return str(value) if isinstance(value, torch.device) else value


class Section(BaseModel):
    """A config section with fixed keys: unknown keys are errors, values are typed."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    @classmethod
    def of(cls, config: dict[str, Any]):
        """The typed section of a resolved ``config`` dict."""
        return cls.model_validate(config[cls.section])


class TrainConfig(Section):
    """``train``: the meta-optimization, its schedule and where it runs.

    Fields: ``steps`` (meta-iterations) and ``meta_batch`` (tasks per step, required);
    ``optimizer``/``lr``: the meta-optimizer; ``lr_schedule``: the learning rate of the
    update at step ``t = 0, 1, ..., T - 1`` (``T = steps``), ``constant`` (``lr``),
    ``linear`` (from ``lr`` toward ``lr_final`` at ``T``: ``lr + (lr_final - lr) t / T``,
    e.g. an annealed outer step size), ``cosine`` (from ``lr`` down to ``lr_final``:
    ``lr_final + (lr - lr_final) (1 + cos(pi t / T)) / 2``, cosine annealing) or
    ``step`` (``lr * lr_gamma ** floor(t / lr_step_every)``; needs ``lr_step_every``);
    ``seed``: torch's global RNG and the training
    tasks; ``device``, ``dtype`` (``null``: the model's own, or ``float32``/``float64``);
    ``val_every`` (0: no validation), ``val_episodes``; ``keep_best``: also keep the learner
    at its best validation so far in ``best.pt`` (model selection on the val split:
    ``metalab eval RUN --checkpoint best``); ``checkpoint_every``, ``log_every`` in steps;
    ``grad_clip``: max global norm of the meta-gradient; ``task_chunk``: back-propagate at
    most this many tasks at once (the update is the same, the peak memory one chunk's
    graph); ``compile``: ``torch.compile`` the learner; ``progress``: a progress bar;
    ``combiner``: a name or ``{name: ..., options}`` merging the tasks' losses or
    gradients (PCGrad, group DRO ...), ``null`` for the mean loss; ``combine_params``:
    ``all`` or ``shared`` (the parameters the combiner acts on); ``diagnostics``: log the
    task-gradient statistics and the curvature along the update on every logged step;
    ``keep_freed_memory``: keep freed memory in the process for reuse instead of returning it
    to the kernel and faulting it in again every task (`metalab.train.allocator`; glibc
    only, the same values).
    """

    section: typing.ClassVar[str] = "train"

    steps: PositiveInt
    meta_batch: PositiveInt
    optimizer: OptimizerName = "adam"
    lr: PositiveFloat = 1e-3
    lr_schedule: LrSchedule = "constant"
    lr_final: NonNegativeFloat = 0.0
    lr_step_every: PositiveInt | None = None
    lr_gamma: PositiveFloat = 0.1
    seed: int = 0
    device: Annotated[str, BeforeValidator(_device_name)] = "cpu"
    dtype: Annotated[Literal["float32", "float64"] | None, BeforeValidator(_dtype_name)] = None
    val_every: NonNegativeInt = 500
    val_episodes: PositiveInt = 100
    keep_best: bool = False
    checkpoint_every: PositiveInt = 500
    log_every: PositiveInt = 10
    grad_clip: PositiveFloat | None = None
    task_chunk: PositiveInt | None = None
    compile: bool = False
    progress: bool = True
    combiner: str | dict[str, Any] | None = None
    combine_params: CombineParams = "all"
    diagnostics: bool = False
    keep_freed_memory: bool = False

    @model_validator(mode="after")
    def _step_schedule_has_a_period(self) -> TrainConfig:
        if self.lr_schedule == "step" and self.lr_step_every is None:
            raise ValueError("train.lr_schedule: step needs train.lr_step_every (the steps "
                             "between two decays by lr_gamma), a positive integer")
        return self

    @model_validator(mode="after")
    def _keep_best_has_validation(self) -> TrainConfig:
        if self.keep_best and self.val_every == 0:
            raise ValueError("train.keep_best needs validation to choose the best learner: "
                             "set train.val_every to a positive number of steps")
        return self

    @property
    def torch_dtype(self) -> torch.dtype | None:
        return None if self.dtype is None else DTYPES[self.dtype]


class EvalConfig(Section):
    """``eval``: meta-test episodes (required), their seed, tasks per batch, and optional
    ``queries`` (per class at test), ``inner_steps`` (adaptation steps at test),
    ``within`` (draw each test episode's classes from one group, e.g. ``alphabet``) and
    ``head`` (fit this head on the support set's embeddings at test: ``linear``,
    ``cosine``, ``logistic``, ``prototypes``, ``finetune``; any embedding method)."""

    section: typing.ClassVar[str] = "eval"

    episodes: PositiveInt
    seed: int = 1234
    batch_size: PositiveInt = 20
    queries: PositiveInt | None = None
    inner_steps: NonNegativeInt | None = None
    within: str | None = None
    head: str | None = None


class OnlineConfig(Section):
    """``online`` (optional): an online meta-learning protocol on a task stream (Finn et al.
    2019; `metalab.train.online`). ``protocol``: ``ftml`` (follow the meta-leader),
    ``ftl`` (follow the leader: joint training, fine-tuned per task), ``toe`` (train on
    everything: joint training, not fine-tuned) or ``scratch`` (no learning across tasks);
    ``updates_per_batch``: updates after each arriving batch; ``support``/``query``:
    examples per buffer task in an update; ``eval_inner_steps``: adaptation steps when a
    task is scored (``null``: the learner's own; ``toe``: 0); ``threshold``: the proficiency
    accuracy of examples-to-threshold (0.9 in the paper); ``budget``: the examples after
    which accuracy is also reported."""

    section: typing.ClassVar[str] = "online"

    protocol: Literal["ftml", "ftl", "toe", "scratch"]
    updates_per_batch: PositiveInt = 10
    support: PositiveInt = 10
    query: PositiveInt = 10
    eval_inner_steps: NonNegativeInt | None = None
    threshold: Annotated[float, Field(gt=0, le=1, strict=False)] = 0.9
    budget: PositiveInt = 20

    @classmethod
    def of(cls, config: dict[str, Any]) -> OnlineConfig | None:
        """The typed section, or ``None`` for a config without one."""
        values = config.get(cls.section)
        return None if values is None else cls.model_validate(values)


TYPED_SECTIONS: dict[str, type[Section]] = {"train": TrainConfig, "eval": EvalConfig}


# -- reading and overriding -----------------------------------------------------------------
def load_config(path: str | Path, overrides: Iterable[str] = ()) -> dict[str, Any]:
    """Read ``path``, apply ``overrides`` and fill defaults; raises `ConfigError`."""
    return resolve(apply_overrides(read_yaml(path), overrides))


def read_yaml(path: str | Path) -> dict[str, Any]:
    """The mapping of sections in ``path``; a YAML syntax error names its line and column."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = error.problem or error.context or "not valid YAML"
        raise ConfigError(f"config {str(path)!r}{where}: {problem}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"config {str(path)!r}: not valid YAML ({error})") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config {str(path)!r} must be a mapping of sections, got "
                          f"{type(raw).__name__}")
    return raw


def apply_overrides(config: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Return a copy of ``config`` with each ``dotted.key=value`` set."""
    config = copy.deepcopy(config)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        *parents, leaf = key.split(".")
        node = config
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a section")
        try:
            node[leaf] = yaml.safe_load(text)
        except yaml.YAMLError:
            raise ConfigError(f"override {item!r}: {text!r} is not a YAML value") from None
    return config


# -- validation -----------------------------------------------------------------------------
def resolve(config: dict[str, Any]) -> dict[str, Any]:
    """Check every section's keys and values and fill the defaults; raises `ConfigError`."""
    if not isinstance(config, dict):
        raise ConfigError(f"a config is a mapping of sections, got {type(config).__name__}")
    unknown = sorted(set(config) - set(SECTIONS) - set(OPTIONAL_SECTIONS))
    if unknown:
        raise ConfigError(f"unknown config sections {unknown}; expected "
                          f"{list(SECTIONS + OPTIONAL_SECTIONS)}")
    sections = {}
    for section in SECTIONS:
        values = config.get(section) or {}
        if not isinstance(values, dict):
            raise ConfigError(f"config section {section!r} must be a mapping, got "
                              f"{type(values).__name__}")
        sections[section] = copy.deepcopy(values)
    for section, schema in TYPED_SECTIONS.items():
        sections[section] = _typed(schema, sections[section])
    if config.get("online") is not None:
        if not isinstance(config["online"], dict):
            raise ConfigError(f"config section 'online' must be a mapping, got "
                              f"{type(config['online']).__name__}")
        sections["online"] = _typed(OnlineConfig, copy.deepcopy(config["online"]))
    sections["data"] = {**DATA_DEFAULTS, **sections["data"]}
    _check_named(sections, "algorithm", ALGORITHMS)
    _check_named(sections, "model", MODELS)
    _check_data(sections["data"])
    return sections


def _typed(schema: type[Section], values: dict[str, Any]) -> dict[str, Any]:
    try:
        return schema.model_validate(values).model_dump()
    except ValidationError as error:
        raise ConfigError(explain(schema, error)) from None


def explain(schema: type[Section], error: ValidationError) -> str:
    """One sentence for pydantic's first error in ``schema``'s section."""
    error = error.errors()[0]
    if not error["loc"]:  # a check of several fields together: its message says it all
        return str(error["msg"]).removeprefix("Value error, ")
    section, key = schema.section, str(error["loc"][0])
    if error["type"] == "extra_forbidden":
        return unknown_key_message(section, key, schema.model_fields)
    if error["type"] == "missing":
        return f"config needs {section}.{key}"
    field = schema.model_fields[key]
    return (f"{section}.{key} must be {describe(field.annotation, field.metadata)}, "
            f"got {error['input']!r}")


def describe(annotation: Any, metadata: Iterable[Any] = ()) -> str:
    """The values a field's type accepts, in words (``a positive integer or null``)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Annotated:
        return describe(args[0], [*args[1:], *metadata])
    if origin is Literal:
        return f"one of {list(args)}"
    if args and type(None) in args:  # a union with None
        kinds = [describe(arg, metadata) for arg in args if arg is not type(None)]
        return " or ".join(kinds + ["null"])
    if args and origin not in (dict, list, tuple):
        return " or ".join(describe(arg, metadata) for arg in args)
    bounds = [m for item in metadata for m in getattr(item, "metadata", [item])]
    ge = next((b.ge for b in bounds if hasattr(b, "ge")), None)
    gt = next((b.gt for b in bounds if hasattr(b, "gt")), None)
    names = {int: "integer", float: "number", bool: "true or false", str: "string",
             dict: "mapping", list: "list"}
    name = names.get(origin or annotation, getattr(annotation, "__name__", str(annotation)))
    if (ge == 1 and annotation is int) or gt == 0:
        return f"a positive {name}"
    if ge == 0:
        return f"a non-negative {name}"
    if annotation is bool:
        return name
    return f"an {name}" if name[0] in "aeiou" else f"a {name}"


def unknown_key_message(section: str, key: str, known: Iterable[str],
                        owner: str | None = None) -> str:
    """``section.key`` is unknown: the known keys and the closest one."""
    known = sorted(known)
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]}?)" if close else ""
    where = f"an option of {owner}" if owner else f"a {section} option"
    return f"{section}.{key} is not {where}{hint}; known {section} keys: {', '.join(known)}"


def accepted_keywords(factory: Callable[..., Any]) -> set[str] | None:
    """The keyword arguments ``factory`` accepts, or None when it takes any (``**kwargs``).

    A class forwarding ``**kwargs`` to its base accepts the base's keywords too; a function
    forwarding them to the class it returns (a factory annotated ``-> Conv4``) accepts that
    class's.
    """
    keywords: set[str] = set()
    classes = inspect.getmro(factory) if inspect.isclass(factory) else [factory]
    for owner in classes:
        target = owner.__init__ if inspect.isclass(factory) else owner
        if inspect.isclass(factory) and "__init__" not in vars(owner):
            continue
        parameters = inspect.signature(target).parameters.values()
        keywords |= {p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD,
                                                                p.KEYWORD_ONLY)}
        if not any(p.kind is p.VAR_KEYWORD for p in parameters):
            return keywords - {"self"}
    if not inspect.isclass(factory):
        returned = _return_class(factory)
        if returned is not None and (inner := accepted_keywords(returned)) is not None:
            return keywords | inner
    return None


def _return_class(function: Callable[..., Any]) -> type | None:
    try:
        returned = typing.get_type_hints(function).get("return")
    except (NameError, TypeError):
        return None
    return returned if inspect.isclass(returned) else None


def _check_name(section: str, name: Any, choices: Iterable[str]) -> None:
    choices = sorted(choices)
    if name not in choices:
        close = difflib.get_close_matches(str(name), choices, n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ConfigError(f"{section}.name must be one of {choices}, got {name!r}{hint}")


def _check_named(sections: dict[str, Any], section: str, registry: dict[str, Any]) -> None:
    """``section``'s keys are ``name`` and keywords of ``registry[name]``'s constructor."""
    values = sections[section]
    if "name" not in values:
        raise ConfigError(f"config needs {section}.name (one of {sorted(registry)})")
    _check_name(section, values["name"], registry)
    factory = registry[values["name"]]
    _check_compatible(section, values, factory)
    accepted = accepted_keywords(factory)
    if accepted is None:
        return
    known = accepted - {"model"} if section == "algorithm" else accepted
    for key in values:
        if key != "name" and key not in known:
            owner = f"{values['name']} ({getattr(factory, '__name__', factory)})"
            raise ConfigError(unknown_key_message(section, key, {"name", *known}, owner))


def _check_compatible(section: str, values: dict[str, Any], factory: Any) -> None:
    """Keys the method declares it cannot take (its ``incompatible_options``: key ->
    reason) are an error naming each key and why."""
    reasons = getattr(factory, "incompatible_options", {})
    clashing = [key for key in values if key in reasons]
    if clashing:
        named = " and ".join(f"{section}.{key}" for key in clashing)
        why = "; ".join(f"{key}: {reasons[key]}" for key in clashing)
        raise ConfigError(f"{named} cannot go with {section}.name={values['name']!r} ({why}); "
                          f"remove {'them' if len(clashing) > 1 else 'it'}")


def _data_factory(name: str) -> Callable[..., Any] | None:
    if name in REGRESSION_FAMILIES:
        return REGRESSION_FAMILIES[name]
    if name in STREAM_FAMILIES:
        return STREAM_FAMILIES[name]
    if name in FAMILIES:
        return FAMILIES[name]
    return datasets.registry.REGISTRY.get(name)


def _check_data(data: dict[str, Any]) -> None:
    """``data.name`` is a task family or dataset; its other keys are read by the task
    sources or accepted by the family or dataset factory (when that can be told)."""
    if "name" not in data:
        raise ConfigError("config needs data.name")
    _check_name("data", data["name"], [*REGRESSION_FAMILIES, *STREAM_FAMILIES, *FAMILIES,
                                       *datasets.available()])
    if data.get("unsupervised") is not None:
        try:
            parse_unsupervised(data["unsupervised"])
        except ValueError as error:
            raise ConfigError(str(error)) from error
    accepted = accepted_keywords(_data_factory(data["name"]))
    if accepted is None:
        return
    known = SAMPLER_KEYS | accepted - {"split", "tasks_per_batch", "seed"}
    if data["name"] in STREAM_FAMILIES:
        known -= STREAM_FIXED
    for key in data:
        if key not in known:
            raise ConfigError(unknown_key_message("data", key, known, repr(data["name"])))


def save_config(config: dict[str, Any], path: Path) -> None:
    from metalab.train.checkpoint import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(config, sort_keys=False))
