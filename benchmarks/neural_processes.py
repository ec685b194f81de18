"""Neural processes (CNP, NP, ANP) on the GP and sinusoid families, and CNP against MAML.

Reads trained runs of the shipped configs from ``--runs`` (``RUNS/<config>``; a missing one
is trained there from its config with ``--steps`` meta-iterations), then measures on test
tasks (``--episodes`` tasks, 100 query points each, 95% CIs over tasks):

1. the test log-likelihood per query point and the MSE of the predictive mean against the
   number of context points (1, 3, 5, 10, 20) for cnp/np/anp on the GP family and sinusoid;
2. CNP against MAML (10 inner steps at test) on sinusoid at 5 and 10 shots;
3. out-of-distribution amplitudes: sinusoids with amplitude in [5, 10] (training: [0.1, 5]);
4. PNGs of predictions with uncertainty bands (`metalab plot --predictive`'s function).

    python benchmarks/neural_processes.py --runs /tmp/np-runs --episodes 100 \
        --out benchmarks/results/neural_processes
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from metalab.cli.main import resolve_config_path
from metalab.cli.plot_predictive import plot_predictive
from metalab.tasks import TaskBatch
from metalab.train import load_config, load_run, mean_ci95, train_run
from metalab.train.build import build_task_source
from metalab.train.config import EvalConfig, apply_overrides
from metalab.train.report import format_plain, write_json
from metalab.train.run import read_run_config

CONTEXT_SIZES = (1, 3, 5, 10, 20)
OOD_AMPLITUDE = "data.amplitude=[5.0,10.0]"
FAMILIES = {"gp": ("cnp-gp", "np-gp", "anp-gp"),
            "sinusoid": ("cnp-sinusoid", "np-sinusoid", "anp-sinusoid")}
MAML = {5: "maml-sinusoid-5shot", 10: "maml-sinusoid-10shot"}


def ensure_run(runs: Path, config_name: str, steps: int | None) -> Path | None:
    """``runs/config_name`` if trained; else train it when ``steps`` is given."""
    run = runs / config_name
    if (run / "checkpoint.pt").is_file():
        return run
    if steps is None:
        return None
    config = load_config(resolve_config_path(config_name),
                         [f"train.steps={steps}", "train.val_every=0", "train.progress=false",
                          f"train.checkpoint_every={steps}"])
    train_run(config, run)
    return run


def measure(run: Path, context_sizes: tuple[int, ...], episodes: int,
            overrides: tuple[str, ...] = ()) -> dict[int, dict[str, dict[str, float]]]:
    """Per context size, the mean and 95% CI of every per-task value on the same test tasks:
    each task is drawn with ``max(context_sizes)`` context points and the first ``k`` kept,
    so the contexts are nested and the targets shared."""
    config = read_run_config(run, overrides)
    changes = [f"data.shots={max(context_sizes)}"]
    if "max_shots" in config["data"]:
        changes.append("data.max_shots=null")
    config = apply_overrides(config, changes)
    learner = load_run(run)
    source = build_task_source(config, "test", 50, seed=1234, queries=100)
    options = {}
    if "inner_steps" in learner.adapt_options:
        options["inner_steps"] = EvalConfig.of(config).inner_steps
    collected: dict[int, dict[str, list[torch.Tensor]]] = {k: {} for k in context_sizes}
    seen = 0
    while seen < episodes:
        batch = source.sample()[: min(50, episodes - seen)]
        seen += len(batch)
        for k in context_sizes:
            part = TaskBatch(batch.support_x[:, :k], batch.support_y[:, :k], batch.query_x,
                             batch.query_y)
            losses, metrics = learner.task_losses(part, training=False, **options)
            for name, values in {"loss": losses, **metrics}.items():
                collected[k].setdefault(name, []).append(values.detach())
    return {k: {name: dict(zip(("mean", "ci95"), mean_ci95(torch.cat(v)), strict=True))
                for name, v in values.items()} for k, values in collected.items()}


def cell(result: dict[str, dict[str, float]], name: str) -> str:
    return format_plain(result[name]) if name in result else "n/a"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", default="runs/neural-processes")
    parser.add_argument("--steps", type=int, default=None,
                        help="train missing runs with this many meta-iterations")
    parser.add_argument("--episodes", type=int, default=200)
    parser.add_argument("--out", default="benchmarks/results/neural_processes")
    args = parser.parse_args()
    torch.set_num_threads(1)
    runs, out = Path(args.runs), Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    lines, data = [], {"episodes": args.episodes, "context_sizes": list(CONTEXT_SIZES)}

    for family, names in FAMILIES.items():
        lines += [f"\n## {family}: log-likelihood per query point (MSE) against context points\n",
                  "| run | steps | " + " | ".join(f"{k} ctx" for k in CONTEXT_SIZES) + " |",
                  "|---" * (len(CONTEXT_SIZES) + 2) + "|"]
        for name in names:
            run = ensure_run(runs, name, args.steps)
            if run is None:
                continue
            results = measure(run, CONTEXT_SIZES, args.episodes)
            data[name] = results
            step = read_step(run)
            lines.append(f"| {name} | {step} | " + " | ".join(
                f"{cell(r, 'log_likelihood')} ({cell(r, 'mse')})" for r in results.values())
                + " |")

    lines += ["\n## sinusoid: CNP and NP against MAML (10 inner steps), MSE; "
              "in range (A in [0.1, 5]) and out of range (A in [5, 10])\n",
              "| run | shots | MSE in range | log-lik in range | MSE A in [5,10] | "
              "log-lik A in [5,10] |", "|---|---|---|---|---|---|"]
    comparison = {}
    for shots in (5, 10):
        for name in ("cnp-sinusoid", "np-sinusoid", "anp-sinusoid", MAML[shots]):
            run = ensure_run(runs, name, args.steps)
            if run is None:
                continue
            inside = measure(run, (shots,), args.episodes)[shots]
            outside = measure(run, (shots,), args.episodes, (OOD_AMPLITUDE,))[shots]
            comparison[f"{name}@{shots}"] = {"in_range": inside, "out_of_range": outside}
            lines.append(f"| {name} ({read_step(run)} steps) | {shots} | {cell(inside, 'mse')} | "
                         f"{cell(inside, 'log_likelihood')} | {cell(outside, 'mse')} | "
                         f"{cell(outside, 'log_likelihood')} |")
    data["comparison"] = comparison

    pictures = []
    for family, names in FAMILIES.items():
        present = [runs / n for n in names if (runs / n / "checkpoint.pt").is_file()]
        if present:
            pictures.append(plot_predictive(present, out.with_name(f"{out.name}_{family}.png"),
                                            context_sizes=(3, 10)))
    sinusoids = [runs / n for n in FAMILIES["sinusoid"] if (runs / n / "checkpoint.pt").is_file()]
    if sinusoids:
        pictures.append(plot_predictive(sinusoids, out.with_name(f"{out.name}_ood.png"),
                                        context_sizes=(5, 10), overrides=(OOD_AMPLITUDE,)))
    completion = runs / "cnp-glyphs-completion"
    if (completion / "checkpoint.pt").is_file():
        pictures.append(plot_predictive([completion], out.with_name(f"{out.name}_glyphs.png"),
                                        context_sizes=(20, 100, 300)))
    seconds = time.perf_counter() - started
    header = (f"# Neural processes: {args.episodes} test tasks per cell, 100 query points, "
              f"mean ± 95% CI over tasks; log-likelihood per query point (importance-weighted, "
              f"64 draws, for np/anp); measured in {seconds:.0f} s\n")
    text = header + "\n".join(lines) + "\n\nPNGs: " + ", ".join(p.name for p in pictures) + "\n"
    print(text)
    out.with_suffix(".md").write_text(text)
    write_json(out.with_suffix(".json"), data)


def read_step(run: Path) -> int:
    import json

    metrics = (run / "metrics.jsonl").read_text().splitlines()
    return max(json.loads(line).get("step", 0) for line in metrics if line.strip())


if __name__ == "__main__":
    main()
