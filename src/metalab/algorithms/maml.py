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

MAML++ (Antoniou, Edwards & Storkey, ICLR 2019, "How to train your MAML") is MAML with
options, each off by default (the MAML++ configs turn them on):

- ``multi_step_loss`` (MSL): the query loss after every inner step ``k = 1..N``, weighted,
  ``L = sum_k w_k(i) L_query(theta^k)``, with the weights of meta-iteration ``i`` annealed
  over the first ``msl_anneal_steps = E`` meta-iterations (the authors' schedule, per
  iteration instead of per epoch):

      w_k(i) = max(1/N - i/(N E), 0.03/N)                       k < N
      w_N(i) = min(1/N + i (N-1)/(N E), 1 - 0.03 (N-1)/N)

  so they start uniform (1/N each), sum to one, and move toward the last step; from
  ``i = E`` on the loss is the last step's alone (plain MAML).
- ``per_step_lrs`` (LSLR): a learned rate per parameter tensor and per inner step,
  `PerStepRates`, initialised at ``inner_lr``.
- ``per_step_bn`` (BNWB): a batch-norm weight and bias per inner step for every
  `TaskBatchNorm` layer; step ``k``'s support pass, and the query pass after step ``k``,
  use pair ``k`` (step 0's pair is the model's own). The pairs are meta-learned, not
  adapted. Statistics stay per task and transductive (no running statistics).
- ``first_order_until``: first-order meta-gradients for the first ``first_order_until``
  meta-iterations, second order after ("derivative-order annealing").
- The cosine-annealed outer learning rate is the trainer's (``train.lr_schedule: cosine``).

MSL and first-order annealing depend on the meta-iteration, which the trainer tells the
learner before every step (`MetaLearner.set_training_progress`); outside a trainer it is 0.
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.func import functional_call

