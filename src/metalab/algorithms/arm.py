"""Adaptive Risk Minimization: the three ARM methods (Zhang, Marklund et al. 2021).

Group shift: every task of a `TaskBatch` is one group's batch; the learner adapts to the
group from the batch's *unlabelled* inputs ``support_x`` and is scored on ``query_x``
(usually the same inputs) with ``query_y``. ``support_y`` is never read. ARM (eq. 2 of
the paper) meta-trains the model and the adaptation procedure ``h`` together:

    min_{theta, phi}  E_z E_{x_1..K ~ p(x|z)} [ sum_k l(f(x_k; h(theta, phi; x_1..K)), y_k) ]

- `metalab.algorithms.erm.ERM` is the baseline without adaptation, ``h(theta; x) = theta``.
- `ARMBN`: ``h`` replaces every batch norm's statistics with those of the group's batch
  (``TaskBatchNorm``), in training as at test.
- `ARMCML`: ``h`` averages a context network's per-example outputs over the batch,
  ``c = 1/K sum_k g(x_k; phi)``, and the model sees ``c`` as extra input channels.
- `ARMLL`: ``h`` takes ``inner_steps`` gradient steps on a learned unsupervised loss of the
  batch's logits, ``theta' = theta - alpha grad_theta L(f(x_1..K; theta); phi)``,
  differentiated through (second order) in meta-training.

Each method is the `MetaLearner` contract with an unlabelled support set:
``adapt_task(support_x, None)`` and ``predict``. Test time: ``learner.adapt(unlabelled_x)``
returns a `Predictor` for that group; ``learner.stream()`` adapts to batches of one group
that arrive one at a time (`metalab.algorithms.stream`).
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from metalab.algorithms.base import MetaLearner, parameters_for
from metalab.algorithms.erm import batched
from metalab.algorithms.stream import check_inputs
from metalab.functional import inner_loop
from metalab.nn.arm import ContextNet, LearnedLoss, task_norm_layers, task_norm_statistics
from metalab.nn.statistics import predict_from_support, same_inputs
from metalab.tasks import TaskBatch
from metalab.validation import check_positive_int

Params = dict[str, Tensor]


class ARMBN(MetaLearner, name="arm-bn"):
    """ARM-BN: batch norm with the statistics of the group's batch, trained so.

    Every `TaskBatchNorm` layer of ``model`` normalizes with the mean and variance of the
    group's unlabelled batch (Zhang et al. 2021, sec. 4: the adaptation ``h`` replaces the
    batch-norm statistics; meta-training uses one group per batch). The adapted state is
    the group's batch; `predict` normalizes other inputs of the group with its statistics
    (and the batch itself in one pass).

    Batch size 1: the statistics are over the spatial positions of the one image (every
    normalized map of `ARMConvNet` is at least 2x2). Where a channel has a single value
    (one example of a feature vector), its mean is that value and its variance 0, so the
    normalized value is 0 and the layer outputs its bias beta; ``eps`` keeps the division
    finite. No NaN or infinity either way.
    """

    def __init__(self, model: nn.Module, loss: str = "cross_entropy") -> None:
        super().__init__(loss)
        if not task_norm_layers(model):
            raise TypeError(f"ARMBN needs a model with TaskBatchNorm layers (e.g. "
                            f"ARMConvNet(norm='task')); {type(model).__name__} has none")
        running = [n for n, m in model.named_modules()
                   if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if running:
            raise TypeError(f"ARMBN adapts TaskBatchNorm layers only, but the model also has "
                            f"batch norms with running statistics: {running}")
        self.model = model

    def adapt_task(self, support_x: Tensor, support_y: Tensor | None = None, *,
                   training: bool) -> Tensor:
        """The group's unlabelled batch, whose statistics `predict` normalizes with."""
        return check_inputs("support_x", support_x)

    def predict(self, support_x: Tensor, x: Tensor) -> Tensor:
        return predict_from_support(self.model, support_x, check_inputs("x", x))


def _first_conv_channels(model: nn.Module) -> int | None:
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            return module.in_channels
    return None


