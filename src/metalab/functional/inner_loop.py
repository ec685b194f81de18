"""The inner loop: gradient-based adaptation of a subset of a module's parameters.

Written once for every optimization-based method. One step is

    theta_i <- theta_i - alpha_i * d L_support(theta) / d theta_i     for adapted names i

(Finn et al. 2017, eq. 1; a learned per-parameter ``alpha_i`` is Meta-SGD, Li et al. 2017).
With ``first_order=False`` the step keeps its graph, so the outer loss differentiates
through it (second-order MAML); with ``first_order=True`` the inner gradients are treated
as constants (FOMAML).

Two gradient backends serve the two execution strategies over tasks:
``autograd_gradients`` (``torch.autograd.grad``; the per-task loop) and ``func_gradients``
(``torch.func.grad``; required inside ``torch.func.vmap``, where ``torch.autograd.grad``
cannot see the batched graph). Both give the same numbers; tests check it in float64.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import Tensor
from torch.func import functional_call
from torch.utils.checkpoint import checkpoint

Params = dict[str, Tensor]
StepSize = float | Tensor | Mapping[str, Tensor]
GradientFn = Callable[[Callable[[Params], Tensor], Params, bool], Params]


def autograd_gradients(loss_of: Callable[[Params], Tensor], adapted: Params,
                       create_graph: bool) -> Params:
    """Gradients of ``loss_of(adapted)`` w.r.t. ``adapted`` with ``torch.autograd.grad``."""
    loss = loss_of(adapted)
    names = list(adapted)
    grads = torch.autograd.grad(loss, [adapted[n] for n in names], create_graph=create_graph,
                                allow_unused=True)
    return {n: torch.zeros_like(adapted[n]) if g is None else g
            for n, g in zip(names, grads, strict=True)}


def func_gradients(loss_of: Callable[[Params], Tensor], adapted: Params,
                   create_graph: bool) -> Params:
    """Gradients of ``loss_of(adapted)`` with ``torch.func.grad`` (usable under vmap)."""
    grads = torch.func.grad(loss_of)(adapted)
    if not create_graph:
        grads = {n: g.detach() for n, g in grads.items()}
    return grads


def _step_size_for(step_size: StepSize, name: str) -> float | Tensor:
    if isinstance(step_size, Mapping):
        return step_size[name]
    return step_size


def inner_loop(module: torch.nn.Module, params: Params, x: Tensor, y: Tensor,
               loss_fn: Callable[[Tensor, Tensor], Tensor], *, steps: int,
               step_size: StepSize, adapt_names: list[str] | None = None,
               first_order: bool = False, gradients: GradientFn = autograd_gradients,
               checkpoint_steps: bool = False) -> Params:
    """Adapt ``params`` of ``module`` to the support set ``(x, y)``.

    Args:
        module: evaluated functionally as ``functional_call(module, params, (x,))``.
        params: every parameter (and buffer) the module needs, by name.
        loss_fn: inner loss ``loss_fn(outputs, y) -> scalar``.
        steps: number of gradient steps (0 returns ``params`` unchanged).
        step_size: a float, a scalar tensor, or a mapping name -> tensor of the
            parameter's shape (a learned per-parameter step size).
        adapt_names: the names that adapt; the others stay fixed. ``None`` adapts all.
        first_order: drop the second-order terms (FOMAML).
        gradients: gradient backend, `autograd_gradients` or `func_gradients`.
        checkpoint_steps: keep only each step's parameters and recompute the step's graph
            during the backward pass (gradient checkpointing), so second-order memory no
            longer grows with ``steps``; the meta-gradient is unchanged.

    Returns:
        A new mapping with the adapted parameters in place of the originals.
    """
    names = list(params) if adapt_names is None else list(adapt_names)
    fixed = {n: p for n, p in params.items() if n not in names}
    adapted = {n: params[n] for n in names}

    def loss_of(current: Params) -> Tensor:
        return loss_fn(functional_call(module, {**fixed, **current}, (x,)), y)

    def step(*values: Tensor) -> tuple[Tensor, ...]:
        current = dict(zip(names, values, strict=True))
        grads = gradients(loss_of, current, not first_order)
        return tuple(current[n] - _step_size_for(step_size, n) * grads[n] for n in names)

    values = tuple(adapted.values())
    for _ in range(steps):
        if checkpoint_steps and torch.is_grad_enabled():
            values = checkpoint(step, *values, use_reentrant=False)
        else:
            values = step(*values)
    return {**fixed, **dict(zip(names, values, strict=True))}
