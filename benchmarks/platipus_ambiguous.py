"""The PLATIPUS experiment on the ambiguous sine/line family (Finn, Xu & Levine 2018,
section 5.1): do the models drawn for an ambiguous support cover both hypotheses?

Reads trained runs from ``--runs`` (``RUNS/<name>``, e.g. ``maml-ambiguous``,
``maml-ensemble-ambiguous``, ``platipus-ambiguous``, ``abml-ambiguous``; see
docs/bayesian-methods.md for the training commands). Every run is scored on the same test
tasks, drawn from the first run's data config (``sine-line``, 5 support points in a window
of width ``support_width``, 100 query points over [-5, 5], seed 1234), with ``10`` inner
steps at test:

- MSE of the predictive mean, log-likelihood per query point, 90% interval coverage (MAML,
  a point estimate, is scored as ``N(f(x), maml_noise_std^2)``);
- hypotheses: the functions a method gives for a task, on 200 points of [-5, 5] (MAML: its
  one function; the ensemble: its members; PLATIPUS and ABML: ``--samples`` draws), are each
  labelled line-like or sine-like by which least-squares fit leaves the smaller residual,
  the line ``a x + b`` or the family's sinusoid ``c1 sin x + c2 cos x`` (= ``A sin(x - phi)``).
  Reported per method, as fractions of tasks: ``both`` (the functions include a line-like
  and a sine-like one), ``both_fitting`` (the same among the functions that fit the support,
  root-mean-square error on the 5 support points at most ``--fit-tolerance``, 0.6 = twice
  the noise), ``truth_covered`` (one of the functions has the task's true kind) and
  ``mean_kind`` (the predictive mean has the true kind).
- ambiguity: a support is *ambiguous* when both hypotheses of the family fit it, a line
  ``a x + b`` with ``a, b`` in the family's ranges and a sinusoid ``A sin(x - phi)`` with
  ``A``, ``phi`` in its ranges, each with RMS error at most ``--fit-tolerance`` on the support
  (best fits searched on a grid, `family_fit_rms`). ``ambiguous`` is the fraction of test
  tasks with such a support; ``both_fitting_ambiguous`` is ``both_fitting`` over those tasks
  only. The paper's claim (draws cover both hypotheses where the support allows both) is
  about that subset: on a support only one hypothesis fits, drawing both is a mistake, so
  a fraction over all tasks mixes the claim with its opposite.
- hypotheses proper: the line-like/sine-like label above is a forced choice (every function
  gets one, however far from both kinds). A function *is* a line of the family when its RMS
  distance over 200 points of [-5, 5] to the nearest family line (slope, intercept in the
  family's ranges; `family_distances`) is at most ``--hypothesis-tolerance`` (1.0) while the
  nearest family sinusoid is farther than that, and a sinusoid the other way round
  (`hypotheses`); a nearly flat function, near both kinds, is neither. Reported:
  ``hypothesis_draws`` (the fraction of a method's functions that are a line or a sinusoid)
  and ``both_hypotheses_ambiguous`` (over ambiguous supports: a function fitting the support
  is a line and another fitting one is a sinusoid): the figure's claim, stated strictly.
- support fit (`support_fit`): each function's MSE on the task's own support points,
  ``m_k = (1/n) sum_i (f_k(x_i) - y_i)^2``. Reported: ``support_fit`` (the fraction of a
  task's functions with ``m_k <= fit_tolerance^2``, the "fitting" of the scores above:
  RMS 0.6, MSE 0.36), ``support_fit_noise`` (``m_k <=`` the family's noise variance, 0.09
  for noise 0.3), ``support_mse`` (the median ``m_k`` of a task), and over ambiguous
  supports ``support_fit_ambiguous``, ``two_fitting_ambiguous`` (at least two functions
  fit: the strict score needs two), ``fitting_line_ambiguous`` / ``fitting_sine_ambiguous``
  (some fitting function *is* a family line / sinusoid; the strict score is both at once).
- test-time adaptation (`--inner-steps`, `--inner-lr-scales`): extra rows with the inner
  loop at test run for other step counts and with its SGD step multiplied
  (`scale_inner_lr`); training is untouched. ``--prior-scales`` rows (PLATIPUS's prior std
  multiplied at test, `scale_prior_std`) are measured under every such setting.
- ``--figure PNG``: the functions of every run (seed 0) on the first ``--figure-tasks``
  ambiguous supports, coloured by `hypotheses` (`draw_figure`), under each of
  ``--figure-settings`` (``STEPSxSCALE``: inner steps and step multiplier at test), the
  PLATIPUS rows with the prior std times ``--figure-prior-scale``; ``--figure-strict N``
  adds N columns: the first later ambiguous supports (test order) on which the last row's
  functions meet the strict criterion (`strict_holds`), a selection the figure says so.

With ``--seeds``, each name is a directory of runs ``RUNS/<name>/seed<N>`` (the layout of
`benchmarks/bayesian_table.py`); every seed's run is scored on the same tasks and a row is
the mean over seeds ± the Student-t 95% half-width over seeds.

    python benchmarks/platipus_ambiguous.py --runs /tmp/plat-runs/amb --episodes 200 \
        --out benchmarks/results/platipus_ambiguous
    python benchmarks/platipus_ambiguous.py --runs /tmp/bayes-table/ambiguous --seeds 0 1 2 \
        --names maml maml-ensemble platipus bmaml abml --episodes 300 \
        --out benchmarks/results/platipus_ambiguous_seeds
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path

import torch

from metalab.algorithms.base import detached
from metalab.algorithms.predictive import GaussianPredictive
from metalab.algorithms.predictive_scores import predictive_scores
from metalab.functional.update_rules import SGD
from metalab.tasks.regression import LINE
from metalab.train import load_run, mean_ci95
from metalab.train.build import build_task_source
from metalab.train.checkpoint import atomic_write_text
from metalab.train.report import format_plain, over_seeds, write_json
from metalab.train.run import read_run_config

RUNS = ("maml-ambiguous", "maml-ensemble-ambiguous", "platipus-ambiguous", "abml-ambiguous")
INNER_STEPS, GRID = 10, torch.linspace(-5, 5, 200)[:, None]
#: The `SineOrLine` defaults: the hypotheses' parameter ranges.
SLOPE = INTERCEPT = (-3.0, 3.0)
AMPLITUDE, PHASE = (0.1, 5.0), (0.0, math.pi)


def family_fit_rms(x: torch.Tensor, y: torch.Tensor, resolution: int = 241
                   ) -> tuple[float, float]:
    """RMS errors on the points ``(x, y)`` (``[n]`` each) of the best line ``a x + b``
    (``a`` in `SLOPE`, ``b`` in `INTERCEPT`) and the best sinusoid ``A sin(x - phi)`` (``A`` in
    `AMPLITUDE`, ``phi`` in `PHASE`), each searched on a ``resolution x resolution`` grid
    of its two parameters (both ranges included)."""
    x, y = x.double().flatten(), y.double().flatten()

    def best(first, second, curve) -> float:
        p = torch.linspace(*first, resolution, dtype=torch.float64)[:, None, None]
        q = torch.linspace(*second, resolution, dtype=torch.float64)[None, :, None]
        return (curve(p, q) - y).pow(2).mean(-1).min().sqrt().item()

    return (best(SLOPE, INTERCEPT, lambda a, b: a * x + b),
            best(AMPLITUDE, PHASE, lambda a, phi: a * torch.sin(x - phi)))


def family_distances(functions: torch.Tensor, x: torch.Tensor = GRID, resolution: int = 121
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """``([K], [K])``: RMS distances over the points ``x`` (``[m, 1]``, default `GRID`) of
    each of ``functions`` (``[K, m]``) to the nearest line ``a x + b`` and to the nearest
    sinusoid ``A sin(x - phi)`` of the family (parameters in its ranges, searched on a
    ``resolution x resolution`` grid of each pair)."""
    x, f = x.double().flatten(), functions.double()

    def nearest(first, second, curve) -> torch.Tensor:
        p = torch.linspace(*first, resolution, dtype=torch.float64)[:, None, None]
        q = torch.linspace(*second, resolution, dtype=torch.float64)[None, :, None]
        curves = curve(p, q).reshape(-1, len(x))  # [resolution^2, m]
        squared = (f.pow(2).sum(1, keepdim=True) - 2 * f @ curves.T
                   + curves.pow(2).sum(1)[None]) / len(x)
        return squared.min(1).values.clamp_min(0).sqrt()

    return (nearest(SLOPE, INTERCEPT, lambda a, b: a * x + b),
            nearest(AMPLITUDE, PHASE, lambda a, phi: a * torch.sin(x - phi)))


def hypotheses(functions: torch.Tensor, tolerance: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``([K], [K])`` bools: each function *is* a line of the family (a sinusoid of the
    family): its RMS distance over `GRID` to the nearest family line (sinusoid) is at most
    ``tolerance`` and to the nearest of the other kind above it. A function near neither,
    or near both (a nearly flat one: the family has slopes and amplitudes near 0), is
    neither: it does not stand for one hypothesis."""
    line, sine = family_distances(functions)
    return (line <= tolerance) & (sine > tolerance), (sine <= tolerance) & (line > tolerance)


