"""The shipped group-shift, multi-task, memorization and MSR configs through the CLI:
train, evaluate (with the per-group table), the test-batch-size ablation, plots, reload."""

import json

import pytest
import torch

from metalab import load_run
from metalab.cli.main import main

FAST = ["train.steps=3", "train.val_every=2", "train.val_episodes=4", "train.log_every=1",
        "train.progress=false"]
TINY_ARM = ["model.hidden=4", "model.fc_hidden=8", "data.support_size=6"]
GROUP_METHODS = ["erm", "uw", "dro", "arm-bn", "arm-cml", "arm-ll"]


def _train_and_eval(config, run, *overrides, episodes=14):
    assert main(["train", config, *FAST, *overrides, "--out", str(run)]) == 0
    assert main(["eval", str(run), "--episodes", str(episodes)]) == 0
    return json.loads((run / "eval.json").read_text())


@pytest.mark.parametrize("method", GROUP_METHODS)
def test_group_shift_configs_report_average_and_worst_group(method, tmp_path):
    run = tmp_path / method
    extra = ["algorithm.context_hidden=4"] if method == "arm-cml" else []
    result = _train_and_eval(f"{method}-rotated-digits", run, *TINY_ARM, *extra)
    assert set(result) >= {"average_accuracy", "average_ci95", "worst_group_accuracy",
                           "worst_group_ci95", "worst_group", "per_group"}
    groups = result["per_group"]
    assert [g["name"] for g in groups.values()] == [f"rot{10 * i}" for i in range(14)]
    assert all(g["batches"] == 1 for g in groups.values())  # 14 batches cycle the 14 groups
    assert result["worst_group_accuracy"] == min(g["mean"] for g in groups.values())
    assert main(["eval", str(run), "--episodes", "14", "--support-size", "1"]) == 0
    ablation = json.loads((run / "eval-test-support1.json").read_text())
    assert ablation["support_size"] == 1 and 0 <= ablation["average_accuracy"] <= 1


def test_group_shift_runs_compare_in_one_plot_and_adapt_from_unlabelled_inputs(tmp_path,
                                                                               capsys):
    runs = [tmp_path / m for m in ("erm", "arm-bn")]
    for method, run in zip(("erm", "arm-bn"), runs, strict=True):
        _train_and_eval(f"{method}-corrupted-glyphs", run, *TINY_ARM, episodes=16)
    out = tmp_path / "groups.png"
    assert main(["plot", *map(str, runs), "--groups", "--out", str(out)]) == 0
    assert out.read_bytes().startswith(b"\x89PNG")
    assert main(["plot", *map(str, runs)]) == 2
    assert "several run directories need --seeds" in capsys.readouterr().err
    for run in runs:
        for size in (1, 4):
            assert main(["eval", str(run), "--episodes", "16", "--support-size", str(size)]) == 0
    ablation = tmp_path / "support_sizes.png"
    assert main(["plot", *map(str, runs), "--support-sizes", "--out", str(ablation)]) == 0
    assert ablation.read_bytes().startswith(b"\x89PNG")
    learner = load_run(runs[1])
    x = torch.rand(5, 1, 14, 14)
    assert learner.adapt(x)(x).shape == (5, learner.model.num_classes)


def test_dro_config_trains_the_group_weights(tmp_path):
    run = tmp_path / "dro"
    _train_and_eval("dro-rotated-digits", run, *TINY_ARM)
    state = torch.load(run / "checkpoint.pt", weights_only=False)
    weights = state["combiner"]["group_weights"]
    assert weights.numel() == 14 and not torch.allclose(weights, weights.mean())


def test_support_size_is_only_for_group_data(tmp_path, capsys):
    run = tmp_path / "nme"
    _train_and_eval("maml-nme-sinusoid", run, "algorithm.eval_inner_steps=2")
    assert main(["eval", str(run), "--support-size", "5"]) == 2
    assert "support_size is for group data" in capsys.readouterr().err


