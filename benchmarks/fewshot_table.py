"""Few-shot comparison table at one budget: methods x datasets x settings x seeds.

Issues 13, 14 and 19 ask for one table of few-shot classifiers trained on the SAME budget.
This benchmark is a resumable grid of cells, (method, dataset, setting, seed). Every cell
is the method's shipped config (``<config>-glyphs-5w1s``, or ``<config>-<dataset>-<setting>``
where that is shipped) with the grid's data, setting and budget as dotted overrides,
meta-trained with `metalab.train.train_run` and evaluated with `metalab.train.evaluate_run`
on ``--episodes`` test episodes (600, the same episodes for every seed). A cell's record
(``benchmarks/results/fewshot_table/cells/<dataset>/<setting>/<method>/seed<N>.json``,
written atomically) holds its config, the accuracy with its 95% interval over episodes,
the seconds per meta-iteration (one thread, the training loop alone, with the load average
measured before and after: on a busy machine it is load-inflated), the parameter count, the
machine and the date. With ``--reuse`` a cell whose record was made with the same budget and
the same config is read, not retrained, so later sessions add cells to the same table:

    OMP_NUM_THREADS=1 python benchmarks/fewshot_table.py --reuse \
        --datasets glyphs --settings 5w1s --seeds 0 1 2                  # every method
    OMP_NUM_THREADS=1 python benchmarks/fewshot_table.py --reuse --datasets omniglot-small \
        --omniglot-root ../shared/data/omniglot --methods MAML ProtoNet --settings 20w1s
    python benchmarks/fewshot_table.py --table-only     # rebuild the tables from the records
    python benchmarks/fewshot_table.py --issue 19 --missing --omniglot-root ../shared/data/omniglot
        # the cells of issue 19's must-show table (ISSUE_GRIDS) that have no record yet

The tables (``table.md``, ``table.json``) give per (dataset, setting) and method the mean
accuracy over seeds with its Student-t 95% interval over seeds (`metalab.train.report.
over_seeds`), the mean of the per-seed intervals over episodes, s/iteration and parameters.
``issue-<N>.md`` is issue N's must-show table (``ISSUE_GRIDS``, the default budget, seeds
0-2): per (dataset, setting) a row per method and a column per (backbone, augmentation),
the cells still missing, and the best complete row (the column's recommended recipe);
``--issue N --table-only`` prints it.

The budget is ``--steps`` meta-iterations x ``--meta-batch`` tasks per meta-iteration for
every episodic method. The pretrained baselines (Baseline, Baseline++, RFS) train on plain
labelled batches of ``data.train_batch_size`` images instead of tasks; they get the same
number of training IMAGES: ``ceil(steps * meta_batch * ways * (shots + queries) /
train_batch_size)`` steps (the ways, shots and queries of the setting's episodes).
Schedule lengths measured in meta-iterations (MAML++'s multi-step-loss annealing, RFS's
learning-rate step, the first-order period) are scaled by steps / the shipped steps, so
each schedule keeps its shape. Everything else is the shipped config's.

Datasets: ``glyphs`` (embedded, disjoint alphabets per split), ``omniglot-small`` (the
Omniglot background subsets: train on small1's alphabets, test on small2's alphabets that
small1 lacks; ``--omniglot-root`` the folder with the two zips) and ``omniglot-small-rot``
(the same, each training character also at 90, 180 and 270 degrees as three more classes,
``data.train_options.rotations``; validation and test characters unrotated: issue 19's
protocol). Settings: ``5w1s``, ``5w5s`` (15 queries per class), ``20w1s`` (5 queries per
class) and ``20w1s-within`` (20 ways, every episode's classes from one alphabet, in training
and at test; alphabets with fewer than 20 characters are left out).

Two more dimensions (issue 19), each defaulting to the shipped config's own: ``--backbones``
(``conv4``: Conv4-64, every shipped config's; ``resnet12``: ResNet-12, 64-160-320-640
channels, DropBlock, per-task batch norm; ``resnet12-w<width>``, e.g. ``resnet12-w0.25``:
the same with its channels times ``width``) and ``--augment`` (``off``: ``data.augment=null``;
``on``: ``data.augment=characters``, affine jitter of the training tasks' images). A cell
whose variant is its shipped config's own (MAML: conv4, off; RFS: conv4, on) keeps the path
``<method>/seed<N>.json``; any other variant is recorded under
``<method>/<backbone>_aug-<off|on>/seed<N>.json``. Every record names its ``backbone`` and
``augment`` (records made before these dimensions existed are read from their config).
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import math
import os
import platform
import re
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch

from metalab.cli.main import resolve_config_path
from metalab.train import evaluate_run, load_config, load_run, train_run
from metalab.train.checkpoint import atomic_write_text
from metalab.train.config import ConfigError
from metalab.train.report import format_percent, over_seeds, write_json
from metalab.train.seeds import with_seed

RESULTS = Path(__file__).resolve().parent / "results" / "fewshot_table"

# Method label -> the stem of its shipped configs (``<stem>-glyphs-5w1s.yaml``).
METHODS = {
    "MAML": "maml", "MAML++": "mamlpp", "FOMAML": "fomaml", "Reptile": "reptile",
    "iMAML": "imaml", "Meta-SGD": "metasgd", "ANIL": "anil", "MT-Net": "mtnet",
    "T-Net": "tnet", "Meta-Curvature": "metacurvature", "WarpGrad": "warpgrad",
    "ProtoNet": "protonet", "Matching": "matching", "Matching+FCE": "matching-fce",
    "Relation": "relation", "Meta Networks": "metanet", "SNAIL": "snail", "MANN": "mann",
    "Baseline": "baseline", "Baseline++": "baseline-pp", "RFS": "rfs",
}
BASE_DATASET, BASE_SETTING = "glyphs", "5w1s"

# Data overrides of each dataset (``{root}``: --omniglot-root).
OMNIGLOT_SMALL = ["data.name=omniglot", "data.root={root}", "data.split_by=alphabet",
                  "data.train_sources=[small1]", "data.test_sources=[small2]",
                  "data.rotations=false"]
DATASETS = {
    "glyphs": [],
    "omniglot-small": OMNIGLOT_SMALL,
    # issue 19's protocol: small1's training characters at four rotations (each a class),
    # validation and test characters unrotated
    "omniglot-small-rot": [*OMNIGLOT_SMALL, "data.train_options.rotations=true"],
}


@dataclass(frozen=True)
class Setting:
    """An episode shape: ways, shots, queries per class, optional one-group episodes."""

    ways: int
    shots: int
    queries: int
    within: str | None = None


SETTINGS = {"5w1s": Setting(5, 1, 15), "5w5s": Setting(5, 5, 15),
            "20w1s": Setting(20, 1, 5), "20w1s-within": Setting(20, 1, 5, "alphabet")}

# Keys counted in meta-iterations: scaled with the budget (new = old * steps / shipped steps).
SCHEDULE_KEYS = ("algorithm.msl_anneal_steps", "algorithm.first_order_until",
                 "train.lr_step_every")


# Backbones: ``conv4`` (the shipped configs'), ``resnet12`` or ``resnet12-w<width>``.
BACKBONE_PATTERN = re.compile(r"^(conv4|resnet12)(?:-w(\d+(?:\.\d+)?))?$")
AUGMENTS = ("off", "on")
AUGMENT_PRESET = "characters"  # both datasets hold characters: affine jitter, no flips


@dataclass(frozen=True)
class Variant:
    """A cell's backbone (``conv4``, ``resnet12``, ``resnet12-w0.25``) and augmentation."""

    backbone: str = "conv4"
    augment: str = "off"

    @property
    def label(self) -> str:
        return f"{self.backbone}_aug-{self.augment}"


