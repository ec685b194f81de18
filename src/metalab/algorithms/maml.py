"""Gradient-based meta-learning: MAML, first-order MAML, Meta-SGD and ANIL.

MAML (Finn, Abbeel, Levine, ICML 2017), eq. 1 and the meta-objective:

    theta'_t = theta - alpha * grad_theta L(f_theta; support_t)
    min_theta  sum_t L(f_theta'_t; query_t)

with several inner steps when ``inner_steps > 1``. First-order MAML drops the
second-order terms. Meta-SGD (Li et al. 2017) learns alpha as a vector of the parameters'
shape: theta' = theta - alpha o grad. ANIL (Raghu et al., ICLR 2020) adapts only the final
layer in the inner loop; the body is learned in the outer loop only.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.func import functional_call

from metalab.algorithms.base import MetaLearner, Predictor
from metalab.functional import (
    autograd_gradients,
    check_strategy,
    gradients_for,
    inner_loop,
    map_tasks,
    to_channels_last,
)
from metalab.tasks import TaskBatch


class MAML(MetaLearner):
    """Model-Agnostic Meta-Learning.

    Args:
        model: any `nn.Module`; all of its parameters adapt unless ``adapt`` names a subset.
        inner_lr: inner step size alpha.
        inner_steps: inner gradient steps during meta-training.
        first_order: ignore second-order terms (FOMAML).
        loss: ``"cross_entropy"`` (classification) or ``"mse"`` (regression).
        strategy: ``"loop"`` over tasks or ``"vmap"``; both give the same meta-gradient.
        adapt: parameter-name prefixes that adapt in the inner loop (``None``: all).
        eval_inner_steps: inner steps at meta-test (default ``inner_steps``).
        checkpoint_steps: gradient checkpointing across inner steps: second-order memory
            stops growing with the number of steps, at the cost of recomputing each step
            once more in the backward pass. Same meta-gradient.
    """

    def __init__(self, model: nn.Module, inner_lr: float = 0.4, inner_steps: int = 1,
                 first_order: bool = False, loss: str = "cross_entropy",
                 strategy: str = "loop", adapt: list[str] | str | None = None,
                 eval_inner_steps: int | None = None, checkpoint_steps: bool = False) -> None:
        super().__init__(loss)
        if inner_steps < 0:
            raise ValueError(f"inner_steps must be >= 0, got {inner_steps}")
        self.model = model
        self.inner_lr = float(inner_lr)
        self.inner_steps = int(inner_steps)
        self.eval_inner_steps = self.inner_steps if eval_inner_steps is None else int(
            eval_inner_steps)
        self.first_order = bool(first_order)
        self.strategy = check_strategy(strategy)
        self.checkpoint_steps = bool(checkpoint_steps)
        if self.checkpoint_steps and self.strategy == "vmap":
            raise ValueError("checkpoint_steps=True needs strategy='loop': torch.func.grad, "
                             "which vmap uses, does not support checkpointing's saved-tensor "
                             "hooks")
        self.adapt_names = self._select_adapted(adapt)

    # -- the parts subclasses change -------------------------------------------------
    @property
    def inner_module(self) -> nn.Module:
        """The module whose parameters the inner loop adapts."""
        return self.model

    def encode(self, x: Tensor) -> Tensor:
        """Input transform applied before ``inner_module`` (identity for MAML)."""
        return x

    def step_size(self) -> float | dict[str, Tensor]:
        return self.inner_lr

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

    def _params(self, training: bool) -> dict[str, Tensor]:
        params = dict(self.inner_module.named_parameters())
        if training:
            return params
        return {n: p.detach().requires_grad_(True) for n, p in params.items()}

    def _adapt_to(self, params: dict[str, Tensor], features: Tensor, labels: Tensor,
                  training: bool, gradients) -> dict[str, Tensor]:
        return inner_loop(
            self.inner_module, params, features, labels, self.loss_fn,
            steps=self.inner_steps if training else self.eval_inner_steps,
            step_size=self.step_size(), adapt_names=self.adapt_names,
            first_order=self.first_order or not training, gradients=gradients,
            checkpoint_steps=self.checkpoint_steps and training,
        )

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

    def task_losses(self, batch: TaskBatch, training: bool = True
                    ) -> tuple[Tensor, dict[str, Tensor]]:
        params = self._params(training)
        gradients = gradients_for(self.strategy)

        def per_task(sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor):
            adapted = self._adapt_to(params, self.encode(sx), sy, training, gradients)
            outputs = functional_call(self.inner_module, adapted, (self._query_input(qx),))
            return self.loss_fn(outputs, qy), self.metric_fn(outputs, qy)

        with torch.enable_grad():
            losses, metric = map_tasks(per_task, batch.support_x, batch.support_y,
                                       batch.query_x, batch.query_y, strategy=self.strategy)
        if not training:
            losses, metric = losses.detach(), metric.detach()
        return losses, {self.metric_name: metric}

    def adapt(self, support_x: Tensor, support_y: Tensor) -> Predictor:
        with torch.enable_grad():
            adapted = self._adapt_to(self._params(False), self.encode(support_x), support_y,
                                     False, autograd_gradients)
        adapted = {n: p.detach() for n, p in adapted.items()}
        return Predictor(lambda x: functional_call(self.inner_module, adapted, (self.encode(x),)))


class MetaSGD(MAML):
    """Meta-SGD: a learned step size per parameter entry, ``theta' = theta - alpha o grad``.

    ``alpha`` starts at ``inner_lr`` everywhere and is meta-learned with theta.
    """

    def __init__(self, model: nn.Module, inner_lr: float = 0.4, **kwargs) -> None:
        super().__init__(model, inner_lr=inner_lr, **kwargs)
        params = dict(self.inner_module.named_parameters())
        self.inner_lrs = nn.ParameterDict({
            self._key(n): nn.Parameter(torch.full_like(params[n].detach(), self.inner_lr))
            for n in self.adapt_names
        })

    @staticmethod
    def _key(name: str) -> str:
        return name.replace(".", "__")

    def step_size(self) -> dict[str, Tensor]:
        return {n: self.inner_lrs[self._key(n)] for n in self.adapt_names}


class ANIL(MAML):
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


def fomaml(model: nn.Module, **kwargs) -> MAML:
    """First-order MAML (Finn et al. 2017, section 5.2)."""
    kwargs["first_order"] = True
    return MAML(model, **kwargs)