def is_ambiguous(x: torch.Tensor, y: torch.Tensor, tolerance: float) -> bool:
    """Both a line and a sinusoid of the family fit ``(x, y)`` within RMS ``tolerance``."""
    return max(family_fit_rms(x, y)) <= tolerance


def point_predictive(predictor, noise_std: float) -> GaussianPredictive:
    """A point estimate's predictive ``N(f(x), noise_std^2)``."""
    def decode(x, z):
        mean = predictor(x)
        return mean, torch.full_like(mean, noise_std ** 2)
    return GaussianPredictive(decode)


def functions_of(learner, predictive, sx, sy, samples: int, x: torch.Tensor,
                 inner_steps: int = INNER_STEPS) -> torch.Tensor:
    """``[K, m]``: the functions the method gives for a task, at ``x``."""
    if getattr(predictive, "is_latent", False):
        return predictive.sample(x, samples, seed=0)[..., 0]
    if hasattr(learner, "particle_outputs"):  # ensembles, BMAML: every member
        state = detached(learner.adapt_task(sx, sy, training=False, inner_steps=inner_steps))
        with torch.no_grad():
            return learner.particle_outputs(state, x)[..., 0]
    return predictive(x)[None, :, 0]


def is_line_like(functions: torch.Tensor) -> torch.Tensor:
    """``[K]`` bools: the line fit leaves a smaller residual than the sinusoid fit (a
    function with a non-finite value, a diverged draw, is not line-like)."""
    x = GRID.double()
    designs = (torch.cat([x, torch.ones_like(x)], 1), torch.cat([x.sin(), x.cos()], 1))
    finite = functions.isfinite().all(1)
    y = functions.double().T[:, finite]  # [200, K finite]
    residuals = [(d @ torch.linalg.lstsq(d, y).solution - y).pow(2).sum(0) for d in designs]
    line_like = torch.zeros(len(functions), dtype=torch.bool)
    line_like[finite] = residuals[0] < residuals[1]
    return line_like


