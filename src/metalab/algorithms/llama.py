"""LLAMA (Grant et al. 2018, "Recasting Gradient-Based Meta-Learning as Hierarchical
Bayes", section 4): MAML whose adapted parameters are the mode of a Laplace approximation
of the task posterior, giving a predictive distribution.

After MAML's inner loop, ``theta'`` is the (approximate) mode of ``p(theta | support)``;
the Laplace approximation is ``N(theta', diag(1 / (h + lambda)))`` with ``lambda`` the prior
precision (``prior_precision``) and ``h`` the diagonal of the support's Gauss-Newton matrix
of the negative log-likelihood, ``J_i = d f(x_i; theta') / d theta`` the output Jacobian:

- regression (Gaussian likelihood, noise ``sigma = noise_std``):
  ``h_k = (1 / sigma^2) sum_i sum_o J_{i,o,k}^2``;
- classification (softmax likelihood, ``p_i = softmax(f(x_i; theta'))``, whose logit
  Hessian is ``diag(p_i) - p_i p_i^T``):
  ``h_k = sum_i [sum_o p_{i,o} J_{i,o,k}^2 - (sum_o p_{i,o} J_{i,o,k})^2]``.

The predictive is the linearised one (the GLM predictive of MacKay 1992 / Immer et al.
2021): ``f(x; theta) ~ f(x; theta') + J(x) (theta - theta')``, so the outputs are Gaussian
with mean ``f(x; theta')`` and per-output variance ``v_o(x) = sum_k J_{o,k}(x)^2 / (h_k +
lambda)``:

- regression: ``p(y | x, support) = N(f(x; theta'), v(x) + sigma^2)``, a
  `GaussianPredictive` whose mean is MAML's point prediction;
- classification: the probit approximation of the softmax of Gaussian logits, per output
  (MacKay 1992; its multi-class "mean-field" form, Lu et al. 2020):
  ``p(y = o | x, support) ~ softmax_o(f_o(x; theta') / sqrt(1 + pi v_o(x) / 8))``,
  a `CategoricalPredictive` (the logits' covariances between outputs are left out).

As ``lambda`` (or the curvature) grows the parameter uncertainty vanishes: the variance tends
to ``sigma^2`` (the probabilities to MAML's softmax) and the mean is the point prediction
(tested).

Training objective: by default plain MAML (the query loss after the inner loop), the Laplace
approximation used at meta-test only. With ``logdet_weight = eta > 0`` the per-task
meta-loss adds the log-determinant term of the Laplace evidence (Grant et al. 2018, eq. 5:
``-log p(X | theta) ~ -log p(X | phi') + 1/2 log det H + const``) of the diagonal posterior
precision at the adapted parameters, differentiated through the inner loop:

    L_task = L_query(theta') + eta * 1/2 sum_k log(h_k(theta') + lambda).

The
curvature covers the parameters named by ``laplace`` (prefixes; default every adapted
parameter, ``adapt``), the others are held at their values after adaptation: ``laplace:
[head]`` is the last-layer Laplace approximation, whose Jacobian is cheap for a Conv4.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.func import functional_call, jacrev

from metalab.algorithms.base import CategoricalPredictive, detached, evaluation_mode
from metalab.algorithms.maml import MAML
from metalab.algorithms.predictive import GaussianPredictive
from metalab.algorithms.predictive_scores import PredictiveScores
from metalab.functional import map_tasks
from metalab.tasks import TaskBatch

Params = dict[str, Tensor]


class LLAMA(PredictiveScores, MAML, name="llama"):
    """MAML with a diagonal Laplace predictive at meta-test (module doc).

    Args (beyond `MAML`'s):
        noise_std: the observation noise ``sigma`` of the regression likelihood and
            predictive (unused for classification).
        prior_precision: ``lambda``, the prior precision added to the curvature.
        laplace: parameter-name prefixes the Laplace approximation covers (``None``: every
            adapted parameter); each must be adapted.
        loss: ``"mse"`` (regression, the default) or ``"cross_entropy"``.
        logdet_weight: ``eta``, the weight of the log-determinant term in the meta-loss
            (0: plain MAML training).
    """

    #: The builder does not choose a subset for LLAMA (as for T-Net and WarpGrad): the
    #: Laplace curvature covers every adapted parameter; ``adapt`` restricts both explicitly.
    chooses_adapted_parameters = False

    def __init__(self, model: nn.Module, noise_std: float = 0.1, prior_precision: float = 1.0,
                 laplace: list[str] | str | None = None, loss: str = "mse",
                 logdet_weight: float = 0.0, **kwargs) -> None:
        super().__init__(model, loss=loss, **kwargs)
        if not logdet_weight >= 0:
            raise ValueError(f"logdet_weight must be >= 0, got {logdet_weight}")
        if logdet_weight > 0 and self.multi_step_loss:
            raise ValueError("logdet_weight > 0 is not combined with multi_step_loss: the "
                             "log-determinant is taken at the last step's parameters only")
        self.logdet_weight = float(logdet_weight)
        if not noise_std > 0:
            raise ValueError(f"noise_std must be positive, got {noise_std}")
        if not prior_precision > 0:
            raise ValueError(f"prior_precision must be positive, got {prior_precision}")
        self.noise_std = float(noise_std)
        self.prior_precision = float(prior_precision)
        self.laplace_names = self._laplace_names(laplace)

    def _laplace_names(self, laplace: list[str] | str | None) -> list[str]:
        if laplace is None:
            return list(self.adapt_names)
        prefixes = [laplace] if isinstance(laplace, str) else list(laplace)
        chosen = [n for n in self.adapt_names
                  if any(n == p or n.startswith(p + ".") for p in prefixes)]
        if not chosen:
            raise ValueError(f"laplace={laplace!r} names no adapted parameter; adapted: "
                             f"{self.adapt_names}")
        return chosen

    def output_jacobian(self, adapted: Params, x: Tensor) -> Params:
        """``d f(x; theta') / d theta_k`` for the Laplace names: ``[m, out, *shape]`` each."""
        fixed = {n: p for n, p in adapted.items() if n not in self.laplace_names}
        inputs = self._query_input(x)

        def outputs(params: Params) -> Tensor:
            return functional_call(self.inner_module, {**fixed, **params}, (inputs,))

        with torch.enable_grad():
            return jacrev(outputs)({n: adapted[n] for n in self.laplace_names})

    def curvature(self, adapted: Params, support_x: Tensor) -> Params:
        """``h``, the Gauss-Newton diagonal of the support NLL at ``theta'`` (module doc)."""
        jacobian = self.output_jacobian(adapted, support_x)
        if self.loss_name == "mse":
            return {n: (j ** 2).sum(dim=(0, 1)) / self.noise_std ** 2
                    for n, j in jacobian.items()}
        p = torch.softmax(self.predict(adapted, support_x), dim=-1)  # [m, out]
        curvature = {}
        for n, j in jacobian.items():
            weights = p.reshape(*p.shape, *([1] * (j.dim() - 2)))
            curvature[n] = ((weights * j ** 2).sum(dim=1)
                            - (weights * j).sum(dim=1) ** 2).sum(dim=0)
        return curvature

    def posterior_precision(self, adapted: Params, support_x: Tensor) -> Params:
        """``h + lambda`` per Laplace parameter entry."""
        return {n: h + self.prior_precision
                for n, h in self.curvature(adapted, support_x).items()}

    def log_determinant(self, adapted: Params, support_x: Tensor) -> Tensor:
        """``1/2 log det`` of the diagonal posterior precision, ``1/2 sum_k log(h_k +
        lambda)`` (differentiable through ``adapted``)."""
        precision = self.posterior_precision(adapted, support_x)
        return 0.5 * sum(torch.log(p).sum() for p in precision.values())

    def training_task_losses(self, batch: TaskBatch) -> tuple[Tensor, dict[str, Tensor]]:
        """MAML's query losses, plus ``eta`` times the log-determinant term (module doc)."""
        if self.logdet_weight == 0:
            return super().training_task_losses(batch)

        def per_task(sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor):
            adapted = self.adapt_task(sx, sy, training=True)
            loss, metric = self.score(self.predict(adapted, qx), qy)
            return loss + self.logdet_weight * self.log_determinant(adapted, sx), metric

        losses, metric = map_tasks(per_task, batch.support_x, batch.support_y, batch.query_x,
                                   batch.query_y, strategy=self.strategy)
        return losses, {self.metric_name: metric.detach()}

    def output_variance(self, adapted: Params, precision: Params, x: Tensor) -> Tensor:
        """``v(x)`` ``[m, out]``: the linearised outputs' variance (module doc)."""
        jacobian = self.output_jacobian(adapted, x)
        return sum(((j ** 2) / precision[n]).flatten(start_dim=2).sum(dim=-1)
                   for n, j in jacobian.items())

    def laplace_moments(self, adapted: Params, precision: Params, x: Tensor
                        ) -> tuple[Tensor, Tensor]:
        """The regression predictive's ``(mean, variance)`` at ``x`` (module doc)."""
        return (self.predict(adapted, x),
                self.output_variance(adapted, precision, x) + self.noise_std ** 2)

    def probit_probabilities(self, adapted: Params, precision: Params, x: Tensor) -> Tensor:
        """The classification predictive's probabilities ``[m, classes]`` (module doc)."""
        logits = self.predict(adapted, x)
        variance = self.output_variance(adapted, precision, x)
        return torch.softmax(logits / torch.sqrt(1 + math.pi * variance / 8), dim=-1)

    def adapt(self, support_x: Tensor, support_y: Tensor | None = None, **options
              ) -> GaussianPredictive | CategoricalPredictive:
        """MAML's adaptation, then the Laplace predictive around ``theta'``."""
        options = self.check_adapt_options(options)
        with evaluation_mode(self), torch.no_grad():
            adapted = detached(self.adapt_task(support_x, support_y, training=False,
                                               **options))
            precision = self.posterior_precision(adapted, support_x)

        if self.loss_name == "mse":
            def decode(x: Tensor, z: Tensor | None) -> tuple[Tensor, Tensor]:
                with evaluation_mode(self):
                    return self.laplace_moments(adapted, precision, x)

            return GaussianPredictive(decode)

        def probabilities(x: Tensor) -> Tensor:
            with evaluation_mode(self):
                return self.probit_probabilities(adapted, precision, x)

        return CategoricalPredictive(lambda x: torch.log(probabilities(x)), probabilities)
