"""Rainbow MNIST from the MNIST IDX files (``data.digits: mnist``) and its four shipped
configs (``*-rainbow-mnist``), on fake IDX files written here; one test reads the real
MNIST test set when /work/shared/data/mnist holds it and skips, saying so, when not."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import write_idx
from metalab.cli.main import main
from metalab.datasets.errors import MissingDatasetError
from metalab.tasks.rainbow import COLOURS, base_digits, rainbow_tasks, rainbow_transforms
from metalab.train.config import load_config
from metalab.train.online import complete_online_config

SHARED_MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"
PROTOCOLS = ("ftml", "ftl", "toe", "scratch")



@pytest.fixture(scope="module")
def fake_mnist(tmp_path_factory) -> Path:
    """t10k files only: 100 images 28x28, image ``i`` all ``2 i + 1`` (odd, so no image is
    black), label ``i % 10``."""
    root = tmp_path_factory.mktemp("mnist")
    values = 2 * np.arange(100) + 1
    write_idx(root / "t10k-images-idx3-ubyte.gz",
               np.broadcast_to(values[:, None, None], (100, 28, 28)))
    write_idx(root / "t10k-labels-idx1-ubyte.gz", np.arange(100) % 10)
    return root


def test_mnist_digits_come_from_the_idx_files_divided_by_the_fixed_seed(fake_mnist):
    (train_x, train_y), (held_x, held_y) = base_digits(fake_mnist, image_size=14,
                                                       digits="mnist")
    assert train_x.shape == (80, 1, 14, 14) and held_x.shape == (20, 1, 14, 14)
    # every image is constant, so its value names the file image it came from
    index = torch.cat([train_x, held_x]).amax(dim=(1, 2, 3)).mul(255).round().long() // 2
    assert sorted(index.tolist()) == list(range(100))  # a partition of the file
    assert torch.equal(torch.cat([train_y, held_y]), index % 10)
    order = torch.randperm(100, generator=torch.Generator().manual_seed(0))
    assert torch.equal(index, order)  # the fixed division: SPLIT_SEED 0


def test_rainbow_tasks_from_mnist_are_transformed_file_digits(fake_mnist):
    tasks = rainbow_tasks(fake_mnist, tasks=2, train_per_task=30, test_per_task=10,
                          image_size=14, digits="mnist", seed=3)
    first = rainbow_transforms()[0]  # red, full scale, no turn
    red = torch.tensor(COLOURS[first["colour"]]).view(1, 3, 1, 1)
    x = tasks[0].train_x
    value = x[:, 1, 0, 0]  # the green channel of a red background is the digit itself
    assert torch.allclose(x, red * (1 - value.view(-1, 1, 1, 1)) + value.view(-1, 1, 1, 1))
    assert torch.equal(tasks[0].train_y, (value * 255).round().long() // 2 % 10)


def test_digit_sources_are_checked_and_a_missing_mnist_is_named(fake_mnist, tmp_path,
                                                                monkeypatch):
    with pytest.raises(ValueError, match="digits must be one of"):
        base_digits(digits="emnist")
    with pytest.raises(ValueError, match="root"):
        base_digits(fake_mnist, digits="embedded")
    monkeypatch.setenv("METALAB_CACHE", str(tmp_path / "empty"))
    with pytest.raises(MissingDatasetError, match="t10k-images-idx3-ubyte"):
        base_digits(digits="mnist")  # no root, nothing in the default folder
    embedded = base_digits(digits="embedded")[0][0]
    assert len(embedded) == int(1797 * 0.8)  # scikit-learn's digits, as without root


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_shipped_rainbow_mnist_configs_are_complete(protocol):
    config = complete_online_config(load_config(
        f"src/metalab/configs/{protocol}-rainbow-mnist.yaml"))
    assert config["data"]["digits"] == "mnist"
    assert config["online"]["protocol"] == protocol
    assert config["train"]["steps"] == 12 * (200 // 20) * 10  # tasks x arrivals x updates
    assert (config["online"]["eval_inner_steps"] == 0) == (protocol == "toe")


def test_ftml_rainbow_mnist_runs_through_the_cli_on_idx_files(fake_mnist, tmp_path):
    out = tmp_path / "run"
    assert main(["train", "ftml-rainbow-mnist", "--out", str(out),
                 f"data.root={fake_mnist}", "data.tasks=2", "data.train_per_task=40",
                 "data.test_per_task=10", "model.hidden=4", "train.steps=40",
                 "train.progress=false"]) == 0
    summary = json.loads((out / "stream.json").read_text())
    assert [t["examples"] for t in summary["tasks"]] == [40, 40]
    assert summary["protocol"] == "ftml"


@pytest.mark.skipif(not (SHARED_MNIST / "t10k-images-idx3-ubyte.gz").is_file(),
                    reason=f"the MNIST test-set IDX files are not at {SHARED_MNIST} "
                           f"(t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz)")
def test_real_mnist_test_set_gives_8000_training_and_2000_held_out_digits():
    (train_x, train_y), (held_x, held_y) = base_digits(SHARED_MNIST, image_size=28,
                                                       digits="mnist")
    assert len(train_x) == 8000 and len(held_x) == 2000
    assert 0.0 <= float(train_x.min()) and float(train_x.max()) == 1.0
    counts = torch.bincount(torch.cat([train_y, held_y]), minlength=10)
    assert counts.tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
