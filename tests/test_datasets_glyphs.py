"""Glyphs: the embedded font-rendered dataset (counts, splits, determinism, tofu exclusion)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from metalab.datasets import Glyphs, build
from metalab.datasets.fonts import bundled_faces
from metalab.datasets.glyph_alphabets import ALPHABETS

SMALL = dict(
    alphabets=["Latin", "Greek", "Dingbats"], images_per_class=4, max_chars_per_alphabet=12
)


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path_factory.getbasetemp() / "metalab-cache"
    monkeypatch.setenv("METALAB_CACHE", str(path))
    return path


@pytest.fixture(scope="module")
def default_build(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """The default dataset, built once into this session's cache (timing is a benchmark's job)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("METALAB_CACHE", str(tmp_path_factory.getbasetemp() / "metalab-cache"))
        everything = Glyphs("all")
        parts = {split: Glyphs(split) for split in ("train", "val", "test")}
    return {"all": everything, **parts}


def test_default_build_is_omniglot_scale(default_build: dict) -> None:
    data = default_build["all"]
    assert len(data.alphabets) >= 20
    assert data.num_classes >= 1000
    assert data.class_counts().min() >= 20 and data.class_counts().max() == 20
    assert data.images.shape == (20 * data.num_classes, 1, 28, 28)
    assert data.images.dtype == torch.uint8
    assert all(len(info["faces"]) >= 2 for info in data.class_info)


def test_splits_have_disjoint_alphabets_and_cover_everything(default_build: dict) -> None:
    parts = [default_build[s] for s in ("train", "val", "test")]
    alphabets = [set(p.alphabets) for p in parts]
    assert not (alphabets[0] & alphabets[1] or alphabets[0] & alphabets[2])
    assert not alphabets[1] & alphabets[2]
    assert set().union(*alphabets) == set(default_build["all"].alphabets)
    assert sum(p.num_classes for p in parts) == default_build["all"].num_classes
    for part in parts:
        assert part.num_classes >= 100
        assert part.labels.unique().tolist() == list(range(part.num_classes))
        assert {info["split"] for info in part.class_info} == {part.split}


def test_classes_are_distinct_pictures(default_build: dict) -> None:
    data = default_build["all"]
    codepoints = [info["codepoint"] for info in data.class_info]
    assert len(set(codepoints)) == len(codepoints)
    latin = {info["char"] for info in data.class_info if info["alphabet"] == "Latin"}
    cyrillic = {info["char"] for info in data.class_info if info["alphabet"] == "Cyrillic"}
    assert "A" in latin and "\u0410" not in cyrillic  # Cyrillic A looks like Latin A: dropped


def test_items_are_strokes_on_background(default_build: dict) -> None:
    data = default_build["test"]
    x, y = data[0]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32 and isinstance(y, int)
    batch, labels = data.batch(torch.arange(0, len(data), 97))
    assert batch.min() == 0 and batch.max() == 1
    border = torch.cat([batch[..., 0, :], batch[..., -1, :]], -1)
    assert border.mean() < 0.05 < batch.mean() < 0.5
    per_class = data.images[:20].float()
    assert (per_class - per_class.mean(0)).abs().mean() > 5  # drawers differ


def test_deterministic_for_a_seed_and_seed_changes_drawings() -> None:
    first = Glyphs("all", cache=False, **SMALL)
    again = Glyphs("all", cache=False, **SMALL)
    other = Glyphs("all", seed=1, cache=False, **SMALL)
    assert torch.equal(first.images, again.images) and torch.equal(first.labels, again.labels)
    assert first.class_names == other.class_names
    assert not torch.equal(first.images, other.images)


def test_cache_is_reused_and_atomic(_cache: Path) -> None:
    built = Glyphs("val", image_size=20, **SMALL)
    files = list((_cache / "glyphs").glob("glyphs-all-v*-*.pt"))
    assert files and not list((_cache / "glyphs").glob(".*"))
    loaded = build("glyphs", "val", image_size=20, **SMALL)
    assert torch.equal(built.images, loaded.images)
    assert loaded.image_shape == (1, 20, 20)


def test_faces_exclude_missing_empty_and_tofu_glyphs() -> None:
    faces = {face.name: face for face in bundled_faces(56)}
    sans = faces["DejaVuSans"]
    assert sans.render(ord("A")) is not None
    assert sans.render(0x10FFFD) is None  # not in the character map
    assert sans.render(0x20) is None  # maps to an empty glyph
    tofu = sans.render(ord("B"))
    assert tofu is not None
    sans.__dict__["notdef"] = sans._draw(size=56 * 0.8, codepoint=ord("B"))
    assert sans.render(ord("B")) is None  # identical to .notdef: excluded as tofu
    assert faces["cmr10"].render(0x3B1) is None  # TeX-encoded face: ASCII letters only
    assert faces["cmr10"].render(ord("g")) is not None


def test_alphabet_table_and_bad_arguments() -> None:
    assert len({a.name for a in ALPHABETS}) == len(ALPHABETS)
    assert {a.split for a in ALPHABETS} == {"train", "val", "test"}
    with pytest.raises(ValueError, match="unknown Glyphs split 'dev'"):
        Glyphs("dev")
    with pytest.raises(ValueError, match="unknown Glyphs alphabets \\['Klingon'\\]"):
        Glyphs("train", alphabets=["Klingon"])
    with pytest.raises(ValueError, match="images_per_class"):
        Glyphs("train", images_per_class=0)
    with pytest.raises(ValueError, match="has no classes"):
        Glyphs("test", alphabets=["Latin"], images_per_class=2, max_chars_per_alphabet=10)


def test_one_shot_tasks_are_learnable_but_not_trivial(default_build: dict) -> None:
    """Raw-pixel nearest neighbour on 5-way 1-shot test tasks: well above chance, not solved."""
    data = default_build["test"]
    generator = np.random.default_rng(0)
    by_class = [torch.nonzero(data.labels == c).flatten() for c in range(data.num_classes)]
    correct = total = 0
    for _ in range(200):
        classes = generator.choice(data.num_classes, 5, replace=False)
        picks = [by_class[c][torch.from_numpy(generator.permutation(20)[:2])] for c in classes]
        support = torch.stack([p[0] for p in picks])
        query = torch.stack([p[1] for p in picks])
        s, _ = data.batch(support)
        q, _ = data.batch(query)
        guess = torch.cdist(q.flatten(1), s.flatten(1)).argmin(1)
        correct += int((guess == torch.arange(5)).sum())
        total += 5
    accuracy = correct / total
    assert 0.35 < accuracy < 0.9, accuracy


def test_atomic_files_get_the_mode_of_a_normally_written_file(tmp_path):
    import os
    import stat

    from metalab.datasets.atomic import atomic_file, default_file_mode

    with atomic_file(tmp_path / "result.json") as tmp:
        tmp.write_text("{}")
    plain = tmp_path / "plain.json"
    plain.write_text("{}")
    mode = stat.S_IMODE(os.stat(tmp_path / "result.json").st_mode)
    assert mode == stat.S_IMODE(os.stat(plain).st_mode) == default_file_mode()
