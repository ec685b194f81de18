"""``metalab plot --predictive RUN_DIR [...]``: predictions with uncertainty bands.

For each run (one row) and each number of context points it draws ``tasks`` test tasks
(one column each, seeds ``seed, seed + 1, ...``): the context points, the true function
(the task's query points), the predictive mean with a band of two predictive standard
deviations, and, for a model that draws whole functions (latent neural processes,
PLATIPUS, ABML), ``samples`` functions drawn from it. A point estimate (MAML, whose
`adapt` returns a plain predictor) shows its one function. Image-completion runs (2-D
inputs) show instead the context pixels, the predictive mean and its standard deviation
as images, and need a predictive with ``mean``/``variance``.
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


def _draw_curve(axis, predictive, task, title: str, samples: int = FUNCTION_SAMPLES
                ) -> None:
    order = task.query_x[:, 0].argsort()
    x, y = task.query_x[order], task.query_y[order]
    grid = x[:, 0].numpy()
    axis.plot(grid, y[:, 0].numpy(), color="black", linewidth=1, label="truth")
    if not hasattr(predictive, "variance"):  # a point estimate: its one function
        axis.plot(grid, predictive(x)[:, 0].numpy(), color="tab:blue", label="prediction")
    else:
        mean, std = predictive.mean(x)[:, 0].numpy(), predictive.variance(x)[:, 0].sqrt().numpy()
        if getattr(predictive, "is_latent", False):
            for draw in predictive.sample(x, samples, seed=0)[..., 0].numpy():
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
                    seed: int = 0, overrides: Sequence[str] = (), tasks: int = 1,
                    samples: int = FUNCTION_SAMPLES) -> Path:
    """Draw every run's predictive on ``tasks`` test tasks per context size; write ``out``.

    ``overrides`` (``data.amplitude=[5,10]``) change the runs' test data, e.g. to show the
    predictive outside the training range; ``samples`` functions are drawn per panel from
    predictives that draw whole functions.
    """
    from metalab.train.run import load_run

    plt = _pyplot()
    columns_of = [(k, seed + j) for k in context_sizes for j in range(tasks)]
    drawn = {(run, k, s): _test_task(Path(run), k, s, overrides)
             for run in run_dirs for k, s in columns_of}
    images = drawn[(run_dirs[0], *columns_of[0])].query_x.shape[-1] == 2
    columns = len(columns_of) * (3 if images else 1)
    fig, axes = plt.subplots(len(run_dirs), columns, squeeze=False,
                             figsize=(3.2 * columns if not images else 1.8 * columns,
                                      2.6 * len(run_dirs)))
    for row, run in enumerate(run_dirs):
        learner = load_run(Path(run))
        for column, (k, task_seed) in enumerate(columns_of):
            task = drawn[(run, k, task_seed)]
            predictive = learner.adapt(task.support_x, task.support_y)
            if images and not hasattr(predictive, "variance"):
                raise ValueError(f"{run}: {type(learner).__name__} has no predictive variance; "
                                 f"image completion needs one (the neural-process family)")
            title = f"{Path(run).name}, {k} context" + (f", task {task_seed}" if tasks > 1
                                                         else "")
            if images:  # three narrow panels per context size: a short title
                _draw_image(axes[row, 3 * column: 3 * column + 3], predictive, task,
                            f"{k} ctx")
            else:
                _draw_curve(axes[row, column], predictive, task, title, samples)
    if not images:
        axes[0, 0].legend(fontsize=6, loc="best")
    fig.tight_layout()
    return _save(fig, out)
