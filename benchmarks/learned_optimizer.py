"""The learned optimizer against hand-designed ones (Andrychowicz et al. 2016, figs. 2, 4, 5).

Takes trained ``l2o`` runs (``metalab train l2o-quadratic --out RUN_Q``, ``metalab train
l2o-mlp --out RUN_M data.root=...``) and compares their LSTM rule with SGD, Nesterov
momentum (0.9), RMSprop and Adam on held-out problems of the run's task source (the
``test`` pool/seeds), every optimizer in the same ordinary PyTorch loop (the learned one
through `metalab.functional.LearnedOptimizer`, the `torch.optim` wrapper).

- Learning rates: each hand-designed optimizer's is chosen on a grid (1e-4 .. 3) on
  problems of the *training* distribution (the ``train`` pool, seed 1000), at the
  training horizon, by the mean loss along the trajectory (the objective the LSTM is
  trained on); a diverging trajectory scores infinity. For the other architectures the
  baselines are re-tuned on that architecture (the LSTM is not retrained).
- Settings: the run's problem at its training horizon and at twice that (longer-horizon
  generalisation); for the MLP also ReLU instead of sigmoid and 40 hidden units instead of
  20.
- Seeds: each seed draws its own held-out problems and initialisations; the curves are
  the mean over seeds of the per-seed mean over problems, with a band from the lowest to
  the highest seed.

Writes OUT/curves.json, OUT/curves.png (the same plot as ``metalab plot --optimizers
OUT/curves.json``) and OUT/table.md.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/learned_optimizer.py \\
        --quadratic-run RUN_Q --mlp-run RUN_M --override data.root=DIR \\
        --out benchmarks/results/learned_optimizer
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import torch

from metalab import load_run
from metalab.algorithms.l2o import minibatch
from metalab.cli.plot_optimizers import plot_optimizer_curves
from metalab.functional import LearnedOptimizer
from metalab.nn import OptimizeeMLP
from metalab.train.run import read_run_config
from metalab.train.sources import build_task_source

GRID = [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0, 3.0]
HAND_DESIGNED: dict[str, Callable] = {
    "SGD": lambda p, lr: torch.optim.SGD(p, lr=lr),
    "Nesterov": lambda p, lr: torch.optim.SGD(p, lr=lr, momentum=0.9, nesterov=True),
    "RMSprop": lambda p, lr: torch.optim.RMSprop(p, lr=lr),
    "Adam": lambda p, lr: torch.optim.Adam(p, lr=lr),
}
TUNING_SEED = 1000


def trajectory(model: torch.nn.Module, make_optimizer: Callable, task, steps: int,
               batch: int | None, loss_fn: Callable) -> list[float]:
    """Losses ``f_t(theta_t)``, ``t = 0 .. steps``, of one ordinary training loop; after a
    non-finite loss the rest is ``nan``."""
    optimizer = make_optimizer(model.parameters())
    losses: list[float] = []
    x_all, y_all = task.support_x[None], task.support_y[None]
    for t in range(steps + 1):
        x, y = minibatch(t, x_all, y_all, batch)
        loss = loss_fn(model(x[0]), y[0])
        if not torch.isfinite(loss) or loss.item() > 1e6:
            return losses + [math.nan] * (steps + 1 - len(losses))
        losses.append(loss.item())
        if t < steps:
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return losses


def fresh_model(template: torch.nn.Module) -> torch.nn.Module:
    model = copy.deepcopy(template).requires_grad_(True)
    model.reset_parameters()
    return model


def mean_curve(template, make_optimizer, problems, steps, batch, loss_fn) -> list[float]:
    curves = torch.tensor([trajectory(fresh_model(template), make_optimizer, problems[i],
                                      steps, batch, loss_fn) for i in range(len(problems))])
    return curves.mean(0).tolist()


def score(curve: list[float]) -> float:
    """Mean loss over steps 1..T; infinity for a diverging trajectory."""
    values = curve[1:]
    return math.inf if any(math.isnan(v) for v in values) else sum(values) / len(values)


def tune(template, problems, steps, batch, loss_fn) -> dict[str, float]:
    best = {}
    for name, factory in HAND_DESIGNED.items():
        scores = {lr: score(mean_curve(template, lambda p, f=factory, lr=lr: f(p, lr),
                                       problems, steps, batch, loss_fn)) for lr in GRID}
        best[name] = min(scores, key=scores.get)
        print(f"  tuned {name}: lr={best[name]} "
              f"({', '.join(f'{lr:g}:{s:.3g}' for lr, s in scores.items())})", flush=True)
    return best


def compare(title: str, learner, template, config, steps: int, seeds: list[int],
            problems_per_seed: int, lrs: dict[str, float]) -> dict:
    batch, loss_fn = learner.minibatch, learner.loss_fn
    makers = {f"{name} (lr={lr:g})": (lambda p, f=HAND_DESIGNED[name], lr=lr: f(p, lr))
              for name, lr in lrs.items()}
    makers["LSTM (learned)"] = lambda p: LearnedOptimizer(p, rule=learner.rule)
    per_seed: dict[str, list[list[float]]] = {name: [] for name in makers}
    for seed in seeds:
        problems = build_task_source(config, "test", problems_per_seed, seed).sample()
        for name, make in makers.items():
            torch.manual_seed(seed)  # the same initialisations for every optimizer
            per_seed[name].append(mean_curve(template, make, problems, steps, batch, loss_fn))
    optimizers = {}
    for name, curves in per_seed.items():
        stacked = torch.tensor(curves)
        optimizers[name] = {"mean": stacked.mean(0).tolist(), "low": stacked.min(0).values.tolist(),
                            "high": stacked.max(0).values.tolist(),
                            "final": stacked[:, -1].tolist()}
    return {"title": title, "steps": steps, "optimizers": optimizers}


def architecture(learner, **changes) -> torch.nn.Module:
    """The run's optimizee with some constructor arguments changed."""
    model = learner.model
    hidden = tuple(layer.out_features for layer in model.layers[:-1]
                   if isinstance(layer, torch.nn.Linear))
    options = {"in_features": model.layers[0].in_features, "hidden": hidden,
               "out_features": model.layers[-1].out_features, "activation": "sigmoid",
               "bias": model.layers[-1].bias is not None, "init_std": model.init_std}
    activations = {type(layer).__name__.lower() for layer in model.layers
                   if not isinstance(layer, torch.nn.Linear)}
    if activations:
        options["activation"] = activations.pop()
    options.update(changes)
    return OptimizeeMLP(**options)


