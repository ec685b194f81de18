"""Summaries of trained runs: mean ± 95% confidence interval across seeds, per group of runs.

A *run* is a run directory (``config.yaml`` and the ``eval*.json`` files `evaluate_run`
writes). Runs are grouped by config keys (``--by algorithm,data`` or dotted keys such as
``algorithm.inner_lr``); each group's runs are its seeds. For every group the report gives
the mean of the runs' test metric and the half-width of its 95% interval over seeds,

    mean ± t_{0.975, n-1} * s / sqrt(n),    s the sample standard deviation of the n runs,

the Student-t interval (few seeds: with 3 seeds t_{0.975, 2} = 4.303, where the normal
approximation's 1.96 would understate the interval by more than half). One run alone has no
spread over seeds: its row carries the run's own interval over test episodes instead
(``episode_ci95``, the ``1.96 * sd / sqrt(episodes)`` of `metalab.train.evaluator`).
Group data and multi-task data also get the average and worst-group metric over seeds.

`format_result` is the one line `metalab eval` prints; `write_report` writes the table as
markdown and JSON, each atomically.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from metalab.tasks.objective import lower_is_better
from metalab.train.checkpoint import atomic_write_text
from metalab.train.config import SECTIONS

CONFIG_FILE = "config.yaml"
EVAL_FILE = "eval.json"
PERCENT_METRICS = {"accuracy"}
# Keys that never tell two runs' settings apart; nor does any key named ``seed`` (the
# training seed, a combiner's seed, ...): seeds are what a group's runs average over.
NOT_A_SETTING = {"train.progress", "train.device", "train.log_every",
                 "train.checkpoint_every", "train.compile"}
MAX_DEFAULT_COLUMNS = 4  # beyond this many differing keys, a group is named by its runs' path


class ReportError(ValueError):
    """A run directory, its evaluation or a grouping key is missing or malformed."""


# -- the interval over seeds --------------------------------------------------------------
def _student_t_two_sided_mass(t: float, df: int) -> float:
    """``P(|T| <= t)`` for Student's t with integer ``df`` degrees of freedom, in closed form
    (Abramowitz & Stegun 26.7.3-4, with ``theta = atan(t / sqrt(df))``)."""
    theta = math.atan(t / math.sqrt(df))
    c2 = math.cos(theta) ** 2
    if df % 2 == 0:  # sin(theta) * (1 + 1/2 c^2 + 1*3/(2*4) c^4 + ...), df/2 terms
        term, total = 1.0, 1.0
        for k in range(1, df // 2):
            term *= (2 * k - 1) / (2 * k) * c2
            total += term
        return math.sin(theta) * total
    if df == 1:
        return 2 * theta / math.pi
    term, total = math.cos(theta), math.cos(theta)  # cos(1 + 2/3 c^2 + 2*4/(3*5) c^4 + ...)
    for k in range(1, (df - 1) // 2):
        term *= (2 * k) / (2 * k + 1) * c2
        total += term
    return 2 / math.pi * (theta + math.sin(theta) * total)


def t_quantile_975(df: int) -> float:
    """The 0.975 quantile of Student's t with ``df`` degrees of freedom (12.706 for 1,
    4.303 for 2, tending to 1.960), by bisection on the closed-form distribution."""
    if isinstance(df, bool) or not isinstance(df, int) or df < 1:
        raise ValueError(f"df must be a positive integer, got {df!r}")
    low, high = 0.0, 1e3
    for _ in range(200):
        middle = (low + high) / 2
        if _student_t_two_sided_mass(middle, df) < 0.95:
            low = middle
        else:
            high = middle
    return (low + high) / 2


def over_seeds(values: Sequence[float]) -> dict[str, Any]:
    """``{"mean", "ci95", "n", "values"}``: the mean of one value per seed and the Student-t
    95% half-width ``t_{0.975, n-1} * s / sqrt(n)`` (0 for a single value)."""
    values = [float(v) for v in values]
    n = len(values)
    if n == 0:
        raise ValueError("over_seeds needs at least one value")
    mean = math.fsum(values) / n
    if n == 1:
        return {"mean": mean, "ci95": 0.0, "n": 1, "values": values}
    sd = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    return {"mean": mean, "ci95": t_quantile_975(n - 1) * sd / math.sqrt(n), "n": n,
            "values": values}


# -- formatting ---------------------------------------------------------------------------
def format_percent(entry: dict[str, Any], digits: int = 1) -> str:
    """``{"mean": 0.849, "ci95": 0.011}`` -> ``84.9 ± 1.1`` (percent, no sign)."""
    return f"{100 * entry['mean']:.{digits}f} ± {100 * entry['ci95']:.{digits}f}"


def format_plain(entry: dict[str, Any], digits: int = 3) -> str:
    """``{"mean": 0.5121, "ci95": 0.0312}`` -> ``0.512 ± 0.031``."""
    return f"{entry['mean']:.{digits}f} ± {entry['ci95']:.{digits}f}"


def format_value(mean: float, ci95: float, metric: str) -> str:
    """``84.9 ± 1.1%`` for accuracy, ``0.512 ± 0.031`` for an error such as mse."""
    entry = {"mean": mean, "ci95": ci95}
    return f"{format_percent(entry)}%" if metric in PERCENT_METRICS else format_plain(entry)


def format_result(result: dict[str, Any]) -> str:
    """The one line `metalab eval` prints for an ``eval.json`` result, e.g.
    ``test accuracy 84.9 ± 1.1% over 600 episodes``, with the worst group for group data."""
    metric = result["metric"]
    line = (f"{result.get('split', 'test')} {metric} "
            f"{format_value(result['mean'], result['ci95'], metric)} "
            f"over {result['episodes']} episodes")
    options = [f"{result[key]} {label}" for key, label in
               (("inner_steps", "inner steps"), ("support_size", "examples per test batch"))
               if key in result]
    if result.get("checkpoint") == "best":
        options.append(f"best validation checkpoint, step {result['step']}")
    if options:
        line += f" ({', '.join(options)})"
    if "nll" in result and "ece" in result:
        line += (f"; NLL {format_plain({'mean': result['nll'], 'ci95': result['nll_ci95']})}, "
                 f"ECE {format_plain({'mean': result['ece'], 'ci95': result['ece_ci95']})}")
    worst = f"worst_group_{metric}"
    if worst in result:
        group = result["worst_group"]
        per_group = result.get("per_group", {})
        name = (per_group.get(group) or per_group.get(str(group)) or {}).get("name", group)
        line += (f"; worst group {name} "
                 f"{format_value(result[worst], result['worst_group_ci95'], metric)}")
    return line


# -- reading runs -------------------------------------------------------------------------
@dataclass(frozen=True)
class Run:
    """One run directory's completed config and one of its evaluations."""

    path: Path
    config: dict[str, Any]
    result: dict[str, Any]


