"""LLAMA (Grant et al. 2018, "Recasting Gradient-Based Meta-Learning as Hierarchical
Bayes", section 4): MAML whose adapted parameters are the mode of a Laplace approximation
of the task posterior, giving a predictive distribution.

After MAML's inner loop, ``theta'`` is the (approximate) mode of ``p(theta | support)``;
the Laplace approximation is ``N(theta', diag(1 / (h + lambda)))`` with ``lambda`` the prior
precision (``prior_precision``) and ``h`` the diagonal of the support's Gauss-Newton matrix
(for the Gaussian likelihood the Fisher) of the negative log-likelihood with observation
noise ``sigma`` (``noise_std``):

    h_k = (1 / sigma^2) sum_{i in support} sum_o (d f_o(x_i; theta') / d theta_k)^2.

The predictive is the linearised one (the GLM predictive of MacKay 1992 / Immer et al.
2021): ``f(x; theta) ~ f(x; theta') + J(x) (theta - theta')``, so

    p(y | x, support) = N(f(x; theta'),  sum_k J_k(x)^2 / (h_k + lambda) + sigma^2),

a `GaussianPredictive` whose mean is MAML's point prediction. As ``lambda`` (or the
curvature) grows the parameter uncertainty vanishes: the variance tends to ``sigma^2`` and
the mean is the point prediction (tested).

Training objective: plain MAML (the query MSE after the inner loop); the Laplace
approximation is used at meta-test only. Grant et al.'s objective adds the log-determinant
``1/2 log det(H)`` of the curvature to the query NLL; it is not implemented here. Regression
(``loss: mse``) only; the curvature covers the adapted parameters (``adapt``), the others are
held at their meta-learned values.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.func import functional_call, jacrev

from metalab.algorithms.base import detached, evaluation_mode
from metalab.algorithms.maml import MAML
from metalab.algorithms.predictive import GaussianPredictive
from metalab.algorithms.predictive_scores import PredictiveScores

Params = dict[str, Tensor]


class LLAMA(PredictiveScores, MAML, name="llama"):
    """MAML with a diagonal Laplace predictive at meta-test (module doc).

    Args (beyond `MAML`'s):
        noise_std: the observation noise ``sigma`` of the likelihood and the predictive.
        prior_precision: ``lambda``, the prior precision added to the curvature.
    """

    #: The builder does not choose a subset for LLAMA (as for T-Net and WarpGrad): the
    #: Laplace curvature covers every adapted parameter; ``adapt`` restricts both explicitly.
    chooses_adapted_parameters = False

    def __init__(self, model: nn.Module, noise_std: float = 0.1, prior_precision: float = 1.0,
                 loss: str = "mse", **kwargs) -> None:
        if loss != "mse":
            raise ValueError(f"llama is implemented for regression only: loss must be 'mse', "
                             f"got {loss!r}")
        super().__init__(model, loss=loss, **kwargs)
        if not noise_std > 0:
            raise ValueError(f"noise_std must be positive, got {noise_std}")
        if not prior_precision > 0:
            raise ValueError(f"prior_precision must be positive, got {prior_precision}")
        self.noise_std = float(noise_std)
        self.prior_precision = float(prior_precision)

    def output_jacobian(self, adapted: Params, x: Tensor) -> Params:
        """``d f(x; theta') / d theta_k`` for the adapted names: ``[m, out, *shape]`` each."""
        fixed = {n: p for n, p in adapted.items() if n not in self.adapt_names}
        inputs = self._query_input(x)

        def outputs(params: Params) -> Tensor:
            return functional_call(self.inner_module, {**fixed, **params}, (inputs,))

        with torch.enable_grad():
            return jacrev(outputs)({n: adapted[n] for n in self.adapt_names})

    def curvature(self, adapted: Params, support_x: Tensor) -> Params:
        """``h``, the Gauss-Newton diagonal of the support NLL at ``theta'`` (module doc)."""
        jacobian = self.output_jacobian(adapted, support_x)
        return {n: (j ** 2).sum(dim=(0, 1)) / self.noise_std ** 2 for n, j in jacobian.items()}

    def posterior_precision(self, adapted: Params, support_x: Tensor) -> Params:
        """``h + lambda`` per adapted parameter entry."""
        return {n: h + self.prior_precision
                for n, h in self.curvature(adapted, support_x).items()}

    def laplace_moments(self, adapted: Params, precision: Params, x: Tensor
                        ) -> tuple[Tensor, Tensor]:
        """The linearised predictive's ``(mean, variance)`` at ``x`` (module doc)."""
        mean = self.predict(adapted, x)
        jacobian = self.output_jacobian(adapted, x)
        parameter_variance = sum(
            ((j ** 2) / precision[n]).flatten(start_dim=2).sum(dim=-1)
            for n, j in jacobian.items())
        return mean, parameter_variance + self.noise_std ** 2

    def adapt(self, support_x: Tensor, support_y: Tensor | None = None, **options
              ) -> GaussianPredictive:
        """MAML's adaptation, then the Laplace predictive around ``theta'``."""
        options = self.check_adapt_options(options)
        with evaluation_mode(self), torch.no_grad():
            adapted = detached(self.adapt_task(support_x, support_y, training=False,
                                               **options))
            precision = self.posterior_precision(adapted, support_x)

        def decode(x: Tensor, z: Tensor | None) -> tuple[Tensor, Tensor]:
            with evaluation_mode(self):
                return self.laplace_moments(adapted, precision, x)

        return GaussianPredictive(decode)
