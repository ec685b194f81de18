"""RL²'s within-trial adaptation on 2-D navigation from `metalab train rl2-…` runs.

    OMP_NUM_THREADS=1 metalab train rl2-ppo-nav2d --out runs/rl2/seed0 train.seed=0   # 1, 2
    python benchmarks/rl2_nav2d.py runs/rl2/seed0 runs/rl2/seed1 runs/rl2/seed2 \\
        --out benchmarks/results/rl2_ppo_nav2d

For each run's last checkpoint (`load_run`): the 40 held-out test goals `metalab eval`
draws (its test source, ``eval.seed``), ``data.episodes`` trials per goal, and per goal the
mean return of every episode of the trial; episode 2 against episode 1 *paired by goal*
(the mean difference, its 95% CI over goals, how many goals improved). Floors: a uniformly
random policy on the same goals, staying at the origin, the best goal-blind path, and the
untrained GRU (the first training iteration's returns). How much of the goal the GRU's
hidden state holds after episode 1: the held-out R² of a ridge regression from it to the
goal (`goal_r2`, 400 other goals). Training curves: each iteration's per-episode returns.
Writes OUT.md, OUT.json and OUT.png.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch
import yaml
from pearl_nav2d_curve import (
    best_blind_return,
    mean_ci,
    random_policy_return,
    read_records,
    run_actions,
    staying_return,
    test_environment,
)

from metalab.rl import trial_inputs
from metalab.train import load_run
from metalab.train.checkpoint import atomic_write_text
from metalab.train.sources import build_task_source


def ci95(values: torch.Tensor) -> float:
    return 1.96 * values.std().item() / math.sqrt(len(values)) if len(values) > 1 else 0.0


def per_goal_returns(run: Path, tasks: int = 40
                     ) -> tuple[torch.Tensor, dict, float, torch.Tensor]:
    """``[goals, K]``: each test goal's mean return of every episode of the trial; the
    config; the held-out R² of the goal decoded from the hidden state after episode 1;
    ``[goals, trials, K]``: 1 where the episode ended early (reached the goal)."""
    config = yaml.safe_load((run / "config.yaml").read_text())
    learner = load_run(run)
    batch = build_task_source(config, "test", tasks,
                              seed=config.get("eval", {}).get("seed", 1234)).sample()
    horizon = batch.family.horizon
    with torch.no_grad():
        trials = learner.collect(batch)
        returns = learner.episode_returns(trials, horizon)
    ended = trials.masks[..., horizon - 1::horizon] == 0  # [goals, trials, K]: ended early
    return returns.double(), config, hidden_goal_r2(learner, batch.family), ended.double()


def hidden_goal_r2(learner, family, goals: int = 400, seed: int = 0) -> float:
    """`goal_r2` of the hidden state after episode 1 of one trial on each of ``goals``
    fresh goals (drawn with ``seed``, not the test goals)."""
    generator = torch.Generator().manual_seed(seed)
    tasks = family.sample_tasks(goals, generator)
    horizon = family.horizon
    policy = learner.policy
    with torch.no_grad():
        params = {n: p.detach() for n, p in policy.named_parameters()}
        trials = family.collect_trials(policy, params, tasks, 1, learner.episodes_per_trial,
                                       generator=generator)
        inputs = trial_inputs(trials.observations, trials.actions, trials.rewards, horizon)
        _, _, state = policy(inputs[..., :horizon, :], trials.masks[..., :horizon])
    return goal_r2(state.double(), tasks.double())


def goal_r2(states: torch.Tensor, goals: torch.Tensor, ridge: float = 0.1) -> float:
    """How much of the goal the hidden state holds at the end of episode 1: ridge
    regression ``[state, 1] -> goal`` fitted on the trials of the first half of the goals,
    R² on the other half (``states [goals, trials, hidden]``; 0: no more than the mean
    goal)."""
    half = goals.shape[0] // 2
    features = torch.cat([states, torch.ones_like(states[..., :1])], dim=-1)
    targets = goals.unsqueeze(1).expand(-1, states.shape[1], -1)
    x, y = features[:half].flatten(0, 1), targets[:half].flatten(0, 1)
    weights = torch.linalg.solve(x.T @ x + ridge * torch.eye(x.shape[1], dtype=x.dtype),
                                 x.T @ y)
    test_x, test_y = features[half:].flatten(0, 1), targets[half:].flatten(0, 1)
    residual = ((test_x @ weights - test_y) ** 2).sum()
    return 1.0 - (residual / ((test_y - test_y.mean(0)) ** 2).sum()).item()


def summarize(returns: torch.Tensor) -> dict:
    episodes = {f"episode{k + 1}": {"mean": returns[:, k].mean().item(),
                                    "ci95": ci95(returns[:, k])}
                for k in range(returns.shape[1])}
    difference = returns[:, 1] - returns[:, 0]
    return {"episodes": episodes,
            "episode2_minus_1": {"mean": difference.mean().item(), "ci95": ci95(difference),
                                 "goals_improved": int((difference > 0).sum()),
                                 "goals": len(difference)}}


def goal_known_return(config: dict) -> tuple[float, float]:
    """The ceiling of an episode that knows its goal: step straight at it (the action
    ``g - s``, clipped by the environment), mean and 95% CI over the test goals."""
    goals, env = test_environment(config)
    return mean_ci(run_actions(env, goals, lambda t, p: goals.unsqueeze(1) - p))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    summary: dict = {"runs": {}}
    all_returns = []
    for run in args.runs:
        returns, config, r2, ended = per_goal_returns(run)
        records = read_records(run)
        all_returns.append(returns)
        summary["runs"][run.name] = {
            **summarize(returns), "goal_r2_hidden_after_episode1": r2,
            "episodes_ended_early": ended.mean((0, 1)).tolist(),
            "iterations": records[-1]["step"],
            "seconds": records[-1]["seconds"],
            "env_steps_per_iteration": (config["train"]["meta_batch"]
                                        * config["data"]["episodes"]
                                        * config["algorithm"]["episodes_per_trial"]
                                        * config["data"]["horizon"]),
            "untrained_first_iteration": [records[0][f"return_episode{k + 1}"]
                                          for k in range(returns.shape[1])],
            "curve": [[r["step"]] + [r[f"return_episode{k + 1}"]
                                     for k in range(returns.shape[1])] for r in records]}
    # seeds pooled: each goal's return averaged over the seeds, then paired over goals
    summary["mean_over_seeds"] = summarize(torch.stack(all_returns).mean(0))
    summary["random_policy"] = dict(zip(("mean", "ci95"), random_policy_return(config),
                                        strict=True))
    summary["stay_at_origin"] = staying_return(config)
    summary["best_goal_blind"] = dict(zip(("mean", "ci95"), best_blind_return(config),
                                          strict=True))
    summary["goal_known"] = dict(zip(("mean", "ci95"), goal_known_return(config), strict=True))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out.with_suffix(".json"), json.dumps(summary, indent=1) + "\n")
    lines = table(summary)
    atomic_write_text(args.out.with_suffix(".md"), "\n".join(lines) + "\n")
    plot(summary, args.out.with_suffix(".png"))
    print("\n".join(lines))


def table(summary: dict) -> list[str]:
    lines = ["| run | iterations | env steps | wall s | ep. 1 | ep. 2 | ep. 2 - ep. 1 (paired) "
             "| goals ep. 2 > ep. 1 | goal R² from h after ep. 1 | untrained ep. 1 / ep. 2 |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, run in summary["runs"].items():
        e1, e2 = run["episodes"]["episode1"], run["episodes"]["episode2"]
        d = run["episode2_minus_1"]
        steps = run["iterations"] * run["env_steps_per_iteration"]
        floor = " / ".join(f"{v:.1f}" for v in run["untrained_first_iteration"][:2])
        lines.append(f"| {name} | {run['iterations']} | {steps} | {run['seconds']:.0f} | "
                     f"{e1['mean']:.1f} ± {e1['ci95']:.1f} | {e2['mean']:.1f} ± "
                     f"{e2['ci95']:.1f} | {d['mean']:+.2f} ± {d['ci95']:.2f} | "
                     f"{d['goals_improved']} / {d['goals']} | "
                     f"{run['goal_r2_hidden_after_episode1']:.2f} | {floor} |")
    pooled = summary["mean_over_seeds"]
    e1, e2 = pooled["episodes"]["episode1"], pooled["episodes"]["episode2"]
    d = pooled["episode2_minus_1"]
    lines.append(f"| mean over seeds (per goal) | | | | {e1['mean']:.1f} ± {e1['ci95']:.1f} | "
                 f"{e2['mean']:.1f} ± {e2['ci95']:.1f} | {d['mean']:+.2f} ± {d['ci95']:.2f} "
                 f"| {d['goals_improved']} / {d['goals']} | | |")
    random = summary["random_policy"]
    lines.append(f"\n40 held-out goals (`eval.seed` 1234), ± the 95% CI over goals. Floors on "
                 f"the same goals: uniformly random policy {random['mean']:.1f} ± "
                 f"{random['ci95']:.1f}; staying at the origin "
                 f"{summary['stay_at_origin']:.1f}; the best goal-blind path "
                 f"{summary['best_goal_blind']['mean']:.1f}; the ceiling, straight to the known "
                 f"goal: "
                 f"{summary['goal_known']['mean']:.1f}.")
    return lines


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6.5, 4))
    for index, (name, run) in enumerate(summary["runs"].items()):
        curve = torch.tensor(run["curve"])
        steps = curve[:, 0] * run["env_steps_per_iteration"]
        for k, style in ((1, "-"), (2, "--")):
            axis.plot(steps, curve[:, k], style, color=f"C{index}", lw=1,
                      label=f"{name} episode {k}")
    axis.axhline(summary["random_policy"]["mean"], color="gray", lw=1, label="random policy")
    axis.axhline(summary["stay_at_origin"], color="black", lw=1, ls=":",
                 label="stay at the origin")
    axis.set_xlabel("environment steps")
    axis.set_ylabel("training return per episode of the trial")
    axis.set_title("RL², 2-D navigation")
    axis.legend(fontsize=6, ncol=2)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