def parse_backbone(name: str) -> tuple[str, float]:
    """``(model name, width)`` of a backbone label; a clear error for any other label."""
    match = BACKBONE_PATTERN.match(name)
    if match is None or (match.group(1) == "conv4" and match.group(2) is not None):
        raise ValueError(f"backbone must be conv4, resnet12 or resnet12-w<width> (e.g. "
                         f"resnet12-w0.25), got {name!r}")
    width = float(match.group(2)) if match.group(2) else 1.0
    if width <= 0:
        raise ValueError(f"backbone {name!r}: the width must be positive")
    return match.group(1), width


def backbone_label(model: dict) -> str:
    """The backbone label of a config's model section (``conv4``, ``resnet12-w0.25`` ...)."""
    name = model.get("name", "conv4")
    if name == "resnet12":
        width = float(model.get("width", 1.0))
        return "resnet12" if width == 1.0 else f"resnet12-w{width:g}"
    return name


def variant_of(config: dict) -> Variant:
    """The backbone and augmentation a (shipped or cell) config trains with."""
    augment = "on" if (config.get("data") or {}).get("augment") else "off"
    return Variant(backbone_label(config.get("model") or {}), augment)


def variant_overrides(shipped: dict, variant: Variant) -> list[str]:
    """The overrides that turn the shipped config's backbone and augmentation into
    ``variant``'s; none where they agree (so the shipped variant's config is unchanged).
    ResNet-12 replaces the whole model section: per-task batch norm (as Conv4's), DropBlock
    0.1 with blocks of 5 in the last two blocks, global average pooling."""
    if variant.augment not in AUGMENTS:
        raise ValueError(f"augment must be one of {list(AUGMENTS)}, got {variant.augment!r}")
    own = variant_of(shipped)
    out = []
    if variant.backbone != own.backbone:  # a method's own backbone needs no label pattern
        name, width = parse_backbone(variant.backbone)
        if own.backbone != "conv4" or name != "resnet12":
            raise ValueError(f"backbone {variant.backbone!r}: this method's shipped config "
                             f"uses {own.backbone!r}; only a conv4 model is swapped for a "
                             f"resnet12")
        model = shipped["model"]
        out.append(f"model={{name: resnet12, in_channels: {model.get('in_channels', 1)}, "
                   f"image_size: {model.get('image_size', 28)}, width: {width:g}, "
                   f"norm: task, drop_rate: 0.1, block_size: 5, pool: avg}}")
    if variant.augment != own.augment:
        out.append(f"data.augment={AUGMENT_PRESET if variant.augment == 'on' else 'null'}")
    return out