class ARMCML(MetaLearner, name="arm-cml"):
    """ARM-CML: contextual meta-learning from the group's unlabelled batch.

    ``c = 1/K sum_k g(x_k; phi)`` (Zhang et al. 2021, sec. 4, ARM-CML), the context
    network's per-example outputs averaged over the batch, is concatenated to every input
    as extra channels: the prediction is ``f([x, c]; theta)``. ``context_net`` maps
    ``[B, C, H, W]`` to ``[B, C_ctx, H, W]`` and ``model`` takes ``C + C_ctx`` channels. In
    training both run on all tasks of the meta-batch at once (the official code's
    convention: ordinary batch norm pools its statistics over the meta-batch); in `eval()`
    batch norm uses running statistics, so the context of an example does not depend on the
    rest of the batch and the average over a stream is exact. The default context network
    has no batch norm (see `ContextNet` for why and the measurement).

    Per-group normalization (the official code's ``--adapt_bn 1``): when ``model`` has
    `TaskBatchNorm` layers (``ARMConvNet(norm="task")``), every group goes through the
    model on its own, in training as at test, and is normalized with the statistics of its
    own batch ``[x_1..K, c]``; predictions on other inputs of the group use that batch's
    statistics. With ordinary batch norm the training statistics are pooled over the
    groups of the meta-batch and the test ones are running averages: measured on rotated
    MNIST (14x14, 400 steps, seed 0), the same trained ARM-CML scores 50.3% average /
    29.0% worst group in `eval()` and 74.6% / 49.0% when its batch norms take the test
    batch's statistics; ERM reaches 70.3% / 28.5%. The train/test mismatch of the
    context-carrying batch norm, not the context, held ARM-CML back.

    Args:
        model: the prediction network (e.g. ``ARMConvNet(in_channels=1 + 12,
            extra_conv=False)``).
        context_net: the context network; ``None`` builds ``ContextNet(image_channels,
            context_channels, context_hidden)``.
    """

    def __init__(self, model: nn.Module, context_net: nn.Module | None = None, *,
                 image_channels: int = 1, context_channels: int = 12,
                 context_hidden: int = 64, context_norm: str = "none",
                 loss: str = "cross_entropy") -> None:
        super().__init__(loss)
        if context_net is None:
            context_net = ContextNet(image_channels, context_channels, context_hidden,
                                     norm=context_norm)
        self.model = model
        self.context_net = context_net
        self.normalizes_per_group = bool(task_norm_layers(model))
        expected = _first_conv_channels(model)
        given = (getattr(context_net, "in_channels", None),
                 getattr(context_net, "out_channels", None))
        if expected is not None and None not in given and expected != sum(given):
            raise ValueError(f"model's first convolution takes {expected} channels but the "
                             f"inputs with their context have {given[0]} + {given[1]} = "
                             f"{sum(given)}; build the model with in_channels={sum(given)}")

    def context(self, x: Tensor) -> Tensor:
        """The group's context ``[C_ctx, H, W]``: the batch mean of ``context_net(x)``."""
        return self.context_net(x).mean(dim=0)

    @staticmethod
    def with_context(x: Tensor, context: Tensor) -> Tensor:
        """``[x, c]``: the context ``[C_ctx, H, W]`` appended to every input of ``x``."""
        return torch.cat([x, context.unsqueeze(0).expand(x.shape[0], *context.shape)], dim=1)

    def predict_with_context(self, x: Tensor, context: Tensor) -> Tensor:
        """``model([x, c])`` for a batch ``x [B, C, H, W]`` and one context ``[C_ctx, H, W]``
        (per-group normalization: with the statistics of ``[x, c]`` itself)."""
        inputs = self.with_context(x, context)
        if self.normalizes_per_group:
            return predict_from_support(self.model, inputs, inputs)
        return self.model(inputs)

    @classmethod
    def extra_input_channels(cls, options: dict[str, Any]) -> int:
        default = inspect.signature(cls.__init__).parameters["context_channels"].default
        return options.get("context_channels", default)

    @classmethod
    def options_from_data(cls, options: dict[str, Any], sizes: dict[str, Any]
                          ) -> dict[str, Any]:
        if "in_channels" in sizes:
            return {"image_channels": sizes["in_channels"], **options}
        return options

    def training_task_losses(self, batch: TaskBatch) -> tuple[Tensor, dict[str, Tensor]]:
        """All groups of the meta-batch through both networks at once (batch norm pools
        over them, as the official code's minibatches); with per-group normalization, group
        by group (`adapt_task` and `predict`), as at test."""
        if self.normalizes_per_group:
            return super().training_task_losses(batch)
        contexts = batched(self.context_net, batch.support_x).mean(dim=1)
        expanded = contexts.unsqueeze(1).expand(-1, batch.query_x.shape[1], *contexts.shape[1:])
        outputs = batched(self.model, torch.cat([batch.query_x, expanded], dim=2))
        return self.stacked_scores(zip(outputs, batch.query_y, strict=True))

    def adapt_task(self, support_x: Tensor, support_y: Tensor | None = None, *,
                   training: bool) -> Tensor | tuple[Tensor, Tensor]:
        """The group's context ``c`` (per-group normalization: ``c`` and the batch, whose
        statistics `predict` normalizes with); ``support_y`` is ignored."""
        context = self.context(check_inputs("support_x", support_x))
        return (context, support_x) if self.normalizes_per_group else context

    def predict(self, state: Tensor | tuple[Tensor, Tensor], x: Tensor) -> Tensor:
        x = check_inputs("x", x)
        if not self.normalizes_per_group:
            return self.predict_with_context(x, state)
        context, support_x = state
        inputs = self.with_context(x, context)
        support = inputs if same_inputs(x, support_x) else self.with_context(support_x, context)
        return predict_from_support(self.model, support, inputs)


