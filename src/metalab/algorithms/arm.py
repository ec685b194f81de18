"""Adaptive Risk Minimization: ERM and the three ARM methods (Zhang, Marklund et al. 2021).

Group shift: every task of a `TaskBatch` is one group's batch; the learner adapts to the
group from the batch's *unlabelled* inputs ``support_x`` and is scored on ``query_x``
(usually the same inputs) with ``query_y``. ``support_y`` is never read. ARM (eq. 2 of
the paper) meta-trains the model and the adaptation procedure ``h`` together:

    min_{theta, phi}  E_z E_{x_1..K ~ p(x|z)} [ sum_k l(f(x_k; h(theta, phi; x_1..K)), y_k) ]

- `ERM`: no adaptation, ``h(theta; x) = theta``; the model runs in its ordinary train/eval
  mode (batch norm with running statistics). With groups drawn uniformly this is UW
  (upweighting); with the ``group_dro`` combiner, group DRO.
- `ARMBN`: ``h`` replaces every batch norm's statistics with those of the group's batch
  (``TaskBatchNorm``), in training as at test.
- `ARMCML`: ``h`` averages a context network's per-example outputs over the batch,
  ``c = 1/K sum_k g(x_k; phi)``, and the model sees ``c`` as extra input channels.
- `ARMLL`: ``h`` takes ``inner_steps`` gradient steps on a learned unsupervised loss of the
  batch's logits, ``theta' = theta - alpha grad_theta L(f(x_1..K; theta); phi)``,
  differentiated through (second order) in meta-training.

Test time: ``learner.adapt(unlabelled_x)`` returns a `Predictor` for that group;
``learner.stream()`` returns a `GroupStream` whose adaptation is updated as batches of one
group arrive one at a time (see each method's stream for what it keeps).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn
from torch.func import functional_call

from metalab.algorithms.base import MetaLearner, Predictor
from metalab.functional import inner_loop
from metalab.nn.arm import (
    ChannelStatistics,
    ContextNet,
    LearnedLoss,
    task_norm_layers,
    task_norm_statistics,
)
from metalab.tasks import TaskBatch
from metalab.tasks.source import check_positive_int

Statistics = dict[str, ChannelStatistics]


# -- shared helpers -------------------------------------------------------------------------


@contextmanager
def evaluation_mode(module: nn.Module) -> Iterator[None]:
    """``module.eval()`` within the block, its previous mode restored afterwards."""
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


def check_group_inputs(name: str, x) -> Tensor:
    """``x`` must be a floating tensor ``[batch, ...]`` with at least one example."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() < 2 or x.shape[0] < 1:
        raise ValueError(f"{name} must have shape [batch >= 1, ...] (one group's inputs), "
                         f"got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must hold floating-point inputs, got {x.dtype}")
    return x


def check_task_batch(batch) -> TaskBatch:
    if not isinstance(batch, TaskBatch):
        raise TypeError(f"batch must be a TaskBatch, got {type(batch).__name__}")
    return batch


def same_inputs(a: Tensor, b: Tensor) -> bool:
    """Whether ``a`` and ``b`` hold the same values (the query set is the support set)."""
    return a is b or (a.shape == b.shape and torch.equal(a, b))


def per_task(outputs: Tensor, labels: Tensor, loss_fn: Callable, metric_fn: Callable
             ) -> tuple[Tensor, Tensor]:
    """Loss and metric of every task from outputs ``[T, N, ...]`` and labels ``[T, N]``."""
    losses = torch.stack([loss_fn(outputs[t], labels[t]) for t in range(len(outputs))])
    metric = torch.stack([metric_fn(outputs[t], labels[t]) for t in range(len(outputs))])
    return losses, metric.detach()


def scored(learner: MetaLearner, outputs: Tensor, labels: Tensor, training: bool
           ) -> tuple[Tensor, dict[str, Tensor]]:
    """`task_losses`'s result from the query outputs: per-task losses (detached unless
    ``training``) and the learner's metric."""
    losses, metric = per_task(outputs, labels, learner.loss_fn, learner.metric_fn)
    return (losses if training else losses.detach()), {learner.metric_name: metric}


