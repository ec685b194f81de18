"""Inner update rules: how one adaptation step turns gradients into new parameters.

A rule is a small `nn.Module` with explicit state (in the style of TorchOpt's and optax's
gradient transformations):

    state = rule.init(params)
    new_params, state = rule.update(grads, state, params)

Every rule here is a *descent direction* ``d = transform(grads)`` followed by
``theta <- theta - d``; its meta-parameters (Meta-SGD's rates, a learned preconditioner,
a learned optimizer's weights) are ordinary `nn.Parameter`s of the rule, so the outer
loop learns them with the model. Rules compose with `Chain`: each transform acts on the
directions of the one before (``Chain(preconditioner, SGD(0.1))``).

The rules are pure functions of their inputs (no in-place updates), so they are
differentiable to second order and run under `torch.func.vmap`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from metalab.validation import check_real

Params = dict[str, Tensor]
State = Any  # a pytree of tensors (tuples, dicts); () for stateless rules


def parameter_key(name: str) -> str:
    """A parameter name usable as a module attribute (``"body.0.weight" -> "body__0__weight"``)."""
    return name.replace(".", "__")


class UpdateRule(nn.Module):
    """Base class: ``update`` subtracts the direction that `transform` computes."""

    def init(self, params: Params) -> State:
        """The rule's state before the first step (``()`` when it keeps none)."""
        return ()

    def transform(self, grads: Params, state: State, params: Params) -> tuple[Params, State]:
        """The descent directions ``d`` of the adapted parameters and the next state."""
        raise NotImplementedError

    def update(self, grads: Params, state: State, params: Params) -> tuple[Params, State]:
        """``theta_i <- theta_i - d_i`` for every name ``i`` of ``grads``."""
        directions, state = self.transform(grads, state, params)
        return {n: params[n] - directions[n] for n in grads}, state


class SGD(UpdateRule):
    """``d = alpha * g``: MAML's inner step (Finn et al. 2017, eq. 1) with a fixed ``alpha``."""

    def __init__(self, lr: float) -> None:
        super().__init__()
        self.lr = float(lr)

    def transform(self, grads: Params, state: State, params: Params) -> tuple[Params, State]:
        return {n: self.lr * g for n, g in grads.items()}, state

    def extra_repr(self) -> str:
        return f"lr={self.lr}"


class LearnedRates(UpdateRule):
    """``d = alpha o g`` with a learned rate per parameter entry (Meta-SGD, Li et al. 2017).

    Args:
        shapes: ``{parameter name: tensor of that parameter's shape}`` for the adapted
            parameters (only the shape, dtype and device are read).
        init: every rate's initial value.
    """

    def __init__(self, shapes: dict[str, Tensor], init: float) -> None:
        super().__init__()
        self.names = list(shapes)
        self.rates = nn.ParameterDict({
            parameter_key(n): nn.Parameter(torch.full_like(p.detach(), float(init)))
            for n, p in shapes.items()})

    def rate(self, name: str) -> Tensor:
        return self.rates[parameter_key(name)]

    def transform(self, grads: Params, state: State, params: Params) -> tuple[Params, State]:
        unknown = sorted(set(grads) - set(self.names))
        if unknown:
            raise KeyError(f"LearnedRates has no rates for {unknown}; it was built for "
                           f"{self.names}")
        return {n: self.rate(n) * g for n, g in grads.items()}, state


class PerStepRates(UpdateRule):
    """``d = alpha_{l,k} * g_l``: one learned scalar rate per parameter tensor ``l`` and inner
    step ``k`` (LSLR, "learning per-layer per-step learning rates", Antoniou et al. 2019,
    MAML++ section 4):

        theta_l^{k+1} = theta_l^k - alpha_{l,k} * grad_{theta_l} L_support(theta^k)

    The state is the number of steps taken, so step ``k`` reads ``alpha_{., k}``; a step past
    the last rate (more steps at meta-test than in training) reuses the last one.

    Args:
        params: ``{name: tensor}`` for the adapted parameters (only the names, dtype and
            device are read).
        steps: the number of per-step rates (the inner steps of meta-training).
        init: every rate's initial value (MAML's inner learning rate).
    """

    def __init__(self, params: dict[str, Tensor], steps: int, init: float) -> None:
        super().__init__()
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps (the number of per-step rates) must be a positive "
                             f"integer, got {steps!r}")
        self.names = list(params)
        self.steps = steps
        self.rates = nn.ParameterDict({
            parameter_key(n): nn.Parameter(torch.full((steps,), float(init), dtype=p.dtype,
                                                      device=p.device))
            for n, p in params.items()})

    def rate(self, name: str, step: Tensor | int) -> Tensor:
        """``alpha_{name, step}`` (the last rate for a step past it)."""
        rates = self.rates[parameter_key(name)]
        if isinstance(step, Tensor):
            return rates[step.clamp(max=self.steps - 1)]
        return rates[min(int(step), self.steps - 1)]

    def init(self, params: Params) -> Tensor:
        like = next(iter(params.values()))
        return torch.zeros((), dtype=torch.long, device=like.device)

    def transform(self, grads: Params, state: Tensor, params: Params) -> tuple[Params, Tensor]:
        unknown = sorted(set(grads) - set(self.names))
        if unknown:
            raise KeyError(f"PerStepRates has no rates for {unknown}; it was built for "
                           f"{self.names}")
        return {n: self.rate(n, state) * g for n, g in grads.items()}, state + 1

    def extra_repr(self) -> str:
        return f"steps={self.steps}"


