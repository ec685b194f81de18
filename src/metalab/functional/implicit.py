"""Implicit differentiation of an inner optimum: conjugate gradient on Hessian-vector products.

If ``phi*(theta) = argmin_phi L(phi) + lam/2 ||phi - theta||^2`` then its stationarity
condition ``grad L(phi*) + lam (phi* - theta) = 0`` differentiated in ``theta`` gives
(Rajeswaran et al. 2019, iMAML, Lemma 1)

    d phi* / d theta = (I + H / lam)^-1,        H = grad^2 L(phi*),

so the meta-gradient of an outer loss ``L_out(phi*)`` is ``(I + H / lam)^-1 grad L_out(phi*)``
(the matrix is symmetric). It is never formed: `conjugate_gradient` solves the system with
one Hessian-vector product per iteration (`hessian_vector_products`), and only the graph of
one gradient of ``L`` at ``phi*`` is kept, whatever the inner loop did to reach ``phi*``.

The functions are pure: flat vectors and dicts of tensors in, tensors out.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from metalab.validation import check_positive_int

Params = dict[str, Tensor]
MatVec = Callable[[Tensor], Tensor]


def conjugate_gradient(matvec: MatVec, b: Tensor, steps: int, tolerance: float = 0.0
                       ) -> Tensor:
    """Approximate ``A^-1 b`` by ``steps`` iterations of conjugate gradient from ``x = 0``.

    ``matvec(v) = A v`` for a symmetric positive definite ``A`` (Hestenes & Stiefel 1952):

        r = p = b,  x = 0;  each iteration:  alpha = r.r / p.Ap,  x += alpha p,
        r' = r - alpha Ap,  p = r' + (r'.r' / r.r) p.

    Stops early when ``||r|| <= tolerance`` (an exact solve leaves ``r = 0``; then nothing
    is divided by zero). In exact arithmetic it is exact after ``len(b)`` iterations.
    """
    steps = check_positive_int("cg_steps", steps)
    x = torch.zeros_like(b)
    residual = b.clone()
    direction = residual.clone()
    squared_norm = residual.dot(residual)
    for _ in range(steps):
        if squared_norm.sqrt() <= tolerance or squared_norm == 0:
            break
        image = matvec(direction)
        alpha = squared_norm / direction.dot(image)
        x = x + alpha * direction
        residual = residual - alpha * image
        new_squared_norm = residual.dot(residual)
        direction = residual + (new_squared_norm / squared_norm) * direction
        squared_norm = new_squared_norm
    return x


def flatten(tensors: Params) -> Tensor:
    """The values of ``tensors`` as one vector, in the dict's order."""
    return torch.cat([t.reshape(-1) for t in tensors.values()])


def unflatten(vector: Tensor, like: Params) -> Params:
    """``vector`` cut into tensors shaped like ``like``'s (the inverse of `flatten`)."""
    out, offset = {}, 0
    for name, t in like.items():
        out[name] = vector[offset:offset + t.numel()].view_as(t)
        offset += t.numel()
    return out


def hessian_vector_products(loss_of: Callable[[Params], Tensor], at: Params) -> MatVec:
    """``v -> H v`` (flat vectors) with ``H`` the Hessian of ``loss_of`` at ``at``.

    The gradient's graph is built once and reused by every product (double backward); the
    returned vectors carry no graph. Parameters the loss does not reach give zeros.
    """
    leaves = {n: p.detach().requires_grad_(True) for n, p in at.items()}
    with torch.enable_grad():
        grads = torch.autograd.grad(loss_of(leaves), list(leaves.values()), create_graph=True,
                                    allow_unused=True)
    differentiable = [(name, g) for name, g in zip(leaves, grads, strict=True)
                      if g is not None and g.requires_grad]

    def product(vector: Tensor) -> Tensor:
        if not differentiable:
            return torch.zeros_like(vector)
        pieces = unflatten(vector, leaves)
        with torch.enable_grad():
            hv = torch.autograd.grad([g for _, g in differentiable], list(leaves.values()),
                                     grad_outputs=[pieces[name] for name, _ in differentiable],
                                     retain_graph=True, allow_unused=True)
        return torch.cat([torch.zeros(leaf.numel(), dtype=vector.dtype, device=vector.device)
                          if h is None else h.reshape(-1)
                          for leaf, h in zip(leaves.values(), hv, strict=True)]).detach()

    return product


def implicit_meta_gradient(hessian_product: MatVec, outer_gradient: Params, *,
                           identity_coef: float, hessian_coef: float, steps: int
                           ) -> Params:
    """``(identity_coef I + hessian_coef H)^-1 g`` by `conjugate_gradient`, ``g`` the outer
    gradient at the inner optimum. iMAML (paper): ``identity_coef = 1, hessian_coef = 1/lam``.
    """
    b = flatten(outer_gradient).detach()

    def matvec(v: Tensor) -> Tensor:
        return identity_coef * v + hessian_coef * hessian_product(v)

    return unflatten(conjugate_gradient(matvec, b, steps), outer_gradient)


__all__ = ["conjugate_gradient", "flatten", "hessian_vector_products",
           "implicit_meta_gradient", "unflatten"]
