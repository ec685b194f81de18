"""Learning to learn by gradient descent by gradient descent (Andrychowicz et al. 2016).

The meta-parameters are those of an update rule ``m_phi`` (`LSTMOptimizer`: the paper's
coordinatewise two-layer LSTM); a task is an optimisation problem ``f`` (its support set,
see `metalab.tasks.optimization_problems`), and the optimizee ``theta`` starts from a fresh
initialisation of the model for every task. The per-task loss is the optimizee's loss
along the unrolled trajectory (eq. 3 with ``w_t = 1 / T``):

    L(phi) = (1/T) sum_{t=1}^{T} f_t(theta_t),
    theta_{t+1} = theta_t + g_t,   [g_t; h_{t+1}] = m(grad f_t(theta_t), h_t, phi)

where ``f_t`` is ``f`` on the ``t``-th minibatch of the support set (``minibatch``
examples, taken in turn; ``None``: all of them) and ``T`` is the ``horizon``. As in the
paper, the optimizee's gradients are the optimizer's inputs: no second derivatives
(``grad f_t`` is computed without a graph), so ``dL/dphi`` flows only through the
``theta_t`` that the rule produced.

Truncated backpropagation (``truncation = K``): every ``K`` steps the trajectory's
parameters and the rule's state are detached, so the loss of step ``t`` in segment
``j = ceil(t / K) - 1`` reaches only the updates ``jK+1 .. t``. One meta-iteration runs
the whole horizon: `meta_backward` back-propagates each segment's part of ``L`` as soon as
the segment ends (memory holds one segment's graph) and accumulates the gradients, so the
trainer's one optimizer step applies the gradient of the whole truncated objective. The
paper instead takes a meta-optimizer step after every segment of the same trajectory;
here there is one step per horizon (fewer updates for the same compute, and no state
carried between meta-iterations, so checkpoints and resume stay exact).

At meta-test (`adapt`), the rule runs ``inner_steps`` steps (default ``eval_horizon``,
else ``horizon``) without a graph and the adapted parameters score the query set.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.func import functional_call

from metalab.algorithms.base import MetaLearner, detached
from metalab.functional import LSTMOptimizer
from metalab.tasks import TaskBatch
from metalab.validation import check_positive_int

Params = dict[str, Tensor]


def minibatch(step: int, x: Tensor, y: Tensor, size: int | None) -> tuple[Tensor, Tensor]:
    """The ``step``-th minibatch of ``size`` examples of every task's ``(x [T, N, ...],
    y [T, N, ...])``, taken in turn (wrapping around the end); ``None`` or ``size >= N``:
    all of them."""
    if size is None or size >= x.shape[1]:
        return x, y
    index = (torch.arange(size, device=x.device) + step * size) % x.shape[1]
    return x[:, index], y[:, index]


def fresh_parameters(model: nn.Module) -> Params:
    """A new initialisation of ``model``'s parameters (its ``reset_parameters``, else each
    submodule's), as tensors detached from ``model``."""
    fresh = copy.deepcopy(model)
    if hasattr(fresh, "reset_parameters"):
        fresh.reset_parameters()
    else:
        for module in fresh.modules():
            if module is not fresh and hasattr(module, "reset_parameters"):
                module.reset_parameters()
    return {n: p.detach() for n, p in fresh.named_parameters()}


def stacked_fresh_parameters(model: nn.Module, tasks: int) -> Params:
    """``tasks`` independent fresh initialisations, stacked on a leading task dimension."""
    draws = [fresh_parameters(model) for _ in range(tasks)]
    return {n: torch.stack([d[n] for d in draws]) for n in draws[0]}