def scale_prior_std(learner, scale: float) -> None:
    """Multiply a PLATIPUS learner's prior standard deviations ``sigma_theta`` by ``scale``
    (a test-time probe: how the draws change with their spread, the mean and steps kept)."""
    if scale == 1.0:
        return
    if not hasattr(learner, "log_prior_std"):
        raise ValueError(f"--prior-scales needs learners with a prior std (PLATIPUS), got "
                         f"{type(learner).__name__}")
    with torch.no_grad():
        for log_std in learner.log_prior_std.values():
            log_std.add_(math.log(scale))


def scale_inner_lr(learner, scale: float) -> None:
    """Multiply the inner loop's SGD step ``alpha`` by ``scale`` (a test-time probe: the
    trained meta-parameters kept, only the adaptation at test changed)."""
    if scale == 1.0:
        return
    rule = getattr(learner, "update_rule", None)
    if not isinstance(rule, SGD):
        raise ValueError(f"--inner-lr-scales needs learners whose inner rule is SGD (MAML, "
                         f"PLATIPUS), got {type(learner).__name__}")
    rule.lr = rule.lr * scale


def support_fit(outputs: torch.Tensor, targets: torch.Tensor, threshold: float
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """``([K], scalar)``: each function's MSE on the support,
    ``m_k = (1/n) sum_i (f_k(x_i) - y_i)^2`` for ``outputs`` ``[K, n]`` (``f_k(x_i)``) and
    ``targets`` ``[n]``, and the fraction of the ``K`` functions with ``m_k <= threshold``."""
    if outputs.dim() != 2 or targets.shape != outputs.shape[1:]:
        raise ValueError(f"support_fit needs outputs [K, n] and targets [n], got "
                         f"{tuple(outputs.shape)} and {tuple(targets.shape)}")
    mse = (outputs.double() - targets.double()).pow(2).mean(1)
    return mse, (mse <= threshold).double().mean()


def fitting_hypotheses(fits: torch.Tensor, is_line: torch.Tensor, is_sine: torch.Tensor
                       ) -> dict[str, torch.Tensor]:
    """Of one task's ``K`` functions (bools ``[K]`` each): at least two fit the support
    (``two_fitting``), some fitting one is a family line (``fitting_line``), some fitting
    one a family sinusoid (``fitting_sine``); the strict score is the last two at once."""
    return {"two_fitting": torch.tensor(float(fits.sum() >= 2)),
            "fitting_line": torch.tensor(float((fits & is_line).any())),
            "fitting_sine": torch.tensor(float((fits & is_sine).any()))}


def measure(run: Path, tasks, episodes: int, samples: int, maml_noise_std: float,
            fit_tolerance: float, ambiguous: list[bool], hypothesis_tolerance: float,
            prior_scale: float = 1.0, inner_steps: int = INNER_STEPS,
            lr_scale: float = 1.0, noise_variance: float = 0.09) -> dict:
    """Every score's mean ± 95% CI over tasks (``*_ambiguous``: over the tasks flagged in
    ``ambiguous``, in the order of ``tasks``), with ``inner_steps`` inner steps of the
    trained step times ``lr_scale`` at test."""
    learner = load_run(run)
    learner.eval()
    scale_prior_std(learner, prior_scale)
    scale_inner_lr(learner, lr_scale)
    options = {"inner_steps": inner_steps} if "inner_steps" in learner.adapt_options else {}
    scores: dict[str, list[torch.Tensor]] = {}
    flags = iter(ambiguous)
    for batch in tasks:
        for t in range(len(batch)):
            sx, sy = batch.support_x[t], batch.support_y[t]
            adapted = learner.adapt(sx, sy, **options)
            predictive = adapted if hasattr(adapted, "variance") else point_predictive(
                adapted, maml_noise_std)
            values = predictive_scores(predictive, batch.query_x[t], batch.query_y[t])
            functions = functions_of(learner, adapted, sx, sy, samples,
                                     torch.cat([GRID, sx]), inner_steps)
            line_like = is_line_like(functions[:, : len(GRID)])
            support_mse, fit_fraction = support_fit(functions[:, len(GRID):], sy[:, 0],
                                                    fit_tolerance ** 2)
            fits = support_mse <= fit_tolerance ** 2
            fitting = line_like[fits]
            is_line, is_sine = hypotheses(functions[:, : len(GRID)], hypothesis_tolerance)
            mean_line = is_line_like(predictive.mean(GRID).T)[0]
            truth_line = bool(batch.task_id[t] == LINE)
            values.update({
                "both": torch.tensor(float(line_like.any() and not line_like.all())),
                "both_fitting": torch.tensor(float(fitting.any() and not fitting.all())),
                "truth_covered": torch.tensor(float((line_like == truth_line).any())),
                "mean_kind": torch.tensor(float(mean_line == truth_line)),
                "hypothesis_draws": (is_line | is_sine).double().mean(),
                "both_hypotheses": torch.tensor(float((is_line & fits).any()
                                                      and (is_sine & fits).any())),
                "ambiguous": torch.tensor(float(next(flags))),
                "support_fit": fit_fraction,
                "support_fit_noise": support_fit(functions[:, len(GRID):], sy[:, 0],
                                                 noise_variance)[1],
                "support_mse": support_mse.median(),
            })
            if values["ambiguous"]:
                values["both_fitting_ambiguous"] = values["both_fitting"]
                values["both_hypotheses_ambiguous"] = values["both_hypotheses"]
                values["support_fit_ambiguous"] = fit_fraction
                for key, value in fitting_hypotheses(fits, is_line, is_sine).items():
                    values[f"{key}_ambiguous"] = value
            for name, value in values.items():
                scores.setdefault(name, []).append(value)
    return {name: dict(zip(("mean", "ci95"), mean_ci95(torch.stack(values)), strict=True))
            for name, values in scores.items()}


def measure_cell(runs: Path, tasks, episodes: int, samples: int, maml_noise_std: float,
                 fit_tolerance: float, ambiguous: list[bool], hypothesis_tolerance: float,
                 noise_variance: float,
                 cell: tuple[str, str | None, tuple[float, int, float]]) -> dict:
    """`measure` of the run ``RUNS/<name>[/<seed dir>]`` under the setting of ``cell``:
    (prior scale, inner steps at test, inner step multiplier)."""
    name, seed_dir, (scale, steps, lr_scale) = cell
    return measure(runs / name / (seed_dir or ""), tasks, episodes, samples, maml_noise_std,
                   fit_tolerance, ambiguous, hypothesis_tolerance, scale, steps, lr_scale,
                   noise_variance)


def parse_setting(text: str) -> tuple[int, float]:
    """``--figure-settings`` entry ``STEPSxSCALE`` (``100x5``): inner steps and step
    multiplier at test."""
    try:
        steps, scale = text.lower().split("x")
        return int(steps), float(scale)
    except ValueError:
        raise ValueError(f"--figure-settings entries must be STEPSxSCALE such as 100x5, got "
                         f"{text!r}") from None


def setting_rows(names: list[str], probed: list[str], inner_steps: list[int],
                 lr_scales: list[float], prior_scales: list[float]
                 ) -> list[tuple[str, tuple[float, int, float]]]:
    """The rows measured: every name under every (inner steps, step multiplier) at test,
    then every PLATIPUS name (``probed``) under each prior std multiplier other than 1 and
    every such setting, as ``(name, (prior scale, inner steps, step multiplier))``."""
    adaptations = [(s, c) for s in inner_steps for c in lr_scales]
    return [(name, (1.0, s, c)) for name in names for s, c in adaptations] + [
        (name, (p, s, c)) for name in probed for p in prior_scales if p != 1.0
        for s, c in adaptations]


def setting_label(name: str, setting: tuple[float, int, float]) -> str:
    """A row's name: the run's, plus what differs from the default test-time setting."""
    scale, steps, lr_scale = setting
    extras = ([f"prior std x{scale:g}"] if scale != 1.0 else []) + (
        [f"{steps} steps, lr x{lr_scale:g}"] if (steps, lr_scale) != (INNER_STEPS, 1.0)
        else [])
    return name if not extras else f"{name} ({', '.join(extras)})"


def test_tasks(run: Path, episodes: int, support_width: str | None = None):
    """The test tasks of ``run``'s data config (seed 1234, 100 query points), with its
    ``support_width`` replaced by ``support_width`` when given (``"none"``: all of the
    x range)."""
    config = read_run_config(run)
    if support_width is not None:
        config["data"]["support_width"] = parse_support_width(support_width)
    source = build_task_source(config, "test", 50, seed=1234, queries=100)
    batches, seen = [], 0
    while seen < episodes:
        batch = source.sample()[: min(50, episodes - seen)]
        batches.append(batch)
        seen += len(batch)
    return batches


def parse_support_width(text: str) -> float | None:
    """``--support-width``: a number, or ``none`` for supports over all of the x range."""
    if text.lower() in ("none", "null"):
        return None
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"--support-width must be a number or 'none', got {text!r}") from None


