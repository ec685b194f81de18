"""Task sources from the ``data`` section of a config.

The keys of ``data`` say which kind of source it is:

- a task family by name (``sinusoid``, ``sine-line``, ``nme-sinusoid``, ``gaussian-process``,
  ``glyphs-completion``, ``translation-equivariant``,
  ``rotation-equivariant``): tasks generated on the fly or from a seeded pool;
- ``support_size``: group shift; a task is an unlabelled batch of one group's examples
  (`GroupBatchSampler` for training, `GroupEvalSampler` cycling through the groups for
  evaluation);
- ``batch_size``: multi-task learning; every step holds a batch for each task, from a
  dataset labelled for every task (``labels [N, T]``, e.g. MultiMNIST) or a dataset whose
  classes are partitioned into tasks (``partition_by: alphabet, tasks: 20``);
- ``examples``: optimisation problems for a learned optimizer; a task is training a fresh
  classifier on ``examples`` examples of a pool of ``data.dataset_split`` (divided into
  train/val/test pools by ``split_seed``), scored on ``queries`` others
  (`ClassifierTrainingProblems`);
- a task stream by name (``rainbow-digits``, ``rainbow-glyphs``; `STREAM_FAMILIES`):
  online meta-learning, the training source is the stream's replay buffer
  (`BufferSource`), its data arriving ``arrival_batch`` examples at a time; the
  ``online`` section says the buffer tasks' ``support`` and ``query`` sizes;
- an environment (a registered `metalab.rl` task family: ``nav2d``): a task is an
  environment's task specification (a goal), ``episodes`` the episodes collected per task
  for each batch of rollouts; the family's own options (``horizon``, ...) go to it. The
  splits differ only by their seeds (the tasks come from one distribution);
- otherwise ``ways``, ``shots``, ``queries``: N-way K-shot episodes; ``within: alphabet``
  draws every episode's classes from one alphabet (``skip_small_groups: true`` leaves out
  alphabets with fewer than ``ways`` characters); with ``train_batch_size`` the training
  split gives plain labelled batches over all its classes instead (pretraining an
  embedding) while validation and test stay episodic.

``unsupervised`` (``cactus``, ``umtra`` or a mapping; see `metalab.tasks.unsupervised`)
makes the training split's tasks from its images alone (CACTUs clusters or UMTRA
augmentations, through a view that cannot read a label); validation and test stay labelled
episodes.

``augment`` (a preset ``characters``/``images`` or a mapping; see
`metalab.tasks.image_augmentation`) transforms the support and query images of the
training tasks only.
"""

from __future__ import annotations

import inspect
import json
from functools import lru_cache
from typing import Any

from metalab import datasets
from metalab.datasets import GroupDataset
from metalab.rl import FAMILIES, EnvironmentTaskSource, build_family
from metalab.tasks import (
    BufferSource,
    ClassifierTrainingProblems,
    EpisodeSampler,
    GaussianProcess,
    GlyphsCompletion,
    GroupBatchSampler,
    GroupEvalSampler,
    MultiLabelSource,
    NonMutuallyExclusiveSinusoid,
    PartitionedTaskSource,
    RandomQuadratics,
    RotationEquivariantTasks,
    SineOrLine,
    Sinusoid,
    TaskSource,
    TaskStream,
    TranslationEquivariantTasks,
    partition_by_info,
    split_per_class,
)
from metalab.tasks.image_augmentation import AugmentedTasks, parse_augmentation
from metalab.tasks.labelled_batches import LabelledBatches
from metalab.tasks.objective import CLASSIFICATION, REGRESSION, Objective
from metalab.tasks.rainbow import rainbow_tasks
from metalab.tasks.rainbow_glyphs import rainbow_glyph_tasks
from metalab.tasks.umtra import UmtraTasks
from metalab.tasks.unlabelled import UnlabelledImages
from metalab.tasks.unsupervised import build_partitions, parse_unsupervised, unsupervised_source

