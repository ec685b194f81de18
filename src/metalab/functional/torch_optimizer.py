"""A trained update rule as a `torch.optim.Optimizer`, for an ordinary training loop.

    opt = LearnedOptimizer(model.parameters(), rule=trained_rule)
    for x, y in data:
        opt.zero_grad(); loss_fn(model(x), y).backward(); opt.step()

Each parameter keeps the rule's state (for `LSTMOptimizer`: the per-coordinate LSTM states)
in ``opt.state[p]``; a step is the rule's ``update`` on that parameter alone, without a
graph. For a coordinatewise rule this is the same step as the functional rule applied to
all parameters at once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor

from metalab.functional.update_rules import UpdateRule

KEY = "p"


class LearnedOptimizer(torch.optim.Optimizer):
    """Applies ``rule`` (an `UpdateRule`, e.g. a trained `LSTMOptimizer`) to ``params``.

    Args:
        params: the parameters (or parameter groups) to optimise.
        rule: the update rule; it is used, never trained, here (its parameters stay as
            they are).
    """

    def __init__(self, params: Iterable[Tensor] | Iterable[dict], rule: UpdateRule) -> None:
        if not isinstance(rule, UpdateRule):
            raise TypeError(f"rule must be an UpdateRule (e.g. a trained LSTMOptimizer), got "
                            f"{type(rule).__name__}")
        self.rule = rule
        super().__init__(params, {})

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        """One step of the rule on every parameter that has a gradient."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "rule_state" not in state:
                    state["rule_state"] = self.rule.init({KEY: p})
                new, state["rule_state"] = self.rule.update({KEY: p.grad}, state["rule_state"],
                                                            {KEY: p})
                p.copy_(new[KEY])
        return loss


__all__ = ["LearnedOptimizer"]
