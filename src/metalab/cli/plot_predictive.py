"""``metalab plot --predictive RUN_DIR [...]``: predictions with uncertainty bands.

For each run (one row) and each number of context points (one column) it draws one test
task: the context points, the true function (the task's query points), the predictive
mean with a band of two predictive standard deviations, and, for a latent model, a few
functions sampled from it. Image-completion runs (2-D inputs) show instead the context
pixels, the predictive mean and its standard deviation as images. The run must have been
trained by a method whose `adapt` returns a predictive with ``mean``/``variance``
(the neural-process family).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from metalab.cli.plot import _pyplot, _save

FUNCTION_SAMPLES = 5


def _test_task(run_dir: Path, contexts: int, seed: int, overrides: Sequence[str]):
    """One test task of the run's family with ``contexts`` support points and dense queries
    (all pixels for images), drawn with ``seed``."""
    from metalab.train.build import build_task_source
    from metalab.train.config import apply_overrides
    from metalab.train.run import read_run_config

    config = read_run_config(run_dir, overrides)
    changes = [f"data.shots={contexts}"]
    if "max_shots" in config["data"]:
        changes.append("data.max_shots=null")
    config = apply_overrides(config, changes)
    queries = None if config["data"]["name"].endswith("completion") else 200
    return build_task_source(config, "test", 1, seed=seed, queries=queries).sample()[0]


def _draw_curve(axis, predictive, task, title: str) -> None:
    order = task.query_x[:, 0].argsort()
    x, y = task.query_x[order], task.query_y[order]
    mean, std = predictive.mean(x)[:, 0], predictive.variance(x)[:, 0].sqrt()
    grid = x[:, 0]
    grid, y, mean, std = grid.numpy(), y.numpy(), mean.numpy(), std.numpy()
    axis.plot(grid, y[:, 0], color="black", linewidth=1, label="truth")
    if getattr(predictive, "is_latent", False):
        for draw in predictive.sample(x, FUNCTION_SAMPLES, seed=0)[..., 0].numpy():
            axis.plot(grid, draw, color="tab:green", linewidth=0.6, alpha=0.7)
    axis.plot(grid, mean, color="tab:blue", label="predictive mean")
    axis.fill_between(grid, mean - 2 * std, mean + 2 * std, color="tab:blue", alpha=0.2,
                      label="mean ± 2 sd")
    axis.scatter(task.support_x[:, 0].numpy(), task.support_y[:, 0].numpy(), color="tab:red",
                 s=14, zorder=3, label="context")
    axis.set_title(title, fontsize=8)


def _image(values, side: int):
    return values[:, 0].reshape(side, side)


def _draw_image(axes, predictive, task, title: str) -> None:
    side = int(round(task.query_x.shape[0] ** 0.5))
    context = torch.full((side * side,), float("nan"))
    rows = ((task.support_x[:, 0] + 1) / 2 * (side - 1)).round().long()
    cols = ((task.support_x[:, 1] + 1) / 2 * (side - 1)).round().long()
    context[rows * side + cols] = task.support_y[:, 0]
    mean, std = predictive.mean(task.query_x), predictive.variance(task.query_x).sqrt()
    pictures = ((context.reshape(side, side), "context"), (_image(mean, side), "mean"),
                (_image(std, side), "sd"))
    for axis, (picture, name) in zip(axes, pictures, strict=True):
        axis.imshow(picture.numpy(), cmap="gray" if name != "sd" else "magma")
        axis.set_title(f"{title}: {name}", fontsize=7)
        axis.axis("off")


def plot_predictive(run_dirs: Sequence[Path], out: Path, context_sizes: Sequence[int] = (3, 10),
                    seed: int = 0, overrides: Sequence[str] = ()) -> Path:
    """Draw every run's predictive on one test task per context size; write ``out``.

    ``overrides`` (``data.amplitude=[5,10]``) change the runs' test data, e.g. to show the
    predictive outside the training range.
    """
    from metalab.train.run import load_run

    plt = _pyplot()
    tasks = {(run, k): _test_task(Path(run), k, seed, overrides)
             for run in run_dirs for k in context_sizes}
    images = tasks[(run_dirs[0], context_sizes[0])].query_x.shape[-1] == 2
    columns = len(context_sizes) * (3 if images else 1)
    fig, axes = plt.subplots(len(run_dirs), columns, squeeze=False,
                             figsize=(3.2 * columns if not images else 1.8 * columns,
                                      2.6 * len(run_dirs)))
    for row, run in enumerate(run_dirs):
        learner = load_run(Path(run))
        for column, k in enumerate(context_sizes):
            task = tasks[(run, k)]
            predictive = learner.adapt(task.support_x, task.support_y)
            if not hasattr(predictive, "variance"):
                raise ValueError(f"{run}: {type(learner).__name__} has no predictive variance; "
                                 f"--predictive is for the neural-process family")
            title = f"{Path(run).name}, {k} context"
            if images:  # three narrow panels per context size: a short title
                _draw_image(axes[row, 3 * column: 3 * column + 3], predictive, task,
                            f"{k} ctx")
            else:
                _draw_curve(axes[row, column], predictive, task, title)
    if not images:
        axes[0, 0].legend(fontsize=6, loc="best")
    fig.tight_layout()
    return _save(fig, out)