@dataclass(frozen=True)
class Budget:
    """What every cell gets: meta-iterations x tasks per meta-iteration, and test episodes."""

    steps: int = 200
    meta_batch: int = 4
    episodes: int = 600


# -- the config of a cell -------------------------------------------------------------------
def base_config_name(method: str, dataset: str, setting: str) -> str:
    """The shipped config a cell starts from: ``<stem>-<dataset>-<setting>`` if shipped,
    else the method's ``<stem>-glyphs-5w1s``."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {list(METHODS)}, got {method!r}")
    if dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {list(DATASETS)}, got {dataset!r}")
    if setting not in SETTINGS:
        raise ValueError(f"setting must be one of {list(SETTINGS)}, got {setting!r}")
    specific = f"{METHODS[method]}-{dataset}-{setting}"
    try:
        resolve_config_path(specific)
        return specific
    except (FileNotFoundError, ValueError, ConfigError):
        return f"{METHODS[method]}-{BASE_DATASET}-{BASE_SETTING}"


def _get(config: dict, key: str) -> Any:
    section, leaf = key.split(".")
    return config.get(section, {}).get(leaf)


def is_pretrained(config: dict) -> bool:
    """A method that trains on labelled batches rather than tasks (``data.train_batch_size``)."""
    return _get(config, "data.train_batch_size") is not None


def images_per_iteration(setting: Setting, budget: Budget) -> int:
    """Training images an episodic method sees per meta-iteration at the grid's query count."""
    return budget.meta_batch * setting.ways * (setting.shots + setting.queries)


def setting_overrides(config: dict, setting: Setting) -> list[str]:
    """Ways, shots and queries of the setting. A config that trains on its own query count
    and tests on ``eval.queries`` (Reptile: 10 images per class in meta-training) keeps its
    training queries; learners whose size depends on the episode (``algorithm.ways``,
    ``algorithm.shots``: SNAIL, MANN) get them too."""
    s = setting
    out = [f"data.ways={s.ways}", f"data.shots={s.shots}"]
    if _get(config, "eval.queries") is not None:
        out.append(f"eval.queries={s.queries}")
    else:
        out.append(f"data.queries={s.queries}")
    for key, value in (("algorithm.ways", s.ways), ("algorithm.shots", s.shots)):
        if _get(config, key) is not None:
            out.append(f"{key}={value}")
    if s.within is not None:
        out += [f"data.within={s.within}", "data.skip_small_groups=true"]
    return out


def scaled_schedule_overrides(config: dict, factor: float) -> list[str]:
    """The lengths counted in steps (``SCHEDULE_KEYS``) that ``config`` sets, times
    ``factor`` (at least 1), so a schedule keeps its shape over another number of steps."""
    out = []
    for key in SCHEDULE_KEYS:
        value = _get(config, key)
        if value:
            out.append(f"{key}={max(1, round(int(value) * factor))}")
    return out


def budget_overrides(config: dict, setting: Setting, budget: Budget) -> list[str]:
    """The grid's budget; the image-equivalent steps for a pretrained baseline; schedule
    lengths scaled; one checkpoint at the end, no validation, 10 log lines."""
    shipped = int(config["train"]["steps"])
    if is_pretrained(config):
        steps = math.ceil(images_per_iteration(setting, budget)
                          * budget.steps / int(_get(config, "data.train_batch_size")))
        out = [f"train.steps={steps}"]
    else:
        steps = budget.steps
        out = [f"train.steps={steps}", f"train.meta_batch={budget.meta_batch}"]
    out += scaled_schedule_overrides(config, steps / shipped)
    return out + ["train.val_every=0", f"train.checkpoint_every={steps}",
                  f"train.log_every={max(1, steps // 10)}", "train.progress=false",
                  f"eval.episodes={budget.episodes}"]


def cell_config(method: str, dataset: str, setting: str, budget: Budget,
                omniglot_root: str | None = None,
                variant: Variant | None = None) -> tuple[str, list[str], dict]:
    """The shipped config's name, the overrides the grid applies, and the config
    (``variant``: a backbone and augmentation; ``None``: the shipped config's own)."""
    name = base_config_name(method, dataset, setting)
    path = resolve_config_path(name)
    shipped = load_config(path)
    if any("{root}" in o for o in DATASETS[dataset]) and omniglot_root is None:
        raise ValueError(f"dataset {dataset!r} needs --omniglot-root (the folder with "
                         f"images_background_small1.zip and _small2.zip)")
    if name == f"{METHODS[method]}-{dataset}-{setting}":  # shipped for this cell: its root
        overrides = [o.format(root=omniglot_root) for o in DATASETS[dataset] if "{root}" in o]
    else:
        overrides = [o.format(root=omniglot_root) for o in DATASETS[dataset]]
        overrides += setting_overrides(shipped, SETTINGS[setting])
    if variant is not None:
        overrides += variant_overrides(shipped, variant)
    overrides += budget_overrides(shipped, SETTINGS[setting], budget)
    return name, overrides, load_config(path, overrides)


