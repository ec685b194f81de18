"""How much of the discounted returns' variance each baseline explains, pooled over the valid
steps (``1 - SSE / SST``), on one batch (20 tasks, source seed 777) of post-update episodes
of trained MAML-RL runs: the per-task linear fit, and for a ``baseline: mlp`` run a copy of
its value network fitted once (warm, as in training) and 25 times on that batch.

Usage: PYTHONPATH=src python benchmarks/maml_rl_baseline_fit_quality.py RUN_DIR [RUN_DIR ...]
"""

import copy
import sys

import torch

from metalab.rl import discounted_returns, linear_baseline_values
from metalab.train.run import load_run, read_run_config
from metalab.train.sources import build_task_source


def explained(values, returns, masks) -> float:
    valid = masks > 0
    r = returns[valid]
    return 1 - ((r - values[valid]) ** 2).sum().item() / ((r - r.mean()) ** 2).sum().item()


def main(runs: list[str]) -> None:
    for run in runs:
        learner = load_run(run)
        source = build_task_source(read_run_config(run), "train", 20, seed=777)
        probe = copy.deepcopy(learner)  # collect without touching the run's value network
        probe.value_baseline = None
        torch.manual_seed(0)
        post = probe.collect_rollouts(source.sample()).post
        returns = discounted_returns(post.rewards, post.masks, learner.gamma)
        linear = linear_baseline_values(post.observations, returns, post.masks, 1e-5)
        out = {"linear": explained(linear, returns, post.masks)}
        if learner.value_baseline is not None:
            network = copy.deepcopy(learner.value_baseline)
            out["mlp, 1 fit"] = explained(network(post.observations, returns, post.masks),
                                          returns, post.masks)
            for _ in range(24):
                values = network(post.observations, returns, post.masks)
            out["mlp, 25 fits"] = explained(values, returns, post.masks)
        print(run, {k: round(v, 3) for k, v in out.items()})


if __name__ == "__main__":
    main(sys.argv[1:])
