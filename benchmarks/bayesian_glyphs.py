"""Glyphs 5-way 1-shot: accuracy, negative log-likelihood and expected calibration error
(15 equal-width bins, pooled over every query; 95% CI by a bootstrap over episodes) of MAML,
an ensemble of 5 MAMLs, BMAML, LLAMA, PLATIPUS and amortized Bayesian MAML (ABML), each
through `Evaluator` (the path of `metalab eval`) on the same seeded test episodes; with
``--seeds`` also the signed gap ``confidence - accuracy`` (the mean top-class probability
minus the accuracy, pooled over the queries: positive = over-confident, negative =
under-confident; the ECE says how far, the gap which way).

Runs (``RUNS/...``, trained beforehand with ``metalab train``, see docs/bayesian-methods.md):

- ``maml-seed0`` .. ``maml-seed4``: ``maml-glyphs-5w1s`` with ``train.seed=0..4``;
- ``bmaml``: ``bmaml-glyphs-5w1s`` (only for the ``bmaml`` row);
- ``maml-lr0.08``: ``maml-glyphs-5w1s`` with ``algorithm.inner_lr=0.08`` (only for the
  ``maml (inner lr 0.08)`` row): MAML at the inner step BMAML's SVGD takes in effect (its
  direction is the kernel-weighted *mean* over the 5 particles, so a particle's own gradient
  enters with weight ``1/5``: 0.4 / 5 = 0.08).

The matched-step rows (every method at the effective inner step 0.08, so that the table
compares the Bayesian treatments and not step sizes):

- ``maml-lr0.08-m1`` .. ``m4``: ``maml-glyphs-5w1s`` with ``algorithm.inner_lr=0.08`` and
  ``train.seed`` one to four above ``maml-lr0.08``'s: with ``maml-lr0.08`` the members of
  ``maml-ensemble (5 MAMLs, inner lr 0.08)``; ``llama (...; inner lr 0.08)`` is
  ``maml-lr0.08``'s meta-parameters with LLAMA's predictive;
- ``bmaml`` (inner lr 0.4 over 5 particles, the effective 0.08);
- ``platipus``: ``platipus-glyphs-5w1s``; ``abml``: ``abml-glyphs-5w1s`` (both at inner lr
  0.08, 5 drawn classifiers per task).

With ``--seeds``, ``RUNS/seed<N>`` holds one such set of runs per seed (the layout above);
each cell (method, seed, episodes) is measured once and stored in
``RUNS/seed<N>/glyphs-<method>-e<episodes>.json``, read back on later invocations (a stopped
invocation loses at most the cell in progress), and a row is the mean over seeds ± the
Student-t 95% half-width over seeds of each seed's accuracy, NLL and ECE.

MAML is ``maml-seed0``. The ensemble is the five MAML runs as the members of a
``maml-ensemble-glyphs-5w1s`` learner: its members never interact and its meta-loss is the
mean of their MAML losses, so independently trained MAMLs are its members (up to Adam's
``eps`` under the ``1/M`` scale of each member's gradient). LLAMA is ``maml-seed0``'s
meta-parameters in a ``llama-glyphs-5w1s`` learner (LLAMA is trained by MAML's objective).
``svgd on the 5 MAMLs`` is BMAML's adaptation and predictive (SVGD, mean softmax) with the five
MAML runs as its initial particles, without BMAML's meta-training.

    python benchmarks/bayesian_glyphs.py --runs /tmp/glyph-runs --episodes 600 \
        --out benchmarks/results/bayesian_glyphs
    python benchmarks/bayesian_glyphs.py --runs /tmp/glyph-seeds --seeds 0 1 2 \
        --episodes 100 --out benchmarks/results/bayesian_glyphs_seeds
    python benchmarks/bayesian_glyphs.py --runs /tmp/glyph-seeds --seeds 0 1 2 \
        --episodes 100 --methods "maml (inner lr 0.08)" \
        "maml-ensemble (5 MAMLs, inner lr 0.08)" bmaml platipus abml \
        "llama (last-layer Laplace, probit; inner lr 0.08)" \
        --out benchmarks/results/bayesian_glyphs_table
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from metalab.cli.main import resolve_config_path
from metalab.functional import parameter_key
from metalab.train import load_config, load_run
from metalab.train.build import build_meta_learner
from metalab.train.evaluator import Evaluator
from metalab.train.report import format_percent, format_plain, over_seeds, write_json
from metalab.train.run import RunDirError, read_run_config
from metalab.train.sources import build_task_source

MEMBERS = 5


def with_algorithm(run: Path, config_name: str, inner_lr: float | None = None) -> dict:
    """``run``'s config with the algorithm section of ``config_name`` (its inner lr replaced
    by ``inner_lr`` when given)."""
    config = read_run_config(run)
    config["algorithm"] = dict(load_config(resolve_config_path(config_name))["algorithm"])
    if inner_lr is not None:
        config["algorithm"]["inner_lr"] = inner_lr
    return config


def ensemble_of(runs: Path, members: list[str] | None = None, inner_lr: float | None = None):
    """The runs ``members`` (default ``maml-seed0..4``) as the members of a
    ``maml-ensemble-glyphs-5w1s`` learner (inner lr ``inner_lr``, default the config's)."""
    names = members or [f"maml-seed{s}" for s in range(MEMBERS)]
    members = [load_run(runs / name) for name in names]
    ensemble = build_meta_learner(with_algorithm(runs / names[0],
                                                 "maml-ensemble-glyphs-5w1s", inner_lr))
    with torch.no_grad():
        for name in ensemble.names:
            for m, member in enumerate(members):
                ensemble.particles[parameter_key(name)][m].copy_(
                    dict(member.model.named_parameters())[name])
    return ensemble


def svgd_of(runs: Path):
    """BMAML's test-time inference (SVGD over 5 particles) started from the 5 MAML runs'
    meta-parameters: the particles of a ``bmaml-glyphs-5w1s`` learner, without BMAML's
    meta-training."""
    ensemble = ensemble_of(runs)
    bmaml = build_meta_learner(with_algorithm(runs / "maml-seed0", "bmaml-glyphs-5w1s"))
    bmaml.load_state_dict(ensemble.state_dict())
    return bmaml


def llama_of(runs: Path, run: str = "maml-seed0", inner_lr: float | None = None):
    """``run``'s MAML meta-parameters in a ``llama-glyphs-5w1s`` learner (inner lr
    ``inner_lr``, default the config's 0.4)."""
    maml = load_run(runs / run)
    llama = build_meta_learner(with_algorithm(runs / run, "llama-glyphs-5w1s", inner_lr))
    llama.load_state_dict(maml.state_dict())
    return llama


#: The members of the ensemble at inner lr 0.08: ``maml-lr0.08`` and four more runs of it
#: (``maml-lr0.08-m1..4``, ``train.seed`` one to four above ``maml-lr0.08``'s).
MEMBERS_008 = ["maml-lr0.08"] + [f"maml-lr0.08-m{k}" for k in range(1, MEMBERS)]

LEARNERS = {"maml": lambda runs: load_run(runs / "maml-seed0"),
            "maml (inner lr 0.08)": lambda runs: load_run(runs / "maml-lr0.08"),
            "maml-ensemble (5 MAMLs)": ensemble_of,
            "maml-ensemble (5 MAMLs, inner lr 0.08)":
                lambda runs: ensemble_of(runs, MEMBERS_008, inner_lr=0.08),
            "bmaml": lambda runs: load_run(runs / "bmaml"),
            "svgd on the 5 MAMLs (no BMAML meta-training)": svgd_of,
            "llama (last-layer Laplace, probit)": llama_of,
            "llama (last-layer Laplace, probit; inner lr 0.08)":
                lambda runs: llama_of(runs, "maml-lr0.08", inner_lr=0.08),
            "platipus": lambda runs: load_run(runs / "platipus"),
            "abml": lambda runs: load_run(runs / "abml")}

#: Each row's effective inner step: SGD's lr, or for BMAML's SVGD the lr over the number of
#: particles (0.4 / 5, module doc); PLATIPUS and ABML adapt at their configs' 0.08.
EFFECTIVE_STEP = {"maml": 0.4, "maml-ensemble (5 MAMLs)": 0.4,
                  "llama (last-layer Laplace, probit)": 0.4,
                  "svgd on the 5 MAMLs (no BMAML meta-training)": 0.08}


def measure(learner_name: str, runs: Path, episodes: int) -> dict:
    """The `Evaluator`'s result of one method on ``runs``' test episodes."""
    config = read_run_config(runs / "maml-seed0")
    learner = LEARNERS[learner_name](runs)
    source = build_task_source(config, "test", config["eval"]["batch_size"],
                               seed=config["eval"]["seed"])
    return Evaluator(episodes).evaluate(learner, source)


def cell_path(runs: Path, learner_name: str, episodes: int) -> Path:
    slug = "".join(c if c.isalnum() or c in ".-" else "_" for c in learner_name)
    return runs / f"glyphs-{slug}-e{episodes}.json"


def stored_measure(learner_name: str, runs: Path, episodes: int) -> dict:
    """`measure`, stored in (and read back from) `cell_path`."""
    path = cell_path(runs, learner_name, episodes)
    if path.exists():
        return json.loads(path.read_text())
    result = measure(learner_name, runs, episodes)
    write_json(path, result)
    return result


def seed_row(per_seed: list[dict]) -> dict:
    """Accuracy, NLL, ECE and, when the cells have the pooled confidence, the signed gap
    ``confidence - accuracy`` (positive: over-confident): the mean over seeds ± the t 95%
    half-width over seeds."""
    row = {key: over_seeds([r[key] for r in per_seed]) for key in ("mean", "nll", "ece")}
    if all("confidence" in r for r in per_seed):
        row["gap"] = over_seeds([r["confidence"] - r["mean"] for r in per_seed])
    return row


def rows_over_seeds(names: list[str], runs: Path, seeds: list[int], episodes: int,
                    fewer_seeds: bool = False):
    """``(rows, per_seed, seeds_of, missing)``: each method's `seed_row` over ``seeds``
    (cells from `stored_measure` in ``runs/seed<N>``). A method missing a seed's run is left
    out and named in ``missing``; with ``fewer_seeds`` its row is over the seeds it has
    (``seeds_of``) and only the seeds without a run are named."""
    rows, per_seed, seeds_of, missing = {}, {}, {}, []
    for name in names:
        cells, absent = {}, []
        for s in seeds:
            try:
                cells[s] = stored_measure(name, runs / f"seed{s}", episodes)
            except (FileNotFoundError, RunDirError) as error:
                absent.append(f"{name} ({error})")
                if not fewer_seeds:
                    break
        if absent and (not fewer_seeds or not cells):
            missing.append(absent[0] if not fewer_seeds else "; ".join(absent))
            continue
        missing.extend(absent)
        per_seed[name], seeds_of[name] = list(cells.values()), list(cells)
        rows[name] = seed_row(per_seed[name])
        print(name, {k: format_plain(v) for k, v in rows[name].items()}, flush=True)
    return rows, per_seed, seeds_of, missing


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=Path, required=True)
    parser.add_argument("--episodes", type=int, default=600)
    parser.add_argument("--methods", nargs="+", default=list(LEARNERS))
    parser.add_argument("--seeds", nargs="+", type=int, default=None,
                        help="RUNS/seed<N> per seed; rows: mean over seeds")
    parser.add_argument("--fewer-seeds", action="store_true",
                        help="with --seeds: a method whose runs exist for only some seeds "
                             "gets a row over those (its seeds named), the rest listed")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--combine", nargs="+", type=Path, default=None,
                        help="JSON files of earlier runs (one method each): write one table")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.seeds is not None:
        return main_seeds(args)
    config = read_run_config(args.runs / "maml-seed0")
    results, started = {}, time.time()
    if args.combine:
        args.methods = []
        for path in args.combine:
            earlier = json.loads(path.read_text())
            results.update(earlier["results"])
            started -= earlier["seconds"]
    for name in args.methods:
        results[name] = result = measure(name, args.runs, args.episodes)
        print(name, {k: round(v, 4) for k, v in result.items() if isinstance(v, float)},
              flush=True)
    seconds = time.time() - started
    checkpoint = torch.load(args.runs / "maml-seed0" / "checkpoint.pt", weights_only=False)
    steps = checkpoint["step"], config["train"]["meta_batch"]  # the step it was saved at
    lines = [f"# Glyphs 5-way 1-shot: {args.episodes} test episodes (seed "
             f"{config['eval']['seed']}), {steps[0]} meta-iterations x {steps[1]} tasks per "
             f"run; accuracy and NLL mean ± 95% CI over episodes, ECE (15 bins, pooled) ± "
             f"half-width of a 95% bootstrap interval over episodes; measured in "
             f"{seconds:.0f} s", "", "| method | accuracy (%) | NLL | ECE |", "|---|---|---|---|"]
    for name, r in results.items():
        lines.append(f"| {name} | {100 * r['mean']:.1f} ± {100 * r['ci95']:.1f} | "
                     f"{format_plain({'mean': r['nll'], 'ci95': r['nll_ci95']})} | "
                     f"{format_plain({'mean': r['ece'], 'ci95': r['ece_ci95']})} |")
    write_table(args, "\n".join(lines), {"episodes": args.episodes, "seconds": seconds,
                                         "results": results})