# -- one cell -------------------------------------------------------------------------------
def method_folder(method: str) -> str:
    """A method label as a folder name (``Meta Networks`` -> ``Meta_Networks``, ``Baseline++``
    -> ``Baselinepp``)."""
    return method.replace(" ", "_").replace("+", "p")


def cell_path(results: Path, method: str, dataset: str, setting: str, seed: int,
              variant: Variant | None = None, shipped: Variant | None = None) -> Path:
    """``cells/<dataset>/<setting>/<method>/seed<N>.json`` for the shipped config's own
    variant (``variant`` None or equal to ``shipped``), else
    ``cells/<dataset>/<setting>/<method>/<backbone>_aug-<off|on>/seed<N>.json``."""
    folder = results / "cells" / dataset / setting / method_folder(method)
    if variant is not None and variant != (shipped or Variant()):
        folder = folder / variant.label
    return folder / f"seed{seed}.json"


def cell_run_dir(runs: Path, results: Path, record: Path) -> Path:
    """The run directory under ``runs`` of the cell recorded at ``record`` (under
    ``results``): the record's path below ``cells/``, without its suffix."""
    return runs / record.relative_to(results / "cells").with_suffix("")


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value))


def reusable(path: Path, budget: Budget, config: dict) -> dict | None:
    """The record at ``path`` if it was made with this budget and this (seeded) config
    (so an edited shipped config or another budget is retrained), else None."""
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    if record.get("budget") != _plain(asdict(budget)):
        return None
    return record if _same_settings(_data_root_resolved(record.get("config")),
                                    _data_root_resolved(_plain(config))) else None


def _data_root_resolved(config: Any) -> Any:
    """``config`` with ``data.root`` as an absolute path: where the files are is not a
    setting, and the same folder may be named relatively or absolutely."""
    data = config.get("data") if isinstance(config, dict) else None
    if not isinstance(data, dict) or data.get("root") is None:
        return config
    return {**config, "data": {**data, "root": str(Path(data["root"]).resolve())}}


def _same_settings(recorded: Any, current: Any) -> bool:
    """Whether ``current`` has every setting of ``recorded`` with the same value. Keys the
    config schema gained after the record was made are not compared: a new option's
    default keeps the behaviour the record was made with."""
    if isinstance(recorded, dict) and isinstance(current, dict):
        return all(key in current and _same_settings(value, current[key])
                   for key, value in recorded.items())
    return recorded == current


def parameter_count(run_dir: Path) -> int:
    """Every parameter the trained learner holds (meta-parameters: learned rates, transforms,
    warp layers, a pretrained classifier's training head included)."""
    return sum(p.numel() for p in load_run(run_dir).parameters())


def seconds_per_iteration(run_dir: Path) -> tuple[float, int]:
    """The training loop's seconds per step (the last logged ``seconds`` over its step)."""
    log = [json.loads(line) for line in (run_dir / "metrics.jsonl").open()]
    last = [r for r in log if r["split"] == "train"][-1]
    return last["seconds"] / last["step"], int(last["step"])


def run_cell(config: dict, run_dir: Path, budget: Budget) -> dict:
    """Train ``config`` into ``run_dir``, evaluate it; the cell's measurements."""
    load_before = os.getloadavg()
    started = time.perf_counter()
    train_run(config, run_dir)
    train_seconds = time.perf_counter() - started
    load_after = os.getloadavg()
    per_step, steps = seconds_per_iteration(run_dir)
    started = time.perf_counter()
    result = evaluate_run(run_dir, episodes=budget.episodes)
    return {
        "accuracy": result["mean"], "episode_ci95": result["ci95"],
        "episodes": result["episodes"], "train_steps": steps,
        "seconds_per_iteration": per_step, "train_seconds": train_seconds,
        "eval_seconds": time.perf_counter() - started,
        "load_average_before": list(load_before), "load_average_after": list(load_after),
        "parameters": parameter_count(run_dir),
    }


