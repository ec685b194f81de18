"""MAML, an ensemble of MAMLs, BMAML, LLAMA, PLATIPUS and ABML on 5-shot sinusoid: MSE of
the predictive mean, log-likelihood per query point and coverage of the 90% predictive
interval.

Reads trained runs of the shipped configs from ``--runs`` (``RUNS/<config>``; a missing one
is trained there with ``--steps`` meta-iterations). The test tasks are those of
`benchmarks/neural_processes.py`'s "5 ctx" column: tasks drawn with 20 support points
(seed 1234, batches of 50, 100 query points) of which the first 5 are kept, so the CNP/NP
numbers of ``benchmarks/results/neural_processes.md`` are on the same tasks. MAML is a point
estimate: its predictive is ``N(f(x; theta'), noise_std^2)`` with ``--maml-noise-std``.

    python benchmarks/bayesian_maml.py --runs /tmp/bayes-runs --steps 2000 --episodes 100 \
        --out benchmarks/results/bayesian_maml
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from metalab.algorithms.predictive import GaussianPredictive
from metalab.algorithms.predictive_scores import predictive_scores
from metalab.cli.main import resolve_config_path
from metalab.train import load_config, load_run, mean_ci95, train_run
from metalab.train.build import build_task_source
from metalab.train.config import apply_overrides
from metalab.train.report import format_plain, write_json
from metalab.train.run import read_run_config

CONFIGS = ("maml-sinusoid-5shot", "maml-ensemble-sinusoid", "bmaml-sinusoid",
           "llama-sinusoid")
SHOTS, DRAWN, INNER_STEPS = 5, 20, 10


def ensure_run(runs: Path, config_name: str, steps: int) -> Path:
    run = runs / config_name
    if not (run / "checkpoint.pt").is_file():
        config = load_config(resolve_config_path(config_name),
                             [f"train.steps={steps}", "train.val_every=0",
                              "train.progress=false", f"train.checkpoint_every={steps}"])
        train_run(config, run)
    return run


def point_predictive(predictor, noise_std: float) -> GaussianPredictive:
    """A point estimate's predictive ``N(f(x), noise_std^2)``."""
    def decode(x, z):
        mean = predictor(x)
        return mean, torch.full_like(mean, noise_std ** 2)
    return GaussianPredictive(decode)


def measure(run: Path, episodes: int, maml_noise_std: float) -> dict[str, dict[str, float]]:
    config = apply_overrides(read_run_config(run), [f"data.shots={DRAWN}"])
    learner = load_run(run)
    learner.eval()
    source = build_task_source(config, "test", 50, seed=1234, queries=100)
    options = {"inner_steps": INNER_STEPS} if "inner_steps" in learner.adapt_options else {}
    scores: dict[str, list[torch.Tensor]] = {}
    seen = 0
    while seen < episodes:
        batch = source.sample()[: min(50, episodes - seen)]
        seen += len(batch)
        for t in range(len(batch)):
            sx, sy = batch.support_x[t, :SHOTS], batch.support_y[t, :SHOTS]
            adapted = learner.adapt(sx, sy, **options)
            if not hasattr(adapted, "variance"):  # a point estimate (MAML)
                adapted = point_predictive(adapted, maml_noise_std)
            for name, value in predictive_scores(adapted, batch.query_x[t],
                                                 batch.query_y[t]).items():
                scores.setdefault(name, []).append(value)
    return {name: dict(zip(("mean", "ci95"), mean_ci95(torch.stack(values)), strict=True))
            for name, values in scores.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--maml-noise-std", type=float, default=0.1)
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS))
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.time()
    results = {}
    for name in args.configs:
        results[name] = measure(ensure_run(args.runs, name, args.steps), args.episodes,
                                args.maml_noise_std)
        print(name, {k: format_plain(v) for k, v in results[name].items()}, flush=True)
    seconds = time.time() - start
    lines = [f"# 5-shot sinusoid: {args.episodes} test tasks, 100 query points, "
             f"{INNER_STEPS} inner steps at test, mean ± 95% CI over tasks; "
             f"{args.steps} meta-iterations each; measured in {seconds:.0f} s", "",
             "| run | MSE | log-lik per point | 90% coverage |", "|---|---|---|---|"]
    for name, result in results.items():
        lines.append(f"| {name} | {format_plain(result['mse'])} | "
                     f"{format_plain(result['log_likelihood'])} | "
                     f"{format_plain(result['coverage_90'])} |")
    lines.append("")
    lines.append(f"MAML (point estimate): predictive N(f(x), {args.maml_noise_std}^2).")
    text = "\n".join(lines)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        Path(f"{args.out}.md").write_text(text + "\n")
        write_json(f"{args.out}.json", {"steps": args.steps, "episodes": args.episodes,
                                        "maml_noise_std": args.maml_noise_std,
                                        "seconds": seconds, "results": results})


if __name__ == "__main__":
    main()
