"""The dataset registry and the one constructor shape ``Dataset(split, root=None, **options)``."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import torch

from metalab import datasets
from metalab.datasets import build, registry

EMBEDDED_BUILDS = [  # cheap builds of the datasets that need no files
    ("digits", "test", {}),
    ("rotated-digits", "val", {}),
    ("multimnist", "test", {"source": "digits"}),
    ("corrupted-glyphs", "val", {"images_per_group": 1}),
]


def declared_fields(cls: type) -> set[str]:
    """Every field annotated on ``cls`` or a base class (its declared metadata)."""
    return {name for klass in cls.__mro__ for name in vars(klass).get("__annotations__", {})}


@pytest.mark.parametrize("name", registry.available())
def test_every_dataset_has_the_one_constructor_shape(name: str) -> None:
    cls = registry.REGISTRY[name]
    parameters = list(inspect.signature(cls.__init__).parameters.values())[1:]
    assert [p.name for p in parameters[:2]] == ["split", "root"], cls
    assert parameters[1].default is None, f"{cls.__name__}: root must default to None"
    assert all(p.kind is p.POSITIONAL_OR_KEYWORD for p in parameters), cls  # no **kwargs
    assert cls.splits and all(isinstance(s, str) for s in cls.splits)
    assert cls.description and "\n" not in cls.description
    assert not (cls.needs_files and cls.optional_files)


def test_the_registry_is_a_plain_mapping_of_classes() -> None:
    assert registry.REGISTRY["mnist"] is datasets.MNIST
    assert registry.REGISTRY["rotated-digits"] is datasets.RotatedDigits
    assert registry.REGISTRY["corrupted-glyphs"] is datasets.CorruptedGlyphs
    assert registry.REGISTRY["cifar10-c"] is datasets.CIFAR10CShift
    assert registry.options("digits") == ["image_size"]
    # the old builder names are the classes, so old calls keep working
    assert datasets.rotated_digits is datasets.RotatedDigits
    assert datasets.multimnist is datasets.MultiMNIST
    assert datasets.corrupted_glyphs is datasets.CorruptedGlyphs
    assert datasets.cifar10_c is datasets.CIFAR10CShift


def test_build_names_an_unknown_option_and_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown option \['imagesize'\] for dataset "
                                         r"'digits'; its options are \['image_size'\]"):
        build("digits", "test", imagesize=28)
    with pytest.raises(ValueError, match=r"unknown options \['a', 'b'\] for dataset 'mnist'; "
                                         r"its options are \[\]"):
        build("mnist", "test", a=1, b=2)
    with pytest.raises(ValueError, match="unknown dataset 'mnits'; available datasets: "
                                         r"\['omniglot', .*'mnist'"):
        build("mnits", "train")


def test_build_passes_split_root_and_options(tmp_path: Path) -> None:
    built = build("digits", "train", image_size=12)
    direct = datasets.Digits("train", image_size=12)
    assert built.split == "train" and built.image_shape == (1, 12, 12)
    assert torch.equal(built.images, direct.images) and torch.equal(built.labels, direct.labels)


def test_the_old_root_first_order_says_what_to_write(tmp_path: Path) -> None:
    for make in (lambda: datasets.MNIST(tmp_path), lambda: datasets.Omniglot(tmp_path, "train"),
                 lambda: datasets.FEMNIST(tmp_path, "train"),
                 lambda: datasets.CIFAR10(tmp_path)):
        with pytest.raises(TypeError, match=r"\(split, root=None, \*\*options\).*root="):
            make()
    with pytest.raises(ValueError, match="digits are embedded and take no root"):
        datasets.Digits("train", root=tmp_path)
    with pytest.raises(ValueError, match="glyphs are embedded and take no root"):
        datasets.Glyphs("train", root=tmp_path)


@pytest.mark.parametrize(("name", "split", "options"), EMBEDDED_BUILDS)
def test_metadata_are_declared_fields_not_patched_on(name: str, split: str,
                                                     options: dict) -> None:
    dataset = build(name, split, **options)
    undeclared = sorted(set(vars(dataset)) - declared_fields(type(dataset)))
    assert not undeclared, f"{type(dataset).__name__} sets undeclared attributes {undeclared}"
    assert dataset.split == split and len(dataset) > 0
    for field in ("labels", "images", "class_names"):
        assert getattr(dataset, field) is not None


def test_composites_build_their_bases_directly() -> None:
    """Rotated digits are the digits framed and rotated: group 0 (0 degrees) of the test
    split is exactly the framed test digits, built here by hand."""
    rotated = datasets.RotatedDigits("test", digit_size=20, image_size=28)
    digits = datasets.Digits("test", image_size=20)
    framed = torch.nn.functional.pad(digits.images, (4, 4, 4, 4))
    first = rotated.groups == 0
    assert torch.equal(rotated.images[first], framed)
    assert torch.equal(rotated.labels[first], digits.labels)
    multi = datasets.MultiMNIST("test", source="digits", seed=0)
    assert multi.source == "digits" and multi.labels.shape == (len(digits), 2)
    assert torch.equal(multi.labels[:, 0], datasets.Digits("test").labels)