def environment() -> dict:
    return {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
            "torch": torch.__version__, "threads": torch.get_num_threads(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


class Cell(NamedTuple):
    """One cell of the grid; ``backbone`` / ``augment`` None: the shipped config's."""

    method: str
    dataset: str
    setting: str
    seed: int
    backbone: str | None = None
    augment: str | None = None


@functools.cache
def shipped_variant(method: str, dataset: str, setting: str) -> Variant:
    """The backbone and augmentation of the cell's shipped config (read once per process:
    the issue tables ask for it once per variant)."""
    return variant_of(load_config(resolve_config_path(
        base_config_name(method, dataset, setting))))


def resolve_variant(method: str, dataset: str, setting: str, backbone: str | None,
                    augment: str | None) -> tuple[Variant, Variant]:
    """The cell's variant (None fields: the shipped config's) and the shipped config's."""
    shipped = shipped_variant(method, dataset, setting)
    return Variant(backbone or shipped.backbone, augment or shipped.augment), shipped


def fill(cells: list[Cell], budget: Budget, results: Path, runs: Path,
         reuse: bool, omniglot_root: str | None = None) -> list[dict]:
    """Run every cell not already recorded (``reuse``); returns the records in order."""
    records = []
    for method, dataset, setting, seed, backbone, augment in (Cell(*c) for c in cells):
        variant, shipped = resolve_variant(method, dataset, setting, backbone, augment)
        name, overrides, config = cell_config(method, dataset, setting, budget, omniglot_root,
                                              variant)
        config = with_seed(config, seed)
        path = cell_path(results, method, dataset, setting, seed, variant, shipped)
        record = reusable(path, budget, config) if reuse else None
        if record is None:
            run_dir = cell_run_dir(runs, results, path)
            if run_dir.exists():  # a run of an earlier, unrecorded attempt: start again
                shutil.rmtree(run_dir)
            own = variant_of(config)
            record = {"method": method, "dataset": dataset, "setting": setting, "seed": seed,
                      "backbone": own.backbone, "augment": own.augment,
                      "shipped_config": name, "overrides": overrides,
                      "budget": asdict(budget), "environment": environment(),
                      **run_cell(config, run_dir, budget), "config": config}
            write_json(path, record)
            state = "ran"
        else:
            state = "reused"
        print(f"{state} {dataset} {setting} {method} {variant_of(config).label} "
              f"seed {seed}: "
              f"{100 * record['accuracy']:.1f} ± {100 * record['episode_ci95']:.1f}%, "
              f"{record['seconds_per_iteration']:.3f} s/it (load "
              f"{record['load_average_before'][0]:.1f}), {record['parameters']} params",
              flush=True)
        records.append(record)
    return records


# -- the tables -----------------------------------------------------------------------------
def read_records(results: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((results / "cells").rglob("seed*.json"))]


def record_variant(record: dict) -> Variant:
    """A record's backbone and augmentation: its own fields, or (a record made before the
    grid had these dimensions) read from its config."""
    if "backbone" in record and "augment" in record:
        return Variant(record["backbone"], record["augment"])
    return variant_of(record.get("config") or {})


def _variant_order(variant: Variant) -> tuple:
    name, width = parse_backbone(variant.backbone) if BACKBONE_PATTERN.match(
        variant.backbone) else (variant.backbone, 0.0)
    return (name != "conv4", name, width, AUGMENTS.index(variant.augment))


def summarise(records: list[dict]) -> list[dict]:
    """One row per (dataset, setting, budget, method, backbone, augmentation): accuracy over
    seeds (mean, Student-t 95% half-width), the mean per-seed interval over episodes,
    s/iteration, wall-clock, load, params. Rows come in METHODS order within each (dataset,
    setting), conv4 before ResNet-12, augmentation off before on."""
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        budget = (r["budget"]["steps"], r["budget"]["meta_batch"], r["budget"]["episodes"])
        key = (r["dataset"], r["setting"], budget, r["method"], record_variant(r))
        groups.setdefault(key, []).append(r)
    order = {m: i for i, m in enumerate(METHODS)}
    rows = []
    for (dataset, setting, budget, method, variant), members in sorted(
            groups.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2],
                                            order.get(kv[0][3], len(order)),
                                            _variant_order(kv[0][4]))):
        members = sorted(members, key=lambda r: r["seed"])
        n = len(members)
        rows.append({
            "dataset": dataset, "setting": setting, "method": method,
            "backbone": variant.backbone, "augment": variant.augment,
            "budget": dict(zip(("steps", "meta_batch", "episodes"), budget, strict=True)),
            "seeds": [r["seed"] for r in members],
            "accuracy": over_seeds([r["accuracy"] for r in members]),
            "episode_ci95": math.fsum(r["episode_ci95"] for r in members) / n,
            "seconds_per_iteration": math.fsum(r["seconds_per_iteration"] for r in members) / n,
            "train_seconds": math.fsum(r.get("train_seconds", math.nan) for r in members) / n,
            "train_steps": sorted({r["train_steps"] for r in members}),
            "load_average": math.fsum(r["load_average_before"][0] for r in members) / n,
            "load_average_after": math.fsum(
                r.get("load_average_after", r["load_average_before"])[0] for r in members) / n,
            "parameters": members[0]["parameters"],
        })
    return rows


