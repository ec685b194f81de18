"""`metalab.train.report`: the Student-t interval over seeds, grouping runs by config keys,
the markdown/JSON report and the one-line evaluation summary; `metalab report` errors."""

import json
import math
import statistics

import pytest
import yaml

from metalab.cli.main import main
from metalab.train.report import (
    ReportError,
    format_result,
    over_seeds,
    summarise_runs,
    t_quantile_975,
    write_report,
)
from metalab.train.seeds import parse_seeds

# t_{0.975, df} from a printed table (e.g. NIST/SEMATECH e-Handbook, table 1.3.6.7.2).
T_TABLE = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 9: 2.262, 10: 2.228,
           30: 2.042, 100: 1.984}


@pytest.mark.parametrize("df", sorted(T_TABLE))
def test_t_quantile_matches_the_printed_table(df):
    assert t_quantile_975(df) == pytest.approx(T_TABLE[df], abs=5e-4)


def test_t_quantile_matches_scipy_to_rounding():
    stats = pytest.importorskip("scipy.stats")
    for df in range(1, 61):
        assert t_quantile_975(df) == pytest.approx(float(stats.t.ppf(0.975, df)), rel=1e-10)
    with pytest.raises(ValueError, match="df must be a positive integer, got 0"):
        t_quantile_975(0)


def test_interval_over_seeds_is_the_student_t_one_by_hand():
    values = [0.80, 0.84, 0.90]
    mean = (0.80 + 0.84 + 0.90) / 3
    sd = math.sqrt(((0.80 - mean) ** 2 + (0.84 - mean) ** 2 + (0.90 - mean) ** 2) / 2)
    summary = over_seeds(values)
    assert summary["mean"] == pytest.approx(mean, rel=1e-15)
    assert summary["ci95"] == pytest.approx(4.302652729911275 * sd / math.sqrt(3), rel=1e-9)
    assert summary["n"] == 3 and summary["values"] == values
    assert over_seeds([0.5]) == {"mean": 0.5, "ci95": 0.0, "n": 1, "values": [0.5]}
    two = over_seeds([1.0, 2.0])  # sd = 1/sqrt(2), t_{0.975,1} = 12.7062047362
    assert two["ci95"] == pytest.approx(12.706204736174707 * statistics.stdev([1, 2]) / 2 ** .5,
                                        rel=1e-9)


def _config(algorithm="maml", seed=0, inner_lr=0.4, data="glyphs"):
    return {"algorithm": {"name": algorithm, "inner_lr": inner_lr}, "model": {"name": "conv4"},
            "data": {"name": data, "ways": 5}, "train": {"seed": seed, "steps": 10},
            "eval": {"episodes": 100}}


def _run(tmp_path, name, config, mean, ci95=0.05, metric="accuracy", episodes=100, **extra):
    """A run directory written by hand: config.yaml and eval.json."""
    run = tmp_path / name
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    result = {"metric": metric, "mean": mean, "ci95": ci95, "episodes": episodes,
              "split": "test", **extra}
    (run / "eval.json").write_text(json.dumps(result))
    return run


def test_runs_group_by_sections_and_dotted_keys_with_the_interval_over_seeds(tmp_path):
    maml = [_run(tmp_path, f"maml{s}", _config(seed=s), m) for s, m in enumerate([.6, .7, .8])]
    proto = [_run(tmp_path, f"proto{s}", _config("protonet", seed=s), m)
             for s, m in enumerate([.75, .85])]
    report = summarise_runs([*maml, *proto], by=["algorithm"])
    assert report["by"] == ["algorithm"] and report["eval"] == "eval.json"
    rows = {row["group"]["algorithm"]: row for row in report["rows"]}
    assert set(rows) == {"maml", "protonet"}
    assert rows["maml"]["accuracy"]["mean"] == pytest.approx(0.7)
    assert rows["maml"]["accuracy"]["ci95"] == pytest.approx(4.302652729911275 * 0.1 / 3 ** .5)
    assert rows["protonet"]["accuracy"]["ci95"] == pytest.approx(
        12.706204736174707 * statistics.stdev([.75, .85]) / 2 ** .5)
    assert rows["maml"]["seeds"] == [0, 1, 2] and "episode_ci95" not in rows["maml"]
    by_lr = summarise_runs([*maml, _run(tmp_path, "lr", _config(inner_lr=0.1), 0.5)],
                           by=["algorithm.inner_lr"])
    assert [(r["group"]["algorithm.inner_lr"], r["accuracy"]["n"]) for r in by_lr["rows"]] == [
        (0.4, 3), (0.1, 1)]
    assert by_lr["rows"][1]["episode_ci95"] == 0.05  # one run: its interval over episodes