from metalab.algorithms.base import MetaLearner, parameters_for
from metalab.functional import (
    SGD,
    LearnedRates,
    PerStepRates,
    UpdateRule,
    autograd_gradients,
    gradients_for,
    inner_trajectory,
    map_tasks,
    parameter_key,
    to_channels_last,
)
from metalab.nn.norm import TaskBatchNorm
from metalab.tasks import TaskBatch
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
        multi_step_loss: MAML++'s multi-step loss, annealed over ``msl_anneal_steps``
            meta-iterations (see the module doc for the weights).
        msl_anneal_steps: meta-iterations ``E`` over which the step weights anneal.
        per_step_lrs: MAML++'s LSLR: a learned rate per parameter tensor and inner step
            (`PerStepRates`, starting at ``inner_lr``) instead of ``SGD(inner_lr)``.
        per_step_bn: MAML++'s per-step batch-norm weights and biases (one pair per inner
            step of training; meta-learned, left out of the inner loop's adaptation).
        first_order_until: first order for meta-iterations ``i < first_order_until``,
            then second order (unless ``first_order``).
    """

    chooses_adapted_parameters = True
    adapt_options = ("inner_steps",)

    def __init__(self, model: nn.Module, inner_lr: float = 0.4, inner_steps: int = 1,
                 first_order: bool = False, loss: str = "cross_entropy",
                 strategy: str = "loop", adapt: list[str] | str | None = None,
                 eval_inner_steps: int | None = None, checkpoint_steps: bool = False,
                 update_rule: UpdateRule | None = None, multi_step_loss: bool = False,
                 msl_anneal_steps: int = 1000, per_step_lrs: bool = False,
                 per_step_bn: bool = False, first_order_until: int = 0) -> None:
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
        self.multi_step_loss = bool(multi_step_loss)
        self.msl_anneal_steps = check_positive_int("msl_anneal_steps", msl_anneal_steps)
        self.first_order_until = check_positive_int("first_order_until", first_order_until,
                                                    minimum=0)
        self.meta_iteration = 0
        self.per_step_lrs = bool(per_step_lrs)
        self.per_step_bn = bool(per_step_bn)
        if (self.per_step_lrs or self.per_step_bn) and self.inner_steps < 1:
            raise ValueError("per_step_lrs and per_step_bn need inner_steps >= 1 (one rate or "
                             f"batch-norm pair per step), got inner_steps={self.inner_steps}")
        if self.per_step_lrs and update_rule is not None:
            raise ValueError("per_step_lrs=True chooses the update rule (PerStepRates); give "
                             "either per_step_lrs or update_rule, not both")
        self.step_norms = self._step_norm_parameters() if self.per_step_bn else None
        norms = set(self._norm_parameter_names()) if self.per_step_bn else set()
        self.adapt_names = [n for n in self._select_adapted(adapt) if n not in norms]
        if not self.adapt_names:
            raise ValueError(f"adapt={adapt!r} leaves nothing to adapt once per_step_bn "
                             f"takes the batch-norm parameters out of the inner loop")
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
        """The inner update rule when none is given: ``theta - inner_lr * grad``, or with
        ``per_step_lrs`` ``theta - alpha_{l,k} * grad`` (LSLR, rates starting at inner_lr)."""
        if self.per_step_lrs:
            params = dict(self.inner_module.named_parameters())
            return PerStepRates({n: params[n] for n in self.adapt_names}, self.inner_steps,
                                self.inner_lr)
        return SGD(self.inner_lr)

    # -- training progress (MAML++'s annealing) --------------------------------------------
    def set_training_progress(self, step: int, total_steps: int) -> None:
        self.meta_iteration = int(step)

    @property
    def first_order_now(self) -> bool:
        """Whether this meta-iteration's meta-gradient is first order."""
        return self.first_order or self.meta_iteration < self.first_order_until

    def step_loss_weights(self) -> list[float] | None:
        """MSL's weights ``w_1..w_N`` at this meta-iteration (module doc), or ``None`` when
        the loss is the last step's alone (MSL off, or annealed past ``msl_anneal_steps``)."""
        if not self.multi_step_loss or self.meta_iteration >= self.msl_anneal_steps:
            return None
        steps, progress = self.inner_steps, self.meta_iteration / self.msl_anneal_steps
        floor = 0.03 / steps
        early = max(1.0 / steps - progress / steps, floor)
        last = min(1.0 / steps + progress * (steps - 1) / steps, 1.0 - (steps - 1) * floor)
        return [early] * (steps - 1) + [last]

    # -- per-step batch norm -----------------------------------------------------------------
    def _norm_parameter_names(self) -> list[str]:
        return [f"{module_name}.{kind}" if module_name else kind
                for module_name, module in self.inner_module.named_modules()
                if isinstance(module, TaskBatchNorm) for kind in ("weight", "bias")]

    def _step_norm_parameters(self) -> nn.ParameterDict:
        """Pairs ``1..N-1`` of every batch-norm weight and bias (pair 0 is the model's own),
        ``[N - 1, channels]`` each, starting equal to the model's."""
        names = self._norm_parameter_names()
        if not names:
            raise ValueError(f"per_step_bn=True needs TaskBatchNorm layers in the model; "
                             f"{type(self.inner_module).__name__} has none")
        params = dict(self.inner_module.named_parameters())
        return nn.ParameterDict({
            parameter_key(n): nn.Parameter(
                params[n].detach().unsqueeze(0).repeat(self.inner_steps - 1, 1).clone())
            for n in names})

    def step_norm_parameters(self, step: int, training: bool) -> dict[str, Tensor]:
        """The batch-norm pair of inner step ``step`` (the last pair past the last step);
        ``{}`` for step 0 or without ``per_step_bn``, whose pair is the model's own."""
        step = min(step, self.inner_steps - 1)
        if self.step_norms is None or step == 0:
            return {}
        pairs = {n: self.step_norms[parameter_key(n)][step - 1]
                 for n in self._norm_parameter_names()}
        return pairs if training else {n: p.detach() for n, p in pairs.items()}

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
        return self.adapt_trajectory(support_x, support_y, training=training,
                                     inner_steps=inner_steps)[-1]

    def adapt_trajectory(self, support_x: Tensor, support_y: Tensor, *, training: bool,
                         inner_steps: int | None = None) -> list[Params]:
        """The parameters for a query pass before (``[0]``) and after every inner step;
        with ``per_step_bn`` the one after step ``k`` carries step ``k``'s batch-norm pair."""
        if inner_steps is None:
            inner_steps = self.inner_steps if training else self.eval_inner_steps
        features = self.encode(support_x)

        def support_loss(params: Params) -> Tensor:
            return self.loss_fn(functional_call(self.inner_module, params, (features,)),
                                support_y)

        def step_params(step: int) -> Params:
            return self.step_norm_parameters(step, training)

        trajectory = inner_trajectory(
            support_loss, parameters_for(self.inner_module, training), self.update_rule,
            steps=check_positive_int("inner_steps", inner_steps, minimum=0),
            adapt_names=self.adapt_names, first_order=self.first_order_now or not training,
            gradients=gradients_for(self.strategy) if training else autograd_gradients,
            checkpoint_steps=self.checkpoint_steps and training,
            step_params=step_params if self.per_step_bn else None,
        )
        if not self.per_step_bn:
            return trajectory
        return [{**params, **step_params(max(after - 1, 0))}
                for after, params in enumerate(trajectory)]

    def training_task_losses(self, batch: TaskBatch) -> tuple[Tensor, dict[str, Tensor]]:
        """MAML's query losses, or with the multi-step loss ``sum_k w_k L_query(theta^k)``
        per task (the metric is the last step's)."""
        weights = self.step_loss_weights()
        if weights is None:
            return super().training_task_losses(batch)

        def per_task(sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor):
            after_steps = self.adapt_trajectory(sx, sy, training=True)[1:]
            outputs = [self.predict(params, qx) for params in after_steps]
            loss = sum(w * self.loss_fn(out, qy) for w, out in zip(weights, outputs,
                                                                   strict=True))
            return loss, self.metric_fn(outputs[-1], qy)

        losses, metric = map_tasks(per_task, batch.support_x, batch.support_y, batch.query_x,
                                   batch.query_y, strategy=self.strategy)
        return losses, {self.metric_name: metric.detach()}

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
        if self.per_step_lrs:
            raise ValueError("Meta-SGD learns its own rates; per_step_lrs=True does not apply")
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