class GroupStream:
    """Adaptation to one group from batches that arrive one at a time.

    ``update(x_batch)`` folds a batch of the group's unlabelled inputs into the adaptation
    (returns ``self``); ``stream(x)`` predicts with the current adaptation; ``count`` is the
    number of examples seen. Subclasses implement `_absorb` and `_predict`.
    """

    requires_update = True

    def __init__(self, learner: MetaLearner) -> None:
        self.learner = learner
        self.count = 0
        self._example_shape: tuple[int, ...] | None = None

    def update(self, x_batch: Tensor) -> GroupStream:
        check_group_inputs("x_batch", x_batch)
        shape = tuple(x_batch.shape[1:])
        if self._example_shape is not None and shape != self._example_shape:
            raise ValueError(f"x_batch holds examples of shape {shape} but the stream's earlier "
                             f"batches had {self._example_shape}")
        self._example_shape = shape
        with evaluation_mode(self.learner):
            self._absorb(x_batch)
        self.count += x_batch.shape[0]
        return self

    @torch.no_grad()
    def __call__(self, x: Tensor) -> Tensor:
        check_group_inputs("x", x)
        if self.requires_update and self.count == 0:
            raise RuntimeError("the stream has not seen the group yet: call update(x_batch) "
                               "with at least one batch of its inputs before predicting")
        with evaluation_mode(self.learner):
            return self._predict(x)

    def _absorb(self, x_batch: Tensor) -> None:
        raise NotImplementedError

    def _predict(self, x: Tensor) -> Tensor:
        raise NotImplementedError


def _predictor(learner: nn.Module, forward: Callable[[Tensor], Tensor]) -> Predictor:
    """A `Predictor` that runs ``forward`` with ``learner`` in eval mode."""

    def predict(x: Tensor) -> Tensor:
        check_group_inputs("x", x)
        with evaluation_mode(learner):
            return forward(x)

    return Predictor(predict)


# -- ERM --------------------------------------------------------------------------------------


class ERM(MetaLearner):
    """Empirical risk minimization: each task's loss on its query set, no adaptation.

    All tasks of a batch go through the model as one batch (as a minibatch of the
    official code), so ordinary batch norm pools its training statistics over the groups
    of the meta-batch and uses running statistics in `eval()`. This learner is ERM with a
    sampler drawing groups in proportion to their frequency, UW with a uniform sampler and
    group DRO with the ``group_dro`` combiner (Sagawa et al. 2020).
    """

    def __init__(self, model: nn.Module, loss: str = "cross_entropy") -> None:
        super().__init__(loss)
        self.model = model

    def task_losses(self, batch: TaskBatch, training: bool = True
                    ) -> tuple[Tensor, dict[str, Tensor]]:
        check_task_batch(batch)
        tasks, size = batch.query_x.shape[:2]
        with torch.set_grad_enabled(training and torch.is_grad_enabled()):
            outputs = self.model(batch.query_x.flatten(0, 1))
            outputs = outputs.view(tasks, size, *outputs.shape[1:])
            return scored(self, outputs, batch.query_y, training)

    def adapt(self, support_x: Tensor | None = None, support_y: Tensor | None = None
              ) -> Predictor:
        """The model itself, in eval mode: ERM does not adapt (both arguments are ignored)."""
        if support_x is not None:
            check_group_inputs("support_x", support_x)
        return _predictor(self, self.model)

    def stream(self) -> GroupStream:
        return _ERMStream(self)


class _ERMStream(GroupStream):
    requires_update = False

    def _absorb(self, x_batch: Tensor) -> None:
        pass

    def _predict(self, x: Tensor) -> Tensor:
        return self.learner.model(x)


# -- ARM-BN -----------------------------------------------------------------------------------


def record_statistics(model: nn.Module, x: Tensor, params: dict[str, Tensor] | None = None
                      ) -> tuple[Tensor, Statistics]:
    """Outputs of ``model`` on ``x`` normalized by ``x``'s own statistics, and those statistics."""
    statistics: Statistics = {}
    with task_norm_statistics(model, "record", statistics):
        outputs = model(x) if params is None else functional_call(model, params, (x,))
    return outputs, statistics


def apply_statistics(model: nn.Module, x: Tensor, statistics: Statistics,
                     params: dict[str, Tensor] | None = None) -> Tensor:
    """Outputs of ``model`` on ``x`` with every `TaskBatchNorm` using ``statistics``."""
    with task_norm_statistics(model, "apply", statistics):
        return model(x) if params is None else functional_call(model, params, (x,))