def run_problem(run_dir: Path, label: str, seeds: list[int], problems: int,
                tuning_problems: int, variants: dict[str, dict], overrides: list[str]
                ) -> list[dict]:
    learner = load_run(run_dir).float()
    config = read_run_config(run_dir, overrides)
    horizon = learner.horizon
    settings = []
    for variant, changes in variants.items():
        template = architecture(learner, **changes)
        print(f"{label} {variant}: tuning at horizon {horizon}", flush=True)
        tuning = build_task_source(config, "train", tuning_problems, TUNING_SEED).sample()
        torch.manual_seed(TUNING_SEED)
        lrs = tune(template, tuning, horizon, learner.minibatch, learner.loss_fn)
        horizons = (horizon, 2 * horizon) if variant == "trained architecture" else (horizon,)
        for steps in horizons:
            started = time.perf_counter()
            setting = compare(f"{label}, {variant}, {steps} steps", learner, template, config,
                              steps, seeds, problems, lrs)
            setting["seconds"] = round(time.perf_counter() - started, 1)
            print(f"  {setting['title']}: {setting['seconds']} s", flush=True)
            settings.append(setting)
    return settings


def markdown(settings: list[dict]) -> str:
    """Final loss (mean over seeds, min-max) and the mean loss along the trajectory."""
    lines = ["| setting | optimizer | final loss: mean over seeds | min - max over seeds | "
             "mean loss over steps 1..T |", "|---|---|---|---|---|"]
    for setting in settings:
        ranked = sorted(setting["optimizers"].items(),
                        key=lambda kv: math.inf if math.isnan(kv[1]["mean"][-1])
                        else kv[1]["mean"][-1])
        for name, curve in ranked:
            finals = curve["final"]
            lines.append(f"| {setting['title']} | {name} | {sum(finals) / len(finals):.4g} | "
                         f"{min(finals):.4g} - {max(finals):.4g} | {score(curve['mean']):.4g} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quadratic-run", type=Path)
    parser.add_argument("--mlp-run", type=Path)
    parser.add_argument("--override", nargs="*", default=[],
                        help="key=value overrides of the runs' configs for the benchmark's "
                             "problems, e.g. data.root=/work/shared/data/mnist")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--quadratic-problems", type=int, default=32)
    parser.add_argument("--mlp-problems", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/learned_optimizer"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    seeds = [int(s) for s in args.seeds.split(",")]
    settings: list[dict] = []
    started = time.perf_counter()
    if args.quadratic_run:
        settings += run_problem(args.quadratic_run, "10-D quadratic", seeds,
                                args.quadratic_problems, 16,
                                {"trained architecture": {}}, args.override)
    if args.mlp_run:
        settings += run_problem(args.mlp_run, "MNIST MLP", seeds, args.mlp_problems, 2,
                                {"trained architecture": {}, "ReLU": {"activation": "relu"},
                                 "40 hidden units": {"hidden": (40,)}}, args.override)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "curves.json").write_text(json.dumps({"settings": settings}))
    plot_optimizer_curves(settings, args.out / "curves.png")
    (args.out / "table.md").write_text(markdown(settings))
    print(markdown(settings))
    print(f"wrote {args.out}/curves.json, curves.png, table.md in "
          f"{time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