REGRESSION_FAMILIES = {
    "sinusoid": Sinusoid,
    "sine-line": SineOrLine,
    "nme-sinusoid": NonMutuallyExclusiveSinusoid,
    "translation-equivariant": TranslationEquivariantTasks,
    "rotation-equivariant": RotationEquivariantTasks,
    "gaussian-process": GaussianProcess,
    "glyphs-completion": GlyphsCompletion,
    "quadratic": RandomQuadratics,
}
# Task streams (online meta-learning): name -> the function building the stream's tasks.
STREAM_FAMILIES = {
    "rainbow-digits": rainbow_tasks,
    "rainbow-glyphs": rainbow_glyph_tasks,
}
# The stream options no config sets: the seed is train.seed, the dataset the default one.
STREAM_FIXED = {"seed", "dataset"}
# Keys of ``data`` read by the task sources; the rest are options of the dataset or family.
SAMPLER_KEYS = {"name", "root", "ways", "shots", "queries", "shuffle_labels", "train_split",
                "val_split", "test_split", "support_size", "sampling", "distinct_groups",
                "batch_size", "partition_by", "tasks", "held_out", "examples",
                "dataset_split", "split_seed", "within", "skip_small_groups", "augment",
                "train_batch_size", "arrival_batch", "episodes", "unsupervised",
                "train_options"}


def data_objective(config: dict[str, Any]) -> Objective:
    """What the data ask for: regression for the regression families, else classification."""
    return REGRESSION if config["data"]["name"] in REGRESSION_FAMILIES else CLASSIFICATION


def is_regression(config: dict[str, Any]) -> bool:
    return data_objective(config) is REGRESSION


def _options(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k not in SAMPLER_KEYS}


@lru_cache(maxsize=8)
def _cached_dataset(name: str, split: str, root: str | None, options_json: str):
    return datasets.build(name, split=split, root=root, **json.loads(options_json))


def _train_options(data: dict[str, Any]) -> dict[str, Any]:
    """``data.train_options``: dataset options for the training split only, over ``data``'s
    own (Omniglot's ``{rotations: true}``: rotated characters as extra training classes,
    validation and test classes unrotated)."""
    options = data.get("train_options") or {}
    if not isinstance(options, dict):
        raise ValueError(f"data.train_options must be a mapping of dataset options for the "
                         f"training split (e.g. {{rotations: true}}), got {options!r}")
    return options


def _options_json(data: dict[str, Any], training: bool) -> str:
    """The dataset options as a cache key; ``training``: with ``data.train_options``."""
    options = {**_options(data), **(_train_options(data) if training else {})}
    return json.dumps(options, sort_keys=True)


def _dataset(data: dict[str, Any], split: str, training: bool = False):
    """Datasets are built once per process (train, val and test sources share them);
    ``training``: the training split's, with ``data.train_options``."""
    return _cached_dataset(data["name"], split, data.get("root"),
                           _options_json(data, training))


def _family_source(data: dict[str, Any], split: str, tasks_per_batch: int, seed: int,
                   queries: int | None) -> TaskSource:
    """A task family; families with splits get ``data.<split>_split``."""
    family = REGRESSION_FAMILIES[data["name"]]
    kwargs = _options(data)
    if "split" in inspect.signature(family).parameters:
        kwargs["split"] = data[f"{split}_split"]
    for key, value in (("shots", data.get("shots")), ("queries", queries)):
        if value is not None:
            kwargs[key] = value
    try:
        return family(tasks_per_batch=tasks_per_batch, seed=seed, **kwargs)
    except TypeError as error:
        raise ValueError(f"data for task family {data['name']!r}: {error}") from error


def _group_source(data: dict[str, Any], split: str, tasks_per_batch: int, seed: int,
                  support_size: int | None) -> TaskSource:
    """Training: batches of several groups drawn as ``data.sampling`` says; evaluation:
    batches of one group each, cycling through the groups (``support_size`` examples, by
    default ``data.support_size``)."""
    dataset = _dataset(data, data[f"{split}_split"], training=split == "train")
    if not isinstance(dataset, GroupDataset):
        raise ValueError(f"data.support_size is for group datasets, and {data['name']!r} "
                         f"has no groups; use data.ways/shots/queries for episodes")
    if split == "train":
        return GroupBatchSampler(dataset, tasks_per_batch, data["support_size"],
                                 sampling=data.get("sampling", "frequency"),
                                 distinct_groups=data.get("distinct_groups", False), seed=seed)
    size = data["support_size"] if support_size is None else support_size
    return GroupEvalSampler(dataset, size, groups_per_batch=tasks_per_batch, seed=seed)


