"""Where MAML-RL's TRPO step goes on half-cheetah velocity (or ``--family``), at the initial
policy.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/maml_rl_trpo_diagnosis.py \
        --tasks 10 --episodes 2

1. The line search along the step, for two Fisher matrices: the Hessian of the KL through
   DiCE's inner-step graph (what `MAMLRL` uses with ``estimator: dice``: its second
   derivative carries the score term ``grad log p grad log p^T R``) and through the sample
   path of the update (the naive graph: the function of theta that the line search
   evaluates on the fixed episodes). The step follows the DiCE gradient with each Fisher
   (with the naive estimator the two graphs coincide). For each backtrack k: the KL the
   quadratic model predicts (``max_kl * ratio^(2k)``), the KL the line search measures, the
   change of the surrogate and its linear prediction.
2. The noise of the meta-gradient: two independent meta-batches A and B; for each estimator
   the cosine between their gradients and between their TRPO steps (both with the
   sample-path Fisher), and the share of A's in-sample predicted improvement that B's
   gradient confirms (``g_B . s_A / g_A . s_A``).
3. The pieces the brief asks about: the linear baseline's fit (R^2 of the discounted returns,
   per task, in sample), the observations' scale, the log-std's share of the gradient.
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from metalab.algorithms.maml_rl import MAMLRL, per_task_outputs
from metalab.rl import (
    FAMILIES,
    GaussianMLPPolicy,
    adapt_per_task,
    discounted_returns,
    linear_baseline_values,
)
from metalab.rl.task_source import EnvironmentTasks
from metalab.rl.trpo import conjugate_gradient, fisher_vector_product, flat, unflat


def graph_kl(learner: MAMLRL, params: dict, rollouts, estimator: str) -> torch.Tensor:
    """The line search's KL with the inner step of ``estimator`` kept differentiable: its
    Hessian at ``params`` is TRPO's Fisher matrix through that estimator's graph (the
    values are the same for both; DiCE's second derivative adds the score term)."""
    adapted = adapt_per_task(learner.policy, params, rollouts.pre, step_size=learner.inner_lr,
                             gamma=learner.gamma, estimator=estimator,
                             baseline_reg=learner.baseline_reg)
    mean, log_std = per_task_outputs(learner.policy, adapted, rollouts.post.observations)
    return learner.kl_of(rollouts, mean, log_std, slice(None))


def trpo_direction(kl: torch.Tensor, leaves, gradient: torch.Tensor, max_kl: float):
    product = fisher_vector_product(kl, leaves, 1e-5)
    x = conjugate_gradient(product, gradient, 10)
    return math.sqrt(2 * max_kl / float(x @ product(x))) * x


def line_search_scan(learner, names, leaves, rollouts, max_kl, backtracks):
    params = dict(zip(names, leaves, strict=True))
    value, _ = learner.surrogate_and_kl(params, rollouts)  # the DiCE gradient
    gradient = flat(torch.autograd.grad(value, leaves)).detach()
    start = flat(leaves).detach()
    for name, estimator in (("DiCE graph", "dice"), ("sample path", "naive")):
        kl = graph_kl(learner, params, rollouts, estimator)
        step = trpo_direction(kl, leaves, gradient, max_kl)
        print(f"\nFisher through the {name}: |step| {step.norm():.3e}")
        print("| k | predicted KL | line-search KL | surrogate change | linear prediction |")
        print("|---|---|---|---|---|")
        for k in range(backtracks):
            candidate = [v.requires_grad_(True) for v in unflat(start + 0.5**k * step, leaves)]
            after, measured = learner.surrogate_and_kl(
                dict(zip(names, candidate, strict=True)), rollouts, differentiable=False)
            print(f"| {k} | {max_kl * 0.25**k:.2e} | {measured.item():.2e} | "
                  f"{after.item() - value.item():+.3e} | {float(gradient @ step) * 0.5**k:+.3e} |")


def gradient_and_step(learner, names, leaves, rollouts, estimator, max_kl):
    learner.estimator = estimator
    params = dict(zip(names, leaves, strict=True))
    value, _ = learner.surrogate_and_kl(params, rollouts)
    gradient = flat(torch.autograd.grad(value, leaves)).detach()
    kl = graph_kl(learner, params, rollouts, "naive")  # the same Fisher for both
    return gradient, trpo_direction(kl, leaves, gradient, max_kl)


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(a @ b / (a.norm() * b.norm()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", default="half-cheetah-vel",
                        help="a task family name (its default horizon: 200 for half-cheetah)")
    parser.add_argument("--tasks", type=int, default=10)
    parser.add_argument("--episodes", type=int, default=2)
    parser.add_argument("--inner-lr", type=float, default=1e-3)
    parser.add_argument("--max-kl", type=float, default=0.01)
    parser.add_argument("--backtracks", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    family = FAMILIES[args.family]()
    policy = GaussianMLPPolicy(family.observation_dim, family.action_dim)
    learner = MAMLRL(policy, inner_lr=args.inner_lr, estimator="dice")
    names = [n for n, _ in policy.named_parameters()]
    leaves = list(policy.parameters())
    generator = torch.Generator().manual_seed(args.seed + 1)
    started = time.perf_counter()
    batches = [learner.collect_rollouts(EnvironmentTasks(
        family.sample_tasks(args.tasks, generator), family, args.episodes, 100 * args.seed + b))
        for b in range(2)]
    print(f"{args.tasks} tasks x {args.episodes} episodes, 2 meta-batches collected in "
          f"{time.perf_counter() - started:.0f} s")
    for b, rollouts in enumerate(batches):
        pre = rollouts.pre
        returns = discounted_returns(pre.rewards, pre.masks, learner.gamma)
        values = linear_baseline_values(pre.observations, returns, pre.masks)
        centred = returns - (returns * pre.masks).sum((1, 2), keepdim=True) / pre.masks.sum(
            (1, 2), keepdim=True)
        r2 = 1 - ((returns - values) ** 2 * pre.masks).sum() / (centred**2 * pre.masks).sum()
        scale = pre.observations.abs().amax(dim=(0, 1, 2))
        print(f"batch {'AB'[b]}: return pre / post {pre.mean_return():.1f} / "
              f"{rollouts.post.mean_return():.1f}; linear baseline R^2 {r2:.3f}; "
              f"max |observation| per dimension {scale.min():.2f} .. {scale.max():.2f}")
    line_search_scan(learner, names, leaves, batches[0], args.max_kl, args.backtracks)
    print("\n| estimator | |g_A| | log-std share of |g_A| | cos(g_A, g_B) | cos(s_A, s_B) | "
          "g_B.s_A / g_A.s_A |")
    print("|---|---|---|---|---|---|")
    for estimator in ("dice", "naive"):
        (ga, sa), (gb, sb) = (gradient_and_step(learner, names, leaves, r, estimator,
                                                args.max_kl) for r in batches)
        log_std = ga[-policy.log_std.numel():].norm() / ga.norm()
        print(f"| {estimator} | {ga.norm():.3e} | {log_std:.3f} | {cosine(ga, gb):+.3f} | "
              f"{cosine(sa, sb):+.3f} | {float(gb @ sa) / float(ga @ sa):+.3f} |")
    print(f"\nwall {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