def eval_file_name(eval_name: str = "eval") -> str:
    """``eval`` -> ``eval.json``; also ``eval-val``, ``eval-test-support10`` and the like."""
    name = eval_name[:-5] if eval_name.endswith(".json") else eval_name
    if not name.startswith("eval"):
        raise ReportError(f"eval must name an evaluation file such as 'eval' or "
                          f"'eval-test-support10', got {eval_name!r}")
    return f"{name}.json"


def _eval_command(run_dir: Path, file_name: str) -> str:
    """The `metalab eval` command that writes ``file_name`` in ``run_dir``."""
    stem = file_name[: -len(".json")]
    command = f"metalab eval {run_dir}"
    if stem == "eval":
        return command
    split, _, support = stem[len("eval-"):].partition("-support")
    command += f" --split {split}" if split != "test" else ""
    return command + (f" --support-size {support}" if support else "")


def read_run(run_dir: str | Path, eval_name: str = "eval") -> Run:
    """The run in ``run_dir`` with its evaluation ``eval_name`` (default ``eval.json``)."""
    path = Path(run_dir)
    config_path = path / CONFIG_FILE
    if not config_path.is_file():
        raise ReportError(f"{str(path)!r} is not a metalab run directory ({CONFIG_FILE} is "
                          f"missing); give the --out directory of `metalab train`")
    file_name = eval_file_name(eval_name)
    result_path = path / file_name
    if not result_path.is_file():
        others = sorted(p.name for p in path.glob("eval*.json"))
        hint = f" (it has {', '.join(others)})" if others else ""
        raise ReportError(f"run {str(path)!r} has no {file_name}{hint}; evaluate it first: "
                          f"`{_eval_command(path, file_name)}`")
    config = yaml.safe_load(config_path.read_text()) or {}
    return Run(path, config, json.loads(result_path.read_text()))


