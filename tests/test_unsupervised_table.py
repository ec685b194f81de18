"""benchmarks/unsupervised_table.py: the Omniglot-subset option reuses the few-shot grid's
data overrides, and results of several datasets share one file, each with its own budget."""

from __future__ import annotations

import pytest

from helpers import load_benchmark

ut = load_benchmark("unsupervised_table")
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


def test_maml_rows_meta_train_at_each_maml_ways_protonet_rows_at_five():
    args = _args("--maml-ways", "5,20")
    assert ut.meta_runs(["cactus-maml", "cactus-protonet", "oracle-maml"], args) == [
        ("cactus-maml", 5), ("cactus-maml", 20), ("cactus-protonet", 5),
        ("oracle-maml", 5), ("oracle-maml", 20)]
    assert ut.meta_runs(["cactus-maml"], _args()) == [("cactus-maml", 5)]
    for row in ("cactus-maml", "oracle-maml"):
        data = ut.row_config(row, "pca", 0, args, 20)["data"]
        assert (data["ways"], data["shots"], data["queries"]) == (20, 1, 5)
    assert ut.row_config("cactus-maml", "pca", 0, args)["data"]["ways"] == 5
    # --maml-ways selects cells; it is not part of a dataset's budget
    assert "maml_ways" not in ut._budget_settings(vars(args))


def test_headline_is_cactus_minus_the_classifier_best_on_average_paired_per_seed():
    cells = {}
    values = {"cactus-protonet": (0.60, 0.62, 0.64), "knn": (0.50, 0.50, 0.50),
              "logistic": (0.55, 0.58, 0.55), "mlp": (0.52, 0.53, 0.57),
              "cluster-match": (0.70, 0.70, 0.70)}  # not a support-set classifier
    for row, accuracies in values.items():
        for seed, accuracy in enumerate(accuracies):
            cells[f"glyphs-5w1s/{row}/pca/seed{seed}"] = {"accuracy": accuracy}
    cells["glyphs-5w1s/cactus-protonet/pca/seed3"] = {"accuracy": 0.9}  # no baseline: left out
    # logistic has the best mean (0.56 > 0.54 > 0.50) although the MLP wins seed 2;
    # differences 5, 4, 9 points: mean 6, sd sqrt(7), t(0.975, 2) = 4.302653
    half = 4.302653 * 7 ** 0.5 / 3 ** 0.5
    assert f"{half:.1f}" == "6.6"
    line = ut.headline_summary(cells).splitlines()[-1]
    assert line == "| glyphs-5w1s | pca | cactus-protonet | logistic | +6.0 ± 6.6 | 3 |"