def ambiguity_flags(tasks, tolerance: float) -> list[bool]:
    """`is_ambiguous` for every task's support, in order."""
    return [is_ambiguous(batch.support_x[t], batch.support_y[t], tolerance)
            for batch in tasks for t in range(len(batch))]


def over_seed_rows(per_seed: list[dict]) -> dict:
    """Each score's mean over seeds ± the t 95% half-width over seeds."""
    return {name: over_seeds([r[name]["mean"] for r in per_seed]) for name in per_seed[0]}


def strict_holds(functions: torch.Tensor, sy: torch.Tensor, fit_tolerance: float,
                 hypothesis_tolerance: float) -> bool:
    """The strict criterion on one support: ``functions`` ``[K, len(GRID) + n]`` (the grid,
    then the ``n`` support points) contain a function that fits the support (RMS <=
    ``fit_tolerance``) and *is* a family line, and another that fits and is a sinusoid."""
    grid = len(GRID)
    fits = support_fit(functions[:, grid:], sy, fit_tolerance ** 2)[0] <= fit_tolerance ** 2
    is_line, is_sine = hypotheses(functions[:, :grid], hypothesis_tolerance)
    return bool((fits & is_line).any() and (fits & is_sine).any())


def figure_learner(run: Path, steps: int, lr_scale: float, prior_scale: float):
    """The learner of ``run`` under a test-time setting, and its ``adapt`` options."""
    learner = load_run(run)
    learner.eval()
    scale_inner_lr(learner, lr_scale)
    scale_prior_std(learner, prior_scale)
    return learner, ({"inner_steps": steps} if "inner_steps" in learner.adapt_options
                     else {})