def expand_run_dirs(paths: Iterable[str | Path]) -> list[Path]:
    """Each path as given, except a directory that is not a run but holds runs (the ``--out``
    of ``metalab train --seeds``): its run subdirectories, sorted by name."""
    expanded = []
    for path in map(Path, paths):
        children = [] if (path / CONFIG_FILE).exists() or not path.is_dir() else sorted(
            child for child in path.iterdir() if (child / CONFIG_FILE).is_file())
        expanded += children or [path]
    return expanded


def config_value(config: dict[str, Any], key: str) -> Any:
    """The value of a grouping key: a section name means its ``name`` (``algorithm`` ->
    ``algorithm.name``); a dotted key (``algorithm.inner_lr``) its value, None if unset."""
    parts = key.split(".")
    if parts[0] not in SECTIONS or not all(parts):
        raise ReportError(f"--by key {key!r} must be a config section ({', '.join(SECTIONS)}) "
                          f"or a dotted key inside one, such as algorithm.inner_lr")
    if len(parts) == 1:
        parts.append("name")
    node: Any = config
    for part in parts:
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node


def _flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def differing_keys(configs: Sequence[dict[str, Any]]) -> list[str]:
    """The dotted config keys whose values differ between ``configs``, apart from seeds
    (any key named ``seed``) and the keys that do not change what is trained
    (`NOT_A_SETTING`)."""
    flats = [_flatten(config) for config in configs]
    keys = sorted(key for key in {key for flat in flats for key in flat} - NOT_A_SETTING
                  if key.rsplit(".", 1)[-1] != "seed")
    return [key for key in keys
            if len({json.dumps(flat.get(key), sort_keys=True) for flat in flats}) > 1]


def check_by_keys(runs: Sequence[Run], by: Sequence[str]) -> None:
    """Every ``--by`` key names a section or a key that at least one run's config sets."""
    for key in by:
        values = [config_value(run.config, key) for run in runs]
        if all(value is None for value in values):
            known = sorted({k for run in runs for k in _flatten(run.config)})
            raise ReportError(f"--by key {key!r} is in none of the runs' configs; known keys: "
                              f"{', '.join(known)}")


