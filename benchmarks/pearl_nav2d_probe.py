"""Does a trained PEARL run's encoder know the goal? For 200 fresh goals of the run's
family (seed 5; nav2d's square or the point robot's half circle, from the run's config):
one episode with ``z`` from the prior (the actor sampling; ``--deterministic``: its mean
action, as meta-test's first episode), the posterior ``q(z | c)`` of its transitions, then
a linear least-squares fit of the goal on the posterior mean (R² per coordinate; 1 = the
latent pins the goal down linearly, 0 = no linear information), and the distance to the
goal after one deterministic episode with ``z`` = that posterior mean.

    python benchmarks/pearl_nav2d_probe.py RUN [RUN ...] [--checkpoint ckpt-02000.pt]
"""

from __future__ import annotations

import argparse

import torch
import yaml

from metalab.train.build import build_meta_learner
from metalab.train.checkpoint import load_checkpoint
from metalab.train.sources import build_task_source


def probe(run: str, tasks: int = 200, seed: int = 5, checkpoint: str | None = None,
          deterministic: bool = False) -> dict[str, object]:
    config = yaml.safe_load(open(f"{run}/config.yaml"))
    learner = build_meta_learner(config)
    state = (load_checkpoint(run) if checkpoint is None
             else torch.load(f"{run}/{checkpoint}", weights_only=False, map_location="cpu"))
    learner.load_state_dict(state["learner"])
    family = build_task_source(config, "test", 1, seed=0).family
    generator = torch.Generator().manual_seed(seed)
    goals = family.sample_tasks(tasks, generator)
    with torch.no_grad():
        z = learner.prior_latents(tasks, 1, generator)
        episodes = family.collect_latent(learner.agent.policy, z, goals, generator=generator,
                                         deterministic=deterministic)
        flat = {k: v.flatten(1, 2) for k, v in episodes.items()}
        mean, variance = learner.agent.posterior(flat, flat["masks"])
        after = family.collect_latent(learner.agent.policy, mean[:, None], goals,
                                      generator=generator, deterministic=True)
    features = torch.cat([mean, torch.ones(tasks, 1)], 1).double()
    target = goals.double()
    residual = target - features @ torch.linalg.lstsq(features, target).solution
    r2 = 1 - residual.pow(2).sum(0) / (target - target.mean(0)).pow(2).sum(0)
    final = after["next_observations"][:, 0, -1]
    return {"run": run, "checkpoint": checkpoint or "checkpoint.pt",
            "deterministic": deterministic, "r2": [round(v, 3) for v in r2.tolist()],
            "posterior_variance": round(variance.mean().item(), 3),
            "final_distance": round((final - goals).norm(dim=-1).mean().item(), 3),
            "goal_distance_from_origin": round(goals.norm(dim=-1).mean().item(), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--checkpoint", default=None, help="a checkpoint copy in each run")
    parser.add_argument("--deterministic", action="store_true")
    args = parser.parse_args()
    for run in args.runs:
        print(probe(run, checkpoint=args.checkpoint, deterministic=args.deterministic))


if __name__ == "__main__":
    main()
