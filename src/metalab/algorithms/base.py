"""The `MetaLearner` contract shared by every method: adapt to a task, then predict.

A method implements two pure functions of one task:

- ``adapt_task(support_x, support_y, *, training, **options) -> state``: what it takes from
  the support set (adapted parameters, prototypes, a context, batch-norm statistics ...);
  ``training=True`` keeps the graph to the meta-parameters, ``False`` is meta-test;
- ``predict(state, x) -> outputs``: logits or predictions for inputs of that task.

The base class derives everything else from them, once:

- ``task_losses(batch, training=True, **options) -> (losses [T], {metric: [T]})``: the query
  loss and metric of every task. Training maps ``adapt_task``/``predict`` over the tasks
  (a loop or `torch.func.vmap`, ``strategy``); evaluation goes through `adapt`, the path a
  user calls, so "adapt then predict" exists once per method. Methods that must see the
  whole batch of tasks at once in training (ERM, ARM-CML: ordinary batch norm pools over
  the groups of a meta-batch) override `training_task_losses` only;
- ``meta_loss(batch)`` and ``meta_backward(batch, task_chunk)``: the mean query loss plus
  `regularizer`, and its gradient chunk by chunk;
- ``adapt(support_x, support_y=None, **options) -> Predictor``: meta-test adaptation, in
  eval mode and without a graph; ``options`` are evaluation options such as
  ``inner_steps`` (the names a method accepts are its ``adapt_options``).

Facts a builder needs are class attributes, not names checked elsewhere: ``model_role``,
``chooses_adapted_parameters``, ``adapts_to_support``, ``adapt_options``,
``outer_update_is_loss_gradient``, ``writes_whole_update``, and the class methods
`extra_input_channels` and `options_from_data`. A method whose outer step is not a loss
gradient overrides `meta_backward` to write its update direction into ``.grad`` (the
trainer's optimizer step then applies it) and sets ``outer_update_is_loss_gradient =
False``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.utils import _pytree as pytree

from metalab.algorithms.calibration import calibration_bins, negative_log_likelihood
from metalab.algorithms.stream import AdaptationStream
from metalab.functional import check_strategy, map_tasks
from metalab.tasks import TaskBatch
from metalab.tasks.objective import Objective, objective_for

State = Any


def support_ways(support_y: Tensor, ways: int | None) -> int:
    """``ways`` as given (the batch's number of classes), else the largest support label + 1
    (a user's `adapt` call)."""
    return int(support_y.max()) + 1 if ways is None else ways


class Predictor:
    """A model adapted to one task: ``predictor(x)`` returns logits or predictions."""

    def __init__(self, forward: Callable[[Tensor], Tensor]) -> None:
        self._forward = forward

    @torch.no_grad()
    def __call__(self, x: Tensor) -> Tensor:
        return self._forward(x)


class CategoricalPredictive(Predictor):
    """A classifier adapted to one task that also gives class probabilities.

    ``predictor(x)`` returns outputs whose cross-entropy is the loss (logits, or the
    log-probabilities of a mixture); ``predictor.probabilities(x)`` returns ``[m, classes]``
    probabilities. `from_logits` is the softmax of a single network's logits.
    """

    def __init__(self, forward: Callable[[Tensor], Tensor],
                 probabilities: Callable[[Tensor], Tensor],
                 probabilities_of_outputs: Callable[[Tensor], Tensor] | None = None) -> None:
        super().__init__(forward)
        self._probabilities = probabilities
        self._probabilities_of_outputs = probabilities_of_outputs

    @classmethod
    def from_logits(cls, forward: Callable[[Tensor], Tensor]) -> CategoricalPredictive:
        return cls(forward, lambda x: torch.softmax(forward(x), dim=-1),
                   probabilities_of_outputs=lambda logits: torch.softmax(logits, dim=-1))

    @torch.no_grad()
    def probabilities(self, x: Tensor, outputs: Tensor | None = None) -> Tensor:
        """Class probabilities ``[m, classes]`` of ``x``. ``outputs``: ``predictor(x)``,
        when already computed; if the probabilities are a function of the outputs
        (`from_logits`: their softmax) they are taken from it instead of running the
        model again (the same numbers: the forward pass is deterministic)."""
        if outputs is not None and self._probabilities_of_outputs is not None:
            return self._probabilities_of_outputs(outputs)
        return self._probabilities(x)


@contextmanager
def evaluation_mode(module: nn.Module) -> Iterator[None]:
    """``module.eval()`` within the block, its previous mode restored afterwards."""
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


def detached(state: State) -> State:
    """``state`` with every tensor detached (other leaves, such as functions, kept)."""
    return pytree.tree_map(lambda v: v.detach() if isinstance(v, Tensor) else v, state)


def embedding_dimension(model: nn.Module, embedding_dim: int | None, needed_by: str) -> int:
    """D, the size of ``model``'s embedding: ``embedding_dim`` when given, else the
    ``feature_dim`` the model declares; ``needed_by`` names what needs it in the error."""
    dim = embedding_dim if embedding_dim is not None else getattr(model, "feature_dim", None)
    if not isinstance(dim, int):
        raise ValueError(f"{needed_by} needs embedding_dim (the model {type(model).__name__} "
                         f"declares no feature_dim)")
    return dim


def parameters_for(module: nn.Module, training: bool) -> dict[str, Tensor]:
    """``module``'s parameters as the start of an inner loop: the parameters themselves in
    meta-training (the graph reaches them); detached leaves at meta-test."""
    params = dict(module.named_parameters())
    if training:
        return params
    return {n: p.detach().requires_grad_(True) for n, p in params.items()}


#: Every method with a registered name: ``class Reptile(MetaLearner, name="reptile")``.
REGISTRY: dict[str, type[MetaLearner]] = {}


def probability_scores(probabilities: Iterable[Tensor], query_y: Tensor) -> dict[str, Tensor]:
    """Per task ``nll`` ``[T]`` and ``calibration_bins`` ``[T, bins, 3]`` of each task's
    query class probabilities ``[m, classes]`` (`metalab.algorithms.calibration`)."""
    nll, bins = [], []
    for t, p in enumerate(probabilities):
        nll.append(negative_log_likelihood(p, query_y[t]))
        bins.append(calibration_bins(p, query_y[t]))
    return {"nll": torch.stack(nll), "calibration_bins": torch.stack(bins)}


class MetaLearner(nn.Module):
    """Base class. Subclasses implement `adapt_task` and `predict` (see the module doc).

    A subclass declared with a name (``class MatchingNet(MetaLearner, name="matching")``)
    is registered: configs and the CLI find it as ``algorithm.name: matching``.
    """

    def __init_subclass__(cls, name: str | None = None, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if name is not None:
            if name in REGISTRY and REGISTRY[name] is not cls:
                raise ValueError(f"algorithm name {name!r} is taken by "
                                 f"{REGISTRY[name].__qualname__}")
            REGISTRY[name] = cls

    #: ``"predictor"``: the model maps inputs to outputs; ``"embedding"``: to features
    #: (the builder then asks the model for no output layer).
    model_role: ClassVar[str] = "predictor"
    #: Whether an inner loop adapts a chosen subset of the model's parameters (the
    #: ``adapt`` option names them; the builder leaves MSR's sharing matrices out).
    chooses_adapted_parameters: ClassVar[bool] = False
    #: Whether predictions depend on the support set (ERM and multi-task: no).
    adapts_to_support: ClassVar[bool] = True
    #: Keyword options `adapt_task` accepts (evaluation options and task sizes).
    adapt_options: ClassVar[tuple[str, ...]] = ()
    #: Whether the outer update is the gradient of `meta_loss`. ``False``: the method's
    #: `meta_backward` writes its own update direction into ``.grad`` (Reptile's
    #: ``phi - phi_i``), so per-task loss gradients (combiners, diagnostics) do not apply.
    outer_update_is_loss_gradient: ClassVar[bool] = True
    #: Whether the direction `meta_backward` writes into ``.grad`` is already the whole
    #: update (``theta <- theta - grad``; a trust-region step that ended in a line search),
    #: so the trainer must apply it unchanged: plain SGD at learning rate 1, no schedule, no
    #: clipping. A method may set it per instance when an option decides it.
    writes_whole_update: bool = False

    def __init__(self, loss: str = "cross_entropy", strategy: str = "loop") -> None:
        super().__init__()
        self.objective: Objective = objective_for(loss)
        self.strategy = check_strategy(strategy)
        self._compiled_task_losses: Callable | None = None

    # -- facts for builders ------------------------------------------------------------
    @classmethod
    def extra_input_channels(cls, options: dict[str, Any]) -> int:
        """Channels the method appends to the data's inputs (ARM-CML's context)."""
        return 0

    @classmethod
    def options_from_data(cls, options: dict[str, Any], sizes: dict[str, Any]
                          ) -> dict[str, Any]:
        """``options`` completed with what the data determine (e.g. the image channels)."""
        return options

    # -- the objective -------------------------------------------------------------------
    @property
    def loss_name(self) -> str:
        return self.objective.loss_name

    @property
    def metric_name(self) -> str:
        return self.objective.metric_name

    def loss_fn(self, outputs: Tensor, targets: Tensor) -> Tensor:
        return self.objective.loss(outputs, targets)

    def metric_fn(self, outputs: Tensor, targets: Tensor) -> Tensor:
        return self.objective.metric(outputs, targets)

    def score(self, outputs: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        """``(loss, metric)`` of one task's outputs under the learner's objective."""
        return self.loss_fn(outputs, targets), self.metric_fn(outputs, targets)

    # -- the contract ----------------------------------------------------------------------
    def adapt_task(self, support_x: Tensor, support_y: Tensor | None, *, training: bool,
                   **options) -> State:
        raise NotImplementedError

    def predict(self, state: State, x: Tensor) -> Tensor:
        raise NotImplementedError

    def task_options(self, batch: TaskBatch) -> dict[str, Any]:
        """Options of `adapt_task` that a batch determines: its number of classes for a
        method that takes ``ways`` (the metric learners)."""
        if "ways" not in self.adapt_options:
            return {}
        if batch.num_classes is None:
            raise ValueError(f"{type(self).__name__} needs a classification TaskBatch "
                             f"(num_classes is None)")
        return {"ways": batch.num_classes}

    # -- derived: training -----------------------------------------------------------------
    def task_losses(self, batch: TaskBatch, training: bool = True, **options
                    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Query loss and metric of every task after adapting to its support set.

        ``options`` (evaluation options such as ``inner_steps``) apply at meta-test only.
        """
        if not isinstance(batch, TaskBatch):
            raise TypeError(f"batch must be a TaskBatch, got {type(batch).__name__}")
        if training:
            if options:
                raise TypeError(f"evaluation options {sorted(options)} apply at meta-test "
                                f"only (training=False)")
            return self.training_task_losses(batch)
        return self.evaluation_task_losses(batch, **options)

    def training_task_losses(self, batch: TaskBatch) -> tuple[Tensor, dict[str, Tensor]]:
        """Differentiable per-task query losses: `adapt_task` then `predict`, task by task."""
        return self.map_adapt_predict(batch, self.adapt_task, self.predict)

    def map_adapt_predict(self, batch: TaskBatch, adapt_task: Callable[..., State],
                          predict: Callable[[State, Tensor], Tensor],
                          strategy: str | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """Per-task ``(loss, metric)`` of ``predict(adapt_task(support), query)`` with
        ``training=True``, over the tasks of ``batch`` with ``strategy`` (default: the
        learner's)."""
        options = self.task_options(batch)

        def per_task(sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor):
            state = adapt_task(sx, sy, training=True, **options)
            return self.score(predict(state, qx), qy)

        losses, metric = map_tasks(per_task, batch.support_x, batch.support_y, batch.query_x,
                                   batch.query_y, strategy=strategy or self.strategy)
        return losses, {self.metric_name: metric.detach()}

    def compile(self, **options) -> MetaLearner:
        """Compile the meta-training pass with `torch.compile` (``options`` go to it).

        Same numbers (tested in float64); for small models, where the step is bound by
        Python and dispatch overhead, it is several times faster after a one-off compile.
        Evaluation and `adapt` stay eager.
        """
        self._compiled_task_losses = torch.compile(self.training_task_losses, **options)
        return self

    def training_losses(self, batch: TaskBatch) -> tuple[Tensor, dict[str, Tensor]]:
        """`training_task_losses`, through `compile` when it was called."""
        return (self._compiled_task_losses or self.training_task_losses)(batch)

    def set_training_progress(self, step: int, total_steps: int) -> None:
        """Told by the trainer before every meta-iteration: ``step`` iterations are done,
        of ``total_steps``. A method whose training changes with progress (an annealed
        loss, first-order then second-order meta-gradients) derives it from these two
        numbers, so a resumed run continues exactly; the default ignores them."""

    def shared_parameter_names(self) -> list[str]:
        """Parameters every task shares (a gradient combiner's ``combine_params="shared"``).

        All trainable parameters by default; multi-task learners exclude per-task heads.
        """
        return [n for n, p in self.named_parameters() if p.requires_grad]

    def regularizer(self) -> Tensor | None:
        """A term of the meta-parameters alone, added once per meta-batch to the task loss.

        ``None`` (the default) adds nothing. Meta-regularization (MR-MAML's
        ``beta * KL(q || p)``) overrides it; the trainer adds it whichever way the tasks
        are combined, and `regularizer_metrics` names it in the logs.
        """
        return None

    def regularizer_metrics(self) -> dict[str, float]:
        """Extra logged values that explain `regularizer` (e.g. the KL itself)."""
        return {}

    def meta_loss(self, batch: TaskBatch) -> tuple[Tensor, dict[str, float]]:
        """Mean query loss over the tasks of ``batch`` plus `regularizer`, differentiable
        w.r.t. the parameters."""
        losses, metrics = self.training_losses(batch)
        loss = losses.mean()
        summary = {name: values.mean().item() for name, values in metrics.items()}
        regularizer = self.regularizer()
        if regularizer is not None:
            summary["query_loss"] = loss.item()
            summary.update(self.regularizer_metrics())
            loss = loss + regularizer
        summary["loss"] = loss.item()
        return loss, summary

    def meta_backward(self, batch: TaskBatch, task_chunk: int | None = None,
                      scale: float = 1.0) -> dict[str, float]:
        """Accumulate ``scale`` times the meta-gradient of ``batch`` into ``.grad``.

        The tasks are back-propagated in chunks of at most ``task_chunk`` (``None``: all at
        once), so peak memory holds one chunk's graph; the gradient is the same.
        Returns the task-weighted mean metrics.
        """
        metrics: dict[str, float] = {}
        for chunk in batch.chunks(task_chunk):
            weight = len(chunk) / len(batch)
            loss, chunk_metrics = self.meta_loss(chunk)
            (loss * (scale * weight)).backward()
            for name, value in chunk_metrics.items():
                metrics[name] = metrics.get(name, 0.0) + weight * value
        return metrics

    # -- derived: meta-test ------------------------------------------------------------------
    def check_adapt_options(self, options: dict[str, Any]) -> dict[str, Any]:
        """``options`` without ``None`` values; an option the method lacks is an error."""
        options = {k: v for k, v in options.items() if v is not None}
        unknown = sorted(set(options) - set(self.adapt_options))
        if unknown:
            accepted = list(self.adapt_options) or "none"
            raise ValueError(f"{type(self).__name__} does not take the adaptation option(s) "
                             f"{unknown}; it accepts: {accepted}")
        return options

    def adapt(self, support_x: Tensor, support_y: Tensor | None = None, **options
              ) -> Predictor:
        """Adapt to one task at meta-test (eval mode, no graph) and return its predictor.

        ``support_y`` may be ``None`` for methods that adapt from unlabelled inputs (ARM).
        """
        options = self.check_adapt_options(options)
        with evaluation_mode(self), torch.no_grad():
            state = detached(self.adapt_task(support_x, support_y, training=False, **options))

        def forward(x: Tensor) -> Tensor:
            with evaluation_mode(self):
                return self.predict(state, x)

        if self.loss_name == "cross_entropy":  # the outputs are logits: softmax probabilities
            return CategoricalPredictive.from_logits(forward)
        return Predictor(forward)

    def evaluation_task_losses(self, batch: TaskBatch, **options
                               ) -> tuple[Tensor, dict[str, Tensor]]:
        """Per-task query loss and metric at meta-test, each task through `adapt`; when the
        predictor gives class probabilities, also the per-task ``nll`` and the
        ``calibration_bins`` the evaluator pools into the expected calibration error."""
        options = {**self.task_options(batch), **options}
        predictors = [self.adapt(batch.support_x[t], batch.support_y[t], **options)
                      for t in range(len(batch))]
        outputs = [predictor(batch.query_x[t]) for t, predictor in enumerate(predictors)]
        losses, metrics = self.stacked_scores(zip(outputs, batch.query_y, strict=True))
        if all(isinstance(p, CategoricalPredictive) for p in predictors):
            metrics.update(probability_scores(
                (p.probabilities(batch.query_x[t], outputs[t]) for t, p in enumerate(predictors)),
                batch.query_y))
        return losses, metrics

    def network_output_scores(self, outputs: Tensor, query_y: Tensor
                              ) -> tuple[Tensor, dict[str, Tensor]]:
        """What `evaluation_task_losses` reports, from one network's outputs ``[T, Nq, ...]``
        on the query sets, computed without `adapt` (a method's batched evaluation): the
        per-task loss and metric, and under cross-entropy (the outputs are logits, as in
        `adapt`'s predictor) the ``nll`` and ``calibration_bins`` of their softmax."""
        losses, metrics = self.stacked_scores(zip(outputs, query_y, strict=True))
        if self.loss_name == "cross_entropy":
            metrics.update(probability_scores(torch.softmax(outputs, dim=-1), query_y))
        return losses, metrics

    def stacked_scores(self, outputs_and_targets: Iterable[tuple[Tensor, Tensor]]
                       ) -> tuple[Tensor, dict[str, Tensor]]:
        """Per-task losses and the (detached) metric from one ``(outputs, targets)`` pair per
        task."""
        losses, metric = zip(*(self.score(o, y) for o, y in outputs_and_targets), strict=True)
        return torch.stack(losses), {self.metric_name: torch.stack(metric).detach()}

    def stream(self) -> AdaptationStream:
        """Adaptation to one task from batches of its inputs arriving one by one."""
        return AdaptationStream(self)
