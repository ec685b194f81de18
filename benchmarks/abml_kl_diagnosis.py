"""Why ABML at KL weight 1 trained to chance on Glyphs 5-way 1-shot (docs/bayesian-methods.md,
"Glyphs 5-way 1-shot at one effective inner step").

For an ABML run (``abml-glyphs-5w1s``) at its initialisation (the run's training seed) and at
its last checkpoint, on 4 training tasks (seed 99): the query cross-entropy at the posterior
mean after one inner step, the outer loss's KL per query point, the squared norm of the
support's mean cross-entropy gradient ``||g||^2`` (from the step: ``||m_1 - mu||^2 /
alpha^2``), the mean ``sigma_theta``, and the closed form ``alpha^2 ||g||^2 / (2 sigma^2 Q)``
of that KL. Then on 2 test tasks (seed 1234) the posterior mean's distance from the prior
``||m_k - mu||`` after k = 1, 2, 3 test steps (each step after the first multiplies it by
``1 - alpha kl_weight / (sigma^2 N)`` through the KL). With ``--maml`` (a MAML run) only
``||g||^2`` at its initialisation and checkpoint.

    python benchmarks/abml_kl_diagnosis.py /tmp/wtb/glyph/seed0/abml-kl1
    python benchmarks/abml_kl_diagnosis.py /tmp/wtb/glyph/seed0/maml-lr0.08 --maml
"""

from __future__ import annotations

import argparse
import math

import torch
import torch.nn.functional as F
from torch.func import functional_call

from metalab.algorithms.abml import LOG_STD, MEAN
from metalab.algorithms.platipus import gaussian_kl
from metalab.train import load_run
from metalab.train.run import initial_learner, read_run_config
from metalab.train.sources import build_task_source


def learners(run: str) -> dict:
    """The run's learner at its initialisation (its training seed) and at its checkpoint."""
    return {"init": initial_learner(read_run_config(run)), "trained": load_run(run)}


def support_gradient_norm2(learner, batch) -> float:
    """``||grad mean CE(support)||^2`` at the network's parameters, mean over the tasks."""
    params = dict(learner.model.named_parameters())
    total = 0.0
    for t in range(batch.support_x.shape[0]):
        outputs = functional_call(learner.model, params, (batch.support_x[t],))
        grads = torch.autograd.grad(F.cross_entropy(outputs, batch.support_y[t]),
                                    list(params.values()))
        total += float(sum((g ** 2).sum() for g in grads))
    return total / batch.support_x.shape[0]


def outer_terms(learner, batch) -> dict:
    """Per task after one training inner step, averaged over the tasks (module doc)."""
    rows = []
    for t in range(batch.support_x.shape[0]):
        torch.manual_seed(t)
        phi = learner.adapt_task(batch.support_x[t], batch.support_y[t], training=True)
        prior = learner.prior(True)
        mean = {n: phi[MEAN + n] for n in learner.names}
        std = {n: phi[LOG_STD + n].exp() for n in learner.names}
        kl = gaussian_kl((mean, std), (prior[0], {n: v.exp() for n, v in prior[1].items()}))
        move2 = float(sum(((mean[n] - prior[0][n]) ** 2).sum() for n in learner.names).detach())
        queries = batch.query_y[t].numel()
        sigma = torch.cat([v.exp().flatten() for v in prior[1].values()])
        rows.append({"ce": float(learner.nll(mean, batch.query_x[t], batch.query_y[t]).detach())
                     / queries,
                     "kl": float(kl.detach()) / queries, "g2": move2 / learner.inner_lr ** 2,
                     "sigma": float(sigma.mean()), "queries": queries})
    out = {k: sum(r[k] for r in rows) / len(rows) for k in rows[0]}
    out["closed_form"] = (learner.inner_lr ** 2 * out["g2"]
                          / (2 * out["sigma"] ** 2 * out["queries"]))
    return out


def test_step_distances(learner, batch, steps: int = 3) -> list[float]:
    mu = dict(learner.model.named_parameters())
    distances = []
    for k in range(1, steps + 1):
        total = 0.0
        for t in range(batch.support_x.shape[0]):
            phi = learner.adapt_task(batch.support_x[t], batch.support_y[t], training=False,
                                     inner_steps=k)
            total += math.sqrt(float(sum(((phi[MEAN + n] - p) ** 2).sum().detach()
                                         for n, p in mu.items())))
        distances.append(total / batch.support_x.shape[0])
    return distances


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("run")
    parser.add_argument("--maml", action="store_true", help="a MAML run: ||g||^2 only")
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = read_run_config(args.run)
    train = build_task_source(config, "train", 4, seed=99).sample()
    for name, learner in learners(args.run).items():
        if args.maml:
            print(f"{name}: ||g||^2 {support_gradient_norm2(learner, train):.3g}")
            continue
        r = outer_terms(learner, train)
        print(f"{name}: query CE at the adapted mean {r['ce']:.3f}; KL per query point "
              f"{r['kl']:.2f} (closed form {r['closed_form']:.2f}); ||g||^2 {r['g2']:.3g}; "
              f"mean sigma_theta {r['sigma']:.4f}")
    if not args.maml:
        test = build_task_source(config, "test", 2, seed=1234).sample()
        distances = test_step_distances(learners(args.run)["trained"], test)
        print("||m_k - mu|| after k = 1, 2, 3 test steps:",
              ", ".join(f"{d:.4g}" for d in distances))


if __name__ == "__main__":
    main()