def predict_from_support(model: nn.Module, support_x: Tensor, query_x: Tensor,
                         params: dict[str, Tensor] | None = None) -> Tensor:
    """Outputs on ``query_x`` with batch-norm statistics taken from ``support_x``."""
    if same_inputs(query_x, support_x):
        with task_norm_statistics(model, "batch", {}):
            return model(query_x) if params is None else functional_call(model, params,
                                                                         (query_x,))
    _, statistics = record_statistics(model, support_x, params)
    return apply_statistics(model, query_x, statistics, params)


class ARMBN(MetaLearner):
    """ARM-BN: batch norm with the statistics of the group's batch, trained so.

    Every `TaskBatchNorm` layer of ``model`` normalizes with the mean and variance of the
    group's unlabelled batch (Zhang et al. 2021, sec. 4: the adaptation ``h`` replaces the
    batch-norm statistics; meta-training uses one group per batch). Predictions on other
    inputs of the group use the statistics recorded on that batch.

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

    def task_losses(self, batch: TaskBatch, training: bool = True
                    ) -> tuple[Tensor, dict[str, Tensor]]:
        check_task_batch(batch)
        with torch.set_grad_enabled(training and torch.is_grad_enabled()):
            outputs = torch.stack([predict_from_support(self.model, batch.support_x[t],
                                                        batch.query_x[t])
                                   for t in range(len(batch))])
            return scored(self, outputs, batch.query_y, training)

    @torch.no_grad()
    def adapt(self, support_x: Tensor, support_y: Tensor | None = None) -> Predictor:
        """Record the batch-norm statistics of ``support_x``; ``support_y`` is ignored."""
        check_group_inputs("support_x", support_x)
        with evaluation_mode(self):
            _, statistics = record_statistics(self.model, support_x)
        return _predictor(self, lambda x: apply_statistics(self.model, x, statistics))

    def stream(self) -> GroupStream:
        return _BNStream(self)


class _BNStream(GroupStream):
    """Batch-norm statistics pooled over the batches seen (count-weighted, exact pooling).

    Layer by layer, each new batch's statistics are merged into the pooled ones and the
    batch is normalized with the merged statistics before it reaches the next layer. The
    first batch-norm layer's statistics equal those of the union of the batches exactly;
    deeper layers see earlier batches as they were normalized when they arrived, so for
    several batches they approximate the union's (exact when the batches are identical).
    One batch gives exactly `ARMBN.adapt`.
    """

    def __init__(self, learner: ARMBN) -> None:
        super().__init__(learner)
        self.statistics: Statistics = {}

    @torch.no_grad()
    def _absorb(self, x_batch: Tensor) -> None:
        with task_norm_statistics(self.learner.model, "pool", self.statistics):
            self.learner.model(x_batch)

    def _predict(self, x: Tensor) -> Tensor:
        return apply_statistics(self.learner.model, x, self.statistics)


# -- ARM-CML ----------------------------------------------------------------------------------


def _first_conv_channels(model: nn.Module) -> int | None:
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            return module.in_channels
    return None


class ARMCML(MetaLearner):
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

    def predict_with_context(self, x: Tensor, context: Tensor) -> Tensor:
        """``model([x, c])`` for a batch ``x [B, C, H, W]`` and one context ``[C_ctx, H, W]``."""
        expanded = context.unsqueeze(0).expand(x.shape[0], *context.shape)
        return self.model(torch.cat([x, expanded], dim=1))

    def task_losses(self, batch: TaskBatch, training: bool = True
                    ) -> tuple[Tensor, dict[str, Tensor]]:
        check_task_batch(batch)
        tasks, support = batch.support_x.shape[:2]
        queries = batch.query_x.shape[1]
        with torch.set_grad_enabled(training and torch.is_grad_enabled()):
            contexts = self.context_net(batch.support_x.flatten(0, 1))
            contexts = contexts.view(tasks, support, *contexts.shape[1:]).mean(dim=1)
            expanded = contexts.unsqueeze(1).expand(tasks, queries, *contexts.shape[1:])
            inputs = torch.cat([batch.query_x, expanded], dim=2).flatten(0, 1)
            outputs = self.model(inputs)
            outputs = outputs.view(tasks, queries, *outputs.shape[1:])
            return scored(self, outputs, batch.query_y, training)

    @torch.no_grad()
    def adapt(self, support_x: Tensor, support_y: Tensor | None = None) -> Predictor:
        """Compute the group's context from ``support_x``; ``support_y`` is ignored."""
        check_group_inputs("support_x", support_x)
        with evaluation_mode(self):
            context = self.context(support_x)
        return _predictor(self, lambda x: self.predict_with_context(x, context))

    def stream(self) -> GroupStream:
        return _CMLStream(self)


