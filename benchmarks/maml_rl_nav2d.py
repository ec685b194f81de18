"""A few MAML-RL meta-iterations on 2-D navigation (Finn et al. 2017, section 5.3): the
return before and after one inner policy-gradient step, per meta-iteration.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/maml_rl_nav2d.py --iterations 30

Per meta-iteration: sample ``--tasks`` goals; collect ``--episodes`` pre-update episodes
per task with the shared policy; adapt per task with one policy-gradient step (the linear
feature baseline, the ``--estimator`` surrogate: "dice" or "naive"); collect post-update
episodes with the adapted parameters; the outer step maximises the post-update DiCE
objective (with the linear baseline) by Adam (NOT the paper's TRPO: a plain first-order
outer optimiser, a stand-in until the TRPO slice). This is a script on the rl/ machinery,
not yet a MetaLearner run through the trainer.

Inner step size: our surrogate is the expected discounted return, a SUM over the 100 steps
with raw advantages ``G_t - b_t``; the released code's loss is a MEAN over all steps with
normalised advantages, so its 0.1 does not transfer (0.1 diverges here: post-update returns
of about -400 against -90 before). The default 1e-3 (about 0.1 / horizon) was picked from
{0.1, 1e-3, 3e-4} on 5-12 iterations of seed 0.
"""

from __future__ import annotations

import argparse
import time

import torch

from metalab.rl import (
    GaussianMLPPolicy,
    PointNavigation,
    adapt_per_task,
    collect_episodes,
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
    env = PointNavigation()
    policy = GaussianMLPPolicy(2, 2)
    optimizer = torch.optim.Adam(policy.parameters(), lr=args.outer_lr)
    generator = torch.Generator().manual_seed(args.seed)
    start, steps = time.perf_counter(), 0
    print("| iteration | env steps | pre-update return | post-update return | wall s |")
    print("|---|---|---|---|---|")
    for iteration in range(args.iterations):
        params = dict(policy.named_parameters())
        goals = env.sample_tasks(args.tasks, generator, dtype=torch.float32)
        pre = collect_episodes(env, policy, params, goals, args.episodes, generator=generator)
        adapted = adapt_per_task(policy, params, pre, step_size=args.inner_lr,
                                 gamma=args.gamma, estimator=args.estimator)
        post = collect_episodes(env, policy, adapted, goals, args.episodes,
                                generator=generator, per_task=True)
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
