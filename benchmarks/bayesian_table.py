"""The Bayesian meta-learning table over training seeds: MSE of the predictive mean,
log-likelihood per query point and coverage of the central 90% interval, each the mean over
seeds ± the Student-t 95% half-width over seeds (`metalab.train.report.over_seeds`).

For every family, method and seed a run is read from ``RUNS/<family>/<method>/seed<N>``
(trained there with ``--steps`` meta-iterations when missing, ``train.seed=N``). Methods and
their shipped configs (``FAMILY_CONFIGS``): the MAML family's sinusoid configs, on the GP
family with ``data.name=gaussian-process``; the neural processes' own ``*-gp`` configs.
``llama`` is trained by MAML's objective (its meta-parameters are MAML's), so it is the
``maml`` run's meta-parameters loaded into ``llama-sinusoid``'s learner, not a second run.
MAML's point estimate is scored as ``N(f(x), sigma^2)`` with the family's observation noise
``sigma`` (``FAMILY_NOISE``: 0.1 on sinusoid and GP, as the sinusoid configs, 0.3 on the
ambiguous family, its data noise; ``--maml-noise-std`` overrides), which is also the
predictive noise of the ensemble, BMAML and LLAMA there.

Resuming: each cell's scores (a method on a family, one seed, at these test settings) are
written to ``scores.json`` in its run directory as soon as they are measured, and read back
instead of measured again (``--remeasure`` ignores them), and the table files are rewritten
after every row: a stopped invocation, run again, loses at most the cell in progress.

Test tasks: per family one seeded source (seed 1234) of ``--context`` support points and 100
query points, the same for every method and seed; ``--inner-steps`` at test for the MAML
family.

    python benchmarks/bayesian_table.py --runs /tmp/bayes-table --steps 500 \
        --methods maml maml-ensemble bmaml llama cnp np anp --families sinusoid gp \
        --seeds 0 1 2 --out benchmarks/results/bayesian_table
    python benchmarks/bayesian_table.py --runs /tmp/bayes-table --steps 500 \
        --methods maml maml-ensemble platipus bmaml abml llama cnp np anp \
        --families ambiguous gp --seeds 0 1 2 --combine benchmarks/results/bayesian_table.json \
        --out benchmarks/results/bayesian_table_all
"""

from __future__ import annotations

import argparse
import json
import time
from functools import partial
from pathlib import Path

import torch

from metalab.algorithms.predictive import GaussianPredictive
from metalab.algorithms.predictive_scores import predictive_scores
from metalab.cli.main import resolve_config_path
from metalab.train import load_config, load_run, train_run
from metalab.train.build import build_meta_learner
from metalab.train.checkpoint import atomic_write_text
from metalab.train.report import format_plain, over_seeds, write_json
from metalab.train.run import read_run_config
from metalab.train.sources import build_task_source

#: (config, overrides) of each method per family.
GP_DATA = ["data.name=gaussian-process"]
AMBIGUOUS_DATA = ["data.name=sine-line", "data.support_width=2.0", "data.noise=0.3"]
#: The observation noise std of the predictives without a learned one, per family.
FAMILY_NOISE = {"sinusoid": 0.1, "gp": 0.1, "ambiguous": 0.3}


def _family(data: list[str], own: dict[str, tuple[str, list[str]]], noise: float = 0.1
            ) -> dict:
    """The MAML family's sinusoid configs on ``data`` (predictive noise ``noise``), and the
    family's own configs."""
    noisy = [*data, f"algorithm.noise_std={noise}"] if noise != 0.1 else data
    return {"maml": ("maml-sinusoid-5shot", data),
            "maml-ensemble": ("maml-ensemble-sinusoid", noisy),
            "bmaml": ("bmaml-sinusoid", noisy),
            "bmaml-predictive": ("bmaml-sinusoid", [*noisy, "algorithm.meta_loss=predictive"]),
            **own}


FAMILY_CONFIGS = {
    "sinusoid": _family([], {"cnp": ("cnp-sinusoid", []), "np": ("np-sinusoid", []),
                             "anp": ("anp-sinusoid", []),
                             "platipus": ("platipus-sinusoid", []),
                             "abml": ("abml-sinusoid", [])}),
    "gp": _family(GP_DATA, {"cnp": ("cnp-gp", []), "np": ("np-gp", []), "anp": ("anp-gp", []),
                            "platipus": ("platipus-sinusoid", GP_DATA),
                            "abml": ("abml-sinusoid", GP_DATA)}),
    "ambiguous": _family(AMBIGUOUS_DATA, {"cnp": ("cnp-sinusoid", AMBIGUOUS_DATA),
                                          "np": ("np-sinusoid", AMBIGUOUS_DATA),
                                          "anp": ("anp-sinusoid", AMBIGUOUS_DATA),
                                          "platipus": ("platipus-ambiguous", []),
                                          "abml": ("abml-ambiguous", [])},
                         noise=FAMILY_NOISE["ambiguous"]),
}
#: The test tasks' data section per family.
TEST_CONFIGS = {"sinusoid": ("maml-sinusoid-5shot", []), "gp": ("cnp-gp", ["data.max_shots=null"]),
                "ambiguous": ("platipus-ambiguous", [])}
