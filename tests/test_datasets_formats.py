"""MNIST (IDX), miniImageNet (pickle, CSV + images), CIFAR-FS, Digits and the registry.

Every file is a small fixture written by the test itself in the real on-disk format.
"""

from __future__ import annotations

import csv
import gzip
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from metalab.datasets import (
    CIFARFS,
    MNIST,
    CorruptDatasetError,
    Digits,
    MiniImageNet,
    MissingDatasetError,
    available,
    build,
)
from metalab.datasets.cifar_fs import CLASSES


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path_factory.getbasetemp() / "metalab-cache"
    monkeypatch.setenv("METALAB_CACHE", str(path))
    return path


# ---------------------------------------------------------------- MNIST


def idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim])
    header += b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_mnist(root: Path, gz: bool, n_train: int = 12, n_test: int = 5) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28)),
        "train-labels-idx1-ubyte": np.arange(n_train) % 10,
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28)),
        "t10k-labels-idx1-ubyte": np.arange(n_test) % 10,
    }
    root.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        data = idx_bytes(array)
        if gz:
            (root / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (root / name).write_bytes(data)
    return arrays


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_reads_idx_files(tmp_path: Path, gz: bool) -> None:
    arrays = write_mnist(tmp_path, gz)
    train, test = MNIST("train", root=tmp_path), MNIST("test", root=tmp_path)
    assert len(train) == 12 and len(test) == 5 and train.split == "train"
    assert torch.equal(
        train.images[:, 0], torch.from_numpy(arrays["train-images-idx3-ubyte"]).byte()
    )
    assert train.labels.tolist() == arrays["train-labels-idx1-ubyte"].tolist()
    x, y = test[3]
    assert x.shape == (1, 28, 28) and x.max() <= 1 and y == 3
    assert len(build("mnist", "test", root=str(tmp_path))) == 5


def test_mnist_torchvision_layout(tmp_path: Path) -> None:
    write_mnist(tmp_path / "MNIST" / "raw", gz=True)
    assert len(MNIST(root=tmp_path)) == 12


def test_mnist_truncated_and_corrupt_files(tmp_path: Path) -> None:
    write_mnist(tmp_path, gz=False)
    images = tmp_path / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-100])
    with pytest.raises(CorruptDatasetError, match="truncated") as info:
        MNIST(root=tmp_path)
    assert info.value.path == images
    images.write_bytes(b"\x89PNG not idx")
    with pytest.raises(CorruptDatasetError, match="magic"):
        MNIST(root=tmp_path)


def test_mnist_truncated_gzip(tmp_path: Path) -> None:
    write_mnist(tmp_path, gz=True)
    labels = tmp_path / "t10k-labels-idx1-ubyte.gz"
    labels.write_bytes(labels.read_bytes()[:15])
    with pytest.raises(CorruptDatasetError, match="t10k-labels.*truncated or corrupt"):
        MNIST("test", root=tmp_path)


def test_mnist_missing_files_named(tmp_path: Path) -> None:
    with pytest.raises(MissingDatasetError, match="train-images-idx3-ubyte"):
        MNIST(root=tmp_path)


# ---------------------------------------------------------------- miniImageNet


def write_mini_pickles(root: Path, classes: int = 3, per_class: int = 4) -> dict[str, dict]:
    rng = np.random.default_rng(1)
    written = {}
    for split in ("train", "val", "test"):
        n = classes * per_class
        data = {
            "image_data": rng.integers(0, 256, (n, 84, 84, 3), dtype=np.uint8),
            "class_dict": {
                f"n0{split}{c}": list(range(c * per_class, (c + 1) * per_class))
                for c in range(classes)
            },
        }
        with open(root / f"mini-imagenet-cache-{split}.pkl", "wb") as handle:
            pickle.dump(data, handle)
        written[split] = data
    return written