class ARMLL(MetaLearner, name="arm-ll"):
    """ARM-LL: gradient steps on a learned loss of the group's unlabelled batch.

    ``theta' = theta - alpha grad_theta L_phi(f(x_1..K; theta))`` for ``inner_steps`` steps
    (Zhang et al. 2021, sec. 4, ARM-LL; official code: one step, ``alpha = 0.1``, all
    parameters, a `LearnedLoss` MLP on the logits), then the query loss of
    ``f(x; theta')``. Meta-training differentiates through the steps (second order) into
    both ``theta`` and ``phi``, using `metalab.functional.inner_loop` with the learned loss
    as the inner loss. `TaskBatchNorm` layers use the statistics of the group's batch
    (the official code runs ARM-LL's model in train mode); predictions on other inputs use
    the statistics of that batch under the adapted parameters.

    Args:
        model: the prediction network.
        loss_net: the learned loss; ``None`` builds ``LearnedLoss(num_classes)``, with
            ``num_classes`` read from ``model.num_classes`` when not given.
        inner_lr, inner_steps: the inner SGD step size and number of steps.
        first_order: drop the second-order terms (then ``loss_net`` gets no gradient).
        eval_inner_steps: inner steps at test time (default ``inner_steps``).
    """

    adapt_options = ("inner_steps",)

    def __init__(self, model: nn.Module, loss_net: nn.Module | None = None, *,
                 num_classes: int | None = None, inner_lr: float = 0.1, inner_steps: int = 1,
                 first_order: bool = False, eval_inner_steps: int | None = None,
                 loss: str = "cross_entropy") -> None:
        super().__init__(loss)
        if loss_net is None:
            num_classes = num_classes if num_classes is not None else getattr(
                model, "num_classes", None)
            if num_classes is None:
                raise ValueError("ARMLL needs num_classes (or a model with a num_classes "
                                 "attribute, or a loss_net) to build its learned loss")
            loss_net = LearnedLoss(num_classes)
        self.model = model
        self.loss_net = loss_net
        self.inner_lr = float(inner_lr)
        self.inner_steps = check_positive_int("inner_steps", inner_steps, minimum=0)
        self.eval_inner_steps = self.inner_steps if eval_inner_steps is None else (
            check_positive_int("eval_inner_steps", eval_inner_steps, minimum=0))
        self.first_order = bool(first_order)

    def adapted_parameters(self, support_x: Tensor, training: bool,
                           inner_steps: int | None = None) -> Params:
        """``theta'`` after the inner steps on the learned loss of ``support_x``."""
        if inner_steps is None:
            inner_steps = self.inner_steps if training else self.eval_inner_steps

        def learned_loss(params: Params) -> Tensor:
            return self.loss_net(functional_call(self.model, params, (support_x,)))

        with task_norm_statistics(self.model, "batch", {}):
            return inner_loop(learned_loss, parameters_for(self.model, training), self.inner_lr,
                              steps=check_positive_int("inner_steps", inner_steps, minimum=0),
                              first_order=self.first_order or not training)

    def adapt_task(self, support_x: Tensor, support_y: Tensor | None = None, *,
                   training: bool, inner_steps: int | None = None) -> tuple[Params, Tensor]:
        """``theta'`` and the group's batch (whose statistics `predict` normalizes with)."""
        check_inputs("support_x", support_x)
        return self.adapted_parameters(support_x, training, inner_steps), support_x

    def predict(self, state: tuple[Params, Tensor], x: Tensor) -> Tensor:
        adapted, support_x = state
        return predict_from_support(self.model, support_x, check_inputs("x", x), adapted)


__all__ = ["ARMBN", "ARMCML", "ARMLL"]
