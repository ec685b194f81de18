"""benchmarks/unsupervised_table.py: the Omniglot-subset option reuses the few-shot grid's
data overrides, and results of several datasets share one file, each with its own budget."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest


def _benchmark():
    path = Path(__file__).parents[1] / "benchmarks" / "unsupervised_table.py"
    spec = importlib.util.spec_from_file_location("unsupervised_table", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("unsupervised_table", module)
    spec.loader.exec_module(module)
    return module


ut = _benchmark()
ROOT = "/data/omniglot"


def _args(*argv: str):
    return ut.build_parser().parse_args(list(argv))


def test_omniglot_rows_train_on_small1_and_test_on_small2():
    args = _args("--dataset", "omniglot-small", "--omniglot-root", ROOT, "--clusters", "50")
    for row in ("cactus-protonet", "cactus-maml", "umtra-protonet", "oracle-protonet"):
        data = ut.row_config(row, "pca", 1, args)["data"]
        assert (data["name"], data["root"], data["split_by"]) == ("omniglot", ROOT, "alphabet")
        assert (data["train_sources"], data["test_sources"]) == (["small1"], ["small2"])
        assert data["rotations"] is False
    cactus = ut.row_config("cactus-protonet", "acai", 1, args)["data"]["unsupervised"]
    assert (cactus["embedding"], cactus["clusters"], cactus["seed"]) == ("acai", 50, 1)


def test_glyphs_rows_are_unchanged_by_the_option():
    data = ut.row_config("cactus-protonet", "pca", 0, _args())["data"]
    assert data["name"] == "glyphs" and "root" not in data
    assert data["unsupervised"]["clusters"] == 500


def test_bad_dataset_arguments_are_named():
    with pytest.raises(ValueError, match="needs --omniglot-root"):
        ut.dataset_overrides("omniglot-small", None)
    with pytest.raises(ValueError, match="--dataset must be one of"):
        ut.dataset_overrides("omniglot", ROOT)


def test_datasets_share_a_results_file_with_their_own_budgets():
    glyphs = {"episodes": 200, "clusters": 500, "merge": [], "ways": "5,20"}
    omniglot = {"episodes": 200, "clusters": 50}
    payload = {"settings": {}, "cells": {}}
    # a file of the older form: the glyphs budget, unnested
    ut.merge_results(payload, {"settings": glyphs, "cells": {"glyphs-5w1s/knn/pca/seed0": 1}})
    ut.merge_results(payload, {"settings": {"omniglot-small": omniglot},
                               "cells": {"omniglot-small-5w1s/knn/pca/seed0": 2}})
    assert payload["settings"] == {"glyphs": {"episodes": 200, "clusters": 500},
                                   "omniglot-small": omniglot}
    assert payload["cells"] == {"glyphs-5w1s/knn/pca/seed0": 1,
                                "omniglot-small-5w1s/knn/pca/seed0": 2}
    with pytest.raises(ValueError, match="omniglot-small cells were computed with other"):
        ut.merge_results(payload, {"settings": {"omniglot-small": {"episodes": 200,
                                                                   "clusters": 500}}})