def test_mini_imagenet_pickles(tmp_path: Path) -> None:
    written = write_mini_pickles(tmp_path)
    data = MiniImageNet("val", root=tmp_path)
    assert data.num_classes == 3 and len(data) == 12 and data.image_shape == (3, 84, 84)
    assert data.class_names == sorted(written["val"]["class_dict"])
    expected = torch.from_numpy(written["val"]["image_data"][5]).permute(2, 0, 1)
    assert torch.equal(data.images[5], expected) and int(data.labels[5]) == 1
    small = build("mini-imagenet", "test", root=str(tmp_path), image_size=32)
    assert small.image_shape == (3, 32, 32)


def test_mini_imagenet_truncated_pickle(tmp_path: Path) -> None:
    write_mini_pickles(tmp_path)
    path = tmp_path / "mini-imagenet-cache-train.pkl"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CorruptDatasetError, match="unpickled") as info:
        MiniImageNet("train", root=tmp_path)
    assert info.value.path == path


def test_mini_imagenet_empty_class_in_pickle(tmp_path: Path) -> None:
    data = {"image_data": np.zeros((2, 84, 84, 3), np.uint8), "class_dict": {"a": [0, 1], "b": []}}
    with open(tmp_path / "mini-imagenet-cache-test.pkl", "wb") as handle:
        pickle.dump(data, handle)
    with pytest.raises(CorruptDatasetError, match="class 'b' has no images"):
        MiniImageNet("test", root=tmp_path)


