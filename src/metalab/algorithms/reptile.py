"""Reptile (Nichol, Achiam & Schulman 2018, "On First-Order Meta-Learning Algorithms").

For each task ``tau_i`` of a meta-batch of ``n``, start from the meta-parameters ``phi`` and
take ``k`` steps of an optimizer on the task's loss (Algorithm 2, the batched version; the
serial Algorithm 1 is ``n = 1``):

    phi_i = U^k_{tau_i}(phi)                       k steps of SGD or Adam on tau_i's data
    phi  <- phi + eps * (1/n) sum_i (phi_i - phi)   the outer step

with the outer step size ``eps`` annealed linearly to 0 over training. The outer step is
not the gradient of a loss. Written as ``.grad = (1/n) sum_i (phi - phi_i)`` (the "Reptile
gradient") it is exactly one step of plain SGD with learning rate ``eps``, so the trainer
takes it like any meta-gradient: ``train.optimizer: sgd``, ``train.lr: eps``,
``train.lr_schedule: linear`` (``train.lr_final``, default 0, is where eps ends); the
accumulation runs task by task (``train.task_chunk`` changes nothing but the order of the
sums), checkpoints and several processes work unchanged (each process adds its share of
the mean and the gradients are summed). Feeding the same direction to Adam is the variant
the paper's blog post mentions (``train.optimizer: adam``).

The paper's details kept here:

- the inner optimizer is Adam with ``beta1 = 0`` (`Adam` below; ``inner_optimizer: sgd``
  gives plain SGD ``phi <- phi - alpha g``);
- in meta-training the inner loop trains on all of a task's examples (the support and the
  query sets concatenated; the paper samples more shots per class in meta-training than
  at test), in minibatches of ``inner_batch`` drawn without replacement epoch after epoch
  (``None``: the whole set every step);
- at meta-test (`adapt`) the same inner loop runs on the support set only, full batch,
  ``eval_inner_steps`` steps (the paper: 50).

Evaluation strategy: with ``strategy="loop"`` (the default) the evaluator adapts the
episodes of a batch one after the other through `adapt`; with ``strategy="vmap"`` it adapts
them together, ``torch.func.vmap`` over the episodes of the full-batch inner loop (the
engine's `inner_loop` with `func_gradients` and the same update-rule object), each episode
with its own batch-norm statistics and its own optimizer state: the same logits (tested
against the loop in float64; in float32 the two round differently, and 50 steps of Adam
with ``beta1 = 0`` amplify that to ~1e-3 in a query loss). Meta-training runs task by task
under either strategy. Which is faster depends on the threads (`benchmarks/
reptile_eval_strategy.py`, Conv4-64, 20 episodes of 50 steps, one process, shared 2-core
CPU): at one thread the loop (vmap takes 1.5x the loop's time at 5-way 1-shot, 2.1x at
20-way 1-shot; a profile of 3 steps at 20-way put the gap in the vmapped max-pooling,
2.5 s against 0.2 s, and the grouped convolutions, 1.8 s against 0.9 s forward). At two
threads on that oversubscribed machine vmap came out ahead (2.8x at 5-way, 1.4x at 20-way),
but both ran several times slower than at one thread. Hence ``"loop"`` stays the default.

Batch norm: metalab's `TaskBatchNorm` normalises every forward pass with the statistics
of the batch it is given, so the query set is scored as one batch normalised together:
the paper's *transductive* protocol. Its non-transductive protocol (each test example
scored together with the support set) is not implemented.

Differences from the released code (openai/supervised-reptile), said plainly: there the
inner Adam's moments and bias-correction counters persist from task to task in
meta-training (only the model's weights are reset); here every task's inner loop starts
from fresh Adam state, so each task's adaptation is a pure function of ``phi`` and its
data (the same at meta-training and meta-test).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import Tensor, nn
from torch.func import functional_call

from metalab.algorithms.base import MetaLearner, evaluation_mode
from metalab.functional import SGD, Adam, UpdateRule, func_gradients, inner_loop, map_tasks
from metalab.tasks import TaskBatch
from metalab.validation import check_choice, check_positive_int

Params = dict[str, Tensor]
INNER_OPTIMIZERS = ("adam", "sgd")


def minibatch_indices(size: int, batch: int | None, steps: int,
                      device: torch.device | None = None) -> Iterator[Tensor | slice]:
    """``steps`` minibatches of ``batch`` of ``size`` examples, drawn without replacement
    epoch after epoch (the concatenation of random permutations, cut into consecutive
    pieces; a batch may span two epochs). ``None`` or ``batch >= size``: every example at
    every step. Uses torch's global RNG (the trainer checkpoints it)."""
    if batch is None or batch >= size:
        for _ in range(steps):
            yield slice(None)
        return
    epochs = math.ceil(steps * batch / size)
    # drawn from the CPU generator (same minibatches on every device), then moved
    order = torch.cat([torch.randperm(size, device="cpu") for _ in range(epochs)]).to(device)
    for step in range(steps):
        yield order[step * batch:(step + 1) * batch]