class Adam(UpdateRule):
    """Adam (Kingma & Ba 2015) as a pure update rule, with torch.optim.Adam's numbers:

        m_t = b1 m_{t-1} + (1 - b1) g        v_t = b2 v_{t-1} + (1 - b2) g^2
        d   = lr * (m_t / (1 - b1^t)) / (sqrt(v_t / (1 - b2^t)) + eps)

    Reptile uses ``b1 = 0`` (no momentum): ``d = lr * g / (sqrt(v_t / (1 - b2^t)) + eps)``.
    The state is ``(t, m, v)``, fresh for every task.
    """

    def __init__(self, lr: float, betas: tuple[float, float] = (0.0, 0.999),
                 eps: float = 1e-8) -> None:
        super().__init__()
        self.lr = check_real("inner_lr", lr, minimum=0.0, inclusive=False)
        if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"inner_betas must be two numbers in [0, 1), got {betas!r}")
        self.betas = (float(betas[0]), float(betas[1]))
        self.eps = check_real("eps", eps, minimum=0.0, inclusive=False)

    def init(self, params: Params) -> tuple[Tensor, Params, Params]:
        like = next(iter(params.values()))
        zeros = {n: torch.zeros_like(p) for n, p in params.items()}
        return torch.zeros((), dtype=like.dtype, device=like.device), zeros, dict(zeros)

    def transform(self, grads: Params, state, params: Params):
        step, first, second = state
        step = step + 1
        b1, b2 = self.betas
        first = {n: b1 * first[n] + (1 - b1) * g for n, g in grads.items()}
        second = {n: b2 * second[n] + (1 - b2) * g * g for n, g in grads.items()}
        correction1, correction2 = 1 - b1 ** step, 1 - b2 ** step
        directions = {n: self.lr * (first[n] / correction1)
                      / ((second[n] / correction2).sqrt() + self.eps) for n in grads}
        return directions, (step, first, second)

    def extra_repr(self) -> str:
        return f"lr={self.lr}, betas={self.betas}, eps={self.eps}"


class Chain(UpdateRule):
    """Rules applied in turn: each one's directions are the next one's gradients."""

    def __init__(self, *rules: UpdateRule) -> None:
        super().__init__()
        if not rules or not all(isinstance(r, UpdateRule) for r in rules):
            raise TypeError("Chain needs one or more UpdateRule instances")
        self.rules = nn.ModuleList(rules)

    def init(self, params: Params) -> State:
        return tuple(rule.init(params) for rule in self.rules)

    def transform(self, grads: Params, state: State, params: Params) -> tuple[Params, State]:
        states = []
        for rule, rule_state in zip(self.rules, state, strict=True):
            grads, rule_state = rule.transform(grads, rule_state, params)
            states.append(rule_state)
        return grads, tuple(states)


def as_update_rule(rule: UpdateRule | float) -> UpdateRule:
    """A rule as is, or a number as the step size of `SGD`."""
    if isinstance(rule, UpdateRule):
        return rule
    if isinstance(rule, bool) or not isinstance(rule, (int, float)):
        raise TypeError(f"update rule must be an UpdateRule or a step size (a number), got "
                        f"{type(rule).__name__}")
    return SGD(rule)


__all__: Iterable[str] = ["Adam", "Chain", "LearnedRates", "PerStepRates", "SGD",
                          "UpdateRule", "as_update_rule", "parameter_key"]