COLUMNS = ("mse", "log_likelihood", "coverage_90", "coverage_50", "coverage_95")
HEADERS = ("MSE", "log-lik per point", "90% coverage", "50% coverage", "95% coverage")
#: Central intervals scored beside the 90% one.
LEVELS = (0.5, 0.95)


def run_dir(runs: Path, family: str, method: str, seed: int) -> Path:
    return runs / family / method / f"seed{seed}"


def ensure_run(runs: Path, family: str, method: str, seed: int, steps: int) -> Path:
    """The trained run (trained now when missing; ``llama`` is the ``maml`` run)."""
    trained = "maml" if method == "llama" else method
    run = run_dir(runs, family, trained, seed)
    if not (run / "checkpoint.pt").is_file():
        name, overrides = FAMILY_CONFIGS[family][trained]
        config = load_config(resolve_config_path(name), [
            *overrides, f"train.steps={steps}", f"train.seed={seed}", "train.val_every=0",
            "train.progress=false", f"train.checkpoint_every={steps}", "train.compile=false"])
        started = time.time()
        train_run(config, run)
        print(f"trained {family}/{trained}/seed{seed} in {time.time() - started:.0f} s",
              flush=True)
    return run


def learner_of(run: Path, method: str, noise_std: float = 0.1):
    """The run's learner; for ``llama`` MAML's meta-parameters in a LLAMA learner with
    observation noise ``noise_std``."""
    learner = load_run(run)
    if method == "llama":
        config = read_run_config(run)
        config["algorithm"] = {**load_config(resolve_config_path("llama-sinusoid"))["algorithm"],
                               "noise_std": noise_std}
        llama = build_meta_learner(config)
        llama.load_state_dict(learner.state_dict())
        learner = llama
    return learner.eval()


def point_predictive(predictor, noise_std: float) -> GaussianPredictive:
    """A point estimate's predictive ``N(f(x), noise_std^2)``."""
    def decode(x, z):
        mean = predictor(x)
        return mean, torch.full_like(mean, noise_std ** 2)
    return GaussianPredictive(decode)


def test_tasks(family: str, context: int, episodes: int):
    name, overrides = TEST_CONFIGS[family]
    config = load_config(resolve_config_path(name), [*overrides, f"data.shots={context}"])
    source = build_task_source(config, "test", episodes, seed=1234, queries=100)
    return source.sample()


def adapt(learner, support_x, support_y, inner_steps: int, maml_noise_std: float):
    options = {"inner_steps": inner_steps} if "inner_steps" in learner.adapt_options else {}
    predictive = learner.adapt(support_x, support_y, **options)
    if not hasattr(predictive, "variance"):  # a point estimate
        predictive = point_predictive(predictive, maml_noise_std)
    return predictive


def measure(learner, batch, inner_steps: int, maml_noise_std: float) -> dict[str, float]:
    """Each score's mean over the batch's tasks."""
    scores: dict[str, list[torch.Tensor]] = {}
    for t in range(len(batch)):
        predictive = adapt(learner, batch.support_x[t], batch.support_y[t], inner_steps,
                           maml_noise_std)
        for name, value in predictive_scores(predictive, batch.query_x[t], batch.query_y[t],
                                             LEVELS).items():
            scores.setdefault(name, []).append(value)
    return {name: torch.stack(values).double().mean().item()
            for name, values in scores.items()}


def cell_key(family: str, method: str, args: argparse.Namespace, noise_std: float) -> str:
    """What a cell's stored scores depend on besides its run."""
    return (f"{family}/{method}: episodes={args.episodes} context={args.context} "
            f"inner_steps={args.inner_steps} noise_std={noise_std}")


def cell_scores(run: Path, key: str, measure_now) -> dict[str, float]:
    """The scores stored under ``key`` in ``run/scores.json``, else ``measure_now()`` stored
    there (atomically) first."""
    path = run / "scores.json"
    stored = json.loads(path.read_text()) if path.is_file() else {}
    if key not in stored:
        stored[key] = measure_now()
        atomic_write_text(path, json.dumps(stored, indent=2) + "\n")
    return stored[key]


