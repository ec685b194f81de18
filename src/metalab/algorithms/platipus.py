"""PLATIPUS (Finn, Xu & Levine 2018, "Probabilistic Model-Agnostic Meta-Learning").

A Gaussian prior over MAML's initial parameters, ``theta ~ N(mu_theta, sigma_theta^2)``
(diagonal), with a learned gradient step that conditions it on a task's data. The
meta-parameters are ``mu_theta`` (the model's parameters), ``sigma_theta``, ``v_q`` (the
inference distribution's standard deviation; both per entry, stored as logarithms) and the
step sizes ``gamma_p``, ``gamma_q``:

- prior step, from the support (training and test):
  ``p(theta | support) = N(mu_theta - gamma_p grad L(mu_theta, support), sigma_theta^2)``;
- inference step, from the query (training only):
  ``q(theta | support, query) = N(mu_theta - gamma_q grad L(mu_theta, query), v_q^2)``;
- a sampled ``theta`` is adapted by MAML's inner loop on the support,
  ``phi = theta - alpha grad L(theta, support)`` (``inner_steps`` steps of the update rule).

Meta-training (the paper's Algorithm 1): per task, draw ``theta ~ q`` (reparameterised),
adapt it to ``phi`` and minimise

    L(phi, query) + kl_weight * KL(q(theta | support, query) || p(theta | support)),

the negative ELBO of the paper with the loss ``L`` (the query MSE) in place of the negative
log-likelihood; ``kl_weight`` weighs the two (1: the paper's objective as written). The
meta-gradient reaches ``mu_theta`` through both gradient steps and MAML's inner loop
(second order unless ``first_order``), and ``sigma_theta``, ``v_q``, ``gamma_p``, ``gamma_q``
through the KL and the reparameterised sample. With ``train_samples = L > 1`` the query loss
is averaged over ``L`` draws ``theta_l ~ q``, each adapted (a lower-variance estimate of the
same expectation; the KL is exact and counted once):

    (1 / L) sum_l L(phi_l, query) + kl_weight * KL(q || p).

``gamma_steps`` repeats the prior and inference steps (``mu <- mu - gamma grad L(mu, .)``,
that many times from ``mu_theta``; 1 is the paper's single step). ``log_std_range = (a, b)``
starts every entry of ``log sigma_theta`` and ``log v_q`` at an independent ``U[a, b]`` draw
(in place of the constants ``prior_std``, ``inference_std``).

Meta-test (Algorithm 2): draw ``K`` (``samples``) ``theta_k ~ p(theta | support)`` from a
seeded generator, adapt each by ``eval_inner_steps`` inner steps; `adapt` returns their
mixture predictive (`SampledPredictive`, observation noise ``noise_std``).

With ``sigma_theta = v_q -> 0`` and ``gamma_p = gamma_q = 0`` the sample is ``mu_theta``,
the KL vanishes and PLATIPUS is MAML: the same adapted parameters and meta-gradient
(tested against MAML written out by hand). The distribution covers the adapted parameters
(``adapt``), the others are deterministic.

Classification (``loss: cross_entropy``): ``L`` is the query cross-entropy, and the
predictive is the mixture of the ``K`` drawn classifiers, the mean of their softmax
probabilities (`sampled_classifier`); the paper's objective as written (log-likelihood
summed over the query points plus the KL) is ``kl_weight = 1 / (query points)``.
"""

from __future__ import annotations

import math
from functools import partial

import torch
from torch import Tensor, nn
from torch.func import functional_call

from metalab.algorithms.base import (
    CategoricalPredictive,
    detached,
    evaluation_mode,
    parameters_for,
)
from metalab.algorithms.maml import MAML
from metalab.algorithms.predictive import diagonal_gaussian_kl
from metalab.algorithms.predictive_scores import PredictiveScores
from metalab.algorithms.sampled_predictive import SampledPredictive, sampled_classifier
from metalab.functional import (
    autograd_gradients,
    func_gradients,
    gradients_for,
    inner_loop,
    map_tasks,
    parameter_key,
)
from metalab.tasks import TaskBatch
from metalab.validation import check_interval, check_positive_int, check_real

Params = dict[str, Tensor]
Gaussian = tuple[Params, Params]  # (mean, standard deviation) by parameter name


