"""An ensemble of ``M`` MAMLs (Finn et al. 2017) in one module: the baseline of the Bayesian
MAML family (Yoon et al. 2018, section 5, "Ensemble of MAMLs").

Each member ``m`` has its own meta-learned initialisation ``theta_0^m`` and adapts on the
support by its own gradient steps ``theta^m <- theta^m - alpha grad L_support(theta^m)``;
the meta-loss is the mean of the members' MAML query losses, so each member receives
exactly its own MAML meta-gradient (divided by ``M``) and the members never interact. The
predictive is the members' mixture, as for BMAML (`ParticleMAML`): a Gaussian with the
members' mean and variance plus ``noise_std^2`` for regression, the mean softmax for
classification.
"""

from __future__ import annotations

from torch import Tensor

from metalab.algorithms.bmaml import ParticleMAML
from metalab.functional import map_tasks
from metalab.tasks import TaskBatch

Params = dict[str, Tensor]


class MAMLEnsemble(ParticleMAML, name="maml-ensemble"):
    """``M`` independent MAMLs (module doc); the arguments are `ParticleMAML`'s."""

    def inner_update(self, params: Params, loss_grads: Params) -> Params:
        return {n: p - self.inner_lr * loss_grads[n] for n, p in params.items()}

    def training_task_losses(self, batch: TaskBatch) -> tuple[Tensor, dict[str, Tensor]]:
        """Per task: the mean over members of each member's query loss; the metric is the
        ensemble's (averaged prediction)."""

        def per_task(sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor):
            adapted = self.adapt_task(sx, sy, training=True)
            loss = self.particle_losses(adapted, qx, qy).mean()
            return loss, self.metric_fn(self.predict(adapted, qx), qy)

        losses, metric = map_tasks(per_task, batch.support_x, batch.support_y, batch.query_x,
                                   batch.query_y, strategy=self.strategy)
        return losses, {self.metric_name: metric.detach()}