def task_functions(learner, options: dict, steps: int, samples: int, sx, sy) -> torch.Tensor:
    """``[K, len(GRID) + n]``: the method's functions for one support, on the grid and on
    the support points (`functions_of`)."""
    return functions_of(learner, learner.adapt(sx, sy, **options), sx, sy, samples,
                        torch.cat([GRID, sx]), steps)


def draw_figure(runs: dict[str, tuple[Path, int, float, float]], tasks, ambiguous: list[bool],
                samples: int, hypothesis_tolerance: float, count: int, out: Path,
                strict_count: int = 0, select: str | None = None,
                fit_tolerance: float = 0.6) -> Path:
    """Rows: the runs (label -> (run, inner steps at test, step multiplier, prior std
    multiplier)); columns: the first ``count`` ambiguous test supports, then (when
    ``strict_count``) the first ``strict_count`` later ambiguous supports, in test order, on
    which the functions of the row ``select`` meet the strict criterion (`strict_holds`):
    a selection, stated in the column titles. Each panel: the support (red), the task's
    query points (grey), and every function the method gives (`functions_of`), orange when
    it is a line of the family, purple a sinusoid, grey neither (`hypotheses`)."""
    from metalab.cli.plot import _pyplot, _save

    every = [(batch, t) for batch in tasks for t in range(len(batch))]
    every = [task for task, flag in zip(every, ambiguous, strict=True) if flag]
    chosen, selected = every[:count], []
    cache: dict[tuple[str, int], torch.Tensor] = {}
    if strict_count:
        run, steps, lr_scale, prior_scale = runs[select]
        learner, options = figure_learner(run, steps, lr_scale, prior_scale)
        for index, (batch, t) in enumerate(every[count:], start=count):
            sx, sy = batch.support_x[t], batch.support_y[t]
            functions = task_functions(learner, options, steps, samples, sx, sy)
            cache[select, index] = functions
            if strict_holds(functions, sy[:, 0], fit_tolerance, hypothesis_tolerance):
                selected.append(index)
                if len(selected) == strict_count:
                    break
    columns = list(range(len(chosen))) + selected
    plt = _pyplot()
    fig, axes = plt.subplots(len(runs), len(columns), figsize=(3.2 * len(columns),
                                                               2.6 * len(runs)), squeeze=False)
    for row, (name, (run, steps, lr_scale, prior_scale)) in enumerate(runs.items()):
        learner, options = figure_learner(run, steps, lr_scale, prior_scale)
        for column, index in enumerate(columns):
            batch, t = every[index]
            sx, sy = batch.support_x[t], batch.support_y[t]
            functions = cache.get((name, index))
            if functions is None:
                functions = task_functions(learner, options, steps, samples, sx, sy)
            functions = functions[:, : len(GRID)]
            is_line, is_sine = hypotheses(functions, hypothesis_tolerance)
            axis = axes[row, column]
            axis.scatter(batch.query_x[t, :, 0], batch.query_y[t, :, 0], s=3, color="0.6")
            for f, line, sine in zip(functions, is_line, is_sine, strict=True):
                color = "tab:orange" if line else "tab:purple" if sine else "0.35"
                axis.plot(GRID[:, 0], f, color=color, linewidth=1.8 if sine else 0.9,
                          alpha=0.8, zorder=2 if sine else 1)  # sinusoids: few, on top
            axis.scatter(sx[:, 0], sy[:, 0], color="tab:red", s=16, zorder=3)
            truth = "line" if batch.task_id[t] == LINE else "sine"
            how = "" if column < len(chosen) else ", selected: strict holds"
            axis.set_title(f"{name}\nambiguous support {index + 1} (a {truth}){how}",
                           fontsize=7)
            axis.set_ylim(-10, 10)
    rule = "" if not strict_count else (
        f"; the last {len(selected)} columns are the first later ambiguous supports on which "
        f"{select} has a fitting line and a fitting sinusoid (selected, not typical)")
    fig.suptitle(f"functions on ambiguous supports (red): orange = a family line, purple = "
                 f"a family sinusoid (RMS <= {hypothesis_tolerance} on [-5, 5]), grey = "
                 f"neither; grey dots: the task's queries; first {len(chosen)} ambiguous "
                 f"supports{rule}", fontsize=9)
    fig.tight_layout()
    return _save(fig, out)


