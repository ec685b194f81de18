"""The Bayesian meta-learning table over training seeds: MSE of the predictive mean,
log-likelihood per query point and coverage of the central 90% interval, each the mean over
seeds ± the Student-t 95% half-width over seeds (`metalab.train.report.over_seeds`).

For every family, method and seed a run is read from ``RUNS/<family>/<method>/seed<N>``
(trained there with ``--steps`` meta-iterations when missing, ``train.seed=N``). Methods and
their shipped configs (``FAMILY_CONFIGS``): the MAML family's sinusoid configs, on the GP
family with ``data.name=gaussian-process``; the neural processes' own ``*-gp`` configs.
``llama`` is trained by MAML's objective (its meta-parameters are MAML's), so it is the
``maml`` run's meta-parameters loaded into ``llama-sinusoid``'s learner, not a second run.
MAML's point estimate is scored as ``N(f(x), --maml-noise-std^2)``.

Test tasks: per family one seeded source (seed 1234) of ``--context`` support points and 100
query points, the same for every method and seed; ``--inner-steps`` at test for the MAML
family.

    python benchmarks/bayesian_table.py --runs /tmp/bayes-table --steps 500 \
        --methods maml maml-ensemble bmaml llama cnp np anp --families sinusoid gp \
        --seeds 0 1 2 --out benchmarks/results/bayesian_table
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from metalab.algorithms.predictive import GaussianPredictive
from metalab.algorithms.predictive_scores import predictive_scores
from metalab.cli.main import resolve_config_path
from metalab.train import load_config, load_run, train_run
from metalab.train.build import build_meta_learner
from metalab.train.report import format_plain, over_seeds, write_json
from metalab.train.run import read_run_config
from metalab.train.sources import build_task_source

#: (config, overrides) of each method per family.
GP_DATA = ["data.name=gaussian-process"]
AMBIGUOUS_DATA = ["data.name=sine-line", "data.support_width=2.0", "data.noise=0.3"]


def _family(data: list[str], own: dict[str, tuple[str, list[str]]]) -> dict:
    """The MAML family's sinusoid configs on ``data``, and the family's own configs."""
    return {"maml": ("maml-sinusoid-5shot", data),
            "maml-ensemble": ("maml-ensemble-sinusoid", data),
            "bmaml": ("bmaml-sinusoid", data),
            "bmaml-predictive": ("bmaml-sinusoid", [*data, "algorithm.meta_loss=predictive"]),
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
                                          "abml": ("abml-ambiguous", [])}),
}
#: The test tasks' data section per family.
TEST_CONFIGS = {"sinusoid": ("maml-sinusoid-5shot", []), "gp": ("cnp-gp", ["data.max_shots=null"]),
                "ambiguous": ("platipus-ambiguous", [])}
COLUMNS = ("mse", "log_likelihood", "coverage_90")


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


def learner_of(run: Path, method: str):
    """The run's learner; for ``llama`` MAML's meta-parameters in a LLAMA learner."""
    learner = load_run(run)
    if method == "llama":
        config = read_run_config(run)
        config["algorithm"] = {**load_config(resolve_config_path("llama-sinusoid"))["algorithm"]}
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
        for name, value in predictive_scores(predictive, batch.query_x[t],
                                             batch.query_y[t]).items():
            scores.setdefault(name, []).append(value)
    return {name: torch.stack(values).double().mean().item()
            for name, values in scores.items()}


def markdown(results: dict, args: argparse.Namespace, seconds: float) -> str:
    lines = [f"# Bayesian meta-learning over seeds {args.seeds}: {args.episodes} test tasks, "
             f"{args.context} context points, 100 query points; {args.steps} meta-iterations "
             f"per run; {args.inner_steps} inner steps at test; mean over seeds ± t 95% CI "
             f"over seeds; measured in {seconds:.0f} s"
             + (f" (this invocation; rows from {len(args.combine)} earlier ones)"
                if args.combine else ""), ""]
    for family, by_method in results.items():
        lines += [f"## {family}", "", "| method | MSE | log-lik per point | 90% coverage |",
                  "|---|---|---|---|"]
        for method, columns in by_method.items():
            lines.append(f"| {method} | " + " | ".join(format_plain(columns[c])
                                                      for c in COLUMNS) + " |")
        lines.append("")
    lines.append(f"MAML (point estimate): predictive N(f(x), {args.maml_noise_std}^2); "
                 f"llama: the maml runs' meta-parameters with LLAMA's Laplace predictive.")
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
    parser.add_argument("--maml-noise-std", type=float, default=0.1)
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
    for family in args.families:
        batch = None if args.train_only else test_tasks(family, args.context, args.episodes)
        for method in args.methods:
            values = []
            for seed in args.seeds:
                run = ensure_run(args.runs, family, method, seed, args.steps)
                if batch is not None:
                    values.append(measure(learner_of(run, method), batch, args.inner_steps,
                                          args.maml_noise_std))
            if batch is None:
                continue
            per_seed.setdefault(family, {})[method] = values
            results.setdefault(family, {})[method] = {
                c: over_seeds([v[c] for v in values]) for c in COLUMNS}
            print(family, method, {c: format_plain(results[family][method][c])
                                   for c in COLUMNS}, flush=True)
    if args.train_only:
        return
    text = markdown(results, args, time.time() - start)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        Path(f"{args.out}.md").write_text(text + "\n")
        write_json(f"{args.out}.json", {"args": {k: str(v) for k, v in vars(args).items()},
                                        "results": results, "per_seed": per_seed})


if __name__ == "__main__":
    main()
