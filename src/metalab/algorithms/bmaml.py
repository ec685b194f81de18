"""Bayesian MAML (Yoon et al. 2018, "Bayesian Model-Agnostic Meta-Learning") and the
particle machinery it shares with an ensemble of MAMLs (`algorithms/maml_ensemble.py`).

A particle method meta-learns ``M`` initial particles ``Theta_0 = {theta_0^m}``, each a whole
parameter set of the model. Adapting to a task runs ``n`` steps of an update on the support
loss, all particles at once. BMAML's update is Stein variational gradient descent
(`metalab.functional.svgd`, Yoon et al. eq. 2): the particles follow the support loss's
gradient, kernel-weighted, plus a repulsive term that keeps them apart, with an RBF kernel
and the median-heuristic bandwidth.

Meta-training (``meta_loss``):

- ``"chaser"`` (Yoon et al. eq. 6, the default): the chaser ``Theta^n`` is the particles
  after ``n`` SVGD steps on the support; the leader ``Theta^{n+s}`` runs ``s`` more steps from
  the chaser on support + query and is held constant (no gradient). The loss is
  ``d(Theta^n, stopgrad(Theta^{n+s})) = sum_m ||theta^{n,m} - theta^{n+s,m}||^2``;
- ``"predictive"``: the query loss of the particles' averaged prediction (regression: the
  mean of the predictions; classification: the mean of the softmax probabilities), a
  MAML-like loss through the SVGD steps.

The predictive of an adapted task: for regression a Gaussian (`GaussianPredictive`) with the
particles' mean prediction and variance ``Var_m[f(x; theta^m)] + noise_std^2`` (the moments
of the equally weighted mixture with a fixed observation noise); for classification the mean
of the particles' softmax (``predict`` returns its logarithm).

With one particle the kernel is 1 and the repulsive term vanishes: SVGD is gradient descent
and BMAML with ``meta_loss="predictive"`` is MAML (tested).
"""

from __future__ import annotations

import copy
import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from metalab.algorithms.base import (
    CategoricalPredictive,
    MetaLearner,
    Predictor,
    detached,
    evaluation_mode,
)
from metalab.algorithms.predictive import GaussianPredictive
from metalab.algorithms.predictive_scores import PredictiveScores
from metalab.functional import autograd_gradients, gradients_for, map_tasks, parameter_key
from metalab.functional.svgd import svgd_step
from metalab.tasks import TaskBatch
from metalab.validation import check_choice, check_positive_int

Params = dict[str, Tensor]


def fresh_copies(model: nn.Module, count: int) -> list[nn.Module]:
    """``model`` itself and ``count - 1`` copies with re-initialised parameters."""
    copies = [model]
    for _ in range(count - 1):
        other = copy.deepcopy(model)
        for module in other.modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
        copies.append(other)
    return copies