def best_rows(rows: list[dict], min_seeds: int = 3) -> dict[tuple, dict]:
    """Per (dataset, setting, budget): the row with the highest mean accuracy (the
    recommended recipe of that column), among the rows with at least ``min_seeds`` seeds
    where the column has any, else among all its rows."""
    columns: dict[tuple, list[dict]] = {}
    for row in rows:
        key = (row["dataset"], row["setting"], tuple(row["budget"].values()))
        columns.setdefault(key, []).append(row)
    best = {}
    for key, members in columns.items():
        seeded = [r for r in members if len(r["seeds"]) >= min_seeds] or members
        best[key] = max(seeded, key=lambda r: r["accuracy"]["mean"])
    return best


def accuracy_cell(row: dict) -> str:
    """``87.2 ± 1.3`` (over seeds); a single seed shows its interval over episodes."""
    if row["accuracy"]["n"] == 1:
        return (format_percent({"mean": row["accuracy"]["mean"], "ci95": row["episode_ci95"]})
                + " (1 seed, ± over episodes)")
    return format_percent(row["accuracy"])


def _minutes(seconds: float) -> str:
    return "—" if math.isnan(seconds) else f"{seconds / 60:.1f}"


def markdown(rows: list[dict]) -> str:
    """A markdown table per (dataset, setting, budget), each followed by its best row."""
    out, current = [], None
    best = best_rows(rows)

    def close(key: tuple | None) -> None:
        if key is not None and key in best:
            b = best[key]
            out.append(f"\nBest: **{b['method']}, {b['backbone']}, augmentation "
                       f"{b['augment']}** ({accuracy_cell(b)}, {len(b['seeds'])} seed(s)).")

    for row in rows:
        key = (row["dataset"], row["setting"], tuple(row["budget"].values()))
        if key != current:
            close(current)
            current = key
            b = row["budget"]
            out += [f"\n### {row['dataset']} {row['setting']}: {b['steps']} meta-iterations x "
                    f"{b['meta_batch']} tasks, {b['episodes']} test episodes\n",
                    "| method | backbone | aug | seeds | accuracy % (mean ± 95% CI over seeds) | "
                    "± over episodes | s/iteration | train min | load | steps | parameters |",
                    "|---|---|---|---|---|---|---|---|---|---|---|"]
        steps = "/".join(str(s) for s in row["train_steps"])
        out.append(f"| {row['method']} | {row['backbone']} | {row['augment']} | "
                   f"{len(row['seeds'])} | {accuracy_cell(row)} | "
                   f"{100 * row['episode_ci95']:.1f} | {row['seconds_per_iteration']:.3f} | "
                   f"{_minutes(row['train_seconds'])} | "
                   f"{row['load_average']:.0f}-{row['load_average_after']:.0f} | {steps} | "
                   f"{row['parameters']:,} |")
    close(current)
    note = ("\nAccuracy: mean over seeds ± Student-t 95% half-width over seeds "
            "(`metalab.train.report.over_seeds`); '± over episodes': the mean of the seeds' "
            "95% intervals over the test episodes. backbone: conv4 (Conv4-64), resnet12 "
            "(64-160-320-640), resnet12-w<x> (those channels times x); aug: affine jitter of "
            "the training tasks' images (`data.augment: characters`). s/iteration: the "
            "training loop's seconds "
            "per meta-iteration (per training step for the pretrained baselines, whose steps "
            "are image-equivalent: the 'steps' column), one thread; 'train min': the wall-clock "
            "of training (mean over seeds); on a machine shared with "
            "other jobs: 'load' is the 1-minute load average when the cell's training "
            "started and ended (above the core count, times are load-inflated). Parameters: "
            "all the learner's meta-parameters. 'Best': the highest mean accuracy of the "
            "table among its rows with 3 or more seeds (among all rows if none has 3).\n")
    return "\n".join(out) + "\n" + note


def write_tables(results: Path) -> list[dict]:
    """``table.md`` and ``table.json`` (every record), and ``issue-<N>.md`` per issue of
    ``ISSUE_GRIDS`` (its cells at the default budget and ``ISSUE_SEEDS``)."""
    rows = summarise(read_records(results))
    atomic_write_text(results / "table.md", "# Few-shot comparison table\n" + markdown(rows))
    for issue in ISSUE_GRIDS:
        atomic_write_text(results / f"issue-{issue}.md",
                          issue_table(issue, rows, Budget(), ISSUE_SEEDS))
    best = [{"dataset": k[0], "setting": k[1], "method": r["method"],
             "backbone": r["backbone"], "augment": r["augment"]}
            for k, r in best_rows(rows).items()]
    write_json(results / "table.json", {"rows": rows, "best": best})
    return rows


def grid(methods: list[str], datasets: list[str], settings: list[str], seeds: list[int],
         backbones: list[str] | None = None, augments: list[str] | None = None) -> list[Cell]:
    """Cells in filling order: seed-major (every method's first seed before any second
    seed), so an interrupted fill leaves a table with every method; within a seed, each
    (dataset, setting, backbone, augmentation) in turn for every method. ``backbones`` /
    ``augments`` None: each method's shipped backbone / augmentation."""
    for backbone in backbones or []:
        parse_backbone(backbone)
    for augment in augments or []:
        if augment not in AUGMENTS:
            raise ValueError(f"augment must be one of {list(AUGMENTS)}, got {augment!r}")
    cells = []
    for seed in seeds:
        for d in datasets:
            for s in settings:
                for backbone in backbones or [None]:
                    for augment in augments or [None]:
                        cells += [Cell(m, d, s, seed, backbone, augment) for m in methods]
    return cells