class L2O(MetaLearner, name="l2o"):
    """A learned optimizer trained on optimisation problems (module docstring).

    Args:
        model: the optimizee's architecture (its parameters are re-initialised for every
            task and never trained by the outer loop).
        horizon: optimizee steps per task in meta-training (``T``; the paper: 100).
        truncation: steps between truncations of backpropagation (``K``; the paper: 20);
            ``truncation >= horizon``: none.
        minibatch: support examples per optimizee step (``None``: the whole support set).
        eval_horizon: steps at meta-test (default ``horizon``).
        hidden_size, preprocess, output_scale: the `LSTMOptimizer`'s (the paper: 20, 10,
            0.1).
        loss: the optimizee's loss, ``"mse"`` (quadratics) or ``"cross_entropy"``.
        strategy: ``"loop"`` only (tasks one after the other).
    """

    adapt_options = ("inner_steps",)

    def __init__(self, model: nn.Module, horizon: int = 100, truncation: int = 20,
                 minibatch: int | None = None, eval_horizon: int | None = None,
                 hidden_size: int = 20, preprocess: float | None = 10.0,
                 output_scale: float = 0.1, loss: str = "mse", strategy: str = "loop"
                 ) -> None:
        super().__init__(loss, strategy)
        if self.strategy != "loop":
            raise ValueError(f"l2o supports strategy='loop' only, got {strategy!r}")
        self.model = model.requires_grad_(False)
        self.horizon = check_positive_int("horizon", horizon)
        self.truncation = check_positive_int("truncation", truncation)
        self.minibatch = None if minibatch is None else check_positive_int("minibatch",
                                                                             minibatch)
        self.eval_horizon = self.horizon if eval_horizon is None else check_positive_int(
            "eval_horizon", eval_horizon)
        self.rule = LSTMOptimizer(hidden_size, preprocess, output_scale)

    # -- one optimizee step, for all tasks at once ---------------------------------------
    def optimizee_loss(self, params: Params, x: Tensor, y: Tensor) -> Tensor:
        """``f(theta)`` of one task."""
        return self.loss_fn(functional_call(self.model, params, (x,)), y)

    def task_losses_of(self, params: Params, x: Tensor, y: Tensor) -> Tensor:
        """``[T]`` losses of stacked parameters ``[T, ...]`` on stacked data."""
        return torch.func.vmap(self.optimizee_loss)(params, x, y)

    def _losses_and_gradients(self, params: Params, x: Tensor, y: Tensor, keep_graph: bool
                              ) -> tuple[Tensor, Params]:
        """``f(theta)`` of every task (with its graph to ``phi`` if ``keep_graph``) and
        ``grad f(theta)`` as plain inputs (no graph: second derivatives dropped). The tasks
        are independent, so the gradient of the sum is each task's own gradient."""
        with torch.enable_grad():
            if not keep_graph:
                params = {n: p.detach().requires_grad_(True) for n, p in params.items()}
            losses = self.task_losses_of(params, x, y)
            grads = torch.autograd.grad(losses.sum(), list(params.values()),
                                        retain_graph=keep_graph)
        return losses, dict(zip(params, grads, strict=True))

    # -- the trajectory ----------------------------------------------------------------
    def unroll(self, support_x: Tensor, support_y: Tensor, steps: int, *, training: bool,
               end_segment: Callable[[Tensor], None] | None = None,
               on_step: Callable[[int, Tensor], None] | None = None) -> Params:
        """Run the rule ``steps`` steps on every problem of the stacked support sets
        ``[T, N, ...]`` from fresh initialisations (the rule is coordinatewise, so the
        tasks' coordinates are one batch of coordinates to it).

        With ``training``, ``end_segment(part)`` receives each truncation segment's part
        of ``L(phi)`` (``[T]``, with its graph) when the segment ends; the parameters and
        rule state are then detached. ``on_step(t, losses)`` sees the ``[T]`` losses
        ``f_t(theta_t)``, ``t = 0 .. steps``. Returns ``theta_T`` stacked ``[T, ...]``.
        """
        params = stacked_fresh_parameters(self.model, support_x.shape[0])
        params = {n: p.to(support_x.dtype).requires_grad_(training) for n, p in params.items()}
        state = self.rule.init(params)
        segment = torch.zeros(support_x.shape[0], dtype=support_x.dtype,
                              device=support_x.device)
        for t in range(steps + 1):
            x, y = minibatch(t, support_x, support_y, self.minibatch)
            if t == steps:
                with torch.set_grad_enabled(training):
                    losses = self.task_losses_of(params, x, y)
            else:
                losses, grads = self._losses_and_gradients(params, x, y, keep_graph=training)
            if on_step is not None:
                on_step(t, losses.detach())
            if training and t > 0:
                segment = segment + losses / steps
            if t == steps:
                break
            if training and t > 0 and t % self.truncation == 0:
                end_segment(segment)
                segment = torch.zeros_like(segment)
                params = {n: p.detach().requires_grad_(True) for n, p in params.items()}
                state = detached(state)
            with torch.set_grad_enabled(training):
                params, state = self.rule.update(grads, state, params)
        if training:
            end_segment(segment)
        return params

    # -- the contract ------------------------------------------------------------------
    def adapt_task(self, support_x: Tensor, support_y: Tensor, *, training: bool,
                   inner_steps: int | None = None) -> Params:
        """``theta_T`` after the rule's steps on the problem of one support set."""
        if inner_steps is None:
            inner_steps = self.horizon if training else self.eval_horizon
        steps = check_positive_int("inner_steps", inner_steps)
        final = self.unroll(support_x.unsqueeze(0), support_y.unsqueeze(0), steps,
                            training=training, end_segment=lambda part: None)
        return {n: p[0] for n, p in final.items()}

    def predict(self, adapted: Params, x: Tensor) -> Tensor:
        return functional_call(self.model, adapted, (x,))

    def training_task_losses(self, batch: TaskBatch) -> tuple[Tensor, dict[str, Tensor]]:
        """``L(phi)`` of every task with the truncated graph kept whole (the same gradient
        `meta_backward` accumulates segment by segment), and the query metric of
        ``theta_T``."""
        parts: list[Tensor] = []
        final = self.unroll(batch.support_x, batch.support_y, self.horizon, training=True,
                            end_segment=parts.append)
        return torch.stack(parts).sum(0), {self.metric_name: self._query_metrics(final, batch)}

    def _query_metrics(self, final: Params, batch: TaskBatch) -> Tensor:
        """``[T]`` query metrics of the stacked final parameters."""
        with torch.no_grad():
            outputs = torch.func.vmap(self.predict)(detached(final), batch.query_x)
            return torch.stack([self.metric_fn(outputs[t], batch.query_y[t])
                                for t in range(len(batch))])

    def meta_backward(self, batch: TaskBatch, task_chunk: int | None = None,
                      scale: float = 1.0) -> dict[str, float]:
        """Accumulate ``scale`` times the gradient of the mean of ``L(phi)`` over the tasks,
        back-propagating each truncation segment when it ends (module docstring), for
        ``task_chunk`` tasks at a time (``None``: all)."""
        totals = {"loss": 0.0, self.metric_name: 0.0}

        def end_segment(part: Tensor) -> None:
            totals["loss"] += part.sum().item() / len(batch)
            (part.sum() * (scale / len(batch))).backward()

        for chunk in batch.chunks(task_chunk):
            final = self.unroll(chunk.support_x, chunk.support_y, self.horizon,
                                training=True, end_segment=end_segment)
            totals[self.metric_name] += self._query_metrics(final, chunk).sum().item() / len(
                batch)
        return totals