def write_mini_csv(root: Path, split: str, classes: int = 2, per_class: int = 3) -> None:
    (root / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(2)
    with open(root / f"{split}.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["filename", "label"])
        for c in range(classes):
            for i in range(per_class):
                name = f"n0{c}_{i}.jpg" if i % 2 else f"n0{c}_{i}.png"
                pixels = rng.integers(0, 256, (100, 90, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / "images" / name)
                writer.writerow([name, f"n0{c}"])


def test_mini_imagenet_csv_and_images(tmp_path: Path, _cache: Path) -> None:
    write_mini_csv(tmp_path, "train")
    data = MiniImageNet("train", root=tmp_path)
    assert data.image_shape == (3, 84, 84) and len(data) == 6
    assert data.class_names == ["n00", "n01"] and data.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert list((_cache / "mini-imagenet").glob("mini-imagenet-train-v*-*.pt"))
    again = MiniImageNet("train", root=tmp_path)
    assert torch.equal(again.images, data.images)


def test_mini_imagenet_csv_errors(tmp_path: Path) -> None:
    write_mini_csv(tmp_path, "val")
    missing = tmp_path / "images" / "n01_2.png"
    missing.unlink()
    with pytest.raises(MissingDatasetError) as info:
        MiniImageNet("val", root=tmp_path, cache=False)
    assert info.value.path == missing
    broken = tmp_path / "images" / "n00_0.png"
    broken.write_bytes(broken.read_bytes()[:50])
    with pytest.raises(CorruptDatasetError, match="readable image") as info:
        MiniImageNet("val", root=tmp_path, cache=False)
    assert info.value.path == broken
    (tmp_path / "test.csv").write_text("path,class\nx.png,a\n")
    with pytest.raises(CorruptDatasetError, match="filename,label"):
        MiniImageNet("test", root=tmp_path, cache=False)


def test_mini_imagenet_missing_names_both_forms(tmp_path: Path) -> None:
    with pytest.raises(MissingDatasetError, match="mini-imagenet-cache-train.pkl or train.csv"):
        MiniImageNet("train", root=tmp_path)


# ---------------------------------------------------------------- CIFAR-FS


def write_cifar100(folder: Path, train_per_class: int = 2, test_per_class: int = 1) -> list[str]:
    names = sorted(name for split in CLASSES.values() for name in split)
    folder.mkdir(parents=True)
    rng = np.random.default_rng(3)
    with open(folder / "meta", "wb") as handle:
        pickle.dump({b"fine_label_names": [n.encode() for n in names]}, handle)
    for part, per_class in (("train", train_per_class), ("test", test_per_class)):
        labels = [c for c in range(100) for _ in range(per_class)]
        data = rng.integers(0, 256, (len(labels), 3072), dtype=np.uint8)
        with open(folder / part, "wb") as handle:
            pickle.dump({b"data": data, b"fine_labels": labels}, handle)
    return names


def test_cifar_fs_class_split(tmp_path: Path) -> None:
    names = write_cifar100(tmp_path / "cifar-100-python")
    parts = {s: CIFARFS(s, root=tmp_path) for s in ("train", "val", "test")}
    assert {s: p.num_classes for s, p in parts.items()} == {"train": 64, "val": 16, "test": 20}
    assert len(parts["test"]) == 20 * 3 and parts["test"].image_shape == (3, 32, 32)
    assert parts["test"].class_names == list(CLASSES["test"])
    all_names = [set(p.class_names) for p in parts.values()]
    assert set().union(*all_names) == set(names) and sum(map(len, all_names)) == 100
    x, y = parts["val"][0]
    assert x.shape == (3, 32, 32) and 0 <= y < 16


def test_cifar_fs_from_tar_archive_and_truncated_archive(tmp_path: Path) -> None:
    source = tmp_path / "source"
    write_cifar100(source / "cifar-100-python")
    root = tmp_path / "root"
    root.mkdir()
    archive = root / "cifar-100-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(source / "cifar-100-python", arcname="cifar-100-python")
    good = archive.read_bytes()
    archive.write_bytes(good[: len(good) // 2])
    with pytest.raises(CorruptDatasetError, match="truncated or corrupt") as info:
        CIFARFS("val", root=root)
    assert info.value.path == archive
    assert sorted(p.name for p in root.iterdir()) == ["cifar-100-python.tar.gz"]
    archive.write_bytes(good)
    assert CIFARFS("val", root=root).num_classes == 16
    assert (root / "cifar-100-python" / "meta").is_file()
    assert not [p for p in root.iterdir() if p.name.startswith(".")]


def test_cifar_fs_missing_and_corrupt(tmp_path: Path) -> None:
    with pytest.raises(MissingDatasetError, match="cifar-100-python.tar.gz"):
        CIFARFS("train", root=tmp_path)
    write_cifar100(tmp_path / "cifar-100-python")
    meta = tmp_path / "cifar-100-python" / "meta"
    meta.write_bytes(meta.read_bytes()[:20])
    with pytest.raises(CorruptDatasetError) as info:
        CIFARFS("train", root=tmp_path)
    assert info.value.path == meta


# ---------------------------------------------------------------- Digits and registry


def test_digits() -> None:
    everything, train, test = Digits(), Digits("train"), Digits("test")
    assert len(everything) == 1797 and len(train) + len(test) == 1797
    assert everything.num_classes == 10 and everything.image_shape == (1, 8, 8)
    assert set(test.labels.tolist()) == set(range(10))
    x, y = everything[0]
    assert x.shape == (1, 8, 8) and 0 <= float(x.min()) <= float(x.max()) <= 1 and y == 0
    assert Digits("train", image_size=28).image_shape == (1, 28, 28)
    with pytest.raises(ValueError, match="unknown Digits split 'val'"):
        Digits("val")


def test_registry_names_and_errors(tmp_path: Path) -> None:
    assert available() == [
        "omniglot",
        "glyphs",
        "digits",
        "mini-imagenet",
        "cifar-fs",
        "mnist",
        "rotated-digits",
        "rotated-mnist",
        "femnist",
        "corrupted-glyphs",
        "multimnist",
        "cifar10",
        "cifar10-c",
    ]
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'.*'omniglot'.*'mnist'"):
        build("imagenet", "train")
    with pytest.raises(
        ValueError, match="unknown split 'val' for dataset 'mnist'.*'train', 'test'"
    ):
        build("mnist", "val", root=str(tmp_path))
    with pytest.raises(ValueError, match="takes no root"):
        build("digits", "train", root=str(tmp_path))
    digits = build("digits", "test")
    assert hasattr(digits, "labels") and hasattr(digits, "images") and digits.class_names