# The cells each issue's must-show table asks for (3 seeds each). Issue 19's "best of the
# new issues' methods" is Meta-Curvature: the best of issues 13-14's methods on the Omniglot
# subsets at 5w1s (88.9) and 20w1s (74.1), within a point of the best on Glyphs 5w1s.
ISSUE_SEEDS = [0, 1, 2]
BOTH = ["glyphs", "omniglot-small"]
WITH_ROTATIONS = ["glyphs", "omniglot-small-rot"]  # issue 19: "small1 plus rotations"
ISSUE_GRIDS = {
    "13": [dict(methods=["MAML", "MAML++", "FOMAML", "Reptile", "iMAML", "Meta-SGD", "ANIL",
                         "MT-Net", "T-Net", "Meta-Curvature", "WarpGrad", "ProtoNet"],
                datasets=BOTH, settings=["5w1s", "20w1s"])],
    "14": [dict(methods=["ProtoNet", "Matching", "Matching+FCE", "Relation", "MANN",
                         "Meta Networks", "SNAIL", "MAML"],
                datasets=BOTH, settings=["5w1s", "5w5s", "20w1s"])],
    "19": [dict(methods=["ProtoNet", "MAML", "Baseline++", "RFS", "Meta-Curvature"],
                datasets=WITH_ROTATIONS, settings=["5w1s", "20w1s", "20w1s-within"],
                backbones=["conv4", "resnet12-w0.25"], augments=["off", "on"])],
}


def issue_cells(issue: str, seeds: list[int]) -> list[Cell]:
    """The cells of ``issue``'s table (``ISSUE_GRIDS``), each once."""
    if issue not in ISSUE_GRIDS:
        raise ValueError(f"issue must be one of {list(ISSUE_GRIDS)}, got {issue!r}")
    cells = []
    for part in ISSUE_GRIDS[issue]:
        cells += [c for c in grid(seeds=seeds, **part) if c not in cells]
    return cells


def _variants(part: dict) -> list[tuple[str | None, str | None]]:
    """An ``ISSUE_GRIDS`` part's (backbone, augmentation) pairs; None: the shipped one."""
    return [(b, a) for b in part.get("backbones") or [None]
            for a in part.get("augments") or [None]]


def _variant_heading(backbone: str | None, augment: str | None) -> str:
    if backbone is None and augment is None:
        return "shipped config"
    return f"{backbone or 'shipped backbone'}, aug {augment or 'as shipped'}"


def _issue_cell(row: dict | None, seeds: list[int]) -> str:
    """A must-show cell: accuracy over the asked seeds and the training minutes, or the
    seeds recorded so far, or a dash."""
    if row is None:
        return "—"
    have = [s for s in seeds if s in row["seeds"]]
    if len(have) == len(seeds) and len(seeds) > 1:
        return f"{format_percent(row['accuracy'])} ({_minutes(row['train_seconds'])} min)"
    values = ", ".join(f"{100 * v:.1f}" for v in row["accuracy"]["values"])
    return f"{values} ({len(have)} of {len(seeds)} seeds)"


class IssueColumn(NamedTuple):
    """One (dataset, setting) of an issue's table: ``rows[method][i]`` is the summarised row
    of ``variants[i]`` (None: no record); ``missing`` counts the (cell, seed) pairs of the
    ``total`` without a record; ``best`` is the row of highest mean accuracy among those
    with every seed (None if none)."""

    dataset: str
    setting: str
    variants: list[tuple[str | None, str | None]]
    rows: dict[str, list[dict | None]]
    missing: int
    total: int
    best: dict | None


def issue_columns(issue: str, rows: list[dict], budget: Budget,
                  seeds: list[int]) -> list[IssueColumn]:
    """``issue``'s must-show table (``ISSUE_GRIDS``) from the summarised ``rows`` at
    ``budget``, one column per (dataset, setting)."""
    at_budget = {(r["dataset"], r["setting"], r["method"], r["backbone"], r["augment"]): r
                 for r in rows if r["budget"] == asdict(budget)}
    columns = []
    for part in ISSUE_GRIDS[issue]:
        variants = _variants(part)
        for dataset in part["datasets"]:
            for setting in part["settings"]:
                table, complete, missing_seeds = {}, [], 0
                for method in part["methods"]:
                    table[method] = []
                    for backbone, augment in variants:
                        variant, _ = resolve_variant(method, dataset, setting, backbone,
                                                     augment)
                        row = at_budget.get((dataset, setting, method, variant.backbone,
                                             variant.augment))
                        table[method].append(row)
                        lacking = set(seeds) - set(row["seeds"] if row else [])
                        missing_seeds += len(lacking)
                        if row is not None and not lacking:
                            complete.append(row)
                best = max(complete, key=lambda r: r["accuracy"]["mean"], default=None)
                columns.append(IssueColumn(dataset, setting, variants, table, missing_seeds,
                                           len(table) * len(variants) * len(seeds), best))
    return columns


