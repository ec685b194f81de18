"""WarpGrad (Flennerhag, Rusu, Pascanu, Visin, Yin & Hadsell, ICLR 2020, "Meta-Learning with
Warped Gradient Descent").

The model interleaves task layers ``theta`` with warp layers ``omega``
(`metalab.nn.transform_layers`: a meta-learned linear map after every ``Conv2d``/``Linear``,
initialised at the identity). The inner loop adapts the task layers only, by plain
gradient descent through the warped network, ``theta_{k+1} = theta_k - alpha grad
L_support(theta_k; omega)``: the warp layers precondition the step without being
differentiated through the whole inner loop. They are meta-learned with the warp
objective (eq. 9 and Algorithm 2): over points ``theta_k`` sampled from the tasks'
adaptation trajectories, with ``theta_k`` a constant (stop-gradient),

    L(omega) = E_{tau, theta_k ~ trajectory(tau)} L_query^tau(theta_k - alpha grad
               L_support^tau(theta_k; omega); omega),

a one-step, second-order objective in ``omega`` whose cost does not grow with the number
of inner steps ``K``.

The initialisation ``theta_0`` of the task layers is meta-learned Reptile-style (the
paper's Omniglot experiments use Leap, a first-order trajectory objective of the same
kind): its gradient is ``theta_0 - theta_K^tau`` averaged over the tasks. Both go through
the trainer as one loss per task: the sampled points' warp losses plus
``sum(theta_0 * stopgrad(theta_0 - theta_K)) - stopgrad(...)``, whose value is 0 and whose
gradient w.r.t. ``theta_0`` is the Reptile direction. The outer optimizer (``train.lr``,
Adam by default) then updates ``theta_0`` and ``omega`` together.

The trajectory buffer holds the trajectories of the tasks of one `meta_loss` call: the
meta-batch, or one chunk of it with ``train.task_chunk`` (the shipped config leaves
``task_chunk`` unset, so the buffer is the meta-batch). The paper keeps trajectories of
several tasks over a few outer steps before a warp update; here every outer step draws
fresh trajectories from the current ``theta_0`` and ``omega`` (no stale points).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.func import functional_call

from metalab.algorithms.maml import MAML
from metalab.functional import autograd_gradients
from metalab.nn.transform_layers import transform_parameter_names, with_transforms
from metalab.tasks import TaskBatch
from metalab.validation import check_positive_int

Params = dict[str, Tensor]


class WarpGrad(MAML, name="warpgrad"):
    """Warped gradient descent with linear warp layers after each layer of ``model``.

    Args:
        model: any `nn.Module` with `nn.Conv2d`/`nn.Linear` layers (each gets a warp layer).
        inner_lr: the inner step size alpha.
        inner_steps: K, inner steps per task in meta-training (the trajectory's length).
        warp_samples: trajectory points per task in the warp objective, drawn uniformly
            without replacement from the task's ``K`` points ``theta_0 .. theta_{K-1}`` in
            the buffer; ``None``: all of them.
        eval_inner_steps: inner steps at meta-test (default ``inner_steps``).
        loss, strategy: as for MAML (``strategy="loop"`` only).
    """

    chooses_adapted_parameters = False

    def __init__(self, model: nn.Module, inner_lr: float = 0.4, inner_steps: int = 3,
                 warp_samples: int | None = 1, eval_inner_steps: int | None = None,
                 loss: str = "cross_entropy", strategy: str = "loop") -> None:
        if strategy != "loop":
            raise ValueError(f"warpgrad samples trajectory points across tasks and supports "
                             f"strategy='loop' only, got {strategy!r}")
        model = with_transforms(model)
        warps = set(transform_parameter_names(model))
        task_names = [n for n, _ in model.named_parameters() if n not in warps]
        super().__init__(model, inner_lr=inner_lr,
                         inner_steps=check_positive_int("inner_steps", inner_steps),
                         first_order=True, loss=loss, strategy=strategy, adapt=task_names,
                         eval_inner_steps=eval_inner_steps)
        self.warp_names = [n for n, _ in model.named_parameters() if n in warps]
        self.warp_samples = None if warp_samples is None else check_positive_int(
            "warp_samples", warp_samples)

    # -- the pieces ---------------------------------------------------------------------
    def task_loss(self, params: Params, x: Tensor, y: Tensor) -> Tensor:
        return self.loss_fn(functional_call(self.model, params, (x,)), y)

    def trajectory(self, theta: Params, warp: Params, x: Tensor, y: Tensor,
                   steps: int) -> list[Params]:
        """``theta_0 .. theta_steps`` of the inner loop (detached: no graph is kept)."""
        points = [theta]
        state = self.update_rule.init(theta)
        for _ in range(steps):
            current = {n: p.detach().requires_grad_(True) for n, p in points[-1].items()}
            with torch.enable_grad():
                grads = autograd_gradients(lambda p: self.task_loss({**warp, **p}, x, y),
                                           current, False)
            with torch.no_grad():
                nxt, state = self.update_rule.update(grads, state, current)
            points.append({n: p.detach() for n, p in nxt.items()})
        return points

    def warped_step_scores(self, theta_k: Params, warp: Params,
                           support: tuple[Tensor, Tensor], query: tuple[Tensor, Tensor]
                           ) -> tuple[Tensor, Tensor]:
        """``L_query(theta_k - alpha grad L_support(theta_k; omega); omega)`` with
        ``theta_k`` a constant, differentiable w.r.t. ``omega`` (through the step too), and
        the query metric there."""
        point = {n: p.detach().requires_grad_(True) for n, p in theta_k.items()}
        grads = autograd_gradients(lambda p: self.task_loss({**warp, **p}, *support), point,
                                   True)
        stepped, _ = self.update_rule.update(grads, self.update_rule.init(point), point)
        return self.score(functional_call(self.model, {**warp, **stepped}, (query[0],)),
                          query[1])

    @staticmethod
    def reptile_surrogate(theta0: Params, final: Params) -> Tensor:
        """A term of value 0 whose gradient w.r.t. ``theta0`` is ``theta0 - final``."""
        total = sum((p * (p - final[n]).detach()).sum() for n, p in theta0.items())
        return total - total.detach()

    # -- training: the warp objective over the meta-batch's trajectories -------------------
    def training_task_losses(self, batch: TaskBatch) -> tuple[Tensor, dict[str, Tensor]]:
        """Per task: the mean warp loss of its sampled trajectory points plus the Reptile
        surrogate (value 0). The metric is the query metric after the warped step from
        those points (one inner step from a point of the trajectory, not the end of it)."""
        params = dict(self.model.named_parameters())
        warp = {n: params[n] for n in self.warp_names}
        theta0 = {n: params[n] for n in self.adapt_names}
        frozen_warp = {n: p.detach() for n, p in warp.items()}
        buffer = [self.trajectory(theta0, frozen_warp, batch.support_x[t], batch.support_y[t],
                                  self.inner_steps) for t in range(len(batch))]
        losses, metrics = [], []
        for t, points in enumerate(buffer):
            support = (batch.support_x[t], batch.support_y[t])
            query = (batch.query_x[t], batch.query_y[t])
            scores = [self.warped_step_scores(points[k], warp, support, query)
                      for k in self.sample_points(self.inner_steps).tolist()]
            losses.append(torch.stack([loss for loss, _ in scores]).mean()
                          + self.reptile_surrogate(theta0, points[-1]))
            metrics.append(torch.stack([metric.detach() for _, metric in scores]).mean())
        return torch.stack(losses), {self.metric_name: torch.stack(metrics)}

    def sample_points(self, steps: int) -> Tensor:
        """Which of a task's points ``theta_0 .. theta_{steps-1}`` enter the warp objective:
        ``warp_samples`` of them uniformly without replacement (all when ``None``)."""
        if self.warp_samples is None or self.warp_samples >= steps:
            return torch.arange(steps, device="cpu")
        return torch.randperm(steps, device="cpu")[:self.warp_samples]  # indices, read by .tolist()