class ParticleMAML(PredictiveScores, MetaLearner):
    """``M`` meta-learned initial parameter sets adapted together (see the module doc);
    subclasses choose the inner update (`inner_update`) and the meta-loss.

    Args:
        model: the architecture; particle 0 starts at its parameters, the others at fresh
            initialisations. Its own parameters are not trained (the particles are).
        particles: ``M``.
        inner_lr: the step size of the inner update.
        inner_steps: inner steps ``n`` in meta-training; ``eval_inner_steps`` at meta-test.
        first_order: drop second-order terms of the inner steps.
        noise_std: the observation noise of the regression predictive.
        loss: ``"mse"`` (regression) or ``"cross_entropy"`` (classification).
        strategy: ``"loop"`` or ``"vmap"`` over tasks.
    """

    adapt_options: ClassVar[tuple[str, ...]] = ("inner_steps",)

    def __init__(self, model: nn.Module, particles: int = 5, inner_lr: float = 0.01,
                 inner_steps: int = 1, eval_inner_steps: int | None = None,
                 first_order: bool = False, noise_std: float = 0.1, loss: str = "mse",
                 strategy: str = "loop") -> None:
        super().__init__(loss, strategy)
        self.num_particles = check_positive_int("particles", particles)
        self.inner_lr = float(inner_lr)
        self.inner_steps = check_positive_int("inner_steps", inner_steps, minimum=0)
        self.eval_inner_steps = self.inner_steps if eval_inner_steps is None else (
            check_positive_int("eval_inner_steps", eval_inner_steps, minimum=0))
        self.first_order = bool(first_order)
        if not noise_std > 0:
            raise ValueError(f"noise_std must be positive, got {noise_std}")
        self.noise_std = float(noise_std)
        self.names = [n for n, _ in model.named_parameters()]
        members = fresh_copies(model, self.num_particles)
        self.particles = nn.ParameterDict({
            parameter_key(n): nn.Parameter(torch.stack(
                [dict(m.named_parameters())[n].detach().clone() for m in members]))
            for n in self.names})
        self.model = model.requires_grad_(False)

    # -- particles ---------------------------------------------------------------------------
    def initial_particles(self, training: bool) -> Params:
        """``Theta_0`` by parameter name, ``[M, ...]`` each (detached leaves at meta-test)."""
        params = {n: self.particles[parameter_key(n)] for n in self.names}
        if training:
            return params
        return {n: p.detach().requires_grad_(True) for n, p in params.items()}

    def particle_outputs(self, params: Params, x: Tensor) -> Tensor:
        """``[M, m, out]``: every particle's outputs at ``x``."""
        return torch.func.vmap(lambda p: functional_call(self.model, p, (x,)))(params)

    def particle_losses(self, params: Params, x: Tensor, y: Tensor) -> Tensor:
        """``[M]``: every particle's loss on ``(x, y)``."""
        outputs = self.particle_outputs(params, x)  # a loop: mse_loss under nested vmap fails
        return torch.stack([self.loss_fn(out, y) for out in outputs.unbind(0)])

    def inner_update(self, params: Params, loss_grads: Params) -> Params:
        """One inner step of all particles from their loss gradients."""
        raise NotImplementedError

    def run_steps(self, params: Params, x: Tensor, y: Tensor, steps: int, *,
                  differentiable: bool) -> Params:
        """``steps`` inner updates on the loss of ``(x, y)``; ``differentiable=False``
        detaches after each step (meta-test, the leader)."""
        # meta-training (maybe under vmap): the strategy's backend; meta-test: autograd
        gradients = gradients_for(self.strategy) if torch.is_grad_enabled() else (
            autograd_gradients)

        def total_loss(p: Params) -> Tensor:
            return self.particle_losses(p, x, y).sum()

        for _ in range(steps):
            with torch.enable_grad():
                grads = gradients(total_loss, params, differentiable and not self.first_order)
                params = self.inner_update(params, grads)
            if not differentiable:
                params = self._restart(params)
        return params

    def _restart(self, params: Params) -> Params:
        """Detached particles that later steps can differentiate the loss at."""
        if self.strategy == "vmap" and torch.is_grad_enabled():
            return {n: p.detach() for n, p in params.items()}
        return {n: p.detach().requires_grad_(True) for n, p in params.items()}

    # -- the contract -------------------------------------------------------------------------
    def adapt_task(self, support_x: Tensor, support_y: Tensor, *, training: bool,
                   inner_steps: int | None = None) -> Params:
        """``Theta^n``: the particles after ``n`` inner updates on the support loss."""
        if inner_steps is None:
            inner_steps = self.inner_steps if training else self.eval_inner_steps
        return self.run_steps(self.initial_particles(training), support_x, support_y,
                              check_positive_int("inner_steps", inner_steps, minimum=0),
                              differentiable=training)

    def predict(self, state: Params, x: Tensor) -> Tensor:
        """Regression: the particles' mean prediction. Classification: the logarithm of the
        particles' mean softmax (log-probabilities, usable as logits)."""
        outputs = self.particle_outputs(state, x)
        if self.loss_name == "mse":
            return outputs.mean(dim=0)
        return torch.logsumexp(F.log_softmax(outputs, dim=-1), dim=0) - math.log(
            outputs.shape[0])

    def predictive_moments(self, state: Params, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(mean, variance)`` of the regression predictive at ``x`` (module doc)."""
        outputs = self.particle_outputs(state, x)
        return (outputs.mean(dim=0),
                outputs.var(dim=0, unbiased=False) + self.noise_std ** 2)

    def adapt(self, support_x: Tensor, support_y: Tensor | None = None, **options
              ) -> Predictor:
        """The adapted particles' predictive: a `GaussianPredictive` for regression, else a
        `CategoricalPredictive` of the mean softmax (called: its logarithm)."""
        options = self.check_adapt_options(options)
        with evaluation_mode(self), torch.no_grad():
            state = detached(self.adapt_task(support_x, support_y, training=False, **options))
        if self.loss_name == "mse":
            return GaussianPredictive(lambda x, z: self.predictive_moments(state, x))
        return CategoricalPredictive(lambda x: self.predict(state, x),
                                     lambda x: self.class_probabilities(state, x))

    def class_probabilities(self, state: Params, x: Tensor) -> Tensor:
        """``[m, classes]``: the mean over particles of their softmax probabilities."""
        return torch.softmax(self.particle_outputs(state, x), dim=-1).mean(dim=0)


class BMAML(ParticleMAML, name="bmaml"):
    """Bayesian MAML: SVGD inner updates, meta-trained by the chaser loss (module doc).

    Args (beyond `ParticleMAML`'s):
        meta_loss: ``"chaser"`` (Yoon et al. eq. 6) or ``"predictive"`` (query loss of the
            averaged prediction).
        leader_steps: ``s``, the leader's extra SVGD steps on support + query.
    """

    def __init__(self, model: nn.Module, meta_loss: str = "chaser", leader_steps: int = 1,
                 **kwargs) -> None:
        super().__init__(model, **kwargs)
        self.meta_loss_kind = check_choice("meta_loss", meta_loss, ("chaser", "predictive"))
        self.leader_steps = check_positive_int("leader_steps", leader_steps)

    def inner_update(self, params: Params, loss_grads: Params) -> Params:
        return svgd_step(params, loss_grads, self.inner_lr)

    def training_task_losses(self, batch: TaskBatch) -> tuple[Tensor, dict[str, Tensor]]:
        if self.meta_loss_kind == "predictive":
            return super().training_task_losses(batch)

        def per_task(sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor):
            chaser = self.adapt_task(sx, sy, training=True)
            leader = self.run_steps(self._restart(chaser), torch.cat([sx, qx]),
                                    torch.cat([sy, qy]), self.leader_steps,
                                    differentiable=False)
            distance = sum(((chaser[n] - leader[n].detach()) ** 2).sum() for n in self.names)
            return distance, self.metric_fn(self.predict(chaser, qx), qy)

        losses, metric = map_tasks(per_task, batch.support_x, batch.support_y, batch.query_x,
                                   batch.query_y, strategy=self.strategy)
        return losses, {self.metric_name: metric.detach()}
