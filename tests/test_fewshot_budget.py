"""benchmarks/fewshot_budget.py: the training clock it reads from a run's log (validation
time taken out, a resumed run's restarted clock joined) and the overrides that turn a grid
cell into a budget run, against values worked out by hand."""

from __future__ import annotations

import pytest

from helpers import load_benchmark

load_benchmark("fewshot_table")  # fewshot_budget imports it by name
fb = load_benchmark("fewshot_budget")


def test_training_clock_takes_out_validation_and_joins_a_resumed_clock():
    log = [
        {"split": "train", "step": 10, "seconds": 60.0},
        {"split": "val", "step": 10, "accuracy": 0.5, "ci95": 0.1, "val_seconds": 30.0},
        {"split": "train", "step": 20, "seconds": 150.0},   # 60 s of training + 30 s val
        {"split": "val", "step": 20, "accuracy": 0.6, "ci95": 0.1, "val_seconds": 30.0},
        # resumed after step 20: the trainer's clock starts again at 0
        {"split": "train", "step": 30, "seconds": 60.0},
        {"split": "val", "step": 30, "accuracy": 0.7, "ci95": 0.1, "val_seconds": 30.0},
    ]
    clock = fb.training_clock(log)
    assert [p["step"] for p in clock] == [10, 20, 30]
    # step 10: 60 s; step 20: 150 - 30 (one validation) = 120 s; step 30: the clock before
    # the restart (150) + 60 - 60 (two validations) = 150 s
    assert [p["minutes"] for p in clock] == pytest.approx([1.0, 2.0, 2.5])
    assert [p["accuracy"] for p in clock] == [0.5, 0.6, 0.7]


def _config(schedule="constant", **train):
    return {"train": {"steps": 200, "lr_schedule": schedule, **train},
            "algorithm": {}, "data": {}}


def test_budget_overrides_anneal_by_cosine_unless_the_config_has_a_schedule():
    out = fb.budget_overrides(_config(), steps=1000, val_episodes=50)
    assert "train.steps=1000" in out and "train.lr_schedule=cosine" in out
    assert "train.lr_final=0.0" in out
    assert {"train.val_every=100", "train.checkpoint_every=100", "train.log_every=100",
            "train.val_episodes=50", "train.keep_best=true"} <= set(out)
    step = fb.budget_overrides(_config("step", lr_step_every=120), steps=1000,
                               val_episodes=50)
    assert not any(o.startswith("train.lr_schedule") for o in step)
    assert "train.lr_step_every=600" in step  # 120 of 200 steps = 600 of 1000
    cosine = fb.budget_overrides(_config("cosine"), steps=7, val_episodes=5)
    assert not any(o.startswith("train.lr_schedule") for o in cosine)
    assert "train.val_every=1" in cosine  # fewer steps than validations: every step