class Reptile(MetaLearner, name="reptile"):
    """Reptile: move the initialization toward the weights trained on each task.

    Args:
        model: any `nn.Module`; all of its parameters adapt.
        inner_lr: the inner optimizer's learning rate (the paper: Adam, 1e-3).
        inner_steps: inner steps per task in meta-training (k; the paper: 5).
        inner_optimizer: ``"adam"`` (`Adam` with ``inner_betas``) or ``"sgd"``.
        inner_betas: Adam's ``(beta1, beta2)``; the paper uses ``beta1 = 0``.
        inner_batch: examples per inner step in meta-training, drawn without replacement
            from the task's support and query sets together (the paper: 10); ``None``: all.
        eval_inner_steps: inner steps on the support set at meta-test (default
            ``inner_steps``; the paper: 50); ``adapt(..., inner_steps=k)`` overrides it.
        loss: ``"cross_entropy"`` (classification) or ``"mse"`` (regression).
        strategy: how evaluation adapts a batch of episodes: ``"loop"`` (one after the
            other, through `adapt`) or ``"vmap"`` (all together; the same numbers).
            Meta-training is a loop either way.
    """

    adapt_options = ("inner_steps",)
    outer_update_is_loss_gradient = False

    def __init__(self, model: nn.Module, inner_lr: float = 1e-3, inner_steps: int = 5,
                 inner_optimizer: str = "adam",
                 inner_betas: tuple[float, float] | list[float] = (0.0, 0.999),
                 inner_batch: int | None = None, eval_inner_steps: int | None = None,
                 loss: str = "cross_entropy", strategy: str = "loop") -> None:
        super().__init__(loss, strategy)
        self.model = model
        self.inner_steps = check_positive_int("inner_steps", inner_steps)
        self.eval_inner_steps = self.inner_steps if eval_inner_steps is None else (
            check_positive_int("eval_inner_steps", eval_inner_steps, minimum=0))
        self.inner_batch = None if inner_batch is None else check_positive_int(
            "inner_batch", inner_batch)
        self.inner_optimizer = check_choice("inner_optimizer", inner_optimizer,
                                            INNER_OPTIMIZERS)
        self.update_rule: UpdateRule = (Adam(inner_lr, tuple(inner_betas))
                                        if self.inner_optimizer == "adam" else SGD(inner_lr))

    # -- the inner loop ----------------------------------------------------------------
    def train_on(self, x: Tensor, y: Tensor, steps: int, batch: int | None = None) -> Params:
        """``U^k(phi)``: ``steps`` steps of the inner rule on the loss of ``(x, y)``, from
        the current parameters; returns detached tensors (no graph is kept)."""
        params = {n: p.detach() for n, p in self.model.named_parameters()}
        state = self.update_rule.init(params)
        for indices in minibatch_indices(len(y), batch, steps, y.device):
            leaves = {n: p.detach().requires_grad_(True) for n, p in params.items()}
            with torch.enable_grad():
                outputs = functional_call(self.model, leaves, (x[indices],))
                grads = torch.autograd.grad(self.loss_fn(outputs, y[indices]),
                                            list(leaves.values()), allow_unused=True)
            grads = {n: torch.zeros_like(p) if g is None else g
                     for (n, p), g in zip(params.items(), grads, strict=True)}
            with torch.no_grad():
                params, state = self.update_rule.update(grads, state, params)
        return params

    def adapt_task(self, support_x: Tensor, support_y: Tensor, *, training: bool,
                   inner_steps: int | None = None) -> Params:
        """The task's weights after the inner loop on the support set (full batch)."""
        if inner_steps is None:
            inner_steps = self.inner_steps if training else self.eval_inner_steps
        steps = check_positive_int("inner_steps", inner_steps, minimum=0)
        return self.train_on(support_x, support_y, steps)

    def predict(self, adapted: Params, x: Tensor) -> Tensor:
        return functional_call(self.model, adapted, (x,))

    def training_task_losses(self, batch: TaskBatch) -> tuple[Tensor, dict[str, Tensor]]:
        """`adapt_task` then `predict`, task by task under either strategy (`train_on`
        takes its gradients with autograd, which cannot run under `torch.func.vmap`)."""
        return self.map_adapt_predict(batch, self.adapt_task, self.predict, strategy="loop")

    # -- evaluation of a batch of episodes ------------------------------------------------
    def evaluation_task_losses(self, batch: TaskBatch, **options
                               ) -> tuple[Tensor, dict[str, Tensor]]:
        """Per-episode query scores at meta-test: `adapt` episode by episode (``"loop"``),
        or every episode adapted and scored at once under `torch.func.vmap` (``"vmap"``)."""
        if self.strategy == "loop":
            return super().evaluation_task_losses(batch, **options)
        return self.network_output_scores(self.batched_outputs(batch, **options),
                                          batch.query_y)

    def batched_outputs(self, batch: TaskBatch, **options) -> Tensor:
        """The query outputs ``[T, Nq, ...]`` of every episode of ``batch`` after its
        full-batch inner loop on its support set, all episodes at once under
        `torch.func.vmap`: episode ``t``'s are ``adapt(support_x[t], support_y[t],
        **options)(query_x[t])``."""
        inner_steps = self.check_adapt_options(options).get("inner_steps",
                                                            self.eval_inner_steps)
        steps = check_positive_int("inner_steps", inner_steps, minimum=0)

        def adapted_outputs(support_x: Tensor, support_y: Tensor, query_x: Tensor) -> Tensor:
            return self.predict(self.full_batch_adaptation(support_x, support_y, steps),
                                query_x)

        with evaluation_mode(self), torch.no_grad():
            return map_tasks(adapted_outputs, batch.support_x, batch.support_y, batch.query_x,
                             strategy="vmap")

    def full_batch_adaptation(self, x: Tensor, y: Tensor, steps: int) -> Params:
        """`train_on` with every example at every step, written with the engine's
        `inner_loop` and `torch.func.grad` so that it runs under `torch.func.vmap`."""
        def loss_of(params: Params) -> Tensor:
            return self.loss_fn(functional_call(self.model, params, (x,)), y)

        params = {n: p.detach() for n, p in self.model.named_parameters()}
        return inner_loop(loss_of, params, self.update_rule, steps=steps, first_order=True,
                          gradients=func_gradients)

    # -- the outer update ---------------------------------------------------------------
    def meta_backward(self, batch: TaskBatch, task_chunk: int | None = None,
                      scale: float = 1.0) -> dict[str, float]:
        """Add ``scale * (1/n) sum_i (phi - phi_i)`` to ``.grad`` (the Reptile gradient),
        where ``phi_i`` is trained on task i's support and query sets together.

        Returns the mean loss and metric of the adapted weights on the query sets (which
        the inner loop trained on: a training fit, not a held-out score).
        """
        params = dict(self.model.named_parameters())
        totals: dict[str, float] = {}
        for chunk in batch.chunks(task_chunk):
            for t in range(len(chunk)):
                x = torch.cat([chunk.support_x[t], chunk.query_x[t]])
                y = torch.cat([chunk.support_y[t], chunk.query_y[t]])
                adapted = self.train_on(x, y, self.inner_steps, self.inner_batch)
                self._accumulate(params, adapted, scale / len(batch))
                with torch.no_grad():
                    loss, metric = self.score(self.predict(adapted, chunk.query_x[t]),
                                              chunk.query_y[t])
                for name, value in (("loss", loss), (self.metric_name, metric)):
                    totals[name] = totals.get(name, 0.0) + value.item() / len(batch)
        return totals

    @staticmethod
    def _accumulate(params: dict[str, nn.Parameter], adapted: Params, weight: float) -> None:
        with torch.no_grad():
            for name, p in params.items():
                direction = (p - adapted[name]) * weight
                p.grad = direction if p.grad is None else p.grad + direction
