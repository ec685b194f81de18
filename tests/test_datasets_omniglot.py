"""Omniglot: the real background subsets (when present), archives, downloads and errors."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import pytest
import torch
from PIL import Image

from metalab.datasets import (
    CorruptDatasetError,
    MissingDatasetError,
    Omniglot,
    build,
    omniglot_files,
    preprocess_omniglot,
)
from metalab.datasets.download import RemoteFile, check_zip, extract_zip, sha256_file
from metalab.datasets.omniglot_split import split_by_alphabet, split_by_character

OMNIGLOT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "omniglot"
SMALL1 = OMNIGLOT / "images_background_small1.zip"
SMALL2 = OMNIGLOT / "images_background_small2.zip"
needs_real = pytest.mark.skipif(
    not (SMALL1.is_file() and SMALL2.is_file()),
    reason=f"real Omniglot subsets not found at {OMNIGLOT} (images_background_small1/2.zip)",
)


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path_factory.getbasetemp() / "metalab-cache"
    monkeypatch.setenv("METALAB_CACHE", str(path))
    return path


def leftovers(folder: Path) -> list[str]:
    """Temporary files or folders (hidden names) anywhere under ``folder``."""
    return [str(p) for p in folder.rglob(".*")] if folder.exists() else []


# ---------------------------------------------------------------- split arithmetic (no files)


def test_character_split_proportions_of_full_omniglot() -> None:
    pool = [(f"a{i // 20}", f"c{i}") for i in range(1623)]
    sizes = {s: len(split_by_character(pool, s)) for s in ("train", "val", "test", "trainval")}
    assert sizes == {"train": 1100, "val": 100, "test": 423, "trainval": 1200}
    parts = [set(split_by_character(pool, s)) for s in ("train", "val", "test")]
    assert set().union(*parts) == set(pool) and sum(map(len, parts)) == len(pool)


def test_character_split_shuffle_is_seeded() -> None:
    pool = [("a", f"c{i}") for i in range(100)]
    first = split_by_character(pool, "test", shuffle_seed=3)
    assert first == split_by_character(pool, "test", shuffle_seed=3)
    assert first != split_by_character(pool, "test")


def test_alphabet_split_holds_out_shared_alphabets() -> None:
    train = [(a, "c1") for a in ("A", "B", "C", "D", "E", "F")]
    test = [("A", "c1"), ("X", "c1"), ("Y", "c2")]
    assert split_by_alphabet(train, test, "test") == [("X", "c1"), ("Y", "c2")]
    assert split_by_alphabet(train, test, "val") == [("F", "c1")]
    assert {a for a, _ in split_by_alphabet(train, test, "train")} == set("ABCDE")
    assert split_by_alphabet(train, test, "val", val_alphabets=["B"]) == [("B", "c1")]
    with pytest.raises(ValueError, match="val_alphabets"):
        split_by_alphabet(train, test, "val", val_alphabets=["Z"])


def test_bad_split_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="'validation'.*'train', 'val', 'test'"):
        Omniglot("validation", root="/nonexistent")
    with pytest.raises(ValueError, match="split_by"):
        Omniglot("train", root="/nonexistent", split_by="drawer")
    with pytest.raises(ValueError, match="unknown Omniglot source 'small3'"):
        Omniglot("train", root="/nonexistent", train_sources=["small3"])


# ---------------------------------------------------------------- real subsets


@needs_real
@pytest.mark.parametrize(
    ("source", "alphabets", "characters"), [("small1", 5, 136), ("small2", 5, 156)]
)
def test_real_subset_counts(source: str, alphabets: int, characters: int) -> None:
    data = Omniglot("trainval", root=OMNIGLOT, split_by="alphabet", train_sources=[source])
    assert len(data.alphabets) == alphabets
    assert data.num_classes == characters
    assert data.class_counts().tolist() == [20] * characters
    x, y = data[0]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32 and isinstance(y, int)
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    info = data.class_info[0]
    assert info["source"] == source and info["character"].startswith("character")
    assert data.images.dtype == torch.uint8 and data.images.shape == (characters * 20, 1, 28, 28)


@needs_real
def test_real_alphabet_split_small1_to_small2() -> None:
    kwargs = dict(split_by="alphabet", train_sources=["small1"], test_sources=["small2"])
    parts = {s: Omniglot(s, root=OMNIGLOT, **kwargs) for s in ("train", "val", "test")}
    assert parts["test"].alphabets == ["Japanese_(katakana)", "Sanskrit", "Tagalog"]
    assert parts["val"].alphabets == ["Latin"]
    assert set(parts["train"].alphabets) == {"Balinese", "Early_Aramaic", "Greek", "Korean"}
    names = [set(p.class_names) for p in parts.values()]
    assert not (names[0] & names[1] or names[0] & names[2] or names[1] & names[2])


@needs_real
def test_real_character_split_and_rotations() -> None:
    kwargs = dict(train_sources=["small1"], test_sources=[])
    sizes = {s: Omniglot(s, root=OMNIGLOT, **kwargs).num_classes for s in ("train", "val", "test")}
    assert sizes == {"train": 93, "val": 8, "test": 35}
    plain = Omniglot("val", root=OMNIGLOT, **kwargs)
    rotated = Omniglot("val", root=OMNIGLOT, rotations=True, **kwargs)
    assert rotated.num_classes == 4 * plain.num_classes and len(rotated) == 4 * len(plain)
    assert rotated.class_names[plain.num_classes].endswith("/rot090")
    turned = torch.rot90(plain.images[0], 1, dims=(-2, -1))
    assert torch.equal(rotated.images[len(plain)], turned)
    assert int(rotated.labels[len(plain)]) == plain.num_classes


@needs_real
def test_preprocess_matches_dataset_items(tmp_path: Path) -> None:
    data = Omniglot("trainval", root=OMNIGLOT, split_by="alphabet", train_sources=["small1"])
    with zipfile.ZipFile(SMALL1) as archive:
        member = sorted(n for n in archive.namelist() if n.endswith(".png"))[0]
        png = tmp_path / "drawing.png"
        png.write_bytes(archive.read(member))
    prepared = preprocess_omniglot(png)
    assert torch.equal(prepared, data[0][0])
    with Image.open(png) as image:
        assert image.size == (105, 105)
        assert torch.equal(preprocess_omniglot(image), prepared)
    assert prepared[0, 0, 0] == 0 and prepared.max() == 1  # background 0, strokes 1
    assert preprocess_omniglot(png, image_size=105).shape == (1, 105, 105)


@needs_real
def test_folder_and_zip_give_the_same_images(tmp_path: Path) -> None:
    extract_zip(SMALL2, tmp_path / "images_background_small2")
    assert not leftovers(tmp_path)
    kwargs = dict(split_by="alphabet", train_sources=["small2"], cache=False)
    from_folder = Omniglot("val", root=tmp_path, **kwargs)
    from_zip = Omniglot("val", root=OMNIGLOT, **kwargs)
    assert torch.equal(from_folder.images, from_zip.images)
    assert from_folder.class_names == from_zip.class_names


@needs_real
def test_cache_file_is_versioned_and_reused(_cache: Path) -> None:
    kwargs = dict(split_by="alphabet", train_sources=["small2"], image_size=20)
    first = Omniglot("val", root=OMNIGLOT, **kwargs)
    files = sorted((_cache / "omniglot").glob("omniglot-val-v*-*.pt"))
    assert files and not leftovers(_cache)
    stamp = files[-1].stat().st_mtime_ns
    second = build("omniglot", "val", root=str(OMNIGLOT), **kwargs)
    assert torch.equal(first.images, second.images)
    assert files[-1].stat().st_mtime_ns == stamp


@needs_real
def test_download_verifies_and_extracts_atomically(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = omniglot_files.ARCHIVES["small1"]
    local = RemoteFile(real.filename, SMALL1.as_uri(), real.sha256, real.size)
    monkeypatch.setitem(omniglot_files.ARCHIVES, "small1", local)
    root = tmp_path / "omniglot"
    data = Omniglot("test", root=root, download=True, train_sources=["small1"], test_sources=[])
    assert data.num_classes == 35
    assert (root / "images_background_small1.zip").is_file()
    assert (root / "images_background_small1" / "Greek").is_dir()
    assert not leftovers(root)


# ---------------------------------------------------------------- errors leave nothing behind


def test_missing_source_says_what_to_place_where(tmp_path: Path) -> None:
    with pytest.raises(MissingDatasetError) as info:
        Omniglot("train", root=tmp_path)
    message = str(info.value)
    assert str(tmp_path / "images_background.zip") in message
    assert "github.com/brendenlake/omniglot" in message and "download=True" in message


def test_offline_download_fails_clearly_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = omniglot_files.ARCHIVES["small1"]
    offline = RemoteFile(real.filename, "http://127.0.0.1:9/images.zip", real.sha256, real.size)
    monkeypatch.setitem(omniglot_files.ARCHIVES, "small1", offline)
    with pytest.raises(MissingDatasetError, match="place it at .*images_background_small1.zip"):
        Omniglot("train", root=tmp_path, download=True, train_sources=["small1"], test_sources=[])
    assert list(tmp_path.iterdir()) == []


@needs_real
def test_checksum_mismatch_is_reported(tmp_path: Path) -> None:
    data = bytearray(SMALL1.read_bytes())
    data[len(data) // 2] ^= 0xFF
    (tmp_path / SMALL1.name).write_bytes(bytes(data))
    with pytest.raises(CorruptDatasetError, match="sha256") as info:
        Omniglot("train", root=tmp_path, train_sources=["small1"], test_sources=[])
    assert info.value.path == tmp_path / SMALL1.name


@needs_real
def test_truncated_archive_is_reported(tmp_path: Path, _cache: Path) -> None:
    (tmp_path / SMALL1.name).write_bytes(SMALL1.read_bytes()[:100_000])
    with pytest.raises(CorruptDatasetError, match="truncated") as info:
        Omniglot("train", root=tmp_path, train_sources=["small1"], test_sources=[])
    assert str(tmp_path / SMALL1.name) in str(info.value)
    assert not leftovers(_cache) and not leftovers(tmp_path)


def _write_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def test_corrupt_zip_is_detected_and_not_extracted(tmp_path: Path) -> None:
    payload = b"stroke" * 200
    archive = _write_zip(
        tmp_path / "images_background.zip", {"images_background/A/c/1.png": payload}
    )
    raw = bytearray(archive.read_bytes())
    start = raw.index(payload)
    raw[start + 10] ^= 0xFF  # damage member data: CRC check must fail
    archive.write_bytes(bytes(raw))
    with pytest.raises(CorruptDatasetError, match="CRC|corrupt") as info:
        check_zip(archive)
    assert info.value.path == archive
    with pytest.raises(CorruptDatasetError):
        extract_zip(archive, tmp_path / "images_background")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images_background.zip"]
    (tmp_path / "not.zip").write_bytes(b"garbage")
    with pytest.raises(CorruptDatasetError, match="not a readable zip"):
        check_zip(tmp_path / "not.zip")


def _png_bytes() -> bytes:
    import io

    buffer = io.BytesIO()
    Image.new("1", (105, 105), 1).save(buffer, format="PNG")
    return buffer.getvalue()


def test_empty_class_folder_is_reported(tmp_path: Path, _cache: Path) -> None:
    top = tmp_path / "images_background_small1"
    (top / "Alpha" / "character01").mkdir(parents=True)
    (top / "Alpha" / "character01" / "01.png").write_bytes(_png_bytes())
    (top / "Alpha" / "character02").mkdir()
    before = set(_cache.rglob("*")) if _cache.exists() else set()
    with pytest.raises(CorruptDatasetError, match="no .png drawings") as info:
        Omniglot("train", root=tmp_path, train_sources=["small1"], test_sources=[])
    assert info.value.path == top / "Alpha" / "character02"
    after = set(_cache.rglob("*")) if _cache.exists() else set()
    assert after == before


def test_empty_class_inside_zip_is_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    top = "images_background_small1"
    archive = _write_zip(
        tmp_path / f"{top}.zip",
        {f"{top}/A/character01/01.png": _png_bytes(), f"{top}/A/character02/": b""},
    )
    local = RemoteFile(archive.name, archive.as_uri(), sha256_file(archive))
    monkeypatch.setitem(omniglot_files.ARCHIVES, "small1", local)
    with pytest.raises(CorruptDatasetError, match="character02 holds no .png") as info:
        Omniglot("train", root=tmp_path, train_sources=["small1"], test_sources=[])
    assert info.value.path == archive


def test_truncated_png_is_reported(tmp_path: Path) -> None:
    top = tmp_path / "images_background_small1" / "Alpha"
    for character in ("character01", "character02"):
        (top / character).mkdir(parents=True)
        (top / character / "01.png").write_bytes(_png_bytes())
    broken = top / "character02" / "01.png"
    broken.write_bytes(broken.read_bytes()[:40])
    with pytest.raises(CorruptDatasetError, match="not a readable PNG") as info:
        Omniglot("trainval", root=tmp_path, split_by="alphabet", train_sources=["small1"],
                 cache=False)
    assert str(broken) in str(info.value)


def test_extract_refuses_to_overwrite(tmp_path: Path) -> None:
    archive = _write_zip(tmp_path / "x.zip", {"images_background/A/c/1.png": b"x"})
    (tmp_path / "images_background").mkdir()
    with pytest.raises(FileExistsError):
        extract_zip(archive, tmp_path / "images_background")
    shutil.rmtree(tmp_path / "images_background")
    extract_zip(archive, tmp_path / "images_background")
    assert (tmp_path / "images_background" / "A" / "c" / "1.png").read_bytes() == b"x"
