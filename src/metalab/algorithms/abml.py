"""Amortized Bayesian meta-learning (Ravi & Beatson 2019, "Amortized Bayesian
Meta-Learning", ICLR).

The meta-parameters ``theta = (mu_theta, sigma_theta)`` (the model's parameters and a
learned standard deviation per entry, stored as its logarithm) are both the prior over a
task's weights, ``p(w | theta) = N(mu_theta, sigma_theta^2)`` (diagonal), and the
initialisation of the task's variational posterior ``q_phi(w) = N(m, diag(exp(2 l)))``,
``phi = (m, l)``. With observation noise ``sigma`` (``noise_std``) the negative task ELBO on
a set ``D`` of ``|D|`` points, per point, is

    F(phi; D) = (1/|D|) [ (1/S) sum_s NLL(D | m + exp(l) o eps_s)
                          + kl_weight * KL(q_phi || p(w | theta)) ],
    NLL(D | w) = sum_i (y_i - f(x_i; w))^2 / (2 sigma^2) + 1/2 log(2 pi sigma^2),

with ``S`` (``inner_samples``) reparameterised draws ``eps_s ~ N(0, I)``.

Adaptation (amortised inference by a few gradient steps): ``phi_0 = (mu_theta,
log sigma_theta)`` and ``phi_{k+1} = phi_k - alpha grad_phi F(phi_k; support)``
(``inner_steps`` steps of size ``inner_lr``, fresh draws at every step).

Meta-objective per task (the paper's outer loss, without the hyperprior on ``theta``):
the query set's negative ELBO under the posterior adapted on the support,
``F(phi_K; query)``, i.e. the expected query NLL plus ``kl_weight * KL(q_phi_K || p)``, both
divided by the number of query points. The meta-gradient runs through the inner steps
(second order unless ``first_order``).

Predictive: ``K`` (``samples``) weights ``w_k ~ q_phi_K`` from a seeded generator, the mixture
of ``N(f(x; w_k), sigma^2)`` (`SampledPredictive`). With zero steps the posterior is the
initialisation (tested); one step matches a hand computation on a linear model (tested).

Classification (``loss: cross_entropy``): ``NLL(D | w)`` is the cross-entropy summed over
``D`` (the categorical likelihood; ``noise_std`` unused), and the predictive is the mixture
of the ``K`` drawn classifiers, the mean of their softmax probabilities
(`sampled_classifier`).
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from metalab.algorithms.base import (
    CategoricalPredictive,
    MetaLearner,
    detached,
    evaluation_mode,
)
from metalab.algorithms.platipus import gaussian_kl
from metalab.algorithms.predictive_scores import PredictiveScores
from metalab.algorithms.sampled_predictive import SampledPredictive, sampled_classifier
from metalab.functional import (
    SGD,
    autograd_gradients,
    gradients_for,
    inner_loop,
    map_tasks,
    parameter_key,
)
from metalab.tasks import TaskBatch
from metalab.validation import check_positive_int, check_real

Params = dict[str, Tensor]
MEAN, LOG_STD = "mean/", "log_std/"  # prefixes of phi's entries in the inner loop


class ABML(PredictiveScores, MetaLearner, name="abml"):
    """Amortized Bayesian meta-learning (module doc).

    Args:
        model: the network; its parameters are ``mu_theta``.
        inner_lr: ``alpha``, the step size on the support ELBO.
        inner_steps: steps in meta-training; ``eval_inner_steps`` at meta-test.
        inner_samples: ``S``, reparameterised draws per inner step and in the outer loss.
        first_order: drop the second-order terms of the inner steps.
        noise_std: ``sigma``, the observation noise of the likelihood and the predictive.
        kl_weight: the weight of the KL in the ELBO (1: the ELBO).
        prior_std: the initial ``sigma_theta`` (learned).
        samples: ``K``, weight draws per task in the predictive (`adapt` option).
        strategy: ``"loop"`` or ``"vmap"`` over tasks.
    """

    adapt_options: ClassVar[tuple[str, ...]] = ("inner_steps", "samples", "seed")

    def __init__(self, model: nn.Module, inner_lr: float = 0.01, inner_steps: int = 5,
                 eval_inner_steps: int | None = None, inner_samples: int = 1,
                 first_order: bool = False, noise_std: float = 0.1, kl_weight: float = 1.0,
                 prior_std: float = 0.1, samples: int = 10, loss: str = "mse",
                 strategy: str = "loop") -> None:
        super().__init__(loss, strategy)
        self.model = model
        self.inner_lr = check_real("inner_lr", inner_lr)
        self.inner_steps = check_positive_int("inner_steps", inner_steps, minimum=0)
        self.eval_inner_steps = self.inner_steps if eval_inner_steps is None else (
            check_positive_int("eval_inner_steps", eval_inner_steps, minimum=0))
        self.inner_samples = check_positive_int("inner_samples", inner_samples)
        self.first_order = bool(first_order)
        self.noise_std = check_real("noise_std", noise_std, inclusive=False)
        self.kl_weight = check_real("kl_weight", kl_weight)
        self.samples = check_positive_int("samples", samples)
        prior_std = check_real("prior_std", prior_std, inclusive=False)
        self.names = [n for n, _ in model.named_parameters()]
        self.log_prior_std = nn.ParameterDict({
            parameter_key(n): nn.Parameter(torch.full_like(p.detach(), math.log(prior_std)))
            for n, p in model.named_parameters()})

    # -- the prior and the task ELBO -----------------------------------------------------------
    def prior(self, training: bool) -> tuple[Params, Params]:
        """``p(w | theta)`` as ``(mean, log std)`` by parameter name."""
        mean = dict(self.model.named_parameters())
        log_std = {n: self.log_prior_std[parameter_key(n)] for n in self.names}
        return (mean, log_std) if training else (detached(mean), detached(log_std))

    def standard_normal_like(self, name: str, like: Tensor,
                             generator: torch.Generator | None = None) -> Tensor:
        """Reparameterisation noise for parameter ``name``: from ``generator`` at meta-test,
        the global generator (checkpointed by the trainer) in meta-training."""
        if generator is None:
            return torch.randn_like(like)
        return torch.randn(like.shape, generator=generator, dtype=like.dtype).to(like.device)

    def nll(self, weights: Params, x: Tensor, y: Tensor) -> Tensor:
        """``sum_i (y_i - f(x_i; w))^2 / (2 sigma^2) + 1/2 log(2 pi sigma^2)``; for
        classification ``sum_i -log softmax(f(x_i; w))_{y_i}``."""
        outputs = functional_call(self.model, weights, (x,))
        if self.loss_name != "mse":
            return F.cross_entropy(outputs, y, reduction="sum")
        residual = outputs - y
        variance = self.noise_std ** 2
        return (residual ** 2 / (2 * variance) + 0.5 * math.log(2 * math.pi * variance)).sum()

    def negative_elbo(self, phi: Params, prior: tuple[Params, Params], x: Tensor, y: Tensor,
                      generator: torch.Generator | None = None) -> Tensor:
        """``F(phi; (x, y))`` of the module doc (per point)."""
        mean = {n: phi[MEAN + n] for n in self.names}
        log_std = {n: phi[LOG_STD + n] for n in self.names}
        std = {n: v.exp() for n, v in log_std.items()}
        expected_nll = sum(
            self.nll({n: mean[n] + std[n] * self.standard_normal_like(n, std[n], generator)
                      for n in self.names}, x, y)
            for _ in range(self.inner_samples)) / self.inner_samples
        kl = gaussian_kl((mean, std), (prior[0], {n: v.exp() for n, v in prior[1].items()}))
        return (expected_nll + self.kl_weight * kl) / y.numel()

    # -- adaptation ----------------------------------------------------------------------------
    def adapt_task(self, support_x: Tensor, support_y: Tensor, *, training: bool,
                   inner_steps: int | None = None, samples: int | None = None,
                   seed: int | None = None) -> Params:
        """``phi_K`` (keys ``mean/<name>``, ``log_std/<name>``) after ``inner_steps`` steps on
        the support's negative ELBO from ``phi_0 = (mu_theta, log sigma_theta)``. At meta-test
        the draws come from a generator seeded by ``seed`` (default 0); ``samples`` is the
        predictive's and does not change the posterior."""
        if inner_steps is None:
            inner_steps = self.inner_steps if training else self.eval_inner_steps
        steps = check_positive_int("inner_steps", inner_steps, minimum=0)
        prior = self.prior(training)
        generator = None if training else torch.Generator().manual_seed(
            0 if seed is None else int(seed))
        phi0 = {**{MEAN + n: p for n, p in prior[0].items()},
                **{LOG_STD + n: p for n, p in prior[1].items()}}
        if not training:
            phi0 = {k: v.detach().requires_grad_(True) for k, v in phi0.items()}
        return inner_loop(
            lambda phi: self.negative_elbo(phi, prior, support_x, support_y, generator),
            phi0, SGD(self.inner_lr), steps=steps, first_order=self.first_order or not training,
            gradients=gradients_for(self.strategy) if training else autograd_gradients)

    def predict(self, state: Params, x: Tensor) -> Tensor:
        """The network at the posterior mean (the training metric's prediction)."""
        return functional_call(self.model, {n: state[MEAN + n] for n in self.names}, (x,))

    def draw_weights(self, state: Params, samples: int, generator: torch.Generator) -> Params:
        """``samples`` weight draws ``[K, ...]`` from ``q_phi`` by parameter name."""
        return {n: state[MEAN + n] + state[LOG_STD + n].exp() * torch.randn(
            (samples, *state[MEAN + n].shape), generator=generator,
            dtype=state[MEAN + n].dtype).to(state[MEAN + n].device) for n in self.names}

    def sample_outputs(self, weights: Params, x: Tensor) -> Tensor:
        """``[K, m, out]``: the network under every weight draw."""
        return torch.func.vmap(lambda w: functional_call(self.model, w, (x,)))(weights)

    # -- meta-training -------------------------------------------------------------------------
    def training_task_losses(self, batch: TaskBatch) -> tuple[Tensor, dict[str, Tensor]]:
        """Per task ``F(phi_K; query)`` with ``phi_K`` adapted on the support."""

        def per_task(sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor):
            phi = self.adapt_task(sx, sy, training=True)
            loss = self.negative_elbo(phi, self.prior(True), qx, qy)
            return loss, self.metric_fn(self.predict(phi, qx), qy)

        losses, metric = map_tasks(per_task, batch.support_x, batch.support_y, batch.query_x,
                                   batch.query_y, strategy=self.strategy)
        return losses, {self.metric_name: metric.detach()}

    # -- meta-test -----------------------------------------------------------------------------
    def adapt(self, support_x: Tensor, support_y: Tensor | None = None, **options
              ) -> SampledPredictive | CategoricalPredictive:
        """The posterior adapted on the support and its Monte Carlo mixture predictive
        (regression: `SampledPredictive`; classification: `sampled_classifier`)."""
        options = self.check_adapt_options(options)
        samples = options.pop("samples", self.samples)
        seed = options.get("seed", 0)
        with evaluation_mode(self), torch.no_grad():
            state = detached(self.adapt_task(support_x, support_y, training=False, **options))

        def draw(count: int, generator: torch.Generator) -> Params:
            return self.draw_weights(state, count, generator)

        def outputs(weights: Params, x: Tensor) -> Tensor:
            with evaluation_mode(self):
                return self.sample_outputs(weights, x)

        if self.loss_name != "mse":
            return sampled_classifier(draw, outputs, samples=samples, seed=seed)
        return SampledPredictive(draw, outputs, self.noise_std, samples=samples, seed=seed)
