"""Is iMAML's system ``I + H/lam`` positive definite on a trained Conv4? A diagnostic.

    python benchmarks/imaml_cg_curvature.py RUN_DIR [--tasks 3] [--ways 20 --queries 5]

For a few training episodes of Glyphs' training alphabets (5-way 1-shot, 15 queries, or
``--ways``/``--shots``/``--queries``), runs plain
conjugate gradient on ``(I + H/lam) x = grad L_query(phi*)`` (H: the support loss's Hessian
at the run's ``phi*``) and prints the Rayleigh quotient ``p^T A p / |p|^2`` of each search
direction (negative: the system is indefinite and CG is outside its premise), the norms of
the 5- and 20-iteration solutions, and their cosines with ``grad L_query`` and each other.
"""

from __future__ import annotations

import argparse

import torch

from metalab.datasets import Glyphs
from metalab.functional.implicit import flatten, hessian_vector_products
from metalab.tasks import EpisodeSampler
from metalab.train.run import load_run


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a @ b / a.norm() / b.norm()).item()


def diagnose(learner, sx, sy, qx, qy, iterations: int = 20) -> str:
    phi = learner.adapt_task(sx, sy, training=True)
    leaves = {n: p.detach().requires_grad_(True) for n, p in phi.items()}
    loss = learner.loss_fn(learner.predict(leaves, qx), qy)
    g = flatten(dict(zip(leaves, torch.autograd.grad(loss, list(leaves.values())),
                         strict=True)))
    hessian_product = hessian_vector_products(learner.support_loss_of(sx, sy), phi)

    def matvec(v):
        return v + hessian_product(v) / learner.lam

    x, r = torch.zeros_like(g), g.clone()
    p, rs = r.clone(), r @ r
    rayleigh, solutions = [], {}
    for k in range(1, iterations + 1):
        image = matvec(p)
        curvature = p @ image
        rayleigh.append(round((curvature / (p @ p)).item(), 3))
        alpha = rs / curvature
        x, r = x + alpha * p, r - alpha * image
        new = r @ r
        p, rs = r + new / rs * p, new
        solutions[k] = x.clone()
    x5, x20 = solutions[5], solutions[iterations]
    return (f"Rayleigh quotients {rayleigh[:8]} ... min {min(rayleigh)}; |g|={g.norm():.3f} "
            f"|x5|={x5.norm():.3f} |x{iterations}|={x20.norm():.3f} cos(x5,g)={cosine(x5, g):.3f}"
            f" cos(x5,x{iterations})={cosine(x5, x20):.3f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("--tasks", type=int, default=3)
    parser.add_argument("--ways", type=int, default=5)
    parser.add_argument("--shots", type=int, default=1)
    parser.add_argument("--queries", type=int, default=15)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    learner = load_run(args.run)
    batch = EpisodeSampler(Glyphs("train"), args.ways, args.shots, args.queries, seed=0,
                           tasks_per_batch=args.tasks).sample()
    for t in range(len(batch)):
        print(f"task {t}:", diagnose(learner, batch.support_x[t], batch.support_y[t],
                                      batch.query_x[t], batch.query_y[t]), flush=True)


if __name__ == "__main__":
    main()
