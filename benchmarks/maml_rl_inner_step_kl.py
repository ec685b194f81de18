"""How far one MAML-RL inner step moves a random policy, per inner step size: the mean KL
``KL(pi_theta || pi_theta')`` over the states of the batch the step was taken on (the scale
used to set a family's ``inner_lr`` by analogy with nav2d's 1e-3).

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/maml_rl_inner_step_kl.py nav2d \\
        --tasks 20 --episodes 20
    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/maml_rl_inner_step_kl.py metaworld \\
        --tasks 4 --episodes 2 --lrs 1e-6 1e-5 1e-4 1e-3

Tanh 100-100 Gaussian policy (``torch.manual_seed(0)``), the DiCE inner step with the
linear baseline (`MAMLRL.inner_step`), tasks and rollouts from seed 0.
"""

from __future__ import annotations

import argparse

import torch

from metalab.algorithms.maml_rl import MAMLRL, per_task_outputs
from metalab.rl import GaussianMLPPolicy, build_family
from metalab.rl.policies import gaussian_kl


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("family", help="a registered family name (nav2d, metaworld, ...)")
    parser.add_argument("--tasks", type=int, default=20)
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--lrs", type=float, nargs="+", default=[1e-3])
    args = parser.parse_args()
    torch.manual_seed(0)
    family = build_family(args.family)
    policy = GaussianMLPPolicy(family.observation_dim, family.action_dim, hidden=(100, 100))
    generator = torch.Generator().manual_seed(0)
    tasks = family.sample_tasks(args.tasks, generator)
    params = {n: p.detach().requires_grad_(True) for n, p in policy.named_parameters()}
    with torch.no_grad():
        batch = family.collect(policy, params, tasks, args.episodes, generator=generator)
    print(f"{args.family}: {args.tasks} tasks x {args.episodes} episodes, mean return "
          f"{batch.mean_return().item():.1f}")
    mean, log_std = policy(batch.observations)
    for lr in args.lrs:
        adapted = MAMLRL(policy, inner_lr=lr).inner_step(params, batch, create_graph=False)
        adapted = {n: v.detach() for n, v in adapted.items()}
        new_mean, new_log_std = per_task_outputs(policy, adapted, batch.observations)
        kl = gaussian_kl(mean, log_std, new_mean, new_log_std).mean().item()
        print(f"inner_lr {lr:g}: mean KL(pre || post) {kl:.4g}")


if __name__ == "__main__":
    main()
