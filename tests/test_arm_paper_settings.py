"""The shipped rotated-MNIST configs carry the ARM paper's settings (official code's MNIST
commands: Adam 1e-4, 6 groups x 50 per step, test batches of 50, 12 context channels from a
64-channel context network, the smaller prediction network for ARM-CML)."""

from __future__ import annotations

import pytest

from metalab.cli.main import resolve_config_path
from metalab.train import load_config

METHODS = ("erm", "uw", "dro", "arm-bn", "arm-cml", "arm-ll")


def config(method: str) -> dict:
    return load_config(resolve_config_path(f"{method}-rotated-mnist"))


@pytest.mark.parametrize("method", METHODS)
def test_batches_and_optimizer_are_the_papers(method: str) -> None:
    c = config(method)
    assert c["data"]["support_size"] == 50
    assert c["train"]["meta_batch"] == 6
    assert c["train"]["lr"] == pytest.approx(1e-4)
    # the official evaluation cuts each test group into batches of the training support size
    assert c["eval"]["batch_size"] == c["data"]["support_size"]
    assert c["data"]["sampling"] == ("frequency" if method == "erm" else "uniform")
    assert c["model"]["hidden"] == 128 and c["model"]["fc_hidden"] == 200


def test_arm_cml_context_network_is_the_papers() -> None:
    c = config("arm-cml")
    assert c["algorithm"]["context_channels"] == 12
    assert c["algorithm"]["context_hidden"] == 64
    assert c["model"]["extra_conv"] is False
    assert c["model"]["in_channels"] == 1 + 12


def test_arm_cml_normalizes_per_group() -> None:
    """Measured (README, rotated MNIST): with pooled training statistics and running test
    statistics ARM-CML lost to ERM on some seeds; per-group statistics fixed it."""
    assert config("arm-cml")["model"]["norm"] == "task"


# The official MNIST data: 54,000 training-pool images; group g holds int(p_g * 54000 / 5)
# images with p_g = 0.70 (0-20 degrees), 0.20, 0.06, 0.03 (90-110) and 0.01 (120-130).
PAPER_TRAIN_IMAGES = sum(int(p * 54000 / 5) for p in [0.70] * 3 + [0.20] * 3 + [0.06] * 3
                         + [0.03] * 3 + [0.01] * 2)


@pytest.mark.parametrize("method", METHODS)
def test_schedule_and_evaluation_are_the_papers(method: str) -> None:
    """--num_epochs 200 of (training images // 300) batches, validation every 10 epochs on
    300 images per group (--n_samples_per_group 300), and the test on every test image of
    every group (3,000 per group with images: test-set) in batches of 50."""
    c = config(method)
    assert PAPER_TRAIN_IMAGES == 32292
    steps_per_epoch = PAPER_TRAIN_IMAGES // (6 * 50)
    assert c["train"]["steps"] == 200 * steps_per_epoch == 21400
    assert c["train"]["val_every"] == 10 * steps_per_epoch
    assert c["train"]["val_episodes"] * c["eval"]["batch_size"] == 14 * 300
    assert c["eval"]["episodes"] * c["eval"]["batch_size"] == 14 * 3000