def test_default_grouping_is_every_key_the_runs_differ_on_but_the_seed(tmp_path):
    runs = [_run(tmp_path, f"a{s}", _config(seed=s), .5 + s / 10) for s in range(2)]
    runs += [_run(tmp_path, f"b{s}", _config(seed=s, inner_lr=0.1), .4) for s in range(2)]
    report = summarise_runs(runs)
    assert report["by"] == ["algorithm.inner_lr"]
    assert [row["accuracy"]["n"] for row in report["rows"]] == [2, 2]
    single = summarise_runs(runs[:2])  # the seeds of one config: one row, no columns
    assert single["by"] == [] and len(single["rows"]) == 1


def test_default_grouping_ignores_every_seed_and_names_many_settings_by_their_folder(
        tmp_path):
    def config(seed, combiner, steps=10):
        return {**_config(seed=seed), "train": {"seed": seed, "steps": steps,
                                                "combiner": {"name": combiner, "seed": seed}}}

    runs = [_run(tmp_path / c, f"seed{s}", config(s, c), .5) for c in ("mean", "pcgrad")
            for s in range(2)]
    report = summarise_runs(runs)
    assert report["by"] == ["train.combiner.name"]  # not train.seed nor train.combiner.seed
    assert [row["accuracy"]["n"] for row in report["rows"]] == [2, 2]
    other = {**_config("protonet", inner_lr=0.1, data="omniglot"),
             "model": {"name": "resnet12"}, "train": {"seed": 0, "steps": 99}}
    many = summarise_runs([*runs[:2], _run(tmp_path, "proto", other, .9)])
    assert many["by"] == ["runs"]
    assert [row["group"]["runs"] for row in many["rows"]] == [str(tmp_path / "mean"),
                                                             str(tmp_path / "proto")]
    assert many["rows"][1]["settings"]["model.name"] == "resnet12"


def test_a_directory_of_seed_runs_stands_for_its_runs(tmp_path):
    for seed in range(3):
        _run(tmp_path / "out", f"seed{seed}", _config(seed=seed), 0.5)
    report = summarise_runs([tmp_path / "out"], by=[])
    assert report["rows"][0]["seeds"] == [0, 1, 2]


def test_group_data_rows_summarise_average_and_worst_group_over_seeds(tmp_path):
    runs = [_run(tmp_path, f"arm{s}", _config("arm-bn", seed=s, data="rotated-digits"), m,
                 average_accuracy=m, average_ci95=0.01, worst_group_accuracy=w,
                 worst_group_ci95=0.04, worst_group=3)
            for s, (m, w) in enumerate([(.9, .6), (.8, .7), (.85, .8)])]
    row = summarise_runs(runs, by=["algorithm"])["rows"][0]
    assert row["worst_group_accuracy"]["mean"] == pytest.approx(0.7)
    assert row["worst_group_accuracy"]["ci95"] == pytest.approx(4.302652729911275 * 0.1 / 3 ** .5)
    assert row["average_accuracy"]["values"] == [.9, .8, .85]