# -- summarising --------------------------------------------------------------------------
def _hashable(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def group_runs(runs: Sequence[Run], by: Sequence[str]) -> list[tuple[dict[str, Any], list[Run]]]:
    """Runs grouped by their values of the ``by`` keys, groups in order of first appearance."""
    groups: dict[str, tuple[dict[str, Any], list[Run]]] = {}
    for run in runs:
        values = {key: config_value(run.config, key) for key in by}
        groups.setdefault(_hashable(values), (values, []))[1].append(run)
    return list(groups.values())


def group_path(runs: Sequence[Run]) -> str:
    """A group's name by its runs: their common folder (``runs/baseline`` for its seeds), or the
    one run's directory."""
    paths = [str(run.path) for run in runs]
    return paths[0] if len(paths) == 1 else os.path.commonpath(paths)


def summarise_group(runs: Sequence[Run]) -> dict[str, Any]:
    """One row: the metric over the group's runs (seeds), and for group or multi-task data
    the average and worst-group metric; a single run also carries its episode interval."""
    metrics = {run.result["metric"] for run in runs}
    if len(metrics) > 1:
        raise ReportError(f"runs {[str(r.path) for r in runs]} report different metrics "
                          f"{sorted(metrics)}; group them apart with --by")
    metric = metrics.pop()
    seeds = [run.config.get("train", {}).get("seed") for run in runs]
    row: dict[str, Any] = {
        "metric": metric, "runs": [str(run.path) for run in runs], "seeds": seeds,
        "episodes": [run.result["episodes"] for run in runs],
        metric: over_seeds([run.result["mean"] for run in runs]),
    }
    worst = f"worst_group_{metric}"
    if all(worst in run.result for run in runs):
        row[f"average_{metric}"] = over_seeds([run.result[f"average_{metric}"] for run in runs])
        row[worst] = over_seeds([run.result[worst] for run in runs])
    if len(runs) == 1:
        row["episode_ci95"] = runs[0].result["ci95"]
        if worst in runs[0].result:
            row["worst_group_episode_ci95"] = runs[0].result["worst_group_ci95"]
    return row


def summarise_runs(run_dirs: Iterable[str | Path], by: Sequence[str] | None = None,
                   eval_name: str = "eval") -> dict[str, Any]:
    """``{"by", "eval", "rows"}``: one row per group of runs (`summarise_group`), each with
    its ``by`` values under ``"group"``. Without ``by``, runs are grouped by every config key
    on which they differ (`differing_keys`): the seeds of one config make one row; the
    groups are labelled by those keys, or, when more than `MAX_DEFAULT_COLUMNS` differ, by
    their runs' common folder (``"runs"``, the keys' values under ``"settings"``). A
    directory holding runs stands for those runs (`expand_run_dirs`)."""
    runs = [read_run(run_dir, eval_name) for run_dir in expand_run_dirs(run_dirs)]
    if not runs:
        raise ReportError("give at least one run directory")
    if by is not None:
        check_by_keys(runs, by)
        return {"by": list(by), "eval": eval_file_name(eval_name),
                "rows": [{"group": values, **summarise_group(members)}
                         for values, members in group_runs(runs, by)]}
    keys = differing_keys([run.config for run in runs])
    groups = group_runs(runs, keys)
    if len(keys) <= MAX_DEFAULT_COLUMNS:
        rows = [{"group": values, **summarise_group(members)} for values, members in groups]
        return {"by": keys, "eval": eval_file_name(eval_name), "rows": rows}
    rows = [{"group": {"runs": group_path(members)}, "settings": values,
             **summarise_group(members)} for values, members in groups]
    return {"by": ["runs"], "eval": eval_file_name(eval_name), "rows": rows}


# -- writing ------------------------------------------------------------------------------
def _cell(entry: dict[str, Any], metric: str, episode_ci95: float | None) -> str:
    if entry["n"] == 1 and episode_ci95 is not None:
        return format_value(entry["mean"], episode_ci95, metric) + " (episodes)"
    return format_value(entry["mean"], entry["ci95"], metric)


def markdown_table(report: dict[str, Any]) -> str:
    """The report as a markdown table: the ``by`` columns, the number of seeds, the metric,
    mean ± 95% CI over seeds, and the worst group where the runs have groups (their mean is
    the average over groups' batches)."""
    rows = report["rows"]
    grouped = any(f"worst_group_{row['metric']}" in row for row in rows)
    header = [*report["by"], "seeds", "metric", "mean ± 95% CI"]
    if grouped:
        header.append("worst group")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        metric = row["metric"]
        cells = [str(row["group"][key]) for key in report["by"]]
        cells += [str(row[metric]["n"]), metric,
                  _cell(row[metric], metric, row.get("episode_ci95"))]
        if grouped:
            worst = row.get(f"worst_group_{metric}")
            cells.append("" if worst is None else
                         _cell(worst, metric, row.get("worst_group_episode_ci95")))
        lines.append("| " + " | ".join(cells) + " |")
    note = ("Mean ± Student-t 95% CI over seeds; a row of one run shows its interval over "
            "test episodes (episodes).")
    better = {("lower" if lower_is_better(row["metric"]) else "higher") + f" {row['metric']}"
              for row in rows}
    return "\n".join(lines) + f"\n\n{note} Better: {', '.join(sorted(better))}.\n"


def write_report(report: dict[str, Any], path: str | Path) -> tuple[Path, Path]:
    """Write ``report`` to ``path`` as markdown (``.md``) and JSON (``.json``), atomically;
    returns both paths (the suffix given is replaced)."""
    path = Path(path)
    markdown, data = path.with_suffix(".md"), path.with_suffix(".json")
    atomic_write_text(markdown, markdown_table(report))
    atomic_write_text(data, json.dumps(report, indent=2) + "\n")
    return markdown, data


def write_json(path: str | Path, payload: Any) -> Path:
    """``payload`` as indented JSON at ``path``, atomically (the benchmarks' result files)."""
    path = Path(path)
    atomic_write_text(path, json.dumps(payload, indent=2) + "\n")
    return path