def _multitask_source(data: dict[str, Any], split: str, seed: int) -> TaskSource:
    """One batch of ``data.batch_size`` examples per task at every step.

    With ``partition_by`` the classes of the dataset (``data.train_split``, default
    ``all``) are assigned to ``tasks`` tasks by that ``class_info`` key, and ``held_out``
    examples of every class are kept for evaluation (the val and test splits).
    """
    if "partition_by" not in data:
        dataset = _dataset(data, data[f"{split}_split"], training=split == "train")
        return MultiLabelSource(dataset, data["batch_size"], seed=seed)
    dataset = _dataset(data, data["train_split"])
    partition, names = partition_by_info(dataset, data["partition_by"], data.get("tasks", 20))
    train, held_out = _held_out_split(dataset, data.get("held_out", 5))
    return PartitionedTaskSource(train if split == "train" else held_out, partition,
                                 data["batch_size"], seed=seed, task_names=names)


@lru_cache(maxsize=4)
def _held_out_split(dataset, held_out: int):
    return split_per_class(dataset, held_out, seed=0)


def _episode_source(data: dict[str, Any], split: str, tasks_per_batch: int, seed: int,
                    queries: int | None, within: str | None = None) -> TaskSource:
    if split == "train" and data.get("train_batch_size") is not None:
        return LabelledBatches(_dataset(data, data["train_split"], training=True),
                               data["train_batch_size"], seed=seed)
    for key in ("ways", "shots", "queries"):
        if key not in data:
            raise ValueError(f"config needs data.{key} for an episodic dataset (or "
                             f"data.support_size for group data, data.batch_size for "
                             f"multi-task data)")
    dataset = _dataset(data, data[f"{split}_split"], training=split == "train")
    return EpisodeSampler(dataset, ways=data["ways"], shots=data["shots"], queries=queries,
                          tasks_per_batch=tasks_per_batch,
                          shuffle_labels=data["shuffle_labels"], seed=seed,
                          within=within or data.get("within"),
                          skip_small_groups=data.get("skip_small_groups", False))


@lru_cache(maxsize=4)
def _unlabelled(name: str, split: str, root: str | None, options_json: str) -> UnlabelledImages:
    return UnlabelledImages.of(_cached_dataset(name, split, root, options_json))


@lru_cache(maxsize=4)
def _cached_partitions(images: UnlabelledImages, spec_json: str):
    return build_partitions(images, parse_unsupervised(json.loads(spec_json)))


def training_images(data: dict[str, Any]) -> UnlabelledImages:
    """The training split of ``data`` as unlabelled images (built once per process), the
    images CACTUs and UMTRA construct their tasks from."""
    return _unlabelled(data["name"], data["train_split"], data.get("root"),
                       _options_json(data, training=True))


def _unsupervised_source(data: dict[str, Any], tasks_per_batch: int, seed: int,
                         queries: int | None) -> TaskSource:
    """Training tasks built from the training split's images alone (CACTUs or UMTRA);
    the embedding and partitions are computed once per process and option set."""
    spec = parse_unsupervised(data["unsupervised"])
    for key in ("ways", "shots", "queries"):
        if key not in data:
            raise ValueError(f"config needs data.{key} with data.unsupervised")
    images = training_images(data)
    partitions = None
    if spec.method == "cactus":
        partitions = _cached_partitions(images, json.dumps(spec.__dict__, sort_keys=True))
    return unsupervised_source(images, spec, data["ways"], data["shots"], queries,
                               tasks_per_batch, seed, partitions=partitions)


def _augmented(source: TaskSource, data: dict[str, Any]) -> TaskSource:
    """``source`` with ``data.augment`` applied (training sources only)."""
    augmentation = parse_augmentation(data.get("augment"))
    if augmentation is None:
        return source
    info = getattr(getattr(source, "dataset", None), "class_info", None) or [{}]
    if augmentation.flip and "alphabet" in info[0]:
        raise ValueError(f"data.augment flips images, but {data['name']!r} holds characters "
                         f"(a mirrored character is another class or none); use the "
                         f"'characters' preset or flip: false")
    return AugmentedTasks(source, augmentation)


def _problem_source(data: dict[str, Any], split: str, tasks_per_batch: int, seed: int,
                    queries: int | None) -> TaskSource:
    """Training a fresh classifier on ``data.examples`` examples of the ``split`` pool."""
    if queries is None:
        raise ValueError("config needs data.queries (held-out examples per problem) with "
                         "data.examples")
    dataset = _dataset(data, data.get("dataset_split", "train"))
    return ClassifierTrainingProblems(dataset, split, data["examples"], queries,
                                      tasks_per_batch=tasks_per_batch, seed=seed,
                                      split_seed=data.get("split_seed", 0))


