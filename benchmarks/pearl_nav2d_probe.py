"""Does a trained PEARL run's encoder know the goal? For 200 fresh nav2d goals (seed 5):
one episode with ``z`` from the prior (the actor sampling), the posterior ``q(z | c)`` of its
transitions, then a linear least-squares fit of the goal on the posterior mean (R² per
coordinate; 1 = the latent pins the goal down linearly, 0 = no linear information), and the
distance to the goal after one deterministic episode with ``z`` = that posterior mean.

    python benchmarks/pearl_nav2d_probe.py RUN [RUN ...]
"""

from __future__ import annotations

import argparse

import torch
import yaml

from metalab.rl import Navigation2D
from metalab.train.build import build_meta_learner
from metalab.train.checkpoint import load_checkpoint


def probe(run: str, tasks: int = 200, seed: int = 5) -> dict[str, object]:
    config = yaml.safe_load(open(f"{run}/config.yaml"))
    learner = build_meta_learner(config)
    learner.load_state_dict(load_checkpoint(run)["learner"])
    family = Navigation2D(horizon=config["data"].get("horizon", 100))
    generator = torch.Generator().manual_seed(seed)
    goals = family.sample_tasks(tasks, generator)
    with torch.no_grad():
        z = learner.prior_latents(tasks, 1, generator)
        episodes = family.collect_latent(learner.agent.policy, z, goals, generator=generator)
        flat = {k: v.flatten(1, 2) for k, v in episodes.items()}
        mean, variance = learner.agent.posterior(flat, flat["masks"])
        after = family.collect_latent(learner.agent.policy, mean[:, None], goals,
                                      generator=generator, deterministic=True)
    features = torch.cat([mean, torch.ones(tasks, 1)], 1).double()
    target = goals.double()
    residual = target - features @ torch.linalg.lstsq(features, target).solution
    r2 = 1 - residual.pow(2).sum(0) / (target - target.mean(0)).pow(2).sum(0)
    final = after["next_observations"][:, 0, -1]
    return {"run": run, "r2": [round(v, 3) for v in r2.tolist()],
            "posterior_variance": round(variance.mean().item(), 3),
            "final_distance": round((final - goals).norm(dim=-1).mean().item(), 3),
            "goal_distance_from_origin": round(goals.norm(dim=-1).mean().item(), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+")
    for run in parser.parse_args().runs:
        print(probe(run))


if __name__ == "__main__":
    main()
