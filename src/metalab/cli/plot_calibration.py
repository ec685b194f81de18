"""``metalab plot --reliability RUN...`` and ``metalab plot --coverage RUN...``: is the
uncertainty the runs report the uncertainty they have?

- Reliability diagram (classification; Guo et al. 2017, fig. 1): the test queries' top-class
  confidences pooled into the ECE's equal-width bins (`metalab.algorithms.calibration`,
  right-closed, 15 bins); for every non-empty bin a bar of its accuracy (the fraction of its
  predictions that are right) at the bin's place, its mean confidence marked, and the
  diagonal a calibrated model lies on. Bars below the diagonal: over-confident.
- Coverage plot (regression): for nominal levels ``p`` (0.05, 0.10, ..., 0.95) the
  empirical coverage of the central interval ``mean +- z_p sd`` of the Gaussian predictive
  (``z_p = Phi^-1((1 + p)/2)``), pooled over every query point of every test task; the
  diagonal is calibration, a curve below it over-confidence.

Both score ``episodes`` test tasks of each run's own data config, drawn with ``seed``; the
adaptation is the run's `adapt` with its defaults (the path `metalab eval` takes).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from metalab.algorithms.calibration import ece_from_bins
from metalab.algorithms.predictive_scores import central_z, interval_coverage
from metalab.cli.plot import _pyplot, _save

#: The nominal central-interval levels of the coverage plot.
COVERAGE_LEVELS = tuple(round(0.05 * k, 2) for k in range(1, 20))
TEST_SEED = 1234


def reliability_points(table: Tensor) -> dict[str, Tensor]:
    """Per non-empty bin of a pooled `calibration_bins` table ``[B, 3]``: ``index`` (0-based),
    ``lower``/``upper`` (its confidence range ``(b/B, (b+1)/B]``), ``confidence`` (mean),
    ``accuracy`` and ``count``."""
    if table.dim() != 2 or table.shape[1] != 3:
        raise ValueError(f"table must be [bins, 3], got {tuple(table.shape)}")
    bins = table.shape[0]
    index = torch.nonzero(table[:, 0] > 0).flatten()
    count = table[index, 0]
    return {"index": index, "lower": index.double() / bins, "upper": (index + 1).double() / bins,
            "confidence": table[index, 1] / count, "accuracy": table[index, 2] / count,
            "count": count}


def coverage_curve(mean: Tensor, variance: Tensor, y: Tensor,
                   levels: Sequence[float] = COVERAGE_LEVELS) -> Tensor:
    """``[len(levels)]``: the fraction of ``y`` inside ``mean +- z_p sqrt(variance)`` for
    each level ``p`` (module doc)."""
    return torch.stack([interval_coverage(mean, variance, y, central_z(p)) for p in levels])


def draw_reliability(axis, table: Tensor, title: str) -> None:
    """One run's reliability diagram from its pooled bins (module doc) on ``axis``."""
    points = reliability_points(table.double())
    width = 1.0 / table.shape[0]
    axis.bar((points["lower"] + width / 2).numpy(), points["accuracy"].numpy(), width=width,
             color="tab:blue", edgecolor="black", linewidth=0.5, label="accuracy")
    axis.plot(points["confidence"].numpy(), points["accuracy"].numpy(), "o", color="tab:red",
              markersize=3, label="mean confidence")
    axis.plot([0, 1], [0, 1], "--", color="gray", linewidth=1, label="calibrated")
    axis.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="accuracy")
    axis.set_title(f"{title}: ECE {ece_from_bins(table.double()).item():.3f}", fontsize=8)


def draw_coverage(axis, levels: Sequence[float], empirical: Tensor, label: str) -> None:
    """One run's coverage curve (nominal ``levels`` against ``empirical``) on ``axis``."""
    axis.plot(list(levels), empirical.tolist(), "o-", markersize=3, label=label)


def _test_source(run: Path, episodes: int, seed: int, queries: int | None = None):
    from metalab.train.build import build_task_source
    from metalab.train.run import read_run_config

    return build_task_source(read_run_config(run), "test", min(episodes, 100), seed=seed,
                             queries=queries)


def run_calibration_bins(run: Path, episodes: int, seed: int = TEST_SEED) -> Tensor:
    """The pooled ``[bins, 3]`` calibration table of ``episodes`` test tasks of a
    classification run (through the `Evaluator`, as `metalab eval` scores the ECE)."""
    from metalab.train.evaluator import Evaluator
    from metalab.train.run import load_run

    learner = load_run(run).eval()
    values = Evaluator(episodes).per_task(learner, _test_source(run, episodes, seed))
    if "calibration_bins" not in values:
        raise ValueError(f"{run}: {type(learner).__name__} gives no class probabilities; "
                         f"--reliability needs a classification run")
    return values["calibration_bins"].sum(dim=0)


@torch.no_grad()
def run_coverage(run: Path, episodes: int, seed: int = TEST_SEED,
                 levels: Sequence[float] = COVERAGE_LEVELS) -> Tensor:
    """``[len(levels)]`` empirical coverages of a regression run's predictive on
    ``episodes`` test tasks of 100 query points each (pooled over every point)."""
    from metalab.train.run import load_run

    learner = load_run(run).eval()
    source = _test_source(run, episodes, seed, queries=100)
    means, variances, targets, seen = [], [], [], 0
    while seen < episodes:
        batch = source.sample()
        for t in range(min(len(batch), episodes - seen)):
            with torch.enable_grad():  # the MAML family adapts by gradient steps
                predictive = learner.adapt(batch.support_x[t], batch.support_y[t])
            if not hasattr(predictive, "variance"):
                raise ValueError(f"{run}: {type(learner).__name__} gives a point estimate, no "
                                 f"predictive variance; --coverage needs a probabilistic run")
            means.append(predictive.mean(batch.query_x[t]))
            variances.append(predictive.variance(batch.query_x[t]))
            targets.append(batch.query_y[t])
        seen += len(batch)
    return coverage_curve(torch.cat(means), torch.cat(variances), torch.cat(targets), levels)


def plot_reliability(run_dirs: Sequence[Path], out: Path, episodes: int = 100,
                     seed: int = TEST_SEED) -> Path:
    """A reliability diagram per classification run (one panel each); write ``out``."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(run_dirs), squeeze=False,
                             figsize=(3.2 * len(run_dirs), 3.2))
    for axis, run in zip(axes[0], run_dirs, strict=True):
        draw_reliability(axis, run_calibration_bins(Path(run), episodes, seed), Path(run).name)
    axes[0, 0].legend(fontsize=6, loc="upper left")
    fig.tight_layout()
    return _save(fig, out)


def plot_coverage(run_dirs: Sequence[Path], out: Path, episodes: int = 100,
                  seed: int = TEST_SEED) -> Path:
    """Nominal against empirical coverage, one curve per regression run; write ``out``."""
    plt = _pyplot()
    fig, axis = plt.subplots(figsize=(4.2, 4.0))
    for run in run_dirs:
        draw_coverage(axis, COVERAGE_LEVELS, run_coverage(Path(run), episodes, seed),
                      Path(run).name)
    axis.plot([0, 1], [0, 1], "--", color="gray", linewidth=1, label="calibrated")
    axis.set(xlim=(0, 1), ylim=(0, 1), xlabel="nominal coverage of the central interval",
             ylabel="empirical coverage")
    axis.legend(fontsize=6, loc="upper left")
    fig.tight_layout()
    return _save(fig, out)
