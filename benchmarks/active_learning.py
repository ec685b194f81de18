"""Active learning from the predictive variance: does choosing the next support point where
the adapted predictive is most uncertain reduce the query error faster than a random choice?

Per test task: ``--start`` support points, a pool of ``--pool`` candidate inputs (their
targets are revealed only once chosen) and 100 query points. Each round adapts on the
current support, records the query MSE of the predictive mean, then adds one candidate:
``variance``, the one of largest predictive variance; ``random``, a uniformly random one
(seeded per task, the same for every method). ``--additions`` rounds; both strategies start
from the same support and pool. Methods: runs of `benchmarks/bayesian_table.py`
(``RUNS/<family>/<method>/seed<N>``; ``llama`` is the ``maml`` run with LLAMA's Laplace
predictive).

Reported per method, strategy and number of added points: the query MSE, mean ± 95% CI over
all (seed, task) pairs; and the paired difference ``MSE(random) - MSE(variance)`` on the same
(seed, task), mean ± 95% CI (positive: uncertainty-chosen points are better).

    python benchmarks/active_learning.py --runs /tmp/bayes-table --family sinusoid \
        --methods maml-ensemble bmaml llama cnp np --seeds 0 1 2 --tasks 50 \
        --out benchmarks/results/active_learning_sinusoid
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bayesian_table import FAMILY_CONFIGS, TEST_CONFIGS, learner_of, run_dir  # noqa: E402

from metalab.cli.main import resolve_config_path  # noqa: E402
from metalab.train import load_config, mean_ci95  # noqa: E402
from metalab.train.report import format_plain, write_json  # noqa: E402
from metalab.train.sources import build_task_source  # noqa: E402

STRATEGIES = ("variance", "random")


def test_tasks(family: str, start: int, pool: int, tasks: int):
    name, overrides = TEST_CONFIGS[family]
    config = load_config(resolve_config_path(name), [*overrides,
                                                     f"data.shots={start + pool}"])
    return build_task_source(config, "test", tasks, seed=4321, queries=100).sample()


def adapt(learner, x, y, inner_steps: int):
    options = {"inner_steps": inner_steps} if "inner_steps" in learner.adapt_options else {}
    return learner.adapt(x, y, **options)


def curve(learner, sx, sy, qx, qy, start: int, additions: int, strategy: str,
          generator: torch.Generator, inner_steps: int) -> list[float]:
    """Query MSE after 0..additions added points."""
    chosen = list(range(start))
    remaining = list(range(start, len(sx)))
    errors = []
    for round_ in range(additions + 1):
        predictive = adapt(learner, sx[chosen], sy[chosen], inner_steps)
        errors.append(((predictive.mean(qx) - qy) ** 2).mean().item())
        if round_ == additions:
            break
        if strategy == "variance":
            variance = predictive.variance(sx[remaining]).sum(dim=-1)
            pick = int(variance.argmax())
        else:
            pick = int(torch.randint(len(remaining), (), generator=generator))
        chosen.append(remaining.pop(pick))
    return errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=Path, required=True)
    parser.add_argument("--family", default="sinusoid", choices=sorted(FAMILY_CONFIGS))
    parser.add_argument("--methods", nargs="*", default=[])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--tasks", type=int, default=50)
    parser.add_argument("--start", type=int, default=2)
    parser.add_argument("--pool", type=int, default=20)
    parser.add_argument("--additions", type=int, default=5)
    parser.add_argument("--inner-steps", type=int, default=10)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--combine", nargs="+", type=Path, default=[],
                        help="JSON files of earlier runs with the same settings: their "
                             "methods join this table")
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.time()
    batch = test_tasks(args.family, args.start, args.pool, args.tasks)
    errors: dict[str, dict[str, list[list[float]]]] = {}
    for path in args.combine:
        earlier = json.loads(path.read_text())
        errors.update(earlier["errors"])
        started -= earlier["seconds"]
    for method in args.methods:
        errors[method] = {s: [] for s in STRATEGIES}
        for seed in args.seeds:
            trained = "maml" if method == "llama" else method
            learner = learner_of(run_dir(args.runs, args.family, trained, seed), method)
            for t in range(len(batch)):
                for strategy in STRATEGIES:
                    generator = torch.Generator().manual_seed(t)
                    errors[method][strategy].append(curve(
                        learner, batch.support_x[t], batch.support_y[t], batch.query_x[t],
                        batch.query_y[t], args.start, args.additions, strategy, generator,
                        args.inner_steps))
        print(method, f"{time.time() - started:.0f} s", flush=True)
    summary = summarise(errors)
    seconds = time.time() - started
    text = markdown(summary, args, seconds)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        Path(f"{args.out}.md").write_text(text + "\n")
        write_json(f"{args.out}.json", {"args": {k: str(v) for k, v in vars(args).items()},
                                        "seconds": seconds, "summary": summary,
                                        "errors": errors})
        plot(summary, args, Path(f"{args.out}.png"))


def summarise(errors: dict) -> dict:
    """Per method: each strategy's curve and the paired difference, mean and CI per round."""
    summary = {}
    for method, by_strategy in errors.items():
        tensors = {s: torch.tensor(v, dtype=torch.float64) for s, v in by_strategy.items()}
        summary[method] = {s: [mean_ci95(t[:, r]) for r in range(t.shape[1])]
                           for s, t in tensors.items()}
        difference = tensors["random"] - tensors["variance"]
        summary[method]["random_minus_variance"] = [mean_ci95(difference[:, r])
                                                    for r in range(difference.shape[1])]
    return summary


def markdown(summary: dict, args: argparse.Namespace, seconds: float) -> str:
    rounds = args.additions + 1
    lines = [f"# Active learning on {args.family}: {args.start} initial support points, a pool "
             f"of {args.pool}, {args.tasks} tasks x seeds {args.seeds}, 100 query points; "
             f"query MSE mean ± 95% CI over (seed, task) pairs; measured in {seconds:.0f} s",
             "", "| method | choice | " + " | ".join(f"+{r}" for r in range(rounds)) + " |",
             "|---|---|" + "---|" * rounds]
    for method, rows in summary.items():
        for name, values in rows.items():
            label = "random − variance (paired)" if name == "random_minus_variance" else name
            lines.append(f"| {method} | {label} | " + " | ".join(
                format_plain({"mean": m, "ci95": c}) for m, c in values) + " |")
    return "\n".join(lines)


def plot(summary: dict, args: argparse.Namespace, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(summary)
    figure, axes = plt.subplots(1, len(methods), figsize=(3.2 * len(methods), 3),
                                squeeze=False, sharey=True)
    added = list(range(args.additions + 1))
    for axis, method in zip(axes[0], methods, strict=True):
        for strategy in STRATEGIES:
            mean = [m for m, _ in summary[method][strategy]]
            ci = [c for _, c in summary[method][strategy]]
            axis.plot(added, mean, marker="o", label=strategy)
            axis.fill_between(added, [m - c for m, c in zip(mean, ci, strict=True)],
                              [m + c for m, c in zip(mean, ci, strict=True)], alpha=0.2)
        axis.set_title(method)
        axis.set_xlabel("points added")
        axis.set_yscale("log")
    axes[0][0].set_ylabel("query MSE")
    axes[0][0].legend()
    figure.suptitle(f"{args.family}: max-variance vs random acquisition "
                    f"(start {args.start}, seeds {args.seeds})")
    figure.tight_layout()
    temporary = path.with_suffix(".tmp.png")
    figure.savefig(temporary, dpi=100)
    temporary.rename(path)
    plt.close(figure)


if __name__ == "__main__":
    main()