def issue_table(issue: str, rows: list[dict], budget: Budget, seeds: list[int]) -> str:
    """Markdown of ``issue_columns``: per (dataset, setting) a row per method and a column
    per (backbone, augmentation), each cell its accuracy over ``seeds`` with the training
    minutes, or the seeds it has so far, or a dash; under it the cells still missing and
    the best complete row (the column's recommended recipe)."""
    out = [f"# Issue {issue}'s table: {budget.steps} meta-iterations x {budget.meta_batch} "
           f"tasks, {budget.episodes} test episodes, seeds {seeds}"]
    for column in issue_columns(issue, rows, budget, seeds):
        out += [f"\n## {column.dataset} {column.setting}\n",
                "| method | " + " | ".join(_variant_heading(*v) for v in column.variants)
                + " |", "|---" * (len(column.variants) + 1) + "|"]
        out += [f"| {method} | " + " | ".join(_issue_cell(row, seeds) for row in cells) + " |"
                for method, cells in column.rows.items()]
        out.append(f"\nMissing: {column.missing} of {column.total} cells.")
        if column.best is not None:
            b = column.best
            label = "Best" if column.missing == 0 else "Best of the complete rows so far"
            out.append(f"{label}: **{b['method']}, {b['backbone']}, augmentation "
                       f"{b['augment']}**, {format_percent(b['accuracy'])}.")
    return "\n".join(out) + "\n"


def missing(cells: list[Cell], budget: Budget, results: Path,
            omniglot_root: str | None = None) -> list[Cell]:
    """The cells without a reusable record (those ``fill(..., reuse=True)`` would run)."""
    out = []
    for method, dataset, setting, seed, backbone, augment in cells:
        variant, shipped = resolve_variant(method, dataset, setting, backbone, augment)
        config = with_seed(cell_config(method, dataset, setting, budget, omniglot_root,
                                       variant)[2], seed)
        path = cell_path(results, method, dataset, setting, seed, variant, shipped)
        if reusable(path, budget, config) is None:
            out.append(Cell(method, dataset, setting, seed, variant.backbone, variant.augment))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--datasets", nargs="+", default=["glyphs"], choices=list(DATASETS))
    parser.add_argument("--settings", nargs="+", default=["5w1s"], choices=list(SETTINGS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--backbones", nargs="+", default=None,
                        help="conv4, resnet12 or resnet12-w<width> (e.g. resnet12-w0.25); "
                             "default: each method's shipped backbone")
    parser.add_argument("--augment", nargs="+", default=None, choices=list(AUGMENTS),
                        help="augmentation of the training tasks (off, on); default: each "
                             "method's shipped setting")
    parser.add_argument("--steps", type=int, default=Budget.steps)
    parser.add_argument("--meta-batch", type=int, default=Budget.meta_batch)
    parser.add_argument("--episodes", type=int, default=Budget.episodes)
    parser.add_argument("--omniglot-root", default=None,
                        help="omniglot-small(-rot): the folder with "
                             "images_background_small1/2.zip")
    parser.add_argument("--results", type=Path, default=RESULTS,
                        help="the records (cells/...) and tables (table.md, table.json)")
    parser.add_argument("--runs", type=Path, default=None,
                        help="keep the run directories here; default: a temporary directory")
    parser.add_argument("--reuse", action="store_true",
                        help="skip cells whose record has the same budget and config")
    parser.add_argument("--table-only", action="store_true",
                        help="only rebuild table.md and table.json from the records")
    parser.add_argument("--issue", choices=list(ISSUE_GRIDS), default=None,
                        help="the cells of that issue's table instead of --methods, "
                             "--datasets, --settings, --backbones and --augment")
    parser.add_argument("--missing", action="store_true",
                        help="only list the cells that have no reusable record")
    args = parser.parse_args(argv)
    budget = Budget(args.steps, args.meta_batch, args.episodes)
    if args.issue is not None:
        cells = issue_cells(args.issue, args.seeds)
    else:
        cells = grid(args.methods, args.datasets, args.settings, args.seeds, args.backbones,
                     args.augment)
    if args.missing:
        todo = missing(cells, budget, args.results, args.omniglot_root)
        for cell in todo:
            print(" ".join(str(v) for v in cell))
        print(f"{len(todo)} of {len(cells)} cells missing")
        return
    if not args.table_only:
        with tempfile.TemporaryDirectory(prefix="fewshot-table-") as tmp:
            fill(cells, budget, args.results, args.runs or Path(tmp), args.reuse,
                 args.omniglot_root)
    rows = write_tables(args.results)
    print(issue_table(args.issue, rows, budget, args.seeds) if args.issue else markdown(rows))


if __name__ == "__main__":
    main()