def measure_cell(run: Path, family: str, method: str, args: argparse.Namespace,
                 noise_std: float, tasks: dict) -> dict[str, float]:
    """One cell's scores on the family's test tasks (built once, kept in ``tasks``)."""
    if family not in tasks:
        tasks[family] = test_tasks(family, args.context, args.episodes)
    started = time.time()
    scores = measure(learner_of(run, method, noise_std), tasks[family], args.inner_steps,
                     noise_std)
    print(f"measured {family}/{method}/{run.name} in {time.time() - started:.0f} s",
          flush=True)
    return scores


def cell_text(columns: dict, column: str) -> str:
    return format_plain(columns[column]) if column in columns else "—"


def markdown(results: dict, args: argparse.Namespace, seconds: float) -> str:
    lines = [f"# Bayesian meta-learning over seeds {args.seeds}: {args.episodes} test tasks, "
             f"{args.context} context points, 100 query points; {args.steps} meta-iterations "
             f"per run; {args.inner_steps} inner steps at test; mean over seeds ± t 95% CI "
             f"over seeds; measured in {seconds:.0f} s"
             + (f" (this invocation; rows from {len(args.combine)} earlier ones)"
                if args.combine else ""), ""]
    for family, by_method in results.items():
        lines += [f"## {family}", "", "| method | " + " | ".join(HEADERS) + " |",
                  "|---" * (len(HEADERS) + 1) + "|"]
        for method, columns in by_method.items():
            lines.append(f"| {method} | " + " | ".join(cell_text(columns, c)
                                                      for c in COLUMNS) + " |")
        lines.append("")
    noise = {f: args.maml_noise_std or FAMILY_NOISE[f] for f in results}
    lines.append(f"MAML (point estimate): predictive N(f(x), sigma^2), sigma by family {noise} "
                 f"(also the ensemble's, BMAML's and LLAMA's noise); llama: the maml runs' "
                 f"meta-parameters with LLAMA's Laplace predictive. —: not measured in the "
                 f"invocation that made the row.")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=Path, required=True)
    parser.add_argument("--methods", nargs="*", default=[])
    parser.add_argument("--families", nargs="+", default=["sinusoid", "gp"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--context", type=int, default=5)
    parser.add_argument("--inner-steps", type=int, default=10)
    parser.add_argument("--maml-noise-std", type=float, default=None,
                        help="the point estimate's (and LLAMA's) noise std; default the "
                             "family's (FAMILY_NOISE)")
    parser.add_argument("--remeasure", action="store_true",
                        help="measure every cell again instead of reading its scores.json")
    parser.add_argument("--train-only", action="store_true")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--combine", nargs="+", type=Path, default=[],
                        help="JSON files of earlier runs with the same settings: their rows "
                             "join this table")
    args = parser.parse_args()
    for family in args.families:
        known = set(FAMILY_CONFIGS[family]) | {"llama"}
        unknown = sorted(set(args.methods) - known)
        if unknown:
            raise SystemExit(f"--methods: unknown {unknown} for {family}; known {sorted(known)}")
    torch.set_num_threads(1)
    start = time.time()
    results: dict = {}
    per_seed: dict = {}
    for path in args.combine:
        earlier = json.loads(path.read_text())
        for family, rows in earlier["results"].items():
            results.setdefault(family, {}).update(rows)
            per_seed.setdefault(family, {}).update(earlier["per_seed"][family])
    tasks: dict = {}
    for family in args.families:
        noise_std = args.maml_noise_std or FAMILY_NOISE[family]
        for method in args.methods:
            values = []
            for seed in args.seeds:
                run = ensure_run(args.runs, family, method, seed, args.steps)
                if args.train_only:
                    continue
                key = cell_key(family, method, args, noise_std)
                if args.remeasure and (run / "scores.json").is_file():
                    (run / "scores.json").unlink()
                values.append(cell_scores(run, key, partial(
                    measure_cell, run, family, method, args, noise_std, tasks)))
            if args.train_only:
                continue
            per_seed.setdefault(family, {})[method] = values
            results.setdefault(family, {})[method] = {
                c: over_seeds([v[c] for v in values]) for c in COLUMNS}
            print(family, method, {c: format_plain(results[family][method][c])
                                   for c in COLUMNS}, flush=True)
            write_tables(results, per_seed, args, time.time() - start)
    if args.train_only:
        return
    print(write_tables(results, per_seed, args, time.time() - start))


def write_tables(results: dict, per_seed: dict, args: argparse.Namespace, seconds: float
                 ) -> str:
    """The markdown table (returned) and, with ``--out``, both result files (rewritten after
    every row)."""
    text = markdown(results, args, seconds)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(Path(f"{args.out}.md"), text + "\n")
        write_json(f"{args.out}.json", {"args": {k: str(v) for k, v in vars(args).items()},
                                        "results": results, "per_seed": per_seed})
    return text


if __name__ == "__main__":
    main()