class _CMLStream(GroupStream):
    """The count-weighted running mean of the contexts: equal to the union's context."""

    def __init__(self, learner: ARMCML) -> None:
        super().__init__(learner)
        self.context: Tensor | None = None

    @torch.no_grad()
    def _absorb(self, x_batch: Tensor) -> None:
        batch_context = self.learner.context(x_batch)
        if self.context is None:
            self.context = batch_context
            return
        weight = x_batch.shape[0] / (self.count + x_batch.shape[0])
        self.context = self.context + (batch_context - self.context) * weight

    def _predict(self, x: Tensor) -> Tensor:
        return self.learner.predict_with_context(x, self.context)


# -- ARM-LL -----------------------------------------------------------------------------------


class ARMLL(MetaLearner):
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

    def _learned_loss(self, outputs: Tensor, _unlabelled: None) -> Tensor:
        return self.loss_net(outputs)

    def _params(self, training: bool) -> dict[str, Tensor]:
        params = dict(self.model.named_parameters())
        if training:
            return params
        return {n: p.detach().requires_grad_(True) for n, p in params.items()}

    def adapted_parameters(self, support_x: Tensor, training: bool) -> dict[str, Tensor]:
        """``theta'`` after the inner steps on the learned loss of ``support_x``."""
        with torch.enable_grad(), task_norm_statistics(self.model, "batch", {}):
            return inner_loop(self.model, self._params(training), support_x, None,
                              self._learned_loss,
                              steps=self.inner_steps if training else self.eval_inner_steps,
                              step_size=self.inner_lr,
                              first_order=self.first_order or not training)

    def task_losses(self, batch: TaskBatch, training: bool = True
                    ) -> tuple[Tensor, dict[str, Tensor]]:
        check_task_batch(batch)
        outputs = []
        for t in range(len(batch)):
            support_x, query_x = batch.support_x[t], batch.query_x[t]
            adapted = self.adapted_parameters(support_x, training)
            if not training:
                adapted = {n: p.detach() for n, p in adapted.items()}
            with torch.set_grad_enabled(training and torch.is_grad_enabled()):
                outputs.append(predict_from_support(self.model, support_x, query_x, adapted))
        with torch.set_grad_enabled(training and torch.is_grad_enabled()):
            return scored(self, torch.stack(outputs), batch.query_y, training)

    def _adapted_predictor(self, support_x: Tensor) -> Callable[[Tensor], Tensor]:
        adapted = {n: p.detach() for n, p in self.adapted_parameters(support_x, False).items()}
        with torch.no_grad():
            _, statistics = record_statistics(self.model, support_x, adapted)
        return lambda x: apply_statistics(self.model, x, statistics, adapted)

    def adapt(self, support_x: Tensor, support_y: Tensor | None = None) -> Predictor:
        """Take the inner steps on ``support_x``'s learned loss; ``support_y`` is ignored."""
        check_group_inputs("support_x", support_x)
        with evaluation_mode(self):
            forward = self._adapted_predictor(support_x)
        return _predictor(self, forward)

    def stream(self) -> GroupStream:
        return _LLStream(self)


class _LLStream(GroupStream):
    """Re-adapts from the meta-learned parameters on all inputs seen so far.

    The learned loss was meta-trained for ``inner_steps`` steps from ``theta`` on one batch,
    so rather than continuing to step from the previous adapted parameters (a regime it was
    not trained for), every update adapts ``theta`` afresh to the union of the batches:
    ``k`` updates equal `ARMLL.adapt` on their concatenation. The stream keeps the inputs
    it has seen (memory grows with them).
    """

    def __init__(self, learner: ARMLL) -> None:
        super().__init__(learner)
        self.inputs: Tensor | None = None
        self._forward: Callable[[Tensor], Tensor] | None = None

    def _absorb(self, x_batch: Tensor) -> None:
        x_batch = x_batch.detach()
        self.inputs = x_batch if self.inputs is None else torch.cat([self.inputs, x_batch])
        self._forward = self.learner._adapted_predictor(self.inputs)

    def _predict(self, x: Tensor) -> Tensor:
        return self._forward(x)


__all__ = [
    "ARMBN",
    "ARMCML",
    "ARMLL",
    "ERM",
    "GroupStream",
    "evaluation_mode",
    "predict_from_support",
]
