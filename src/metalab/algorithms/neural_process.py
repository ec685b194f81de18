"""The neural-process family: conditional (CNP), latent (NP) and attentive (ANP) neural
processes, black-box regressors that adapt by encoding the context set.

``adapt_task`` encodes the support (context) set; ``predict`` decodes at the query inputs
a Gaussian ``[mean, variance]`` (the ``gaussian_nll`` objective). `adapt` returns a
`GaussianPredictive` (predictive mean, variance, seeded samples, log-likelihood).

- **CNP** (Garnelo et al. 2018a, "Conditional Neural Processes", eq. 2-4):
  ``r = (1/n) sum_i h(x_i, y_i)``, ``(mu, sigma^2) = g(x, r)``, trained by the Gaussian
  negative log-likelihood of the targets ``-log N(y_T; mu(x_T), sigma^2(x_T))``.
- **NP** (Garnelo et al. 2018b, "Neural Processes", eq. 7): a latent ``z`` with
  ``q(z | C) = N(mu(s_C), sigma(s_C)^2)``, ``s_C = (1/n) sum_i s(x_i, y_i)``; trained by the
  ELBO with the context a subset of the target (here ``T = C ∪ Q``, support then query):
  ``log p(y_T | x_T, C) >= E_{q(z|T)}[log p(y_T | x_T, z)] - KL(q(z | T) || q(z | C))``,
  one reparameterised sample of ``z``, the bound divided by the number of target entries.
- **ANP** (Kim et al. 2019, "Attentive Neural Processes", section 3): the NP's latent path
  plus a deterministic path where each target attends to the context,
  ``r*(x) = MultiHead(Q = e(x), K = e(x_C), V = r_C)``; the decoder sees ``(x, r*(x), z)``.

At meta-test the latent methods score the importance-weighted log-likelihood estimate
(`GaussianPredictive.log_likelihood`, proposal ``q(z | C ∪ Q)``); the reported ``mse`` is
that of the predictive mean.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from metalab.algorithms.base import MetaLearner, detached, evaluation_mode
from metalab.algorithms.predictive import (
    GaussianPredictive,
    diagonal_gaussian_kl,
    gaussian_log_density,
)
from metalab.functional import map_tasks
from metalab.nn.neural_process import NeuralProcessNet, check_context
from metalab.tasks import TaskBatch
from metalab.validation import check_positive_int

State = dict[str, Any]


class ConditionalNeuralProcess(MetaLearner, name="cnp"):
    """CNP: encode the context, decode a Gaussian at each target (see the module doc).

    Args:
        model: a `NeuralProcessNet` (``model.name: neural-process``).
        samples: latent draws of the predictive's mean, variance and log-likelihood
            estimate (latent methods only).
        strategy: ``loop`` or ``vmap`` over the tasks of a meta-batch.
    """

    #: Names of the log-likelihood reported beside the metric at evaluation.
    log_likelihood_name: ClassVar[str] = "log_likelihood"

    def __init__(self, model: NeuralProcessNet, strategy: str = "loop") -> None:
        super().__init__("gaussian_nll", strategy)
        if not isinstance(model, NeuralProcessNet):
            raise TypeError(f"{type(self).__name__} needs a NeuralProcessNet "
                            f"(model.name: neural-process), got {type(model).__name__}")
        self.check_model(model)
        self.model = model

    def check_model(self, model: NeuralProcessNet) -> None:
        if model.latent or not model.deterministic or model.attention_heads:
            raise ValueError("cnp needs model.latent: 0, model.deterministic: true and "
                             "model.attention_heads: 0 (mean aggregation)")

    # -- the contract --------------------------------------------------------------------
    def adapt_task(self, support_x: Tensor, support_y: Tensor | None, *, training: bool,
                   **options) -> State:
        """The context itself (the representation depends on the target for ANP)."""
        if support_y is None:
            raise ValueError(f"{type(self).__name__} adapts to labelled context points; "
                             f"support_y is None")
        check_context(support_x, support_y)
        return {"context_x": support_x, "context_y": support_y}

    def decode(self, state: State, x: Tensor, z: Tensor | None) -> tuple[Tensor, Tensor]:
        """``(mean, variance)`` of ``p(y | x, context, z)``."""
        r = self.model.deterministic_representation(state["context_x"], state["context_y"], x)
        return self.model.decode(x, r, z)

    def predict(self, state: State, x: Tensor) -> Tensor:
        """``[mean, variance]`` at ``x`` (latent methods: at the mean of ``q(z | C)``)."""
        z = state["prior"][0] if "prior" in state else None
        return torch.cat(self.decode(state, x, z), dim=-1)

    # -- meta-test -----------------------------------------------------------------------
    def predictive(self, state: State) -> GaussianPredictive:
        """The predictive distribution of an adapted ``state``."""
        return GaussianPredictive(lambda x, z: self.decode(state, x, z))

    def adapt(self, support_x: Tensor, support_y: Tensor | None = None, **options
              ) -> GaussianPredictive:
        """Encode the context (eval mode, no graph); the `GaussianPredictive` it gives."""
        options = self.check_adapt_options(options)
        with evaluation_mode(self), torch.no_grad():
            state = detached(self.adapt_task(support_x, support_y, training=False, **options))
        return self.predictive(state)

    def evaluation_task_losses(self, batch: TaskBatch, **options
                               ) -> tuple[Tensor, dict[str, Tensor]]:
        """Per task, through `adapt`: the loss is the negative log-likelihood per target
        entry (importance-weighted for latent methods), beside the ``mse`` of the predictive
        mean and the ``log_likelihood`` per entry."""
        losses, errors = [], []
        for t in range(len(batch)):
            predictive = self.adapt(batch.support_x[t], batch.support_y[t], **options)
            x, y = batch.query_x[t], batch.query_y[t]
            losses.append(-predictive.log_likelihood(x, y) / y.numel())
            errors.append(((predictive.mean(x) - y) ** 2).mean())
        losses_ = torch.stack(losses)
        return losses_, {self.metric_name: torch.stack(errors),
                         self.log_likelihood_name: -losses_}


class LatentNeuralProcess(ConditionalNeuralProcess, name="np"):
    """NP: a global latent ``z`` (and optionally the CNP's deterministic path), trained by
    the ELBO with the context a subset of the target (see the module doc)."""

    def __init__(self, model: NeuralProcessNet, samples: int = 64, strategy: str = "loop"
                 ) -> None:
        super().__init__(model, strategy)
        self.samples = check_positive_int("samples", samples)

    def check_model(self, model: NeuralProcessNet) -> None:
        if not model.latent or model.attention_heads:
            raise ValueError(f"{type(self).__name__} needs model.latent > 0 and "
                             f"model.attention_heads: 0 (mean aggregation)")

    def adapt_task(self, support_x: Tensor, support_y: Tensor | None, *, training: bool,
                   **options) -> State:
        """The context and its latent distribution ``q(z | C)`` (the prior at test)."""
        state = super().adapt_task(support_x, support_y, training=training)
        state["prior"] = self.model.latent_distribution(support_x, support_y)
        return state

    def predictive(self, state: State) -> GaussianPredictive:
        context_x, context_y = state["context_x"], state["context_y"]

        def proposal(x: Tensor, y: Tensor):
            return self.model.latent_distribution(torch.cat([context_x, x], dim=-2),
                                                  torch.cat([context_y, y], dim=-2))

        return GaussianPredictive(lambda x, z: self.decode(state, x, z), state["prior"],
                                  proposal, samples=self.samples)

    def negative_elbo(self, support_x: Tensor, support_y: Tensor, query_x: Tensor,
                      query_y: Tensor) -> tuple[Tensor, Tensor]:
        """``-(E_{q(z|T)} log p(y_T | x_T, z) - KL(q(z|T) || q(z|C))) / |y_T|`` with one
        reparameterised ``z`` and ``T = C ∪ Q``; and the query MSE of that sample's mean."""
        state = self.adapt_task(support_x, support_y, training=True)
        target_x = torch.cat([support_x, query_x], dim=-2)
        target_y = torch.cat([support_y, query_y], dim=-2)
        posterior = self.model.latent_distribution(target_x, target_y)
        mu, std = posterior
        z = mu + std * torch.randn_like(std)
        mean, variance = self.decode(state, target_x, z)
        log_likelihood = gaussian_log_density(target_y, mean, variance, dims=2)
        elbo = log_likelihood - diagonal_gaussian_kl(posterior, state["prior"])
        query_error = ((mean[support_x.shape[-2]:] - query_y) ** 2).mean()
        return -elbo / target_y.numel(), query_error

    def training_task_losses(self, batch: TaskBatch) -> tuple[Tensor, dict[str, Tensor]]:
        """The ELBO needs the query targets (``q(z | C ∪ Q)``), so training does not go
        through `predict`: per task, the negative ELBO per target entry."""
        losses, errors = map_tasks(self.negative_elbo, batch.support_x, batch.support_y,
                                   batch.query_x, batch.query_y, strategy=self.strategy)
        return losses, {self.metric_name: errors.detach()}


class AttentiveNeuralProcess(LatentNeuralProcess, name="anp"):
    """ANP: the NP with multi-head cross-attention from targets to contexts in the
    deterministic path (Kim et al. 2019)."""

    def check_model(self, model: NeuralProcessNet) -> None:
        if not (model.latent and model.deterministic and model.attention_heads):
            raise ValueError("anp needs model.latent > 0, model.deterministic: true and "
                             "model.attention_heads > 0")