@pytest.mark.parametrize("config", ["multitask-pcgrad-multimnist", "multitask-pcgrad-glyphs20"])
def test_multitask_configs_report_every_task_and_log_the_conflict_diagnostics(config, tmp_path):
    run = tmp_path / config
    extra = ["data.copies=1"] if "multimnist" in config else ["data.tasks=3", "model.hidden=4"]
    result = _train_and_eval(config, run, "data.batch_size=8", *extra)
    tasks = 2 if "multimnist" in config else 3
    assert len(result["per_group"]) == tasks
    records = [json.loads(line) for line in (run / "metrics.jsonl").open()]
    diagnosed = [r for r in records if r["split"] == "train"]
    assert diagnosed and all(
        -1 <= r["diag/min_cosine"] <= r["diag/mean_cosine"] <= 1
        and 0 <= r["diag/fraction_conflicting"] <= 1 and r["diag/norm_ratio"] >= 1
        for r in diagnosed)
    assert main(["plot", str(run)]) == 0


@pytest.mark.parametrize("config", ["mr-maml-w-nme-sinusoid", "mr-maml-a-nme-sinusoid",
                                    "msr-fc-translation", "maml-pcgrad-glyphs-5w1s"])
def test_memorization_msr_and_meta_gradient_surgery_configs_run(config, tmp_path):
    extra = {"maml-pcgrad-glyphs-5w1s": ["model.hidden=4", "train.meta_batch=2",
                                         "data.queries=2"],
             "msr-fc-translation": ["data.num_tasks=500"]}.get(config,
                                                              ["algorithm.eval_inner_steps=2"])
    result = _train_and_eval(config, tmp_path / config, *extra, episodes=4)
    assert result["metric"] in ("mse", "accuracy") and "per_group" not in result
    if config.startswith("mr-maml-w"):
        records = [json.loads(line) for line in (tmp_path / config / "metrics.jsonl").open()]
        train = [r for r in records if r["split"] == "train"]
        assert all(r["loss"] > r["query_loss"] and r["kl"] > 0 for r in train)
    if config == "msr-fc-translation":
        learner = load_run(tmp_path / config)
        assert all("U" not in name.split(".")[-1] for name in learner.adapt_names)


def test_train_for_several_seeds_evaluates_each_and_reports_them(tmp_path, capsys):
    out = tmp_path / "seeds"
    assert main(["train", "maml-sinusoid-5shot", *FAST, "eval.episodes=10", "--seeds", "0,1",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    results = [json.loads((out / f"seed{s}" / "eval.json").read_text()) for s in (0, 1)]
    assert [r["episodes"] for r in results] == [10, 10] and results[0] != results[1]
    configs = [(out / f"seed{s}" / "config.yaml").read_text() for s in (0, 1)]
    assert "seed: 0" in configs[0] and "seed: 1" in configs[1]
    mean = (results[0]["mean"] + results[1]["mean"]) / 2
    assert f"| 2 | mse | {mean:.3f} ± " in printed
    assert f"metalab report {out}" in printed
    assert main(["report", str(out), "--out", str(tmp_path / "table")]) == 0
    table = json.loads((tmp_path / "table.json").read_text())
    assert table["rows"][0]["mse"]["values"] == [r["mean"] for r in results]


def test_eval_prints_one_line_with_the_worst_group_for_group_data(tmp_path, capsys):
    run = tmp_path / "erm"
    _train_and_eval("erm-rotated-digits", run, *TINY_ARM)
    capsys.readouterr()
    assert main(["eval", str(run), "--episodes", "14"]) == 0
    result = json.loads((run / "eval.json").read_text())
    worst = result["per_group"][str(result["worst_group"])]
    assert capsys.readouterr().out == (
        f"test accuracy {100 * result['mean']:.1f} ± {100 * result['ci95']:.1f}% over 14 "
        f"episodes; NLL {result['nll']:.3f} ± {result['nll_ci95']:.3f}, "
        f"ECE {result['ece']:.3f} ± {result['ece_ci95']:.3f}; "
        f"worst group {worst['name']} {100 * worst['mean']:.1f} ± "
        f"{100 * worst['ci95']:.1f}%\n")