def test_report_is_written_as_markdown_and_json(tmp_path):
    runs = [_run(tmp_path, f"r{s}", _config(seed=s), m) for s, m in enumerate([.6, .8])]
    report = summarise_runs(runs, by=["algorithm", "data"])
    markdown, data = write_report(report, tmp_path / "out" / "table.md")
    lines = markdown.read_text().splitlines()
    assert lines[0] == "| algorithm | data | seeds | metric | mean ± 95% CI |"
    half = 12.706204736174707 * statistics.stdev([.6, .8]) / 2 ** .5
    assert lines[2] == f"| maml | glyphs | 2 | accuracy | 70.0 ± {100 * half:.1f}% |"
    assert json.loads(data.read_text()) == json.loads(json.dumps(report))
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["table.json", "table.md"]


def test_report_errors_say_what_is_wrong_and_what_to_type(tmp_path):
    run = _run(tmp_path, "run", _config(), 0.5)
    with pytest.raises(ReportError, match="'.*nowhere' is not a metalab run directory"):
        summarise_runs([tmp_path / "nowhere"])
    with pytest.raises(ReportError, match=r"has no eval-val.json \(it has eval.json\); "
                                          r"evaluate it first: `metalab eval .*run --split val`"):
        summarise_runs([run], eval_name="eval-val")
    (run / "eval.json").unlink()
    with pytest.raises(ReportError, match=r"has no eval.json; evaluate it first: "
                                          r"`metalab eval .*run`"):
        summarise_runs([run])
    other = _run(tmp_path, "other", _config(), 0.5)
    with pytest.raises(ReportError, match="'algorithm.inner_lrr' is in none of the runs' "
                                          "configs; known keys: algorithm.inner_lr, "):
        summarise_runs([other], by=["algorithm.inner_lrr"])
    with pytest.raises(ReportError, match="must be a config section"):
        summarise_runs([other], by=["optimizer"])


def test_cli_report_prints_writes_and_fails_cleanly(tmp_path, capsys):
    runs = [str(_run(tmp_path, f"r{s}", _config(seed=s), m)) for s, m in enumerate([.6, .8])]
    assert main(["report", *runs, "--by", "algorithm", "--out", str(tmp_path / "t")]) == 0
    out = capsys.readouterr().out
    assert "| maml | 2 | accuracy | 70.0 ± " in out and "wrote" in out
    assert (tmp_path / "t.md").is_file() and (tmp_path / "t.json").is_file()
    assert main(["report", *runs, "--by", "train.nope"]) == 2
    assert "'train.nope' is in none of the runs' configs" in capsys.readouterr().err
    assert main(["report", str(tmp_path)]) == 0  # the directory holding both runs


def test_one_line_summary_of_an_evaluation():
    accuracy = {"metric": "accuracy", "mean": 0.8491, "ci95": 0.0112, "episodes": 600,
                "split": "test"}
    assert format_result(accuracy) == "test accuracy 84.9 ± 1.1% over 600 episodes"
    mse = {"metric": "mse", "mean": 0.5121, "ci95": 0.0312, "episodes": 600, "split": "val",
           "inner_steps": 10}
    assert format_result(mse) == "val mse 0.512 ± 0.031 over 600 episodes (10 inner steps)"
    groups = {**accuracy, "worst_group_accuracy": 0.612, "worst_group_ci95": 0.04,
              "worst_group": 3, "per_group": {"3": {"name": "rot30"}}, "support_size": 10}
    assert format_result(groups) == ("test accuracy 84.9 ± 1.1% over 600 episodes (10 "
                                     "examples per test batch); worst group rot30 61.2 ± 4.0%")


def test_seed_lists_and_ranges():
    assert parse_seeds("0,1,2") == [0, 1, 2] and parse_seeds("3-5") == [3, 4, 5]
    with pytest.raises(ValueError, match="--seeds must be integers"):
        parse_seeds("a,b")
    with pytest.raises(ValueError, match="distinct seeds"):
        parse_seeds("1,1")
