"""``metalab data list|info|prepare|show`` (the data subcommand on its own parser)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch

from metalab.cli.data import _sample_directly, add_subparser, parse_options
from metalab.datasets import Digits

OMNIGLOT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "omniglot"


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path_factory.getbasetemp() / "metalab-cache"
    monkeypatch.setenv("METALAB_CACHE", str(path))
    return path


def run(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="metalab")
    add_subparser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["data", *argv])
    return args.func(args)


def test_list(capsys: pytest.CaptureFixture[str]) -> None:
    assert run("list") == 0
    out = capsys.readouterr().out
    for name in ("omniglot", "glyphs", "digits", "mini-imagenet", "cifar-fs", "mnist"):
        assert name in out


def test_info_json_for_digits(capsys: pytest.CaptureFixture[str]) -> None:
    assert run("info", "digits", "--json") == 0
    report = json.loads(capsys.readouterr().out)
    assert report["splits"]["all"]["images"] == 1797
    assert report["splits"]["train"]["classes"] == 10


def test_info_reports_missing_files_with_exit_code(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run("info", "mnist", "--root", str(tmp_path)) == 1
    out = capsys.readouterr().out
    assert "train-images-idx3-ubyte: missing" in out and "unavailable" in out


def test_info_for_group_and_multitask_data(capsys: pytest.CaptureFixture[str]) -> None:
    assert run("info", "rotated-digits") == 0
    assert "14 of 14 groups" in capsys.readouterr().out
    assert run("info", "multimnist", "--json") == 0
    report = json.loads(capsys.readouterr().out)
    assert report["splits"]["test"]["tasks"] == ["left", "right"]


@pytest.mark.parametrize(("name", "expected"), [
    ("femnist", "missing ({train,val,test}/*.json or all_data/*.json)"),
    ("cifar10-c", "the test groups are generated from CIFAR-10 instead"),
    ("rotated-mnist", "train-images-idx3-ubyte: missing"),
])
def test_info_names_the_missing_files_of_group_data(
    name: str, expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run("info", name, "--root", str(tmp_path)) == 1
    out = capsys.readouterr().out
    assert expected in out and "unavailable" in out


@pytest.mark.skipif(not OMNIGLOT.is_dir(), reason=f"real Omniglot subsets not at {OMNIGLOT}")
def test_info_omniglot_checksums(capsys: pytest.CaptureFixture[str]) -> None:
    options = ["--option", "split_by=alphabet", "--option", "train_sources=[small2]"]
    options += ["--option", "test_sources=[small1]"]
    assert run("info", "omniglot", "--root", str(OMNIGLOT), *options) == 0
    out = capsys.readouterr().out
    assert "small1: sha256 ok" in out and "background: missing" in out
    assert "test: 3 alphabets, 86 classes" in out  # small1 alphabets not in small2


def test_prepare(capsys: pytest.CaptureFixture[str]) -> None:
    assert run("prepare", "digits") == 0
    assert "digits test: 449 images ready" in capsys.readouterr().out
    with pytest.raises(ValueError, match="cannot be downloaded"):
        run("prepare", "mnist", "--download")


def test_show_writes_a_png(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "figs" / "episodes.png"
    assert run("show", "digits", "--out", str(out), "--ways", "3", "--episodes", "2") == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in out.parent.iterdir()] == ["episodes.png"]
    assert "wrote" in capsys.readouterr().out


def test_direct_episode_sampling_without_task_layer() -> None:
    data = Digits("test")
    sx, sy, qx, qy = _sample_directly(data, ways=4, shots=2, queries=3, episodes=2, seed=0)
    assert sx.shape == (2, 8, 1, 8, 8) and qx.shape == (2, 12, 1, 8, 8)
    assert sy[0].tolist() == [0, 0, 1, 1, 2, 2, 3, 3] and qy.shape == (2, 12)
    with pytest.raises(ValueError, match="ways=11 but the split has 10 classes"):
        _sample_directly(data, ways=11, shots=1, queries=1, episodes=1, seed=0)


def test_parse_options() -> None:
    assert parse_options(["a=1", "b=[x, y]", "c=true", "d=text"]) == {
        "a": 1,
        "b": ["x", "y"],
        "c": True,
        "d": "text",
    }
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_options(["oops"])
    assert torch.is_tensor(Digits().labels)
