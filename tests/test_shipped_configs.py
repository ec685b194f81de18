"""Every shipped config is valid: its keys are known and it builds its method's learner
without reading data files (sizes the data would give are in the config or embedded)."""

from __future__ import annotations

from pathlib import Path

import pytest

from metalab.algorithms import ALGORITHMS
from metalab.train.build import build_meta_learner
from metalab.train.config import load_config

CONFIGS = sorted((Path(__file__).parents[1] / "src" / "metalab" / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_the_config_builds_its_method(path):
    config = load_config(path)
    learner = build_meta_learner(config)
    assert type(learner) is ALGORITHMS[config["algorithm"]["name"]]
