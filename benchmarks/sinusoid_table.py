"""Sinusoid 5-shot regression at one budget: MSE after 1 and 10 inner steps (issue 13).

Every cell (method, seed) is the shipped ``maml-sinusoid-5shot`` config (MLP 1-40-40-1,
amplitude U[0.1, 5], phase U[0, pi], 5 support and, in training, 5 query points) with the
method's ``algorithm`` section below and the grid's budget (``--steps`` meta-iterations x
``--meta-batch`` tasks), meta-trained with `metalab.train.train_run` and evaluated with
`metalab.train.evaluate_run` on the same ``--episodes`` test tasks (100 query points each)
after 1 and after 10 inner steps of the method's own update rule (learned rates, transforms,
preconditioners and warps included). Records and ``--reuse`` work as in
``fewshot_table.py``: ``benchmarks/results/sinusoid_table/cells/<method>/seed<N>.json``,
tables in ``table.md``/``table.json`` (mean ± Student-t 95% CI over seeds).

    OMP_NUM_THREADS=1 python benchmarks/sinusoid_table.py --reuse --seeds 0 1 2

Every method adapts with plain gradient steps of size 0.01 (the MAML paper's) except where
the method is its rule: Meta-SGD (learned per-entry rates, initialised at 0.01), MT-Net and
T-Net (steps through meta-learned transforms), Meta-Curvature (a meta-learned preconditioner)
and WarpGrad (warp layers). Training inner steps: 1 for the MAML family (the paper's), 5 for
Reptile (SGD on support + query, outer SGD with step 1 annealed linearly to 0), 10 for
iMAML (the proximal problem with lambda 2, 5 CG iterations) and 3 for WarpGrad (its
trajectory objective needs more than one point).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fewshot_table import (  # noqa: E402  (a sibling script)
    environment,
    parameter_count,
    reusable,
    seconds_per_iteration,
)

from metalab.cli.main import resolve_config_path  # noqa: E402
from metalab.train import evaluate_run, load_config, train_run  # noqa: E402
from metalab.train.checkpoint import atomic_write_text  # noqa: E402
from metalab.train.config import resolve  # noqa: E402
from metalab.train.report import format_plain, over_seeds, write_json  # noqa: E402
from metalab.train.seeds import with_seed  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "sinusoid_table"
CONFIG = "maml-sinusoid-5shot"
LR = 0.01
METHODS = {
    "MAML": {"name": "maml", "inner_lr": LR, "inner_steps": 1, "first_order": False},
    # MAML++'s options that apply to an MLP (no batch norm): 5 training steps, the
    # multi-step loss annealed over the first 10% of the budget, learned per-step rates.
    "MAML++": {"name": "maml", "inner_lr": LR, "inner_steps": 5, "first_order": False,
               "multi_step_loss": True, "per_step_lrs": True},
    "FOMAML": {"name": "fomaml", "inner_lr": LR, "inner_steps": 1},
    "Reptile": {"name": "reptile", "inner_optimizer": "sgd", "inner_lr": LR, "inner_steps": 5},
    "iMAML": {"name": "imaml", "lam": 2.0, "inner_lr": LR, "inner_steps": 10, "cg_steps": 5},
    "Meta-SGD": {"name": "metasgd", "inner_lr": LR, "inner_steps": 1},
    "ANIL": {"name": "anil", "inner_lr": LR, "inner_steps": 1},
    "MT-Net": {"name": "mtnet", "inner_lr": LR, "inner_steps": 1},
    "T-Net": {"name": "tnet", "inner_lr": LR, "inner_steps": 1},
    "Meta-Curvature": {"name": "metacurvature", "inner_lr": LR, "inner_steps": 1},
    "WarpGrad": {"name": "warpgrad", "inner_lr": LR, "inner_steps": 3},
}
# The outer step of a method whose meta-update is not a loss gradient (Reptile).
OUTER = {"Reptile": {"optimizer": "sgd", "lr": 1.0, "lr_schedule": "linear", "lr_final": 0.0},
         "MAML++": {"lr_schedule": "cosine", "lr_final": 1e-5}}
EVAL_STEPS = (1, 10)


@dataclass(frozen=True)
class Budget:
    steps: int = 1000
    meta_batch: int = 25
    episodes: int = 600


def cell_config(method: str, budget: Budget) -> dict:
    """The shipped sinusoid config with the method's algorithm and the budget."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {list(METHODS)}, got {method!r}")
    config = load_config(resolve_config_path(CONFIG), [
        f"train.steps={budget.steps}", f"train.meta_batch={budget.meta_batch}",
        "train.val_every=0", f"train.checkpoint_every={budget.steps}",
        f"train.log_every={max(1, budget.steps // 10)}", "train.progress=false",
        "train.compile=false", f"eval.episodes={budget.episodes}"])
    config["algorithm"] = {**METHODS[method], "strategy": "loop"}
    if config["algorithm"].get("multi_step_loss"):
        config["algorithm"]["msl_anneal_steps"] = max(1, budget.steps // 10)
    config["train"].update(OUTER.get(method, {}))
    return resolve(config)  # validated, defaults filled, as load_config does


def run_cell(config: dict, run_dir: Path, budget: Budget) -> dict:
    started = time.perf_counter()
    train_run(config, run_dir)
    train_seconds = time.perf_counter() - started
    per_step, steps = seconds_per_iteration(run_dir)
    mse = {}
    for inner in EVAL_STEPS:
        result = evaluate_run(run_dir, episodes=budget.episodes, inner_steps=inner)
        mse[str(inner)] = {"mean": result["mean"], "episode_ci95": result["ci95"]}
    return {"mse": mse, "train_steps": steps, "seconds_per_iteration": per_step,
            "train_seconds": train_seconds, "parameters": parameter_count(run_dir)}


def cell_path(results: Path, method: str, seed: int) -> Path:
    return results / "cells" / method.replace(" ", "_") / f"seed{seed}.json"


def fill(methods: list[str], seeds: list[int], budget: Budget, results: Path, runs: Path,
         reuse: bool) -> None:
    for seed in seeds:
        for method in methods:
            config = with_seed(cell_config(method, budget), seed)
            path = cell_path(results, method, seed)
            record = reusable(path, budget, config) if reuse else None
            state = "reused"
            if record is None:
                run_dir = runs / method.replace(" ", "_") / f"seed{seed}"
                if run_dir.exists():  # an earlier, unrecorded attempt: start again
                    shutil.rmtree(run_dir)
                load = os.getloadavg()
                record = {"method": method, "seed": seed, "budget": asdict(budget),
                          "environment": environment(), "load_average_before": list(load),
                          **run_cell(config, run_dir, budget),
                          "load_average_after": list(os.getloadavg()),
                          "config": config}
                write_json(path, record)
                state = "ran"
            print(f"{state} {method} seed {seed}: " + ", ".join(
                f"MSE@{k} {v['mean']:.3f}" for k, v in record["mse"].items()), flush=True)


def summarise(records: list[dict]) -> list[dict]:
    """One row per (budget, method): MSE after each number of inner steps over seeds."""
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault((json.dumps(r["budget"], sort_keys=True), r["method"]), []).append(r)
    order = {m: i for i, m in enumerate(METHODS)}
    rows = []
    for (budget, method), members in sorted(groups.items(),
                                            key=lambda kv: (kv[0][0], order[kv[0][1]])):
        members.sort(key=lambda r: r["seed"])
        rows.append({"method": method, "budget": json.loads(budget),
                     "seeds": [r["seed"] for r in members],
                     "mse": {k: over_seeds([r["mse"][k]["mean"] for r in members])
                             for k in members[0]["mse"]},
                     "mse_episode_ci95": {k: sum(r["mse"][k]["episode_ci95"] for r in members)
                                          / len(members) for k in members[0]["mse"]},
                     "seconds_per_iteration": sum(r["seconds_per_iteration"] for r in members)
                     / len(members),
                     "load_average": sum(r["load_average_before"][0] for r in members)
                     / len(members),
                     "load_average_after": sum(
                         r.get("load_average_after", r["load_average_before"])[0]
                         for r in members) / len(members),
                     "parameters": members[0]["parameters"]})
    return rows


def mse_cell(row: dict, steps: str) -> str:
    """``1.234 ± 0.056`` over seeds; one seed shows its interval over test tasks."""
    entry = row["mse"][steps]
    diverged = [v for v in entry["values"] if not math.isfinite(v)]
    if diverged:  # a rate learned for fewer steps, repeated, can blow up: say so
        finite = ", ".join(f"{v:.3f}" for v in entry["values"] if math.isfinite(v))
        return (f"diverged in {len(diverged)} of {entry['n']} seeds"
                + (f" (others: {finite})" if finite else ""))
    if entry["n"] == 1:
        return format_plain({"mean": entry["mean"], "ci95": row["mse_episode_ci95"][steps]}) \
            + " (1 seed, ± over tasks)"
    return format_plain(entry)


def markdown(rows: list[dict]) -> str:
    lines, current = [], None
    for row in rows:
        if row["budget"] != current:
            current = b = row["budget"]
            lines += [f"\n### sinusoid 5-shot: {b['steps']} meta-iterations x {b['meta_batch']} "
                      f"tasks, {b['episodes']} test tasks (100 query points each)\n",
                      "| method | seeds | MSE, 1 step | MSE, 10 steps | s/iteration | load | "
                      "parameters |", "|---|---|---|---|---|---|---|"]
        cells = [mse_cell(row, str(k)) if str(k) in row["mse"] else "" for k in EVAL_STEPS]
        lines.append(f"| {row['method']} | {len(row['seeds'])} | " + " | ".join(cells)
                     + f" | {row['seconds_per_iteration']:.4f} | {row['load_average']:.0f}-"
                     f"{row['load_average_after']:.0f} | "
                     f"{row['parameters']:,} |")
    return "\n".join(lines) + ("\n\nMSE: mean over seeds ± Student-t 95% half-width over seeds "
                               "(one seed: its 95% interval over the test tasks). "
                               "s/iteration: one thread, load-inflated when 'load' (1-minute "
                               "load average at the start and end of the cell) exceeds the "
                               "cores.\n")


def write_tables(results: Path) -> list[dict]:
    records = [json.loads(p.read_text()) for p in sorted((results / "cells").rglob("*.json"))]
    rows = summarise(records)
    atomic_write_text(results / "table.md", "# Sinusoid table\n" + markdown(rows))
    write_json(results / "table.json", {"rows": rows})
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=Budget.steps)
    parser.add_argument("--meta-batch", type=int, default=Budget.meta_batch)
    parser.add_argument("--episodes", type=int, default=Budget.episodes)
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--runs", type=Path, default=None)
    parser.add_argument("--reuse", action="store_true")
    parser.add_argument("--table-only", action="store_true")
    args = parser.parse_args(argv)
    if not args.table_only:
        budget = Budget(args.steps, args.meta_batch, args.episodes)
        with tempfile.TemporaryDirectory(prefix="sinusoid-table-") as tmp:
            fill(args.methods, args.seeds, budget, args.results, args.runs or Path(tmp),
                 args.reuse)
    print(markdown(write_tables(args.results)))


if __name__ == "__main__":
    main()
