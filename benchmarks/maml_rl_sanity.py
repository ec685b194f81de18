"""A few MAML-RL meta-iterations written out as a script (Finn et al. 2017, section 5.3): the
return before and after one inner policy-gradient step, per meta-iteration, on any task
family (2-D navigation by default, a MuJoCo family such as ``half-cheetah-vel`` with the
``mujoco`` extra).

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/maml_rl_sanity.py --iterations 30
    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/maml_rl_sanity.py \
        --family half-cheetah-vel --iterations 8 --tasks 10 --episodes 4 --inner-lr 1e-4

Per meta-iteration: sample ``--tasks`` tasks; collect ``--episodes`` pre-update episodes per
task with the shared policy (``family.collect``); adapt per task with one policy-gradient
step (the linear feature baseline, the ``--estimator`` surrogate: "dice" or "naive");
collect post-update episodes with the adapted parameters; the outer step maximises the
post-update DiCE objective (with the linear baseline) by Adam, NOT the paper's TRPO. This
predates `MAMLRL` (``metalab train maml-rl-nav2d`` runs the method through the trainer); it
stays as the plainly written check that the rl/ pieces fit, and for the results files that
cite it (``maml_rl_nav2d.py`` and ``maml_rl_cheetah_sanity.py`` were its two copies).

Inner step size on 2-D navigation: our surrogate is the expected discounted return, a SUM
over the 100 steps with raw advantages ``G_t - b_t``; the released code's loss is a MEAN over
all steps with normalised advantages, so its 0.1 does not transfer (0.1 diverges here:
post-update returns of about -400 against -90 before). The default 1e-3 (about 0.1 /
horizon) was picked from {0.1, 1e-3, 3e-4} on 5-12 iterations of seed 0.
"""

from __future__ import annotations

import argparse
import time

import torch

from metalab.rl import (
    GaussianMLPPolicy,
    adapt_per_task,
    build_family,
    dice_objective,
    discounted_returns,
    linear_baseline_values,
)


def post_update_objective(batch, gamma: float) -> torch.Tensor:
    returns = discounted_returns(batch.rewards, batch.masks, gamma)
    baselines = linear_baseline_values(batch.observations, returns, batch.masks)
    return dice_objective(batch.log_probs, batch.rewards, batch.masks, gamma, baselines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", default="nav2d", help="a registered task family name")
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--tasks", type=int, default=20)
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--inner-lr", type=float, default=1e-3)
    parser.add_argument("--outer-lr", type=float, default=0.01)
    parser.add_argument("--gamma", type=float, default=0.99)
    parser.add_argument("--estimator", choices=["dice", "naive"], default="dice")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    family = build_family(args.family)
    policy = GaussianMLPPolicy(family.observation_dim, family.action_dim)
    optimizer = torch.optim.Adam(policy.parameters(), lr=args.outer_lr)
    generator = torch.Generator().manual_seed(args.seed)
    start, steps = time.perf_counter(), 0
    print("| iteration | env steps | pre-update return | post-update return | wall s |")
    print("|---|---|---|---|---|")
    for iteration in range(args.iterations):
        params = dict(policy.named_parameters())
        tasks = family.sample_tasks(args.tasks, generator)
        pre = family.collect(policy, params, tasks, args.episodes, generator=generator)
        adapted = adapt_per_task(policy, params, pre, step_size=args.inner_lr,
                                 gamma=args.gamma, estimator=args.estimator)
        post = family.collect(policy, adapted, tasks, args.episodes, generator=generator,
                              per_task=True)
        loss = -post_update_objective(post, args.gamma)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        steps += int(pre.masks.sum() + post.masks.sum())
        print(f"| {iteration} | {steps} | {pre.mean_return().item():.2f} "
              f"| {post.mean_return().item():.2f} | {time.perf_counter() - start:.1f} |",
              flush=True)


if __name__ == "__main__":
    main()
