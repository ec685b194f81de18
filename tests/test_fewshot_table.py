"""benchmarks/fewshot_table.py: the grid's aggregation against hand computations on a tiny
fake record set, the budget it gives each cell, and ``--reuse`` skipping cells already done."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from helpers import load_benchmark

ft = load_benchmark("fewshot_table")
BUDGET = {"steps": 200, "meta_batch": 4, "episodes": 600}


def _record(method, seed, accuracy, episode_ci, seconds, setting="5w1s", load=2.0):
    return {"method": method, "dataset": "glyphs", "setting": setting, "seed": seed,
            "budget": BUDGET, "accuracy": accuracy, "episode_ci95": episode_ci,
            "seconds_per_iteration": seconds, "train_steps": 200,
            "load_average_before": [load, 0.0, 0.0], "parameters": 1000}


def test_summary_is_the_hand_computed_mean_and_student_t_interval():
    records = [_record("ProtoNet", 0, 0.80, 0.010, 0.5), _record("ProtoNet", 1, 0.84, 0.012, 0.7),
               _record("ProtoNet", 2, 0.86, 0.014, 0.6), _record("MAML", 0, 0.70, 0.02, 1.0)]
    rows = ft.summarise(records)
    assert [r["method"] for r in rows] == ["MAML", "ProtoNet"]  # METHODS order
    proto = rows[1]
    # Hand computation: mean 0.8333..., sample variance ((-1/30)^2 + (1/150)^2 + (4/150)^2)/2
    mean = (0.80 + 0.84 + 0.86) / 3
    sd = math.sqrt(((0.80 - mean) ** 2 + (0.84 - mean) ** 2 + (0.86 - mean) ** 2) / 2)
    assert proto["accuracy"]["mean"] == pytest.approx(mean, abs=1e-12)
    assert proto["accuracy"]["ci95"] == pytest.approx(4.302653 * sd / math.sqrt(3), rel=1e-5)
    assert proto["accuracy"]["ci95"] == pytest.approx(0.07589, abs=5e-5)
    assert proto["episode_ci95"] == pytest.approx(0.012)
    assert proto["seconds_per_iteration"] == pytest.approx(0.6)
    assert proto["seeds"] == [0, 1, 2]
    table = ft.markdown(rows)
    assert "| ProtoNet | conv4 | off | 3 | 83.3 ± 7.6 | 1.2 | 0.600 |" in table
    # One seed: its interval over episodes, said so.
    assert "| MAML | conv4 | off | 1 | 70.0 ± 2.0 (1 seed, ± over episodes) |" in table


def test_settings_and_budgets_are_separate_tables():
    records = [_record("MAML", 0, 0.7, 0.02, 1.0), _record("MAML", 0, 0.4, 0.02, 1.0, "20w1s"),
               {**_record("MAML", 1, 0.9, 0.02, 1.0), "budget": {**BUDGET, "steps": 400}}]
    rows = ft.summarise(records)
    assert len(rows) == 3 and all(r["accuracy"]["n"] == 1 for r in rows)
    assert ft.markdown(rows).count("### glyphs") == 3


def test_pretrained_baselines_get_the_same_number_of_training_images():
    budget = ft.Budget(steps=200, meta_batch=4)
    _, overrides, config = ft.cell_config("RFS", "glyphs", "5w1s", budget)
    # 200 iterations x 4 tasks x 5 ways x (1 shot + 15 queries) = 64,000 images, batches of 64
    assert config["train"]["steps"] == 1000
    assert config["train"]["lr_step_every"] == 600  # shipped 3000 of 5000 steps: 60%
    _, _, config = ft.cell_config("MAML", "glyphs", "20w1s", budget)
    assert (config["train"]["steps"], config["train"]["meta_batch"]) == (200, 4)
    assert (config["data"]["ways"], config["data"]["queries"]) == (20, 5)
    assert config["eval"]["episodes"] == 600 and config["train"]["val_every"] == 0


def test_setting_overrides_respect_a_config_that_trains_on_its_own_queries():
    budget = ft.Budget()
    _, _, reptile = ft.cell_config("Reptile", "glyphs", "20w1s", budget)
    assert reptile["data"]["queries"] == 9 and reptile["eval"]["queries"] == 5
    _, _, snail = ft.cell_config("SNAIL", "glyphs", "5w5s", budget)
    assert snail["algorithm"]["shots"] == 5 and snail["data"]["shots"] == 5
    _, _, within = ft.cell_config("ProtoNet", "glyphs", "20w1s-within", budget)
    assert within["data"]["within"] == "alphabet"
    _, _, mamlpp = ft.cell_config("MAML++", "glyphs", "5w1s", budget)
    assert mamlpp["algorithm"]["msl_anneal_steps"] == 20  # 5000 of 50000 shipped steps


def test_omniglot_cells_need_the_root_and_use_the_shipped_cell_config():
    with pytest.raises(ValueError, match="--omniglot-root"):
        ft.cell_config("MAML", "omniglot-small", "5w1s", ft.Budget())
    name, overrides, config = ft.cell_config("MAML++", "omniglot-small", "20w1s", ft.Budget(),
                                             "/data/omni")
    assert name == "mamlpp-omniglot-small-20w1s" and config["data"]["root"] == "/data/omni"
    name, _, config = ft.cell_config("MAML", "omniglot-small", "5w1s", ft.Budget(), "/data")
    assert name == "maml-glyphs-5w1s" and config["data"]["test_sources"] == ["small2"]


def test_reuse_skips_cells_already_done_and_reruns_changed_ones(tmp_path, monkeypatch):
    calls = []

    def fake_run_cell(config, run_dir, budget):
        calls.append(config["train"]["seed"])
        return {"accuracy": 0.5 + 0.1 * config["train"]["seed"], "episode_ci95": 0.01,
                "episodes": budget.episodes, "train_steps": config["train"]["steps"],
                "seconds_per_iteration": 0.1, "train_seconds": 1.0, "eval_seconds": 1.0,
                "load_average_before": [1.0, 1.0, 1.0], "load_average_after": [1.0, 1.0, 1.0],
                "parameters": 7}

    monkeypatch.setattr(ft, "run_cell", fake_run_cell)
    results, runs = tmp_path / "results", tmp_path / "runs"
    budget = ft.Budget(steps=3, meta_batch=2, episodes=5)
    cells = ft.grid(["ProtoNet"], ["glyphs"], ["5w1s"], [0, 1])
    stale = runs / "glyphs" / "5w1s" / "ProtoNet" / "seed0"  # an interrupted, unrecorded run
    (stale / "sub").mkdir(parents=True)
    (stale / "config.yaml").write_text("{}")
    ft.fill(cells, budget, results, runs, reuse=True)
    assert calls == [0, 1] and not stale.exists()
    ft.fill(ft.grid(["ProtoNet"], ["glyphs"], ["5w1s"], [0, 1, 2]), budget, results, runs,
            reuse=True)
    assert calls == [0, 1, 2]  # seeds 0 and 1 were read back
    ft.fill(cells, ft.Budget(steps=4, meta_batch=2, episodes=5), results, runs, reuse=True)
    assert calls == [0, 1, 2, 0, 1]  # another budget: trained again
    ft.fill(cells, budget, results, runs, reuse=False)
    assert calls[-2:] == [0, 1]  # without --reuse every cell is trained
    record = json.loads(ft.cell_path(results, "ProtoNet", "glyphs", "5w1s", 2).read_text())
    record["config"]["algorithm"]["strategy"] = "vmap"  # as if the shipped config changed
    ft.cell_path(results, "ProtoNet", "glyphs", "5w1s", 2).write_text(json.dumps(record))
    ft.fill(ft.grid(["ProtoNet"], ["glyphs"], ["5w1s"], [2]), budget, results, runs, reuse=True)
    assert calls[-1] == 2 and len(calls) == 8
    rows = ft.write_tables(results)
    assert rows[0]["seeds"] == [0, 1, 2]
    assert rows[0]["accuracy"]["mean"] == pytest.approx(0.6)
    assert (results / "table.md").is_file() and (results / "table.json").is_file()


def test_missing_lists_exactly_the_cells_fill_would_run(tmp_path, monkeypatch):
    monkeypatch.setattr(ft, "run_cell", lambda config, run_dir, budget: {
        "accuracy": 0.5, "episode_ci95": 0.01, "episodes": budget.episodes,
        "train_steps": 3, "seconds_per_iteration": 0.1, "load_average_before": [1.0] * 3,
        "parameters": 7})
    results, budget = tmp_path / "results", ft.Budget(steps=3, meta_batch=2, episodes=5)
    cells = ft.grid(["ProtoNet", "RFS"], ["glyphs"], ["5w1s"], [0, 1], ["conv4"],
                    ["off", "on"])
    ft.fill([cells[0], cells[3]], budget, results, tmp_path / "runs", reuse=True)
    todo = ft.missing(cells, budget, results)
    assert todo == [c for c in cells if c not in (cells[0], cells[3])]
    assert ft.missing(cells, ft.Budget(steps=4, meta_batch=2, episodes=5), results) == cells


def test_issue_grids_are_the_must_show_tables():
    cells = ft.issue_cells("19", [0, 1, 2])
    assert len(cells) == len(set(cells)) == 5 * 2 * 3 * 2 * 2 * 3
    assert {c.method for c in cells} == {"ProtoNet", "MAML", "Baseline++", "RFS",
                                         "Meta-Curvature"}
    assert {(c.backbone, c.augment) for c in cells} == {
        ("conv4", "off"), ("conv4", "on"), ("resnet12-w0.25", "off"), ("resnet12-w0.25", "on")}
    # issue 19: "train on the small1 alphabets plus rotations", val and test unrotated
    assert {c.dataset for c in cells} == {"glyphs", "omniglot-small-rot"}
    data = ft.cell_config("RFS", "omniglot-small-rot", "20w1s-within", ft.Budget(), "/data")[2][
        "data"]
    assert (data["rotations"], data["train_options"]) == (False, {"rotations": True})
    assert (data["train_sources"], data["test_sources"]) == (["small1"], ["small2"])
    assert "train_options" not in ft.cell_config("RFS", "omniglot-small", "5w1s", ft.Budget(),
                                                 "/data")[2]["data"]
    assert {c.dataset for c in ft.issue_cells("13", [0])} == {"glyphs", "omniglot-small"}
    assert {c.setting for c in ft.issue_cells("14", [0])} == {"5w1s", "5w5s", "20w1s"}
    assert len(ft.issue_cells("13", [0])) == 12 * 2 * 2
    with pytest.raises(ValueError, match="issue must be one of"):
        ft.issue_cells("12", [0])


def test_the_issue_table_has_a_cell_per_method_and_variant_and_names_the_best_complete_row(
        monkeypatch):
    monkeypatch.setitem(ft.ISSUE_GRIDS, "T", [dict(
        methods=["ProtoNet", "RFS"], datasets=["glyphs"], settings=["5w1s"],
        backbones=["conv4"], augments=["off", "on"])])

    def record(method, augment, seed, accuracy, **changes):
        return {**_record(method, seed, accuracy, 0.01, 0.5), "backbone": "conv4",
                "augment": augment, "train_seconds": 90.0, **changes}

    records = [record("ProtoNet", "off", s, a) for s, a in ((0, 0.80), (1, 0.84), (2, 0.86))]
    records += [record("ProtoNet", "on", 0, 0.90), record("ProtoNet", "on", 1, 0.92)]
    records += [record("RFS", "on", s, a) for s, a in ((0, 0.85), (1, 0.86), (2, 0.87))]
    records += [record("MAML", "off", s, 0.99) for s in (0, 1, 2)]  # not one of the issue's
    records += [record("RFS", "off", s, 0.99, budget={**BUDGET, "steps": 400})
                for s in (0, 1, 2)]  # another budget
    table = ft.issue_table("T", ft.summarise(records), ft.Budget(200, 4, 600), [0, 1, 2])
    assert "| method | conv4, aug off | conv4, aug on |" in table
    assert "| ProtoNet | 83.3 ± 7.6 (1.5 min) | 90.0, 92.0 (2 of 3 seeds) |" in table
    assert "| RFS | — | 86.0 ± 2.5 (1.5 min) |" in table
    assert "MAML" not in table
    assert "Missing: 4 of 12 cells." in table
    # the 2-seed row (91.0) and the other method (99.0) are not candidates
    assert "Best of the complete rows so far: **RFS, conv4, augmentation on**, 86.0 ± 2.5." \
        in table


def test_grid_is_seed_major():
    cells = ft.grid(["MAML", "ProtoNet"], ["glyphs"], ["5w1s"], [0, 1])
    assert [(c.method, c.seed) for c in cells] == [("MAML", 0), ("ProtoNet", 0), ("MAML", 1),
                                                   ("ProtoNet", 1)]
    assert all(c.backbone is None and c.augment is None for c in cells)  # as shipped
    cells = ft.grid(["MAML"], ["glyphs"], ["5w1s"], [0], ["conv4", "resnet12-w0.5"],
                    ["off", "on"])
    assert [(c.backbone, c.augment) for c in cells] == [
        ("conv4", "off"), ("conv4", "on"), ("resnet12-w0.5", "off"), ("resnet12-w0.5", "on")]
    with pytest.raises(ValueError, match="backbone must be conv4, resnet12"):
        ft.grid(["MAML"], ["glyphs"], ["5w1s"], [0], ["resnet18"])
    with pytest.raises(ValueError, match="augment must be one of"):
        ft.grid(["MAML"], ["glyphs"], ["5w1s"], [0], None, ["yes"])


def test_a_record_made_before_a_new_config_key_is_reused_but_a_changed_value_is_not(tmp_path):
    path = tmp_path / "seed0.json"
    budget = ft.Budget(200, 4, 600)
    old = {"train": {"steps": 200, "lr": 1e-3}, "model": {"name": "conv4"}}
    path.write_text(json.dumps({"budget": BUDGET, "config": old}))
    grown = {"train": {"steps": 200, "lr": 1e-3, "new_option": True}, "model": {"name": "conv4"}}
    assert ft.reusable(path, budget, grown) is not None
    changed = {"train": {"steps": 200, "lr": 2e-3, "new_option": True}, "model": {"name": "conv4"}}
    assert ft.reusable(path, budget, changed) is None
    assert ft.reusable(path, budget, {"train": {"steps": 200}, "model": {"name": "conv4"}}) is None


def test_a_record_is_reused_when_its_data_root_names_the_same_folder_otherwise(
        tmp_path, monkeypatch):
    data = tmp_path / "shared" / "data"
    other = tmp_path / "elsewhere"
    data.mkdir(parents=True)
    other.mkdir()
    monkeypatch.chdir(tmp_path / "shared")
    path = tmp_path / "seed1.json"
    budget = ft.Budget(200, 4, 600)
    recorded = {"data": {"name": "omniglot", "root": "data"}, "train": {"steps": 200}}
    path.write_text(json.dumps({"budget": BUDGET, "config": recorded}))
    absolute = {"data": {"name": "omniglot", "root": str(data)}, "train": {"steps": 200}}
    assert ft.reusable(path, budget, absolute) is not None
    moved = {"data": {"name": "omniglot", "root": str(other)}, "train": {"steps": 200}}
    assert ft.reusable(path, budget, moved) is None


def test_backbone_and_augmentation_overrides_compose_with_the_setting_and_budget():
    budget = ft.Budget()
    # The shipped variant adds no override: the config (and so --reuse) is unchanged.
    _, plain, shipped = ft.cell_config("RFS", "glyphs", "5w1s", budget)
    _, same, config = ft.cell_config("RFS", "glyphs", "5w1s", budget, None,
                                     ft.Variant("conv4", "on"))
    assert same == plain and config == shipped and shipped["data"]["augment"] == "characters"
    _, _, off = ft.cell_config("RFS", "glyphs", "5w1s", budget, None, ft.Variant("conv4", "off"))
    assert off["data"]["augment"] is None and off["train"]["steps"] == 1000
    name, overrides, res = ft.cell_config("MAML", "omniglot-small", "20w1s-within", budget,
                                          "/data", ft.Variant("resnet12-w0.25", "on"))
    assert name == "maml-glyphs-5w1s"
    assert res["model"] == {"name": "resnet12", "in_channels": 1, "image_size": 28,
                            "width": 0.25, "norm": "task", "drop_rate": 0.1, "block_size": 5,
                            "pool": "avg"}
    assert res["data"]["augment"] == "characters" and res["data"]["within"] == "alphabet"
    assert res["data"]["name"] == "omniglot" and res["data"]["ways"] == 20
    assert (res["train"]["steps"], res["train"]["meta_batch"]) == (200, 4)
    assert ft.variant_of(res) == ft.Variant("resnet12-w0.25", "on")
    assert ft.variant_of(ft.cell_config("ProtoNet", "glyphs", "5w1s", budget, None,
                                        ft.Variant("resnet12", "off"))[2]) == \
        ft.Variant("resnet12", "off")
    with pytest.raises(ValueError, match="only a conv4 model is swapped"):
        ft.cell_config("Relation", "glyphs", "5w1s", budget, None, ft.Variant("resnet12", "off"))
    # A method's own non-Conv4 backbone (the grid's default variant) needs no override.
    own = ft.resolve_variant("Relation", "omniglot-small", "5w1s", None, None)[0]
    assert own == ft.Variant("relation-embedding", "off")
    assert ft.variant_overrides(shipped_relation := ft.load_config(ft.resolve_config_path(
        "relation-glyphs-5w1s")), own) == []
    assert ft.variant_of(shipped_relation) == own


def test_the_shipped_variant_keeps_its_path_and_old_records_read_their_variant(tmp_path):
    shipped = ft.Variant("conv4", "off")
    old = ft.cell_path(tmp_path, "MAML", "glyphs", "5w1s", 0)
    assert old == tmp_path / "cells" / "glyphs" / "5w1s" / "MAML" / "seed0.json"
    assert ft.cell_path(tmp_path, "MAML", "glyphs", "5w1s", 0, shipped, shipped) == old
    assert ft.cell_path(tmp_path, "MAML", "glyphs", "5w1s", 0, ft.Variant("conv4", "on"),
                        shipped) == old.parent / "conv4_aug-on" / "seed0.json"
    rfs = ft.Variant("conv4", "on")  # RFS ships with augmentation: that is its plain path
    assert ft.cell_path(tmp_path, "RFS", "glyphs", "5w1s", 1, rfs, rfs).parent.name == "RFS"
    # A record written before the grid had these dimensions: read from its config.
    record = {**_record("RFS", 0, 0.9, 0.01, 0.1),
              "config": {"model": {"name": "conv4"}, "data": {"augment": "characters"}}}
    assert ft.record_variant(record) == rfs
    resnet = {**_record("RFS", 0, 0.8, 0.01, 0.1), "backbone": "resnet12-w0.25",
              "augment": "on"}
    rows = ft.summarise([resnet, record])
    assert [(r["backbone"], r["augment"]) for r in rows] == [("conv4", "on"),
                                                             ("resnet12-w0.25", "on")]
    table = ft.markdown(rows)
    assert "| RFS | resnet12-w0.25 | on | 1 | 80.0 ± 1.0 (1 seed, ± over episodes) |" in table
    assert "Best: **RFS, conv4, augmentation on** (90.0 ± 1.0" in table
    # Rows with 3 seeds are preferred to a higher single seed.
    three = [{**_record("MAML", s, 0.7, 0.01, 0.1), "backbone": "conv4", "augment": "off"}
             for s in range(3)]
    [best] = ft.best_rows(ft.summarise([resnet, record, *three])).values()
    assert (best["method"], len(best["seeds"])) == ("MAML", 3)


@pytest.mark.slow
def test_a_tiny_resnet12_cell_with_augmentation_trains_and_is_recorded(tmp_path):
    """A real cell at a tiny budget: the variant's model and augmentation reach the run."""
    budget = ft.Budget(steps=2, meta_batch=1, episodes=2)
    cells = ft.grid(["ProtoNet"], ["glyphs"], ["5w1s"], [0], ["resnet12-w0.0625"], ["on"])
    [record] = ft.fill(cells, budget, tmp_path / "results", tmp_path / "runs", reuse=True)
    assert (record["backbone"], record["augment"]) == ("resnet12-w0.0625", "on")
    assert record["config"]["model"]["width"] == 0.0625
    assert record["config"]["data"]["augment"] == "characters"
    path = (tmp_path / "results" / "cells" / "glyphs" / "5w1s" / "ProtoNet"
            / "resnet12-w0.0625_aug-on" / "seed0.json")
    assert json.loads(path.read_text())["train_steps"] == 2
    assert 0 <= record["accuracy"] <= 1 and record["episodes"] == 2
    # 4, 10, 20, 40 channels: 3x3 convs, 1x1 shortcuts and two batch-norm vectors per conv
    convs = sum(9 * i * o + 9 * o * o * 2 + i * o for i, o in
                ((1, 4), (4, 10), (10, 20), (20, 40)))
    norms = sum(2 * o * 4 for o in (4, 10, 20, 40))
    assert record["parameters"] == convs + norms