COLUMNS = ("mse", "log_likelihood", "coverage_90", "both", "both_fitting", "ambiguous",
           "both_fitting_ambiguous", "truth_covered", "mean_kind", "hypothesis_draws",
           "both_hypotheses_ambiguous")
SUPPORT_COLUMNS = ("support_fit", "support_fit_noise", "support_mse", "support_fit_ambiguous",
                   "two_fitting_ambiguous", "fitting_line_ambiguous", "fitting_sine_ambiguous",
                   "both_hypotheses_ambiguous", "both_fitting_ambiguous")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=Path, required=True)
    parser.add_argument("--names", nargs="+", default=list(RUNS))
    parser.add_argument("--episodes", type=int, default=200)
    parser.add_argument("--samples", type=int, default=5,
                        help="functions drawn per task by PLATIPUS/ABML (5: as the ensemble)")
    parser.add_argument("--maml-noise-std", type=float, default=0.3)
    parser.add_argument("--fit-tolerance", type=float, default=0.6)
    parser.add_argument("--hypothesis-tolerance", type=float, default=1.0,
                        help="RMS distance over [-5, 5] to the nearest line/sinusoid of the "
                             "family under which a drawn function is that hypothesis")
    parser.add_argument("--figure", type=Path, default=None,
                        help="draw the functions of --names on the first --figure-tasks "
                             "ambiguous test supports (seed 0 runs) into this png")
    parser.add_argument("--figure-tasks", type=int, default=4)
    parser.add_argument("--figure-names", nargs="+", default=None,
                        help="the runs drawn in the figure (default: every name)")
    parser.add_argument("--prior-scales", nargs="+", type=float, default=[],
                        help="extra rows: every PLATIPUS name with its prior std "
                             "sigma_theta multiplied by each of these at test (under every "
                             "--inner-steps x --inner-lr-scales setting)")
    parser.add_argument("--inner-steps", nargs="+", type=int, default=[INNER_STEPS],
                        help="rows for each of these inner-step counts at test")
    parser.add_argument("--inner-lr-scales", nargs="+", type=float, default=[1.0],
                        help="rows with the inner SGD step multiplied by each of these at "
                             "test (every step count of --inner-steps)")
    parser.add_argument("--figure-settings", nargs="+", default=[f"{INNER_STEPS}x1"],
                        help="the figure's rows: every --figure-names run under each "
                             "STEPSxSCALE (inner steps, step multiplier at test)")
    parser.add_argument("--figure-prior-scale", type=float, default=1.0,
                        help="the figure's PLATIPUS rows with the prior std multiplied so")
    parser.add_argument("--figure-strict", type=int, default=0,
                        help="add this many columns: the first later ambiguous supports on "
                             "which the figure's last row meets the strict criterion")
    parser.add_argument("--jobs", type=int, default=1,
                        help="measure this many (name, seed) cells at once, one process each")
    parser.add_argument("--seeds", nargs="+", type=int, default=None,
                        help="score RUNS/<name>/seed<N> for each seed (mean over seeds)")
    parser.add_argument("--support-width", default=None,
                        help="draw the test supports in a window of this width ('none': over "
                             "all of [-5, 5]) instead of the first run's data config's")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.time()
    seed_dirs = [None] if args.seeds is None else [f"seed{s}" for s in args.seeds]
    names = [n for n in args.names if (args.runs / n).is_dir()]
    first = args.runs / names[0] / (seed_dirs[0] or "")
    tasks = test_tasks(first, args.episodes, args.support_width)
    width = (read_run_config(first)["data"].get("support_width") if args.support_width is None
             else parse_support_width(args.support_width))
    ambiguous = ambiguity_flags(tasks, args.fit_tolerance)
    probed = [n for n in names if read_run_config(args.runs / n / (seed_dirs[0] or ""))[
        "algorithm"]["name"] == "platipus"]
    noise = read_run_config(first)["data"].get("noise", 0.3)
    rows = setting_rows(names, probed, args.inner_steps, args.inner_lr_scales,
                        args.prior_scales)
    cells = [(name, d, c) for name, c in rows for d in seed_dirs]
    cell = partial(measure_cell, args.runs, tasks, args.episodes, args.samples,
                   args.maml_noise_std, args.fit_tolerance, ambiguous,
                   args.hypothesis_tolerance, noise ** 2)
    if args.jobs > 1:
        context = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(args.jobs, mp_context=context,
                                 initializer=torch.set_num_threads, initargs=(1,)) as pool:
            measured = dict(zip(cells, pool.map(cell, cells), strict=True))
    else:
        measured = {c: cell(c) for c in cells}
    results, per_seed = {}, {}
    for row, c in rows:
        name = setting_label(row, c)
        per_seed[name] = [measured[row, d, c] for d in seed_dirs]
        results[name] = per_seed[name][0] if args.seeds is None else over_seed_rows(
            per_seed[name])
        print(name, {k: format_plain(v) for k, v in results[name].items()}, flush=True)
    if args.figure is not None:
        drawn = {}
        for name in args.figure_names or names:
            prior = args.figure_prior_scale if name in probed else 1.0
            for text in args.figure_settings:
                steps, lr_scale = parse_setting(text)
                drawn[setting_label(name, (prior, steps, lr_scale))] = (
                    args.runs / name / (seed_dirs[0] or ""), steps, lr_scale, prior)
        draw_figure(drawn, tasks, ambiguous, args.samples, args.hypothesis_tolerance,
                    args.figure_tasks, args.figure, args.figure_strict, list(drawn)[-1],
                    args.fit_tolerance)
    seconds = time.time() - start
    spread = ("mean ± 95% CI over tasks" if args.seeds is None else
              f"mean over seeds {args.seeds} ± t 95% CI over seeds")
    lines = [f"# Ambiguous sine/line: {args.episodes} test tasks (seed 1234), 5 support points "
             f"in a window of width {width}, "
             f"100 query points, {INNER_STEPS} inner steps at test unless a row says "
             f"otherwise, {spread}; "
             f"{sum(ambiguous)} of the tasks have an ambiguous support; "
             f"measured in {seconds:.0f} s", "",
             "| run | MSE | log-lik per point | 90% coverage | both kinds drawn | "
             "both kinds among draws fitting the support | ambiguous supports | "
             "both kinds among fitting draws, ambiguous supports | true kind drawn | "
             "mean has true kind | draws that are a family line or sinusoid | "
             "a fitting line and a fitting sinusoid drawn, ambiguous supports |",
             "|---" * 12 + "|"]
    for name, r in results.items():
        lines.append(f"| {name} | " + " | ".join(format_plain(r[k]) if k in r else "—"
                                                 for k in COLUMNS) + " |")
    lines += ["", f"Functions per task: MAML 1, the ensemble its members, PLATIPUS/ABML "
              f"{args.samples} draws; a function is line-like when a least-squares line fits it "
              f"on 200 points of [-5, 5] better than c1 sin x + c2 cos x; it fits the support "
              f"when its RMS error on the support points is <= {args.fit_tolerance}; a support is "
              f"ambiguous when a line and a sinusoid of the family (parameters in its ranges) "
              f"both fit it so. A function *is* a line (sinusoid) of the family when its RMS "
              f"distance over 200 points of [-5, 5] to the nearest family line (sinusoid, "
              f"parameters in the family's ranges) is <= {args.hypothesis_tolerance} and to "
              f"the other kind above it (a flat function, near both, is neither); the last "
              f"column counts the ambiguous supports "
              f"on which some draw fitting the support is a line and another a sinusoid. "
              f"MAML (point estimate): predictive N(f(x), {args.maml_noise_std}^2).", "",
              "Support fit: each function's MSE m_k on the task's own support points.", "",
              f"| run | functions fitting the support (m_k <= {args.fit_tolerance ** 2:g}) | "
              f"fitting within the noise (m_k <= {noise ** 2:g}) | median m_k | "
              f"ambiguous supports: functions fitting | at least two fitting | a fitting "
              f"family line | a fitting family sinusoid | a fitting line and sinusoid "
              f"(strict) | both kinds among fitting (forced choice) |",
              "|---" * 10 + "|"]
    for name, r in results.items():
        lines.append(f"| {name} | " + " | ".join(format_plain(r[k]) if k in r else "—"
                                                 for k in SUPPORT_COLUMNS) + " |")
    text = "\n".join(lines)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(Path(f"{args.out}.md"), text + "\n")
        write_json(f"{args.out}.json", {"episodes": args.episodes, "samples": args.samples,
                                        "seeds": args.seeds, "per_seed": per_seed,
                                        "fit_tolerance": args.fit_tolerance,
                                        "hypothesis_tolerance": args.hypothesis_tolerance,
                                        "noise_variance": noise ** 2,
                                        "inner_steps": args.inner_steps,
                                        "inner_lr_scales": args.inner_lr_scales,
                                        "maml_noise_std": args.maml_noise_std,
                                        "support_width": width, "seconds": seconds,
                                        "results": results})


if __name__ == "__main__":
    main()
