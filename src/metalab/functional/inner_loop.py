"""The inner loop: gradient-based adaptation of a subset of parameters.

Written once for every optimization-based method. One step is

    theta <- theta - d(grad_theta L_support(theta))        for the adapted names

where ``d`` is an update rule (`metalab.functional.update_rules`): ``alpha * grad`` for
MAML (Finn et al. 2017, eq. 1), a learned per-entry ``alpha o grad`` for Meta-SGD (Li et
al. 2017), a preconditioner or a learned optimizer. The loss is a closure of the
parameters, so a method's inner loss may be anything (a labelled support loss, ARM-LL's
learned loss of unlabelled inputs). With ``first_order=False`` the step keeps its graph,
so the outer loss differentiates through it (second-order MAML); with ``first_order=True``
the inner gradients are treated as constants (FOMAML).

Two gradient backends serve the two execution strategies over tasks:
``autograd_gradients`` (``torch.autograd.grad``; the per-task loop) and ``func_gradients``
(``torch.func.grad``; required inside ``torch.func.vmap``, where ``torch.autograd.grad``
cannot see the batched graph). Both give the same numbers; tests check it in float64.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.utils import _pytree as pytree
from torch.utils.checkpoint import checkpoint

from metalab.functional.update_rules import UpdateRule, as_update_rule

Params = dict[str, Tensor]
LossOf = Callable[[Params], Tensor]
GradientFn = Callable[[LossOf, Params, bool], Params]
StepParams = Callable[[int], Params]


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


def inner_loop(loss_of: LossOf, params: Params, rule: UpdateRule | float, *, steps: int,
               adapt_names: list[str] | None = None, first_order: bool = False,
               gradients: GradientFn = autograd_gradients,
               checkpoint_steps: bool = False,
               step_params: StepParams | None = None) -> Params:
    """Adapt ``params`` by ``steps`` steps of ``rule`` on ``loss_of``.

    Args:
        loss_of: the inner loss as a function of every parameter, ``loss_of(params) ->
            scalar`` (e.g. ``loss(functional_call(module, params, (x,)), y)``).
        params: every parameter (and buffer) the loss needs, by name.
        rule: an `UpdateRule` (a number is the step size of plain SGD).
        steps: number of steps (0 returns ``params`` unchanged).
        adapt_names: the names that adapt; the others stay fixed. ``None`` adapts all.
        first_order: drop the second-order terms (FOMAML).
        gradients: gradient backend, `autograd_gradients` or `func_gradients`.
        checkpoint_steps: keep only each step's parameters and recompute the step's graph
            during the backward pass (gradient checkpointing), so second-order memory no
            longer grows with ``steps``; the meta-gradient is unchanged.
        step_params: ``step_params(k)`` gives fixed (not adapted) parameters that replace
            those of ``params`` in step ``k``'s loss (``k = 0, 1, ...``): MAML++'s per-step
            batch-norm weights. ``None``: every step sees ``params``.

    Returns:
        A new mapping with the adapted parameters in place of the originals.
    """
    return inner_trajectory(loss_of, params, rule, steps=steps, adapt_names=adapt_names,
                            first_order=first_order, gradients=gradients,
                            checkpoint_steps=checkpoint_steps, step_params=step_params)[-1]


def inner_trajectory(loss_of: LossOf, params: Params, rule: UpdateRule | float, *,
                     steps: int, adapt_names: list[str] | None = None,
                     first_order: bool = False, gradients: GradientFn = autograd_gradients,
                     checkpoint_steps: bool = False,
                     step_params: StepParams | None = None) -> list[Params]:
    """The parameters before and after every step of `inner_loop` (same arguments):
    ``steps + 1`` mappings, the start first and `inner_loop`'s result last. A multi-step
    loss (MAML++) scores the query set at each of them."""
    rule = as_update_rule(rule)
    names = list(params) if adapt_names is None else list(adapt_names)
    fixed = {n: p for n, p in params.items() if n not in names}
    adapted = {n: params[n] for n in names}

    def adapted_loss_at(k: int) -> LossOf:
        at_step = fixed if step_params is None else {**fixed, **step_params(k)}
        return lambda current: loss_of({**at_step, **current})

    state = rule.init(adapted)
    _, state_spec = pytree.tree_flatten(state)

    def step(k: int, *values: Tensor) -> tuple[Tensor, ...]:
        current = dict(zip(names, values[:len(names)], strict=True))
        rule_state = pytree.tree_unflatten(list(values[len(names):]), state_spec)
        with torch.enable_grad():  # adaptation needs gradients, at meta-test too
            grads = gradients(adapted_loss_at(k), current, not first_order)
            current, rule_state = rule.update(grads, rule_state, current)
        return (*(current[n] for n in names), *pytree.tree_leaves(rule_state))

    values = (*adapted.values(), *pytree.tree_leaves(state))
    trajectory = [{**fixed, **adapted}]
    for k in range(steps):
        if checkpoint_steps and torch.is_grad_enabled():
            values = checkpoint(step, k, *values, use_reentrant=False)
        else:
            values = step(k, *values)
        trajectory.append({**fixed, **dict(zip(names, values[:len(names)], strict=True))})
    return trajectory
