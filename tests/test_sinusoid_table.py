"""benchmarks/sinusoid_table.py: every method's cell builds its learner on the MLP, and the
summary over seeds is the hand-computed mean and Student-t interval."""

from __future__ import annotations

import math

import pytest

from helpers import load_benchmark
from metalab.algorithms import ALGORITHMS
from metalab.train.build import build_meta_learner, complete_model_config

st = load_benchmark("sinusoid_table")


@pytest.mark.parametrize("method", list(st.METHODS))
def test_every_method_builds_on_the_sinusoid_mlp(method):
    config = st.cell_config(method, st.Budget(steps=7, meta_batch=3, episodes=5))
    assert (config["train"]["steps"], config["train"]["meta_batch"]) == (7, 3)
    assert config["data"]["shots"] == 5 and config["algorithm"]["inner_lr"] == 0.01
    learner = build_meta_learner(complete_model_config(config))
    assert type(learner) is ALGORITHMS[st.METHODS[method]["name"]]


def _record(method, seed, mse1, mse10):
    return {"method": method, "seed": seed, "budget": {"steps": 10, "meta_batch": 2,
                                                      "episodes": 5},
            "mse": {"1": {"mean": mse1, "episode_ci95": 0.1},
                    "10": {"mean": mse10, "episode_ci95": 0.2}},
            "seconds_per_iteration": 0.5, "load_average_before": [1.0, 1.0, 1.0],
            "parameters": 1761}


def test_summary_over_seeds_is_the_hand_computation():
    rows = st.summarise([_record("FOMAML", 0, 2.0, 1.0), _record("MAML", 1, 1.5, 0.9),
                         _record("MAML", 0, 1.0, 0.5), _record("MAML", 2, 2.0, 1.3)])
    assert [r["method"] for r in rows] == ["MAML", "FOMAML"]
    maml = rows[0]["mse"]["1"]
    sd = math.sqrt(((1.0 - 1.5) ** 2 + 0 + (2.0 - 1.5) ** 2) / 2)  # 0.5
    assert maml["mean"] == pytest.approx(1.5)
    assert maml["ci95"] == pytest.approx(4.302653 * sd / math.sqrt(3), rel=1e-5)
    table = st.markdown(rows)
    assert "| MAML | 3 | 1.500 ± 1.242 | 0.900 ± 0.994 |" in table
    assert "| FOMAML | 1 | 2.000 ± 0.100 (1 seed, ± over tasks) |" in table
