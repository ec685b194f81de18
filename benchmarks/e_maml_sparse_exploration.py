"""E-MAML against MAML-RL on sparse-goal 2-D navigation (`nav2d-sparse`): what the
pre-update (exploration) episodes of each trained policy do, and what one inner step gets.

    OMP_NUM_THREADS=1 metalab train maml-rl-nav2d-sparse --out RUNS/maml-rl-seed0 train.seed=0
    OMP_NUM_THREADS=1 metalab train e-maml-nav2d-sparse --out RUNS/e-maml-seed0 train.seed=0
    metalab eval RUNS/maml-rl-seed0          # ... every run
    python benchmarks/e_maml_sparse_exploration.py RUNS/* --out benchmarks/results/e_maml_sparse

Per run (its last checkpoint), on ``--tasks`` test goals drawn with ``--seed`` (the same
goals and rollout noise for every run) and the config's episodes per task:

- pre-update episodes at the meta-learned parameters: success (came within the radius),
  the closest approach to the goal, and coverage: the distinct cells of a 0.2 x 0.2 grid
  over the goal square [-2, 2]^2 that an episode visits (of 400; a straight dash visits
  about 10-20, a wide sweep more);
- post-update episodes after one inner step on them (`MAMLRL.adapt_to_tasks`): success,
  return, closest approach.

The first row is a freshly initialised policy of the first run's config (the floor).
Each figure is the mean over tasks with the 95% interval over tasks (`mean_ci95`). It
also summarises the training logs (first / last 5 iterations) and the runs' ``eval.json``.
Writes OUT.json and OUT.md.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from metalab.train.build import build_meta_learner
from metalab.train.checkpoint import atomic_write_text, load_checkpoint
from metalab.train.evaluator import mean_ci95
from metalab.train.run import load_run, read_run_config
from metalab.train.sources import build_task_source

CELL = 0.2


def positions_of(batch, max_action: float) -> torch.Tensor:
    """``[T, E, H, 2]``: the point after every step (episodes start at the origin)."""
    return batch.actions.clamp(-max_action, max_action).cumsum(dim=2)


def episode_measures(batch, goals: torch.Tensor, max_action: float, goal_range: float
                     ) -> dict[str, torch.Tensor]:
    """Per task ``[T]``: success, closest approach and coverage of its episodes (means)."""
    positions = positions_of(batch, max_action)
    distance = (positions - goals[:, None, None, :]).norm(dim=-1).min(dim=-1).values
    cells_per_side = round(2 * goal_range / CELL)
    cells = ((positions + goal_range) / CELL).floor().clamp(0, cells_per_side - 1).long()
    flat = cells[..., 0] * cells_per_side + cells[..., 1]  # [T, E, H]
    coverage = torch.tensor([[len(set(flat[t, e].tolist())) for e in range(flat.shape[1])]
                             for t in range(flat.shape[0])], dtype=torch.float64)
    return {"success": batch.success.double().mean(dim=-1),
            "closest": distance.double().mean(dim=-1),
            "coverage": coverage.mean(dim=-1),
            "return": batch.total_returns().double().mean(dim=-1)}


def summarise(values: dict[str, torch.Tensor]) -> dict[str, list[float]]:
    return {name: list(mean_ci95(v)) for name, v in values.items()}


def training_summary(run: Path, step: int, window: int = 5) -> dict[str, float]:
    """The logs up to ``step`` (the checkpoint measured; a run stopped by hand logged more)."""
    lines = (run / "metrics.jsonl").read_text().splitlines()
    records = [r for r in map(json.loads, filter(str.strip, lines))
               if r["split"] == "train" and r["step"] <= step]
    first, last = records[:window], records[-window:]
    result = {"iterations": records[-1]["step"], "seconds": records[-1]["seconds"]}
    for name in ("success_pre", "success", "return_pre", "return"):
        result[f"first{window}_{name}"] = sum(r[name] for r in first) / len(first)
        result[f"last{window}_{name}"] = sum(r[name] for r in last) / len(last)
    return result


def measure(run: Path, tasks: int, seed: int, initial: bool = False) -> dict:
    """The run's last checkpoint, or with ``initial`` a freshly initialised learner of its
    config (``torch.manual_seed(train.seed)``): the floor before any meta-training."""
    config = read_run_config(run)
    if initial:
        torch.manual_seed(config["train"]["seed"])
        learner, step = build_meta_learner(config), 0
    else:
        learner, step = load_run(run), load_checkpoint(run)["step"]
    source = build_task_source(config, "test", tasks, seed=seed)
    family, batch = source.family, source.sample()
    env = family.env
    generator = batch.generator()
    params = learner.detached_parameters()
    with torch.no_grad():
        pre = family.collect(learner.policy, params, batch.tasks, batch.episodes,
                             generator=generator)
    with torch.enable_grad():
        adapted = learner.inner_step(params, pre, create_graph=False)
    adapted = {n: v.detach() for n, v in adapted.items()}
    with torch.no_grad():
        post = family.collect(learner.policy, adapted, batch.tasks, batch.episodes,
                              generator=generator, per_task=True)
    goals = batch.tasks.double()
    result = {"run": str(run), "step": step, "e_maml": bool(config["algorithm"]["e_maml"]),
              "estimator": config["algorithm"]["estimator"], "seed": config["train"]["seed"],
              "env_steps_at_most": step * 2 * config["train"]["meta_batch"]
              * config["data"]["episodes"] * config["data"]["horizon"],
              "pre": summarise(episode_measures(pre, goals, env.max_action, env.goal_range)),
              "post": summarise(episode_measures(post, goals, env.max_action, env.goal_range)),
              "training": None if initial else training_summary(run, step)}
    if not initial and (run / "eval.json").is_file():
        result["eval"] = json.loads((run / "eval.json").read_text())
    return result


def table(results: list[dict]) -> str:
    def cell(pair: list[float], digits: int = 2) -> str:
        return f"{pair[0]:.{digits}f} ± {pair[1]:.{digits}f}"

    rows = ["| run | it. | pre: success | pre: closest | pre: coverage (cells) | post: success "
            "| post: closest | post: return |", "|---|---|---|---|---|---|---|---|"]
    for r in results:
        method = "E-MAML" if r["e_maml"] else f"MAML-RL ({r['estimator']})"
        name = f"{method}, seed {r['seed']}" if r["step"] else "initial policy (no training)"
        rows.append(f"| {name} | {r['step']} | {cell(r['pre']['success'])} | "
                    f"{cell(r['pre']['closest'])} | {cell(r['pre']['coverage'], 1)} | "
                    f"{cell(r['post']['success'])} | {cell(r['post']['closest'])} | "
                    f"{cell(r['post']['return'], 1)} |")
    rows += ["", "Training logs (means over the first / last 5 meta-iterations):", "",
             "| run | success pre: first / last | success post: first / last |",
             "|---|---|---|"]
    for r in results:
        t = r["training"]
        if t is None:
            continue
        name = f"{'E-MAML' if r['e_maml'] else 'MAML-RL'}, seed {r['seed']}"
        rows.append(f"| {name} | {t['first5_success_pre']:.3f} / {t['last5_success_pre']:.3f} "
                    f"| {t['first5_success']:.3f} / {t['last5_success']:.3f} |")
    return "\n".join(rows) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--tasks", type=int, default=40)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = [measure(args.runs[0], args.tasks, args.seed, initial=True)]
    results += [measure(run, args.tasks, args.seed) for run in args.runs]
    atomic_write_text(args.out.with_suffix(".json"), json.dumps(results, indent=2) + "\n")
    atomic_write_text(args.out.with_suffix(".md"), (
        f"# E-MAML vs MAML-RL on sparse-goal 2-D navigation\n\n{args.tasks} test goals "
        f"(seed {args.seed}), mean ± 95% CI over goals; `benchmarks/e_maml_sparse_"
        f"exploration.py`.\n\n" + table(results)))
    print(table(results))


if __name__ == "__main__":
    main()