OMNIGLOT_ROOT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "omniglot"

# The recommended recipe of each column (README) and the grid cell it was measured as.
BEST_RECIPES = {
    "best-glyphs-5w1s": ("RFS", "glyphs", "5w1s", ft.Variant("resnet12-w0.25", "off")),
    "best-omniglot-small-5w1s": ("RFS", "omniglot-small", "5w1s", ft.Variant("conv4", "on")),
    "best-omniglot-small-20w1s": ("RFS", "omniglot-small", "20w1s",
                                  ft.Variant("resnet12-w0.25", "on")),
    "best-omniglot-small-20w1s-within": ("RFS", "omniglot-small", "20w1s-within",
                                         ft.Variant("conv4", "on")),
    "best-glyphs-20w1s": ("RFS", "glyphs", "20w1s", ft.Variant("resnet12-w0.25", "on")),
    "best-omniglot-small-rot-5w1s": ("RFS", "omniglot-small-rot", "5w1s",
                                     ft.Variant("resnet12-w0.25", "on")),
    "best-omniglot-small-rot-20w1s": ("RFS", "omniglot-small-rot", "20w1s",
                                      ft.Variant("resnet12-w0.25", "on")),
    "best-omniglot-small-rot-20w1s-within": ("RFS", "omniglot-small-rot", "20w1s-within",
                                             ft.Variant("resnet12-w0.25", "on")),
    "best-glyphs-20w1s-within": ("RFS", "glyphs", "20w1s-within",
                                 ft.Variant("resnet12-w0.25", "on")),
}


