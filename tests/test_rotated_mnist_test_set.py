"""Rotated MNIST from the 10,000 official test images only (``images="test-set"``).

The division of the test images into training, validation and test images must be
disjoint and a pure function of the seed; the skew is ARM's rule on the training pool.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import write_idx
from metalab.datasets.rotated import ROTATIONS, RotatedMNIST, arm_group_sizes, divide_test_set

SHARED_MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"



@pytest.fixture(scope="module")
def test_files(tmp_path_factory) -> Path:
    """Only the t10k files: 200 images, image ``i`` filled with the value ``i + 1``."""
    root = tmp_path_factory.mktemp("t10k")
    images = np.broadcast_to((np.arange(200) + 1)[:, None, None], (200, 28, 28))
    write_idx(root / "t10k-images-idx3-ubyte.gz", images)
    write_idx(root / "t10k-labels-idx1-ubyte.gz", np.arange(200) % 10)
    return root


def _splits(root: Path, seed: int) -> dict[str, RotatedMNIST]:
    return {s: RotatedMNIST(s, root=str(root), seed=seed, images="test-set")
            for s in ("train", "val", "test")}


def test_splits_are_disjoint_and_cover_the_file(test_files: Path) -> None:
    parts = {name: set(d.file_index.tolist()) for name, d in _splits(test_files, 3).items()}
    assert not parts["train"] & parts["val"]
    assert not parts["train"] & parts["test"]
    assert not parts["val"] & parts["test"]
    # 200 images: 60 test (30%), the other 140 divided 126 / 14 into the two pools
    assert len(parts["test"]) == 60 and len(parts["val"]) == 14
    assert parts["train"] <= set(range(200)) - parts["test"] - parts["val"]


def test_file_index_names_the_image_each_item_came_from(test_files: Path) -> None:
    for dataset in _splits(test_files, 1).values():
        value = dataset.images.flatten(1).amax(dim=1).long()  # rotation keeps the fill
        assert torch.equal(value, dataset.file_index + 1)
        assert torch.equal(dataset.labels, dataset.file_index % 10)


def test_division_is_reproducible_and_depends_on_the_seed(test_files: Path) -> None:
    first, again, other = _splits(test_files, 5), _splits(test_files, 5), _splits(test_files, 6)
    for split in ("train", "val", "test"):
        assert torch.equal(first[split].file_index, again[split].file_index)
        assert torch.equal(first[split].images, again[split].images)
    assert not torch.equal(first["test"].file_index, other["test"].file_index)


def test_skew_and_groups_follow_arm(test_files: Path) -> None:
    data = _splits(test_files, 0)
    assert data["train"].group_counts().tolist() == arm_group_sizes(126)
    assert data["val"].group_counts().tolist() == [14] * len(ROTATIONS)
    assert data["test"].group_counts().tolist() == [60] * len(ROTATIONS)
    assert [g["angle"] for g in data["test"].group_info] == list(range(0, 140, 10))


def test_divide_test_set_by_hand() -> None:
    rest, test = divide_test_set(10, seed=0, test_fraction=0.3)
    assert len(test) == 3 and len(rest) == 7
    assert sorted(torch.cat([rest, test]).tolist()) == list(range(10))
    with pytest.raises(ValueError, match="test_fraction must lie strictly between 0 and 1"):
        divide_test_set(10, seed=0, test_fraction=1.0)


def test_unknown_image_source_is_named(test_files: Path) -> None:
    with pytest.raises(ValueError, match="images"):
        RotatedMNIST("train", root=str(test_files), images="t10k")


@pytest.mark.skipif(not (SHARED_MNIST / "t10k-images-idx3-ubyte.gz").is_file(),
                    reason=f"the official MNIST test files are not at {SHARED_MNIST}")
def test_official_test_images_give_the_documented_sizes() -> None:
    data = _splits(SHARED_MNIST, 0)
    assert data["train"].group_counts().tolist() == arm_group_sizes(6300)
    assert data["train"].group_counts().tolist()[:3] == [882] * 3
    assert data["val"].group_counts().tolist() == [700] * 14
    assert data["test"].group_counts().tolist() == [3000] * 14
    train, val, test = (set(d.file_index.tolist()) for d in data.values())
    assert not (train & val or train & test or val & test)


def test_image_size_resizes_by_area_before_rotating(test_files: Path) -> None:
    small = RotatedMNIST("test", root=str(test_files), images="test-set", image_size=14)
    assert small.images.shape[1:] == (1, 14, 14)
    upright = small.images[small.groups == 0]
    # a constant image stays constant under area averaging
    assert torch.equal(upright.flatten(1).amax(dim=1).long(),
                       small.file_index[small.groups == 0] + 1)
    assert torch.equal(small.images[small.groups == ROTATIONS.index(90)],
                       torch.rot90(upright, 1, (-2, -1)))
    with pytest.raises(ValueError, match="image_size=14 needs images='test-set'"):
        RotatedMNIST("test", root=str(test_files), image_size=14)
