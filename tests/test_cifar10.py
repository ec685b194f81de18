"""CIFAR-10 python batches, CIFAR-10-C .npy groups and the cifar10-c group-shift benchmark."""

import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from metalab.datasets import CorruptDatasetError, MissingDatasetError, build
from metalab.datasets.cifar10 import CIFAR10, CIFAR10C, CLASS_NAMES
from metalab.datasets.cifar10_shift import WEATHER_TEST_GROUPS, CIFAR10CShift, train_val_pool
from metalab.datasets.corrupted import CorruptedDataset
from metalab.datasets.corruption_groups import corruption_groups

PER_BATCH, TEST_IMAGES, C_IMAGES = 3, 4, 2
PIXEL = (1, 2, 5)  # (channel, row, column) of the marked pixel of every fixture image
TEST_FILES = ("impulse_noise", "motion_blur", "elastic_transform", "jpeg_compression")


def dump(path: Path, content) -> None:
    with open(path, "wb") as handle:
        pickle.dump(content, handle)


def write_cifar10(folder: Path, per_batch=PER_BATCH, test_images=TEST_IMAGES) -> None:
    """The official python layout; image ``i`` of a batch has value ``i + 10 * batch`` at
    ``PIXEL`` (flat index ``c * 1024 + h * 32 + w``) and label ``(i + batch) % 10``."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    dump(folder / "batches.meta", {b"label_names": [n.encode() for n in CLASS_NAMES],
                                   b"num_cases_per_batch": per_batch, b"num_vis": 3072})
    channel, row, column = PIXEL
    for batch, name in enumerate([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]):
        n = test_images if name == "test_batch" else per_batch
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        data[:, channel * 1024 + row * 32 + column] = np.arange(n) + 10 * batch
        labels = [(i + batch) % 10 for i in range(n)]
        dump(folder / name, {b"batch_label": name.encode(), b"data": data, b"labels": labels,
                             b"filenames": [b"x.png"] * n})


def write_cifar10c(folder: Path, names=TEST_FILES, n=C_IMAGES) -> np.ndarray:
    """Hendrycks' layout: ``[5 n, 32, 32, 3]`` per corruption, severity 1 first. Every image
    of severity ``s`` is ``s`` everywhere except ``PIXEL`` (``[h, w, c]``), which holds
    ``10 * s + image``; returns the labels of the ``n`` test images."""
    folder.mkdir(parents=True)
    labels = np.array([3, 7, 1, 0, 9][:n], dtype=np.uint8)
    np.save(folder / "labels.npy", np.tile(labels, 5))
    channel, row, column = PIXEL
    for name in names:
        images = np.repeat(np.arange(1, 6, dtype=np.uint8), n)[:, None, None, None]
        images = np.broadcast_to(images, (5 * n, 32, 32, 3)).copy()
        images[:, row, column, channel] = 10 * np.repeat(np.arange(1, 6), n) + np.tile(
            np.arange(n), 5)
        np.save(folder / f"{name}.npy", images)
    return labels


# ---------------------------------------------------------------------------- CIFAR-10


def test_cifar10_reads_the_python_batches(tmp_path):
    write_cifar10(tmp_path / "cifar-10-batches-py")
    train, test = CIFAR10("train", root=tmp_path), CIFAR10("test", root=tmp_path)
    assert len(train) == 5 * PER_BATCH and len(test) == TEST_IMAGES
    assert train.images.dtype == torch.uint8 and train.image_shape == (3, 32, 32)
    assert train.class_names == list(CLASS_NAMES) and (train.split, test.split) == ("train", "test")
    channel, row, column = PIXEL
    expected = [i + 10 * b for b in range(5) for i in range(PER_BATCH)]
    assert train.images[:, channel, row, column].tolist() == expected
    assert train.labels.tolist() == [(i + b) % 10 for b in range(5) for i in range(PER_BATCH)]
    assert test.images[:, channel, row, column].tolist() == [50, 51, 52, 53]
    x, y = test[1]
    assert x.dtype == torch.float32 and x[channel, row, column] == pytest.approx(51 / 255)
    assert y == 6
    direct = CIFAR10("test", root=tmp_path / "cifar-10-batches-py")  # the folder itself
    assert torch.equal(direct.images, test.images)
    built = build("cifar10", "test", root=str(tmp_path))
    assert torch.equal(built.labels, test.labels)


def test_cifar10_from_archive_extracts_atomically(tmp_path):
    write_cifar10(tmp_path / "source" / "cifar-10-batches-py")
    root = tmp_path / "root"
    root.mkdir()
    with tarfile.open(root / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(tmp_path / "source" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    assert len(CIFAR10("test", root=root)) == TEST_IMAGES
    assert sorted(p.name for p in root.iterdir()) == ["cifar-10-batches-py",
                                                       "cifar-10-python.tar.gz"]


def test_cifar10_errors_name_the_file(tmp_path):
    with pytest.raises(MissingDatasetError, match="cifar-10-python.tar.gz") as info:
        CIFAR10(root=tmp_path)
    assert info.value.path == tmp_path / "cifar-10-batches-py"
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar10(folder)
    (folder / "data_batch_3").unlink()
    assert len(CIFAR10("test", root=tmp_path)) == TEST_IMAGES  # test needs no train batch
    with pytest.raises(MissingDatasetError, match=r"lacks \['data_batch_3'\]") as info:
        CIFAR10(root=tmp_path)
    assert info.value.path == folder / "data_batch_3"
    dump(folder / "test_batch", {b"data": np.zeros((2, 1024), np.uint8), b"labels": [0, 1]})
    with pytest.raises(CorruptDatasetError, match=r"uint8 data \[N, 3072\].*\(2, 1024\)"):
        CIFAR10("test", root=tmp_path)
    dump(folder / "test_batch", {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]})
    with pytest.raises(CorruptDatasetError, match="has 1 labels for 2 images"):
        CIFAR10("test", root=tmp_path)
    dump(folder / "test_batch", {b"data": np.zeros((1, 3072), np.uint8), b"labels": [10]})
    with pytest.raises(CorruptDatasetError, match=r"integers in \[0, 10\)") as info:
        CIFAR10("test", root=tmp_path)
    assert info.value.path == folder / "test_batch"
    (folder / "batches.meta").write_bytes(b"not a pickle")
    with pytest.raises(CorruptDatasetError, match="cannot be unpickled"):
        CIFAR10("test", root=tmp_path)


# -------------------------------------------------------------------------- CIFAR-10-C


def test_cifar10c_groups_follow_the_severity_blocks(tmp_path):
    labels = write_cifar10c(tmp_path / "CIFAR-10-C", names=("motion_blur", "fog"))
    data = CIFAR10C(root=tmp_path)
    assert data.group_names == [f"{c}-{s}" for c in ("fog", "motion_blur") for s in range(1, 6)]
    assert data.group_info[7] == {"corruption": "motion_blur", "severity": 3}
    assert data.group_counts().tolist() == [C_IMAGES] * 10 and data.class_names == list(CLASS_NAMES)
    assert data.images.dtype == torch.uint8 and data.image_shape == (3, 32, 32)
    assert data.labels.tolist() == labels.tolist() * 10
    channel, row, column = PIXEL
    for group, members in enumerate(data.group_indices()):
        severity = data.group_info[group]["severity"]
        images = data.images[members]
        assert images[:, 0, 0, 0].tolist() == [severity] * C_IMAGES  # severity s -> block s
        assert images[:, channel, row, column].tolist() == [10 * severity + i
                                                            for i in range(C_IMAGES)]
    assert data.source_index.tolist() == list(range(C_IMAGES)) * 10
    pairs = CIFAR10C(root=tmp_path / "CIFAR-10-C", corruptions=["fog", ("motion_blur", 4)],
                     severities=(5, 2))
    assert pairs.group_names == ["fog-5", "fog-2", "motion_blur-4"]
    assert pairs.images[pairs.groups == 2][:, 0, 0, 0].tolist() == [4] * C_IMAGES
    subset = CIFAR10C(root=tmp_path, corruptions=[("fog", 1)], images_per_group=1, seed=3)
    assert len(subset) == 1
    assert subset.labels.tolist() == labels[subset.source_index.numpy()].tolist()


def test_cifar10c_from_its_tar_archive(tmp_path):
    write_cifar10c(tmp_path / "source" / "CIFAR-10-C", names=("fog",))
    root = tmp_path / "root"
    root.mkdir()
    with tarfile.open(root / "CIFAR-10-C.tar", "w") as tar:  # the release is an uncompressed tar
        tar.add(tmp_path / "source" / "CIFAR-10-C", arcname="CIFAR-10-C")
    assert CIFAR10C(root=root).group_names == [f"fog-{s}" for s in range(1, 6)]
    assert sorted(p.name for p in root.iterdir()) == ["CIFAR-10-C", "CIFAR-10-C.tar"]


def test_cifar10c_errors(tmp_path):
    with pytest.raises(MissingDatasetError, match="CIFAR-10-C.tar") as info:
        CIFAR10C(root=tmp_path)
    folder = tmp_path / "CIFAR-10-C"
    assert info.value.path == folder
    write_cifar10c(folder, names=("fog",))
    with pytest.raises(MissingDatasetError, match=r"'snow' was requested.*\['fog'\]") as info:
        CIFAR10C(root=tmp_path, corruptions=["fog", "snow"])
    assert info.value.path == folder / "snow.npy"
    np.save(folder / "labels.npy", np.zeros(5 * C_IMAGES + 5, np.int64))
    with pytest.raises(CorruptDatasetError, match="has 10 images but labels.npy has 15") as info:
        CIFAR10C(root=tmp_path)
    assert info.value.path == folder / "fog.npy"
    np.save(folder / "labels.npy", np.zeros(7, np.int64))
    with pytest.raises(CorruptDatasetError, match="5 x N labels"):
        CIFAR10C(root=tmp_path)
    np.save(folder / "labels.npy", np.zeros(5 * C_IMAGES, np.int64))
    np.save(folder / "fog.npy", np.zeros((5 * C_IMAGES, 32, 32), np.uint8))
    with pytest.raises(CorruptDatasetError, match=r"uint8 images \[N, H, W, 3\]"):
        CIFAR10C(root=tmp_path)
    (folder / "fog.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(CorruptDatasetError, match="not a readable .npy"):
        CIFAR10C(root=tmp_path)
    (folder / "labels.npy").unlink()
    with pytest.raises(MissingDatasetError, match="labels.npy") as info:
        CIFAR10C(root=tmp_path)
    assert info.value.path == folder / "labels.npy"


# ------------------------------------------------------------------ cifar10-c benchmark


@pytest.fixture(scope="module")
def full_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar10c")
    write_cifar10(root / "cifar-10-batches-py")
    write_cifar10c(root / "CIFAR-10-C", names=(*TEST_FILES, "fog", "spatter"))
    return root


def test_splits_share_group_ids_and_hold_their_own_groups(full_root):
    splits = {
        "train": CIFAR10CShift("train", full_root, images_per_group=2, val_fraction=0.2),
        "val": CIFAR10CShift("val", full_root, images_per_group=1, val_fraction=0.2),
        "test": CIFAR10CShift("test", full_root),
    }
    groups = {s: corruption_groups(s, channels=3) for s in splits}
    names = [f"{c}-{v}" for s in ("train", "val", "test") for c, v in groups[s]]
    for split, data in splits.items():
        assert data.group_names == names and data.split == split
        assert data.group_info[names.index("jpeg_compression-4")] == {
            "corruption": "jpeg_compression", "severity": 4}
        assert data.class_names == list(CLASS_NAMES) and data.image_shape == (3, 32, 32)
        own = [names.index(f"{c}-{v}") for c, v in groups[split]]
        assert data.split_groups == own
        counts = data.group_counts()
        expected = {"train": 2, "val": 1, "test": C_IMAGES}[split]
        assert counts[own].tolist() == [expected] * len(own)
        assert int(counts.sum()) == expected * len(own)  # nothing outside the split's groups
    assert (len(groups["train"]), len(groups["val"]), len(groups["test"])) == (43, 16, 16)
    assert splits["test"].source == "files" and splits["train"].source == "generated"
    test = splits["test"]
    jpeg = test.images[test.groups == names.index("jpeg_compression-4")]
    assert jpeg[:, 0, 0, 0].tolist() == [4] * C_IMAGES  # rows 3n..4n of jpeg_compression.npy
    weather = CIFAR10CShift("test", full_root, test_groups=corruption_groups("test")
                        + list(WEATHER_TEST_GROUPS))
    assert weather.num_groups == 43 + 16 + 22 and weather.group_names[-1] == "spatter-5"
    again = CIFAR10CShift("train", full_root, images_per_group=2, val_fraction=0.2)
    assert torch.equal(again.images, splits["train"].images)


def test_train_val_pool_is_a_seeded_disjoint_division():
    train, val = (train_val_pool(50, s, 0.1, seed=4) for s in ("train", "val"))
    assert len(train) == 45 and len(val) == 5
    assert sorted(train.tolist() + val.tolist()) == list(range(50))
    assert torch.equal(val, train_val_pool(50, "val", 0.1, seed=4))
    assert not torch.equal(val, train_val_pool(50, "val", 0.1, seed=5))
    with pytest.raises(ValueError, match="leaves no validation images"):
        train_val_pool(4, "val", 0.1, seed=0)


def test_test_split_falls_back_to_generated_corruptions(tmp_path):
    write_cifar10(tmp_path / "cifar-10-batches-py")
    test = CIFAR10CShift("test", tmp_path, seed=2)
    assert test.source == "generated"
    reference = CorruptedDataset(CIFAR10("test", root=tmp_path), corruption_groups("test"), seed=2)
    assert torch.equal(test.images, reference.images)
    assert test.group_counts()[test.split_groups].tolist() == [TEST_IMAGES] * 16
    with pytest.raises(MissingDatasetError, match="CIFAR-10-C not found"):
        CIFAR10CShift("test", tmp_path, test_source="files")
    with pytest.raises(MissingDatasetError, match=r"\['fog'\] can only be read"):
        CIFAR10CShift("test", tmp_path, test_groups=[("fog", 1)])
    with pytest.raises(MissingDatasetError, match="fallback.*failed too"):
        CIFAR10CShift("test", tmp_path / "empty")
    with pytest.raises(ValueError, match="unknown CIFAR-10-C split 'trainval'"):
        CIFAR10CShift("trainval", tmp_path)


def test_registry_builds_CIFAR10CShift(full_root):
    train = build("cifar10-c", "train", root=str(full_root), images_per_group=1,
                  val_fraction=0.2)
    test = build("cifar10-c", "test", root=str(full_root), test_images_per_group=1)
    assert train.group_names == test.group_names and len(test) == 16 and len(train) == 43
    with pytest.raises(ValueError, match="unknown split 'val' for dataset 'cifar10'"):
        build("cifar10", "val", root=str(full_root))
