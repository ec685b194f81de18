"""``data.train_options``: dataset options for the training split only. On the real Omniglot
subsets, ``{rotations: true}`` makes the training classes small1's training characters at
four rotations while the validation and test classes stay the plain characters, for
episodes and for a pretrained embedding's labelled batches (its classifier sized by them)."""

from __future__ import annotations

from pathlib import Path

import pytest

from metalab.datasets import Omniglot
from metalab.train.build import complete_model_config
from metalab.train.config import DATA_DEFAULTS
from metalab.train.sources import build_task_source

OMNIGLOT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "omniglot"
needs_real = pytest.mark.skipif(
    not (OMNIGLOT / "images_background_small1.zip").is_file(),
    reason=f"real Omniglot subsets not found at {OMNIGLOT} (images_background_small1/2.zip)")
SPLIT = {"split_by": "alphabet", "train_sources": ["small1"], "test_sources": ["small2"]}


def omniglot_data(**options) -> dict:
    return {**DATA_DEFAULTS, "name": "omniglot", "root": str(OMNIGLOT), **SPLIT,
            "ways": 5, "shots": 1, "queries": 1, **options}


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("METALAB_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@needs_real
def test_rotations_for_training_only_rotate_the_training_classes_alone():
    config = {"data": omniglot_data(train_options={"rotations": True})}
    sources = {split: build_task_source(config, split, 1, seed=0)
               for split in ("train", "val", "test")}
    plain = {split: Omniglot(split, root=OMNIGLOT, **SPLIT) for split in sources}
    train = sources["train"].dataset
    assert train.num_classes == 4 * plain["train"].num_classes
    assert {name.rsplit("/", 1)[0] for name in train.class_names} == set(
        plain["train"].class_names)
    assert {info["rotation"] for info in train.class_info} == {0, 90, 180, 270}
    for split in ("val", "test"):
        assert sources[split].dataset.class_names == plain[split].class_names
    # data's own rotations: every split rotated (the option this one narrows)
    everywhere = {"data": omniglot_data(rotations=True)}
    assert (build_task_source(everywhere, "test", 1, seed=0).dataset.num_classes
            == 4 * plain["test"].num_classes)


@needs_real
def test_a_pretrained_embedding_learns_every_rotated_training_class():
    plain_classes = Omniglot("train", root=OMNIGLOT, **SPLIT).num_classes
    config = {"algorithm": {"name": "pretrained", "head": "cosine"},
              "model": {"name": "conv4", "hidden": 8},
              "data": omniglot_data(train_batch_size=16, train_options={"rotations": True}),
              "train": {"steps": 1, "meta_batch": 1}}
    assert build_task_source(config, "train", 1, seed=0).num_classes == 4 * plain_classes
    assert complete_model_config(config)["algorithm"]["num_classes"] == 4 * plain_classes


def test_train_options_must_be_a_mapping():
    config = {"data": {**omniglot_data(), "train_options": ["rotations"]}}
    with pytest.raises(ValueError, match="data.train_options must be a mapping"):
        build_task_source(config, "train", 1, seed=0)
