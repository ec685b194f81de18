"""Why PLATIPUS at KL weight 1/75 lost accuracy while it meta-trained on Glyphs 5-way 1-shot,
and what a KL weight does to its meta-update (docs/bayesian-methods.md, "Glyphs 5-way 1-shot
at one effective inner step").

PLATIPUS's meta-objective per task is ``CE(phi, query) + kl_weight * KL(q || p)`` with
``q = N(mu - gamma_q g_q, v_q^2)``, ``p = N(mu - gamma_p g_s, sigma^2)``, ``g_q``, ``g_s`` the
mean cross-entropy gradients of the query and the support at ``mu``. Per entry

    KL = log(sigma / v_q) + (v_q^2 + (gamma_q g_q - gamma_p g_s)^2) / (2 sigma^2) - 1/2,

so at the initialisation (``v_q = sigma``, ``gamma_q = gamma_p = gamma``) the KL is
``gamma^2 ||g_q - g_s||^2 / (2 sigma^2)`` (32 nats per unit of ``||g_q - g_s||^2`` at gamma
0.08, sigma 0.01): on Glyphs the two steps differ by ~0.4 ``sigma`` (rms) on each of the Conv4's
112k weights, ~9,500 nats per task, ~127 per query point. Nothing of it enters the
inner loop (MAML's step on the support), so it acts through the meta-update only: its
gradient pulls ``mu`` toward ``g_q = g_s`` (and both small) and ``gamma_p``, ``gamma_q`` toward 0.

For a run (``platipus-glyphs-5w1s``) at its initialisation (the run's training seed) and at
its last checkpoint, on 4 training tasks (seed 99), averaged over them: the query
cross-entropy after the inner step from ``theta ~ q``, the KL per query point (the learner's,
and the closed form above from gradients taken here), ``||g_s||^2``, ``||g_q - g_s||^2``,
``gamma_p``, ``gamma_q``, the mean ``sigma``, the norms of the two terms' meta-gradients in
``mu`` at the run's KL weight and the fraction of the entries of ``mu`` where the KL term's
meta-gradient is the larger in magnitude (it then sets the sign of Adam's per-entry step),
and the two terms' derivatives in ``gamma_p``, ``gamma_q``. ``--weights`` adds, at the
initialisation, the weighted KL per query point and the KL/CE gradient-norm ratio at other KL
weights (both linear in the weight).

    python benchmarks/platipus_kl_diagnosis.py /tmp/wtb2/glyph/seed0/platipus-kl1_75 \
        --weights 0.013333 0.0013333 0.00013333 1.3333e-5
    python benchmarks/platipus_kl_diagnosis.py /tmp/wtb2/glyph/seed0/platipus
"""

from __future__ import annotations

import argparse
import math

import torch
import torch.nn.functional as F
from torch.func import functional_call

from metalab.algorithms.platipus import gaussian_kl
from metalab.functional import parameter_key
from metalab.train import load_run
from metalab.train.run import initial_learner, read_run_config
from metalab.train.sources import build_task_source


def learners(run: str) -> dict:
    """The run's learner at its initialisation (its training seed) and at its checkpoint."""
    return {"init": initial_learner(read_run_config(run)), "trained": load_run(run)}


def mean_ce_gradient(learner, params: dict, x, y) -> dict:
    """``grad mean CE(x, y)`` at ``params`` for the adapted names (taken here, detached)."""
    names = list(learner.adapt_names)
    outputs = functional_call(learner.inner_module, params, (learner.encode(x),))
    grads = torch.autograd.grad(F.cross_entropy(outputs, y), [params[n] for n in names])
    return {n: g.detach() for n, g in zip(names, grads, strict=True)}


def closed_form_kl(learner, g_s: dict, g_q: dict) -> float:
    """The module doc's per-entry KL summed, from the gradients and the learner's scalars."""
    gamma_p, gamma_q = float(learner.gamma_p.detach()), float(learner.gamma_q.detach())
    total = 0.0
    for n in learner.adapt_names:
        key = parameter_key(n)
        sigma = learner.log_prior_std[key].detach().exp().double()
        v = learner.log_inference_std[key].detach().exp().double()
        diff = gamma_q * g_q[n].double() - gamma_p * g_s[n].double()
        total += float((torch.log(sigma / v) + (v ** 2 + diff ** 2) / (2 * sigma ** 2)
                        - 0.5).sum())
    return total


