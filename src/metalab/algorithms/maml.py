"""Gradient-based meta-learning: MAML, first-order MAML, Meta-SGD and ANIL.

MAML (Finn, Abbeel, Levine, ICML 2017), eq. 1 and the meta-objective:

    theta'_t = theta - alpha * grad_theta L(f_theta; support_t)
    min_theta  sum_t L(f_theta'_t; query_t)

with several inner steps when ``inner_steps > 1``. First-order MAML drops the
second-order terms. Meta-SGD (Li et al. 2017) learns alpha as a vector of the parameters'
shape: theta' = theta - alpha o grad. ANIL (Raghu et al., ICLR 2020) adapts only the final
layer in the inner loop; the body is learned in the outer loop only.

The step is an update rule (`metalab.functional.update_rules`): `SGD` for MAML,
`LearnedRates` for Meta-SGD; any other rule (a preconditioner, a learned optimizer) is
passed as ``update_rule``.
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.func import functional_call

from metalab.algorithms.base import MetaLearner, parameters_for
from metalab.functional import (
    SGD,
    LearnedRates,
    UpdateRule,
    autograd_gradients,
    gradients_for,
    inner_loop,
    to_channels_last,
)
from metalab.validation import check_positive_int

Params = dict[str, Tensor]


class MAML(MetaLearner, name="maml"):
    """Model-Agnostic Meta-Learning.

    Args:
        model: any `nn.Module`; all of its parameters adapt unless ``adapt`` names a subset.
        inner_lr: inner step size alpha (of the default `SGD` rule).
        inner_steps: inner gradient steps during meta-training.
        first_order: ignore second-order terms (FOMAML).
        loss: ``"cross_entropy"`` (classification) or ``"mse"`` (regression).
        strategy: ``"loop"`` over tasks or ``"vmap"``; both give the same meta-gradient.
        adapt: parameter-name prefixes that adapt in the inner loop (``None``: all).
        eval_inner_steps: inner steps at meta-test (default ``inner_steps``); ``adapt(...,
            inner_steps=k)`` overrides it for one call.
        checkpoint_steps: gradient checkpointing across inner steps: second-order memory
            stops growing with the number of steps, at the cost of recomputing each step
            once more in the backward pass. Same meta-gradient.
        update_rule: the inner update rule (default ``SGD(inner_lr)``).
    """

    chooses_adapted_parameters = True
    adapt_options = ("inner_steps",)

    def __init__(self, model: nn.Module, inner_lr: float = 0.4, inner_steps: int = 1,
                 first_order: bool = False, loss: str = "cross_entropy",
                 strategy: str = "loop", adapt: list[str] | str | None = None,
                 eval_inner_steps: int | None = None, checkpoint_steps: bool = False,
                 update_rule: UpdateRule | None = None) -> None:
        super().__init__(loss, strategy)
        self.model = model
        self.inner_lr = float(inner_lr)
        self.inner_steps = check_positive_int("inner_steps", inner_steps, minimum=0)
        self.eval_inner_steps = self.inner_steps if eval_inner_steps is None else (
            check_positive_int("eval_inner_steps", eval_inner_steps, minimum=0))
        self.first_order = bool(first_order)
        self.checkpoint_steps = bool(checkpoint_steps)
        if self.checkpoint_steps and self.strategy == "vmap":
            raise ValueError("checkpoint_steps=True needs strategy='loop': torch.func.grad, "
                             "which vmap uses, does not support checkpointing's saved-tensor "
                             "hooks")
        self.adapt_names = self._select_adapted(adapt)
        self.update_rule = update_rule if update_rule is not None else self.default_rule()

    # -- the parts subclasses change -------------------------------------------------
    @property
    def inner_module(self) -> nn.Module:
        """The module whose parameters the inner loop adapts."""
        return self.model

    def encode(self, x: Tensor) -> Tensor:
        """Input transform applied before ``inner_module`` (identity for MAML)."""
        return x

    def default_rule(self) -> UpdateRule:
        """The inner update rule when none is given: ``theta - inner_lr * grad``."""
        return SGD(self.inner_lr)

    # -- the method ----------------------------------------------------------------------
    def _select_adapted(self, adapt: list[str] | str | None) -> list[str]:
        names = [n for n, _ in self.inner_module.named_parameters()]
        if adapt is None:
            return names
        prefixes = [adapt] if isinstance(adapt, str) else list(adapt)
        chosen = [n for n in names if any(n == p or n.startswith(p + ".") for p in prefixes)]
        if not chosen:
            raise ValueError(f"adapt={adapt!r} matches no parameter; parameters are {names}")
        return chosen

    def adapt_task(self, support_x: Tensor, support_y: Tensor, *, training: bool,
                   inner_steps: int | None = None) -> Params:
        """``theta'``: the inner loop's steps of the update rule on the support loss."""
        if inner_steps is None:
            inner_steps = self.inner_steps if training else self.eval_inner_steps
        features = self.encode(support_x)

        def support_loss(params: Params) -> Tensor:
            return self.loss_fn(functional_call(self.inner_module, params, (features,)),
                                support_y)

        return inner_loop(
            support_loss, parameters_for(self.inner_module, training), self.update_rule,
            steps=check_positive_int("inner_steps", inner_steps, minimum=0),
            adapt_names=self.adapt_names, first_order=self.first_order or not training,
            gradients=gradients_for(self.strategy) if training else autograd_gradients,
            checkpoint_steps=self.checkpoint_steps and training,
        )

    def predict(self, adapted: Params, x: Tensor) -> Tensor:
        return functional_call(self.inner_module, adapted, (self._query_input(x),))

    def _query_input(self, x: Tensor) -> Tensor:
        """The query pass's input. It is differentiated once (the support pass twice), and
        for models that set ``outer_channels_last`` (`Conv4`) it runs channels-last on CPU,
        where that is faster; the support pass keeps NCHW, faster for the double backward.
        Not under vmap, whose batched tensors have no memory format.
        """
        x = self.encode(x)
        if (self.strategy == "loop" and x.device.type == "cpu"
                and getattr(self.inner_module, "outer_channels_last", False)):
            return to_channels_last(x)
        return x


class FOMAML(MAML, name="fomaml"):
    """First-order MAML (Finn et al. 2017, section 5.2): the meta-gradient is the query
    gradient at the adapted parameters, ``grad L_query(theta')``, with no second-order term."""

    def __init__(self, model: nn.Module, first_order: bool = True, **kwargs) -> None:
        if not first_order:
            raise ValueError("FOMAML is first order; use MAML for first_order=False")
        super().__init__(model, first_order=True, **kwargs)


class MetaSGD(MAML, name="metasgd"):
    """Meta-SGD: a learned step size per parameter entry, ``theta' = theta - alpha o grad``.

    ``alpha`` (the `LearnedRates` rule in ``update_rule``) starts at ``inner_lr``
    everywhere and is meta-learned with theta. Checkpoints written before the rates moved
    into the rule (keys ``inner_lrs.*``) load unchanged.
    """

    def __init__(self, model: nn.Module, inner_lr: float = 0.4, **kwargs) -> None:
        super().__init__(model, inner_lr=inner_lr, **kwargs)
        self._register_load_state_dict_pre_hook(_rename_old_rates)

    def default_rule(self) -> UpdateRule:
        params = dict(self.inner_module.named_parameters())
        return LearnedRates({n: params[n] for n in self.adapt_names}, self.inner_lr)

    @property
    def inner_lrs(self) -> nn.ParameterDict:
        """The learned rates, keyed by parameter name with ``.`` written ``__``."""
        return self.update_rule.rates


def _rename_old_rates(state_dict, prefix, *_args) -> None:
    old, new = prefix + "inner_lrs.", prefix + "update_rule.rates."
    for key in [k for k in state_dict if k.startswith(old)]:
        state_dict[new + key[len(old):]] = state_dict.pop(key)


class ANIL(MAML, name="anil"):
    """Almost No Inner Loop: only ``model.head`` adapts; ``model.body`` is shared features.

    The features of each task are computed once per task, not once per inner step.
    """

    def __init__(self, model: nn.Module, **kwargs) -> None:
        for part in ("body", "head"):
            if not isinstance(getattr(model, part, None), nn.Module):
                raise TypeError(f"ANIL needs a model with a '{part}' submodule; "
                                f"{type(model).__name__} has none")
        super().__init__(model, **kwargs)

    @property
    def inner_module(self) -> nn.Module:
        return self.model.head

    def encode(self, x: Tensor) -> Tensor:
        return self.model.body(x)