def check_log_std_range(value) -> tuple[float, float]:
    """``log_std_range`` as ``(low, high)``: an interval (``low <= high``) of finite numbers."""
    low, high = check_interval("log_std_range", value, allow_empty=True)
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ValueError(f"log_std_range must be finite, got {value!r}")
    return low, high


def gaussian_kl(q: Gaussian, p: Gaussian) -> Tensor:
    """``KL(q || p)`` of two diagonal Gaussians over a set of named tensors (summed)."""
    return sum(diagonal_gaussian_kl((q[0][n].flatten(), q[1][n].flatten()),
                                    (p[0][n].flatten(), p[1][n].flatten())) for n in q[0])


class PLATIPUS(PredictiveScores, MAML, name="platipus"):
    """PLATIPUS (module doc).

    Args (beyond `MAML`'s):
        noise_std: the observation noise of the predictive mixture.
        kl_weight: weight of ``KL(q || p)`` in the meta-objective.
        prior_std: initial ``sigma_theta``; ``inference_std``: initial ``v_q`` (default
            ``prior_std``).
        gamma_p, gamma_q: initial step sizes of the prior and inference steps (default
            ``inner_lr``); ``learn_gammas=False`` keeps them fixed.
        samples: ``K``, the models drawn per task at meta-test (`adapt` option).
        train_samples: ``L``, the draws ``theta ~ q`` per task in meta-training (module doc).
        gamma_steps: how many prior/inference gradient steps (module doc).
        log_std_range: ``(a, b)``: start each log-std entry at ``U[a, b]`` (module doc).
    """

    adapt_options = ("inner_steps", "samples", "seed")

    def __init__(self, model: nn.Module, noise_std: float = 0.1, kl_weight: float = 1.0,
                 prior_std: float = 0.01, inference_std: float | None = None,
                 gamma_p: float | None = None, gamma_q: float | None = None,
                 learn_gammas: bool = True, samples: int = 10, loss: str = "mse",
                 train_samples: int = 1, gamma_steps: int = 1,
                 log_std_range: tuple[float, float] | None = None, **kwargs) -> None:
        super().__init__(model, loss=loss, **kwargs)
        self.noise_std = check_real("noise_std", noise_std, inclusive=False)
        self.kl_weight = check_real("kl_weight", kl_weight)
        self.samples = check_positive_int("samples", samples)
        self.train_samples = check_positive_int("train_samples", train_samples)
        self.gamma_steps = check_positive_int("gamma_steps", gamma_steps)
        self.log_std_range = None if log_std_range is None else check_log_std_range(
            log_std_range)
        prior_std = check_real("prior_std", prior_std, inclusive=False)
        inference_std = prior_std if inference_std is None else check_real(
            "inference_std", inference_std, inclusive=False)
        params = dict(self.inner_module.named_parameters())
        self.log_prior_std = self._log_std_like(params, prior_std)
        self.log_inference_std = self._log_std_like(params, inference_std)
        gammas = [self.inner_lr if g is None else float(g) for g in (gamma_p, gamma_q)]
        like = next(iter(params.values()))  # the model's dtype: no float32 rounding of gamma
        self.gamma_p, self.gamma_q = (
            nn.Parameter(torch.tensor(g, dtype=like.dtype, device=like.device),
                         requires_grad=learn_gammas)
            for g in gammas)

    def _log_std_like(self, params: Params, std: float) -> nn.ParameterDict:
        """``log std`` per adapted entry, or ``U[log_std_range]`` draws (global generator)."""
        def start(like: Tensor) -> Tensor:
            if self.log_std_range is None:
                return torch.full_like(like, math.log(std))
            low, high = self.log_std_range
            return low + (high - low) * torch.rand_like(like)

        return nn.ParameterDict({parameter_key(n): nn.Parameter(start(params[n].detach()))
                                 for n in self.adapt_names})

    # -- the two distributions ----------------------------------------------------------------
    def _loss_at(self, params: Params, x: Tensor, y: Tensor) -> Tensor:
        return self.loss_fn(functional_call(self.inner_module, params, (self.encode(x),)), y)

    def _step_mean(self, mu: Params, x: Tensor, y: Tensor, gamma: Tensor, training: bool
                   ) -> Params:
        """``mu - gamma grad L(mu, (x, y))`` for the adapted names, ``gamma_steps`` times."""
        fixed = {n: p for n, p in mu.items() if n not in self.adapt_names}
        adapted = {n: mu[n] for n in self.adapt_names}
        gradients = gradients_for(self.strategy) if training else autograd_gradients
        for _ in range(self.gamma_steps):
            with torch.enable_grad():
                grads = gradients(lambda p: self._loss_at({**fixed, **p}, x, y), adapted,
                                  training and not self.first_order_now)
            adapted = {n: adapted[n] - gamma * grads[n] for n in self.adapt_names}
        return adapted

    def _stds(self, log_stds: nn.ParameterDict, training: bool) -> Params:
        stds = {n: log_stds[parameter_key(n)].exp() for n in self.adapt_names}
        return stds if training else detached(stds)

    def prior(self, mu: Params, support_x: Tensor, support_y: Tensor, training: bool
              ) -> Gaussian:
        """``p(theta | support)`` as ``(mean, std)`` by parameter name."""
        gamma = self.gamma_p if training else self.gamma_p.detach()
        return (self._step_mean(mu, support_x, support_y, gamma, training),
                self._stds(self.log_prior_std, training))

    def inference(self, mu: Params, query_x: Tensor, query_y: Tensor) -> Gaussian:
        """``q(theta | support, query)`` as ``(mean, std)`` (meta-training only)."""
        return (self._step_mean(mu, query_x, query_y, self.gamma_q, True),
                self._stds(self.log_inference_std, True))

    def standard_normal_like(self, name: str, like: Tensor) -> Tensor:
        """The reparameterisation noise of parameter ``name`` in meta-training (the global
        generator, which the trainer checkpoints)."""
        return torch.randn_like(like)

    # -- adaptation ----------------------------------------------------------------------------
    def adapt_from(self, theta: Params, support_x: Tensor, support_y: Tensor, *,
                   training: bool, inner_steps: int, gradients=None) -> Params:
        """MAML's inner loop on the support from the initial parameters ``theta``."""
        if gradients is None:
            gradients = gradients_for(self.strategy) if training else autograd_gradients
        return inner_loop(lambda p: self._loss_at(p, support_x, support_y), theta,
                          self.update_rule, steps=inner_steps, adapt_names=self.adapt_names,
                          first_order=self.first_order_now or not training,
                          gradients=gradients)

    def adapt_task(self, support_x: Tensor, support_y: Tensor, *, training: bool,
                   inner_steps: int | None = None, samples: int | None = None,
                   seed: int | None = None) -> Params:
        """``K`` models ``phi_k``, stacked ``[K, ...]`` by adapted name: ``theta_k`` drawn from
        ``p(theta | support)`` (from a generator seeded by ``seed``, default 0), each adapted
        by the inner loop."""
        generator = torch.Generator().manual_seed(0 if seed is None else int(seed))
        return self.draw_adapted(support_x, support_y, self.samples if samples is None
                                 else samples, generator, training=training,
                                 inner_steps=inner_steps)

    def draw_adapted(self, support_x: Tensor, support_y: Tensor, samples: int,
                     generator: torch.Generator, *, training: bool = False,
                     inner_steps: int | None = None) -> Params:
        """``samples`` adapted models from ``p(theta | support)`` (see `adapt_task`)."""
        if inner_steps is None:
            inner_steps = self.inner_steps if training else self.eval_inner_steps
        inner_steps = check_positive_int("inner_steps", inner_steps, minimum=0)
        samples = check_positive_int("samples", samples)
        mu = parameters_for(self.inner_module, training)
        mean, std = self.prior(mu, support_x, support_y, training)
        theta = {n: mean[n] + std[n] * torch.randn((samples, *mean[n].shape),
                                                   generator=generator, dtype=mean[n].dtype)
                 for n in self.adapt_names}
        fixed = {n: p for n, p in mu.items() if n not in self.adapt_names}

        def adapt_one(sample: Params) -> Params:
            adapted = self.adapt_from({**fixed, **sample}, support_x, support_y,
                                      training=training, inner_steps=inner_steps,
                                      gradients=func_gradients)
            return {n: adapted[n] for n in self.adapt_names}

        return torch.func.vmap(adapt_one, randomness="different")(theta)

    def sample_outputs(self, state: Params, x: Tensor) -> Tensor:
        """``[K, m, out]``: every drawn model's outputs at ``x``."""
        fixed = {n: p for n, p in dict(self.inner_module.named_parameters()).items()
                 if n not in self.adapt_names}
        features = self.encode(x)
        return torch.func.vmap(lambda p: functional_call(self.inner_module, {**fixed, **p},
                                                         (features,)))(state)

    def predict(self, state: Params, x: Tensor) -> Tensor:
        """Regression: the drawn models' mean prediction. Classification: the logarithm of
        their mean softmax (log-probabilities, usable as logits)."""
        outputs = self.sample_outputs(state, x)
        if self.loss_name == "mse":
            return outputs.mean(dim=0)
        return torch.logsumexp(torch.log_softmax(outputs, dim=-1), dim=0) - math.log(
            outputs.shape[0])

    # -- meta-training -------------------------------------------------------------------------
    def task_objective(self, support_x: Tensor, support_y: Tensor, query_x: Tensor,
                       query_y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """One task's ``(L(phi, query) + kl_weight * KL, metric, KL)`` (module doc; the
        query loss and metric averaged over ``train_samples`` draws)."""
        mu = parameters_for(self.inner_module, True)
        q_mean, q_std = self.inference(mu, query_x, query_y)
        p_mean, p_std = self.prior(mu, support_x, support_y, True)
        kl = gaussian_kl((q_mean, q_std), (p_mean, p_std))
        if self.train_samples == 1:
            theta = {n: q_mean[n] + q_std[n] * self.standard_normal_like(n, q_std[n])
                     for n in self.adapt_names}
            loss, metric = self._query_scores(mu, theta, support_x, support_y, query_x,
                                              query_y, self.adapt_from)
        else:
            draws = self.train_samples
            theta = {n: q_mean[n] + q_std[n] * self.standard_normal_like(
                n, q_std[n].expand(draws, *q_std[n].shape)) for n in self.adapt_names}

            def scores(sample: Params) -> tuple[Tensor, Tensor]:
                return self._query_scores(mu, sample, support_x, support_y, query_x, query_y,
                                          partial(self.adapt_from, gradients=func_gradients))

            losses, metrics = torch.func.vmap(scores, randomness="different")(theta)
            loss, metric = losses.mean(), metrics.mean()
        return loss + self.kl_weight * kl, metric, kl

    def _query_scores(self, mu: Params, theta: Params, support_x: Tensor, support_y: Tensor,
                      query_x: Tensor, query_y: Tensor, adapt_from) -> tuple[Tensor, Tensor]:
        """``(L(phi, query), metric)`` of ``theta`` adapted on the support."""
        phi = adapt_from({**mu, **theta}, support_x, support_y, training=True,
                         inner_steps=self.inner_steps)
        outputs = functional_call(self.inner_module, phi, (self._query_input(query_x),))
        return self.loss_fn(outputs, query_y), self.metric_fn(outputs, query_y)

    def training_task_losses(self, batch: TaskBatch) -> tuple[Tensor, dict[str, Tensor]]:
        losses, metric, kl = map_tasks(self.task_objective, batch.support_x, batch.support_y,
                                       batch.query_x, batch.query_y, strategy=self.strategy)
        return losses, {self.metric_name: metric.detach(), "kl": kl.detach()}

    # -- meta-test -----------------------------------------------------------------------------
    def adapt(self, support_x: Tensor, support_y: Tensor | None = None, **options
              ) -> SampledPredictive | CategoricalPredictive:
        """The mixture predictive of ``samples`` adapted models drawn under ``seed``
        (regression: `SampledPredictive`; classification: `sampled_classifier`)."""
        options = self.check_adapt_options(options)
        samples = options.pop("samples", self.samples)
        seed = options.pop("seed", 0)

        def draw(count: int, generator: torch.Generator) -> Params:
            with evaluation_mode(self), torch.no_grad():
                return detached(self.draw_adapted(support_x, support_y, count, generator,
                                                  **options))

        def outputs(state: Params, x: Tensor) -> Tensor:
            with evaluation_mode(self):
                return self.sample_outputs(state, x)

        if self.loss_name != "mse":
            return sampled_classifier(draw, outputs, samples=samples, seed=seed)
        return SampledPredictive(draw, outputs, self.noise_std, samples=samples, seed=seed)
