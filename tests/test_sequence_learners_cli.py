"""The SNAIL and MANN configs through the CLI: train, evaluate, per-presentation accuracy,
and the presentations plot."""

import json

import pytest

from helpers import load_benchmark
from metalab.cli.main import main

pytestmark = pytest.mark.slow  # each trains through the CLI (about 10 s alone, minutes loaded)

FAST = ["train.steps=2", "train.val_every=2", "train.val_episodes=2", "train.log_every=1",
        "train.progress=false", "train.meta_batch=2", "eval.batch_size=2"]
TINY = {"snail": ["model.hidden=4", "algorithm.filters=4", "algorithm.key_sizes=[4,4,4]",
                  "algorithm.value_sizes=[4,4,4]", "data.queries=2"],
        "mann": ["model.hidden=4", "algorithm.controller_size=8", "algorithm.slots=8",
                 "algorithm.size=4"],
        "mann-lstm": ["model.hidden=4", "algorithm.controller_size=8"]}
CONFIGS = {"snail": "snail-glyphs-5w1s", "mann": "mann-glyphs-5w",
           "mann-lstm": "mann-lstm-glyphs-5w"}


@pytest.mark.parametrize("method", sorted(CONFIGS))
def test_sequence_configs_train_and_evaluate(method, tmp_path):
    run = tmp_path / method
    assert main(["train", CONFIGS[method], *FAST, *TINY[method], "--out", str(run)]) == 0
    assert main(["eval", str(run), "--episodes", "4"]) == 0
    result = json.loads((run / "eval.json").read_text())
    assert result["metric"] == "accuracy" and 0 <= result["mean"] <= 1


def test_presentation_table_and_plot(tmp_path):
    runs = []
    for method in ("mann", "mann-lstm"):
        run = tmp_path / method
        assert main(["train", CONFIGS[method], *FAST, *TINY[method], "--out", str(run)]) == 0
        runs.append(run)
    table = load_benchmark("mann_presentations").presentation_table(runs[0], episodes=3, seed=0)
    assert table["numbers"] == list(range(1, 11))  # 9 shots + 1 query per class
    assert len(table["accuracy"]) == 10 and all(0 <= a <= 1 for a in table["accuracy"])
    for run in runs:
        (run / "presentations.json").write_text(json.dumps(table))
    out = tmp_path / "curves.png"
    assert main(["plot", "--presentations", *map(str, runs), "--out", str(out)]) == 0
    assert out.stat().st_size > 0