def stream_options(data: dict[str, Any]) -> dict[str, Any]:
    """The options of ``data`` that its stream family takes."""
    accepted = set(inspect.signature(STREAM_FAMILIES[data["name"]]).parameters) - STREAM_FIXED
    return {k: v for k, v in data.items() if k in accepted}


@lru_cache(maxsize=4)
def _cached_stream_tasks(name: str, options_json: str, seed: int):
    return STREAM_FAMILIES[name](**json.loads(options_json), seed=seed)


def build_task_stream(data: dict[str, Any], seed: int) -> TaskStream:
    """The `TaskStream` of ``data`` (a stream family), its tasks and arrivals drawn from
    ``seed``; ``data.arrival_batch`` examples arrive at a time (default 10)."""
    tasks = _cached_stream_tasks(data["name"], json.dumps(stream_options(data), sort_keys=True),
                                 int(seed))
    labels = max(int(t.train_y.max()) for t in tasks) + 1
    return TaskStream(tasks, data.get("arrival_batch", 10), seed=seed, num_classes=labels)


def _stream_source(config: dict[str, Any], split: str, tasks_per_batch: int,
                   seed: int) -> TaskSource:
    """The replay buffer of the stream as the training source."""
    data, online = config["data"], config.get("online")
    if online is None:
        raise ValueError(f"data {data['name']!r} is a task stream: the config needs an "
                         f"online section (online.protocol: ftml, ftl, toe or scratch)")
    if split != "train":
        raise ValueError(f"a task stream has no {split!r} split: each task is scored on its "
                         f"held-out examples as it arrives (the run's stream.json)")
    return BufferSource(build_task_stream(data, seed), tasks_per_batch, online["support"],
                        online["query"])


def _environment_source(data: dict[str, Any], split: str, tasks_per_batch: int, seed: int
                        ) -> TaskSource:
    """Tasks of the environment family ``data.name``, ``data.episodes`` per task. A family
    with a task split (Meta-World) gets ``split="train"`` for training and ``"test"`` for
    validation and meta-test (it has no validation tasks); the others differ by seed."""
    options = _options(data)
    if "split" in inspect.signature(FAMILIES[data["name"]]).parameters:
        if "split" in options:
            raise ValueError(f"data.split must not be set for {data['name']!r}: training "
                             f"uses the train tasks and metalab eval the test tasks")
        options["split"] = "train" if split == "train" else "test"
    try:
        family = build_family(data["name"], **options)
    except TypeError as error:
        raise ValueError(f"data for environment {data['name']!r}: {error}") from error
    return EnvironmentTaskSource(family, tasks_per_batch, data.get("episodes", 20), seed=seed)


def build_task_source(config: dict[str, Any], split: str, tasks_per_batch: int, seed: int,
                      queries: int | None = None, support_size: int | None = None,
                      within: str | None = None) -> TaskSource:
    """A seeded task source for ``split`` ("train", "val" or "test") of ``config['data']``.

    ``queries`` (episodes, task families) and ``support_size`` (group batches) override
    the config's for evaluation, ``within`` (episodes) sets ``data.within`` (e.g. a
    within-alphabet meta-test of a run trained on random classes). Multi-task sources hold
    every task in each batch, so ``tasks_per_batch`` does not apply to them. ``data.augment``
    applies to the "train" split only.
    """
    data = config["data"]
    queries = data.get("queries") if queries is None else queries
    if data["name"] in STREAM_FAMILIES:
        return _stream_source(config, split, tasks_per_batch, seed)
    if data["name"] in FAMILIES:
        return _environment_source(data, split, tasks_per_batch, seed)
    if is_regression(config):
        return _family_source(data, split, tasks_per_batch, seed, queries)
    if "support_size" in data:
        return _group_source(data, split, tasks_per_batch, seed, support_size)
    if "batch_size" in data:
        return _multitask_source(data, split, seed)
    if "examples" in data:
        return _problem_source(data, split, tasks_per_batch, seed, queries)
    if split == "train" and data.get("unsupervised") is not None:
        source = _unsupervised_source(data, tasks_per_batch, seed, queries)
        if data.get("augment") is not None and isinstance(source, UmtraTasks):
            raise ValueError("data.augment with UMTRA would augment its tasks twice; set "
                             "the queries' augmentation in data.unsupervised.augment")
        return _augmented(source, data)
    source = _episode_source(data, split, tasks_per_batch, seed, queries, within)
    return _augmented(source, data) if split == "train" else source
