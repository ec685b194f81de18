"""Meta-Curvature (Park & Oliva, NeurIPS 2019, "Meta-Curvature").

MAML with a meta-learned preconditioner of the inner gradient (eq. 4-7):

    theta'_t = theta - alpha * MC(grad_theta L(f_theta; support_t))
    min_{theta, M}  sum_t L(f_theta'_t; query_t)

where ``MC`` transforms each parameter's gradient tensor by one learned square matrix per
mode (`metalab.functional.preconditioners.MetaCurvature`): ``M_o G M_i^T`` for a linear
weight, ``G x_1 M_o x_2 M_i x_3 M_f`` for a convolution's ``[C_out, C_in, k, k]`` kernel, a
full matrix for a vector. The factors start at the identity (MAML's step) and are learned
with ``theta`` by the outer loop. With ``first_order=True`` this is the paper's
first-order MC (the inner gradients are constants; the factors still get the gradient of
the step they shape).
"""

from __future__ import annotations

from torch import nn

from metalab.algorithms.maml import MAML
from metalab.functional import SGD, Chain, UpdateRule
from metalab.functional.preconditioners import MetaCurvature


def curvature_of(rule: UpdateRule) -> MetaCurvature | None:
    """The `MetaCurvature` inside ``rule`` (itself or a part of a `Chain`), if any."""
    if isinstance(rule, MetaCurvature):
        return rule
    if isinstance(rule, Chain):
        found = [r for r in rule.rules if isinstance(r, MetaCurvature)]
        return found[0] if found else None
    return None


class MetaCurvatureMAML(MAML, name="metacurvature"):
    """MAML whose inner step is ``alpha * MC(grad)`` with learned Kronecker factors.

    Takes MAML's arguments. ``update_rule`` (default ``Chain(MetaCurvature(adapted),
    SGD(inner_lr))``) is checked against the adapted parameters when the learner is built:
    a rule made for another model fails then, naming the parameters that differ.
    """

    def __init__(self, model: nn.Module, **kwargs) -> None:
        super().__init__(model, **kwargs)
        curvature = curvature_of(self.update_rule)
        if curvature is None:
            raise TypeError(f"metacurvature needs an update_rule containing a MetaCurvature "
                            f"preconditioner, got {type(self.update_rule).__name__}")
        params = dict(self.inner_module.named_parameters())
        curvature.check_fits({n: params[n] for n in self.adapt_names})

    def default_rule(self) -> UpdateRule:
        params = dict(self.inner_module.named_parameters())
        return Chain(MetaCurvature({n: params[n] for n in self.adapt_names}),
                     SGD(self.inner_lr))
