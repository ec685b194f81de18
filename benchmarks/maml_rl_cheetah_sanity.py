"""A MAML-RL sanity run on a MuJoCo task family (default half-cheetah velocity): the return
before and after one inner policy-gradient step, per meta-iteration, on the rl/ machinery.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/maml_rl_cheetah_sanity.py --iterations 8

Per meta-iteration, as benchmarks/maml_rl_nav2d.py: sample ``--tasks`` tasks; collect
``--episodes`` pre-update episodes per task with the shared policy (``collect_gym_episodes``,
horizon 200); adapt per task with one policy-gradient step (linear feature baseline, the
DiCE surrogate, ``adapt_per_task``); collect post-update episodes with the adapted
parameters; the outer step maximises the post-update DiCE objective by Adam (not the paper's
TRPO). A check that the pieces fit on a real simulator, far below the paper's budget (40 tasks
x 20 episodes per iteration, hundreds of iterations): not a learning curve.
"""

from __future__ import annotations

import argparse
import time

import torch

from metalab.rl import (
    GaussianMLPPolicy,
    adapt_per_task,
    dice_objective,
    discounted_returns,
    linear_baseline_values,
)
from metalab.rl.gym_collector import EnvPool, collect_gym_episodes
from metalab.rl.mujoco_tasks import FAMILIES


def post_update_objective(batch, gamma: float) -> torch.Tensor:
    returns = discounted_returns(batch.rewards, batch.masks, gamma)
    baselines = linear_baseline_values(batch.observations, returns, batch.masks)
    return dice_objective(batch.log_probs, batch.rewards, batch.masks, gamma, baselines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", choices=sorted(FAMILIES), default="half-cheetah-vel")
    parser.add_argument("--iterations", type=int, default=8)
    parser.add_argument("--tasks", type=int, default=10)
    parser.add_argument("--episodes", type=int, default=4)
    parser.add_argument("--inner-lr", type=float, default=1e-4)
    parser.add_argument("--outer-lr", type=float, default=0.01)
    parser.add_argument("--gamma", type=float, default=0.99)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    family = FAMILIES[args.family]()
    policy = GaussianMLPPolicy(family.observation_dim, family.action_dim)
    optimizer = torch.optim.Adam(policy.parameters(), lr=args.outer_lr)
    generator = torch.Generator().manual_seed(args.seed)
    start, steps = time.perf_counter(), 0
    print("| iteration | env steps | pre-update return | post-update return | wall s |")
    print("|---|---|---|---|---|")
    with EnvPool(family) as pool:
        for iteration in range(args.iterations):
            params = dict(policy.named_parameters())
            tasks = family.sample_tasks(args.tasks, generator)
            pre = collect_gym_episodes(family, policy, params, tasks, args.episodes, pool=pool,
                                       generator=generator)
            adapted = adapt_per_task(policy, params, pre, step_size=args.inner_lr,
                                     gamma=args.gamma)
            post = collect_gym_episodes(family, policy, adapted, tasks, args.episodes,
                                        pool=pool, generator=generator, per_task=True)
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
