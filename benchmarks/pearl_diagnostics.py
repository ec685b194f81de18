"""PEARL diagnostics on a config (`pearl-nav2d`, `pearl-point-robot`): trains outside the
CLI with the learner's own `meta_backward` and Adam, and every ``--eval-every`` steps
reports meta-test returns (40 test tasks of ``eval.seed`` 1234, 4 runs of
``eval_episodes``, the learner's `meta_test`), the norm of the encoder's gradient (from
the critic's Bellman loss plus the KL: it must not be 0), the KL, and the probe of
`pearl_nav2d_probe.py` (R² of a linear fit of the goal on the posterior mean after one
stochastic prior episode).

``--oracle``: SAC given the task. ``z`` is the goal itself (padded with zeros to
``z_dim``, variance 1e-8) in the losses, the collection and the meta-test, and the encoder
is not trained. If this does not solve the task quickly the SAC is at fault, not the task
inference.

    python benchmarks/pearl_diagnostics.py --config src/metalab/configs/pearl-nav2d.yaml \\
        --steps 3000 --eval-every 250 [--oracle] [algorithm.kl_weight=0.01 ...]
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import yaml

from metalab.train.build import build_meta_learner, complete_model_config
from metalab.train.sources import build_task_source


def goal_code(goals: torch.Tensor, z_dim: int) -> torch.Tensor:
    code = goals.new_zeros(*goals.shape[:-1], z_dim)
    code[..., :2] = goals
    return code


def install_oracle(learner) -> None:
    """Replace ``q(z | c)`` by the goal (module docstring); the encoder gets no loss."""
    agent, z_dim = learner.agent, learner.agent.z_dim
    losses, prior_latents, meta_test = (learner.losses, learner.prior_latents,
                                        learner.meta_test)
    loss_parameters = learner.loss_parameters

    def known(goals):
        code = goal_code(goals, z_dim)
        return lambda transitions, mask=None: (code, torch.full_like(code, 1e-8))

    def oracle_losses(indices, generator):
        agent.posterior = known(learner.task_set[indices])
        return losses(indices, generator)

    def oracle_posterior_latents(indices, episodes, generator):
        return goal_code(learner.task_set[indices], z_dim)[:, None].expand(-1, episodes, -1)

    def oracle_meta_test(family, tasks, runs, generator):
        code = goal_code(tasks, z_dim)[:, None].expand(-1, runs, -1)
        learner.prior_latents = lambda count, episodes, g: code
        agent.posterior = lambda transitions, mask=None: (code, torch.full_like(code, 1e-8))
        try:
            return meta_test(family, tasks, runs, generator)
        finally:
            learner.prior_latents = prior_latents

    def oracle_loss_parameters():
        owners = loss_parameters()
        encoder = {id(p) for p in agent.encoder.parameters()}
        owners["critic"] = [p for p in owners["critic"] if id(p) not in encoder]
        return owners

    learner.losses, learner.posterior_latents = oracle_losses, oracle_posterior_latents
    learner.meta_test, learner.loss_parameters = oracle_meta_test, oracle_loss_parameters


def goal_r2(learner, family, goals: torch.Tensor, seed: int = 5) -> tuple[list[float], float]:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        z = learner.prior_latents(len(goals), 1, generator)
        episodes = family.collect_latent(learner.agent.policy, z, goals, generator=generator)
        flat = {k: v.flatten(1, 2) for k, v in episodes.items()}
        mean, variance = learner.agent.posterior(flat, flat["masks"])
    features = torch.cat([mean, torch.ones(len(goals), 1)], 1).double()
    target = goals.double()
    residual = target - features @ torch.linalg.lstsq(features, target).solution
    r2 = 1 - residual.pow(2).sum(0) / (target - target.mean(0)).pow(2).sum(0)
    return [round(v, 3) for v in r2.tolist()], round(variance.mean().item(), 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="src/metalab/configs/pearl-nav2d.yaml")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--eval-every", type=int, default=250)
    parser.add_argument("--oracle", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("overrides", nargs="*", help="section.key=value")
    args = parser.parse_args()
    config = yaml.safe_load(open(args.config))
    for item in args.overrides:
        key, value = item.split("=", 1)
        section, name = key.split(".", 1)
        config.setdefault(section, {})[name] = yaml.safe_load(value)
    config = complete_model_config(config)
    torch.manual_seed(args.seed)
    learner = build_meta_learner(config)
    if args.oracle:
        install_oracle(learner)
    source = build_task_source(config, "train", config["train"]["meta_batch"], seed=args.seed)
    test = build_task_source(config, "test", 40, seed=1234).sample()
    optimizer = torch.optim.Adam(learner.parameters(), lr=config["train"].get("lr", 3e-4))
    started = time.time()
    for step in range(1, args.steps + 1):
        optimizer.zero_grad(set_to_none=True)
        metrics = learner.meta_backward(source.sample())
        encoder_grad = sum(p.grad.pow(2).sum() for p in learner.agent.encoder.parameters()
                           if p.grad is not None) ** 0.5
        optimizer.step()
        if step % args.eval_every and step != args.steps:
            continue
        with torch.no_grad():
            returns = learner.meta_test(test.family, test.tasks, 4,
                                        torch.Generator().manual_seed(7)).mean(1)
        record = {"step": step, "env_steps": metrics["env_steps"],
                  "seconds": round(time.time() - started),
                  "meta_test_returns": [round(v, 2) for v in returns.mean(0).tolist()],
                  "q": round(metrics["q"], 1), "kl": round(metrics["kl"], 2),
                  "alpha": round(metrics["alpha"], 4),
                  "encoder_grad": round(float(encoder_grad), 3)}
        if not args.oracle:
            record["r2"], record["posterior_variance"] = goal_r2(learner, test.family,
                                                                 test.tasks)
        print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
