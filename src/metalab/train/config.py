"""Experiment configs: YAML with the sections algorithm, model, data, train and eval.

Dotted ``key=value`` overrides (``train.steps=200``) are parsed as YAML scalars, so
numbers, booleans and lists keep their types.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

SECTIONS = ("algorithm", "model", "data", "train", "eval")

DEFAULTS: dict[str, dict[str, Any]] = {
    "algorithm": {},
    "model": {},
    "data": {"shuffle_labels": True, "train_split": "train", "val_split": "val",
             "test_split": "test"},
    "train": {"optimizer": "adam", "lr": 1e-3, "seed": 0, "device": "cpu",
              "val_every": 500, "val_episodes": 100, "checkpoint_every": 500,
              "log_every": 10, "grad_clip": None, "task_chunk": None, "compile": False,
              "progress": True, "combiner": None, "combine_params": "all",
              "diagnostics": False},
    "eval": {"episodes": 600, "seed": 1234, "batch_size": 20},
}
REQUIRED = {"algorithm": ("name",), "model": ("name",), "data": ("name",),
            "train": ("steps", "meta_batch"), "eval": ("episodes",)}


class ConfigError(ValueError):
    """A config is missing a key or has a value of the wrong kind."""


def load_config(path: str | Path, overrides: list[str] = ()) -> dict[str, Any]:
    """Read ``path``, apply ``overrides`` and fill defaults; raises `ConfigError`."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    with path.open() as f:
        raw = yaml.safe_load(f) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config {str(path)!r} must be a mapping of sections, got "
                          f"{type(raw).__name__}")
    return resolve(apply_overrides(raw, overrides))


def apply_overrides(config: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
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
        node[leaf] = yaml.safe_load(text)
    return config


def resolve(config: dict[str, Any]) -> dict[str, Any]:
    """Check sections and required keys, and fill the defaults."""
    unknown = set(config) - set(SECTIONS)
    if unknown:
        raise ConfigError(f"unknown config sections {sorted(unknown)}; expected {list(SECTIONS)}")
    resolved = {}
    for section in SECTIONS:
        values = config.get(section) or {}
        if not isinstance(values, dict):
            raise ConfigError(f"config section {section!r} must be a mapping")
        for key in REQUIRED[section]:
            if key not in values:
                raise ConfigError(f"config needs {section}.{key}")
        resolved[section] = {**DEFAULTS[section], **copy.deepcopy(values)}
    for key in ("steps", "meta_batch"):
        value = resolved["train"][key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"train.{key} must be a positive integer, got {value!r}")
    return resolved


def save_config(config: dict[str, Any], path: Path) -> None:
    from metalab.train.checkpoint import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(config, sort_keys=False))