def task_terms(learner, sx, sy, qx, qy, seed: int) -> dict:
    """One task's query CE and KL (as in `PLATIPUS.task_objective`) and their meta-gradients."""
    mu = dict(learner.inner_module.named_parameters())
    torch.manual_seed(seed)
    q_mean, q_std = learner.inference(mu, qx, qy)
    p_mean, p_std = learner.prior(mu, sx, sy, True)
    theta = {n: q_mean[n] + q_std[n] * torch.randn_like(q_std[n]) for n in learner.adapt_names}
    phi = learner.adapt_from({**mu, **theta}, sx, sy, training=True,
                             inner_steps=learner.inner_steps)
    outputs = functional_call(learner.inner_module, phi, (learner._query_input(qx),))
    ce = F.cross_entropy(outputs, qy)
    kl = gaussian_kl((q_mean, q_std), (p_mean, p_std))
    targets = [mu[n] for n in learner.adapt_names] + [learner.gamma_p, learner.gamma_q]
    d_ce = torch.autograd.grad(ce, targets, retain_graph=True, allow_unused=True)
    d_kl = torch.autograd.grad(kl, targets, allow_unused=True)
    k = len(learner.adapt_names)
    flat = [torch.cat([g.flatten() for g in d[:k]]) for d in (d_ce, d_kl)]
    g_s = mean_ce_gradient(learner, mu, sx, sy)
    g_q = mean_ce_gradient(learner, mu, qx, qy)
    return {"ce": float(ce.detach()), "kl": float(kl.detach()),
            "closed_form": closed_form_kl(learner, g_s, g_q),
            "g_s2": sum(float((g ** 2).sum()) for g in g_s.values()),
            "diff2": sum(float(((g_q[n] - g_s[n]) ** 2).sum()) for n in g_s),
            "d_mu": flat,
            "d_gamma": [tuple(0.0 if g is None else float(g) for g in d[k:]) for d in (d_ce, d_kl)]}


def summary(learner, batch, weight: float) -> dict:
    """`task_terms` averaged over the tasks, the mu-gradients summed as the meta-loss does."""
    rows = [task_terms(learner, batch.support_x[t], batch.support_y[t], batch.query_x[t],
                       batch.query_y[t], seed=t) for t in range(batch.support_x.shape[0])]
    tasks, queries = len(rows), batch.query_y[0].numel()
    mean = {k: sum(r[k] for r in rows) / tasks for k in ("ce", "kl", "closed_form", "g_s2",
                                                         "diff2")}
    d_ce = sum(r["d_mu"][0] for r in rows) / tasks
    d_kl = weight * sum(r["d_mu"][1] for r in rows) / tasks
    sigma = torch.cat([v.detach().exp().flatten() for v in learner.log_prior_std.values()])
    return {**mean, "kl_per_point": mean["kl"] / queries,
            "cf_per_point": mean["closed_form"] / queries, "weighted": weight * mean["kl"],
            "ce_grad": float(d_ce.norm()), "kl_grad": float(d_kl.norm()),
            "kl_dominates": float((d_kl.abs() > d_ce.abs()).double().mean()),
            "d_gamma_ce": tuple(sum(r["d_gamma"][0][i] for r in rows) / tasks for i in (0, 1)),
            "d_gamma_kl": tuple(weight * sum(r["d_gamma"][1][i] for r in rows) / tasks
                                for i in (0, 1)),
            "gammas": (float(learner.gamma_p.detach()), float(learner.gamma_q.detach())),
            "sigma": float(sigma.mean()), "unweighted_grad": float(d_kl.norm()) / weight}


def report(name: str, r: dict, weight: float) -> None:
    print(f"{name}: query CE {r['ce']:.3f}; KL per query point {r['kl_per_point']:.2f} "
          f"(closed form {r['cf_per_point']:.2f}); weighted KL (kl_weight {weight:.3g} x KL) "
          f"{r['weighted']:.3g}; ||g_s||^2 {r['g_s2']:.3g}; ||g_q - g_s||^2 {r['diff2']:.3g}; "
          f"gamma_p, gamma_q {r['gammas'][0]:.4f}, {r['gammas'][1]:.4f}; mean sigma "
          f"{r['sigma']:.4f}")
    print(f"  meta-gradient in mu: ||CE|| {r['ce_grad']:.3g}, ||kl_weight KL|| "
          f"{r['kl_grad']:.3g} (ratio {r['kl_grad'] / r['ce_grad']:.3g}); entries where the KL "
          f"term's is the larger (it sets Adam's step) {100 * r['kl_dominates']:.1f}%; "
          f"d/d(gamma_p, gamma_q): CE "
          f"{r['d_gamma_ce'][0]:+.3g}, {r['d_gamma_ce'][1]:+.3g}; kl_weight KL "
          f"{r['d_gamma_kl'][0]:+.3g}, {r['d_gamma_kl'][1]:+.3g}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("run")
    parser.add_argument("--weights", nargs="*", type=float, default=[],
                        help="other KL weights to report at the initialisation")
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = read_run_config(args.run)
    weight = float(config["algorithm"]["kl_weight"])
    train = build_task_source(config, "train", 4, seed=99).sample()
    for name, learner in learners(args.run).items():
        r = summary(learner, train, weight)
        report(name, r, weight)
        if name == "init":
            for w in args.weights:
                print(f"  at KL weight {w:.3g}: weighted KL per query point "
                      f"{w * r['kl']:.3g} (query CE {r['ce']:.3f}); ||kl_weight KL|| / ||CE|| "
                      f"in mu {w * r['unweighted_grad'] / r['ce_grad']:.3g}")
    print(f"(KL per query point: KL / {train.query_y[0].numel()}; the per-point loss is "
          f"CE + kl_weight KL; {math.prod(train.query_y.shape[:1])} tasks)")


if __name__ == "__main__":
    main()