def test_every_column_of_issue_19_is_complete_and_ships_its_best_row_as_the_recipe():
    """The committed records decide the recipe: each column, its 60 cells all recorded,
    ships ``best-<dataset>-<setting>``, the method and variant of its best row."""
    rows = ft.summarise(ft.read_records(ft.RESULTS))
    columns = ft.issue_columns("19", rows, ft.Budget(), ft.ISSUE_SEEDS)
    assert [c.missing for c in columns] == [0] * 6
    assert {(c.dataset, c.setting) for c in columns} == {
        ("glyphs", "5w1s"), ("glyphs", "20w1s"), ("glyphs", "20w1s-within"),
        ("omniglot-small-rot", "5w1s"), ("omniglot-small-rot", "20w1s"),
        ("omniglot-small-rot", "20w1s-within")}
    for column in columns:
        best = column.best
        assert BEST_RECIPES[f"best-{column.dataset}-{column.setting}"] == (
            best["method"], column.dataset, column.setting,
            ft.Variant(best["backbone"], best["augment"]))


@pytest.mark.parametrize("name", sorted(BEST_RECIPES))
def test_each_shipped_best_recipe_is_the_grid_cell_it_was_measured_as(name):
    """`metalab train best-...` trains what the column's best cell trained (the Omniglot
    recipes differ only in ``data.root``, which the user points at the zips)."""
    from metalab.cli.main import resolve_config_path
    from metalab.train import load_config

    method, dataset, setting, variant = BEST_RECIPES[name]
    best = load_config(resolve_config_path(name))
    root = best["data"].get("root")
    _, _, cell = ft.cell_config(method, dataset, setting, ft.Budget(), root, variant)
    # a recipe on files states its training classes so that it builds without them
    classes = best["algorithm"].pop("num_classes", None)
    assert (classes is None) == (dataset == "glyphs")
    for section in ("algorithm", "model", "data", "eval"):
        assert best[section] == cell[section], section
    ignored = {"progress", "val_episodes"}  # no effect with val_every 0
    assert {k: v for k, v in best["train"].items() if k not in ignored} == \
        {k: v for k, v in cell["train"].items() if k not in ignored}
    if classes is not None and OMNIGLOT_ROOT.is_dir():
        from metalab.train.build import complete_model_config

        _, _, cell = ft.cell_config(method, dataset, setting, ft.Budget(), str(OMNIGLOT_ROOT),
                                    variant)
        assert complete_model_config(cell)["algorithm"]["num_classes"] == classes