def main_seeds(args) -> None:
    """The table over ``args.seeds`` (module doc): methods whose runs are missing for some
    seed are left out and named."""
    started = time.time()
    rows, per_seed, seeds_of, missing = rows_over_seeds(
        args.methods, args.runs, args.seeds, args.episodes, args.fewer_seeds)
    seconds = time.time() - started
    config = read_run_config(args.runs / f"seed{args.seeds[0]}" / "maml-seed0")
    checkpoint = torch.load(args.runs / f"seed{args.seeds[0]}" / "maml-seed0" /
                            "checkpoint.pt", weights_only=False)
    lines = [f"# Glyphs 5-way 1-shot over training seeds {args.seeds}: {args.episodes} test "
             f"episodes (seed {config['eval']['seed']}) per seed, {checkpoint['step']} "
             f"meta-iterations x {config['train']['meta_batch']} tasks per run; mean over "
             f"seeds ± Student-t 95% CI over seeds (ECE: 15 bins, pooled over the episodes "
             f"of a seed); this invocation {seconds:.0f} s", "",
             "| method | effective inner step | accuracy (%) | NLL | ECE | confidence - "
             "accuracy | accuracy per seed (%) |", "|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        values = ", ".join(f"{100 * v:.1f}" for v in r["mean"]["values"])
        if seeds_of[name] != list(args.seeds):
            label = "seed" if len(seeds_of[name]) == 1 else "seeds"
            values += f" ({label} {', '.join(map(str, seeds_of[name]))} only)"
        gap = format_plain(r["gap"]) if "gap" in r else "–"
        lines.append(f"| {name} | {EFFECTIVE_STEP.get(name, 0.08)} | "
                     f"{format_percent(r['mean'])} | {format_plain(r['nll'])} | "
                     f"{format_plain(r['ece'])} | {gap} | {values} |")
    if missing:
        lines += ["", "Not measured (runs missing): " + "; ".join(missing)]
    write_table(args, "\n".join(lines), {"episodes": args.episodes, "seeds": args.seeds,
                                         "seconds": seconds, "per_seed": per_seed,
                                         "seeds_of": seeds_of, "results": rows})


def write_table(args, text: str, payload: dict) -> None:
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        Path(f"{args.out}.md").write_text(text + "\n")
        write_json(f"{args.out}.json", payload)


if __name__ == "__main__":
    main()
