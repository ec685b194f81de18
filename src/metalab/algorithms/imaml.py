"""iMAML: meta-learning with implicit gradients (Rajeswaran, Finn, Kakade & Levine, 2019).

Each task's adapted parameters are the (approximate) minimiser of the support loss plus a
proximal term that keeps them near the meta-parameters theta (the paper's eq. 4):

    phi*(theta) = argmin_phi  L_support(phi) + lam/2 ||phi - theta||^2,

reached by ``inner_steps`` steps of SGD (or Adam) with no graph kept. The implicit function
theorem on the stationarity condition ``grad L_support(phi*) + lam (phi* - theta) = 0``
gives the meta-gradient of the query loss without differentiating through those steps
(Lemma 1, eq. 6):

    d L_query(phi*) / d theta = (I + H / lam)^-1 grad L_query(phi*),   H = grad^2 L_support(phi*),

solved by ``cg_steps`` iterations of conjugate gradient on Hessian-vector products
(Algorithm 2). Memory holds one support gradient's graph, whatever ``inner_steps`` is.

How it fits the trainer: the per-task training loss handed to the base class is the
surrogate

    s(theta) = L_query(phi*).detach() + <g, theta> - <g, theta>.detach(),
    g = (I + H/lam)^-1 grad L_query(phi*)   (a constant: detached),

whose value is the query loss and whose gradient with respect to theta is the implicit
meta-gradient ``g``. Everything that uses per-task losses only through their values and
first derivatives in theta (the mean, ``task_chunk``, loss-weighting and gradient
combiners, several processes) is then exact; the surrogate's second derivative is zero,
so nothing may differentiate it twice.

Variants (``variant``):

- ``"paper"`` (default): the inner loop minimises the proximal objective above; the system
  is ``((1 + cg_damping) I + H / lam) x = grad L_query(phi*)`` (``cg_damping = 0``: the
  paper's).
- ``"released"``: the authors' released code (aravindr93/imaml_dev): the inner loop
  minimises the support loss alone, then takes one SGD step on ``lam/2 ||phi - theta||^2``
  (a pull-back toward theta, ``phi <- phi - inner_lr * lam * (phi - theta)``); the system is
  damped, ``((1 + cg_damping) I + H / (lam + 10)) x = grad L_query(phi)`` (their
  ``matrix_evaluator`` with ``regu_coef = cg_damping`` and ``lam_damping = 10``).

Batch norm is transductive per task (MAML's convention): the support and the query set are
each normalised with their own statistics.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn
from torch.func import functional_call

from metalab.algorithms.base import MetaLearner
from metalab.functional import (
    SGD,
    Adam,
    UpdateRule,
    hessian_vector_products,
    implicit_meta_gradient,
)
from metalab.tasks import TaskBatch
from metalab.validation import check_choice, check_positive_int, check_real

Params = dict[str, Tensor]
VARIANTS = ("paper", "released")
INNER_OPTIMIZERS = ("sgd", "adam")
#: ``lam_damping`` of the released code's matrix ``(1 + regu_coef) I + H / (lam + lam_damping)``.
RELEASED_HESSIAN_DAMPING = 10.0


class IMAML(MetaLearner, name="imaml"):
    """Implicit MAML.

    Args:
        model: any `nn.Module`; all of its parameters adapt.
        lam: strength of the proximal term, lambda (> 0).
        inner_lr: the inner optimizer's step size.
        inner_steps: inner steps in meta-training (no graph is kept: memory does not grow).
        cg_steps: conjugate-gradient iterations for the implicit meta-gradient.
        cg_damping: added to the identity's coefficient of the solved system (0: none).
        inner_optimizer: ``"sgd"`` (the paper's gradient descent) or ``"adam"``
            (betas 0.9, 0.999; fresh state per task).
        variant: ``"paper"`` or ``"released"`` (see the module doc).
        eval_inner_steps: inner steps at meta-test (default ``inner_steps``);
            ``adapt(..., inner_steps=k)`` overrides it for one call.
        loss: ``"cross_entropy"`` (classification) or ``"mse"`` (regression).
        strategy: ``"loop"`` only (tasks one after another).
    """

    adapt_options = ("inner_steps",)
    #: Options of other gradient-based methods that cannot go with iMAML, and why (the
    #: config check names them when the run is built).
    incompatible_options: ClassVar[dict[str, str]] = {
        "first_order": "iMAML's meta-gradient is implicit (cg_steps sets its accuracy), so "
                       "there is no first- or second-order choice",
        "checkpoint_steps": "iMAML keeps no graph of the inner loop, so there is nothing to "
                            "checkpoint (its memory is already flat in inner_steps)",
        "update_rule": "iMAML's inner loop is chosen by inner_optimizer",
        "adapt": "iMAML adapts every parameter (the proximal term is on all of theta)",
    }

    def __init__(self, model: nn.Module, lam: float = 2.0, inner_lr: float = 0.1,
                 inner_steps: int = 16, cg_steps: int = 5, cg_damping: float = 0.0,
                 inner_optimizer: str = "sgd", variant: str = "paper",
                 eval_inner_steps: int | None = None, loss: str = "cross_entropy",
                 strategy: str = "loop") -> None:
        super().__init__(loss, strategy)
        if self.strategy != "loop":
            raise ValueError(f"iMAML supports strategy='loop' only (conjugate gradient runs "
                             f"task by task), got strategy={strategy!r}")
        self.model = model
        self.lam = check_real("lam", lam, minimum=0.0, inclusive=False)
        self.inner_lr = check_real("inner_lr", inner_lr, minimum=0.0, inclusive=False)
        self.inner_steps = check_positive_int("inner_steps", inner_steps)
        self.eval_inner_steps = self.inner_steps if eval_inner_steps is None else (
            check_positive_int("eval_inner_steps", eval_inner_steps, minimum=0))
        self.cg_steps = check_positive_int("cg_steps", cg_steps)
        self.cg_damping = check_real("cg_damping", cg_damping, minimum=0.0)
        self.inner_optimizer = check_choice("inner_optimizer", inner_optimizer,
                                            INNER_OPTIMIZERS)
        self.variant = check_choice("variant", variant, VARIANTS)
        self.update_rule: UpdateRule = (SGD(self.inner_lr) if self.inner_optimizer == "sgd"
                                        else Adam(self.inner_lr, (0.9, 0.999)))

    # -- the inner problem ---------------------------------------------------------------
    def support_loss_of(self, support_x: Tensor, support_y: Tensor):
        """``phi -> L_support(phi)``, the task's loss as a function of the parameters."""
        def support_loss(params: Params) -> Tensor:
            return self.loss_fn(functional_call(self.model, params, (support_x,)), support_y)
        return support_loss

    def inner_solution(self, support_x: Tensor, support_y: Tensor, steps: int) -> Params:
        """``phi*``: ``steps`` steps of the inner optimizer from theta, detached (no graph).

        Paper: on ``L_support(phi) + lam/2 ||phi - theta||^2`` (its gradient is
        ``grad L_support(phi) + lam (phi - theta)``). Released: on ``L_support`` alone,
        then one SGD step on the proximal term (the pull-back).
        """
        theta = {n: p.detach() for n, p in self.model.named_parameters()}
        proximal = self.lam if self.variant == "paper" else 0.0
        phi = minimise_without_graph(self.support_loss_of(support_x, support_y), theta,
                                     self.update_rule, steps, proximal)
        if self.variant == "released":
            with torch.no_grad():
                phi = {n: p - self.inner_lr * self.lam * (p - theta[n]) for n, p in phi.items()}
        return phi

    def adapt_task(self, support_x: Tensor, support_y: Tensor, *, training: bool,
                   inner_steps: int | None = None) -> Params:
        """The task's parameters ``phi*`` (detached: the meta-gradient is implicit)."""
        if inner_steps is None:
            inner_steps = self.inner_steps if training else self.eval_inner_steps
        steps = check_positive_int("inner_steps", inner_steps, minimum=0)
        return self.inner_solution(support_x, support_y, steps)

    def predict(self, adapted: Params, x: Tensor) -> Tensor:
        return functional_call(self.model, adapted, (x,))

    # -- the implicit meta-gradient ------------------------------------------------------
    def system_coefficients(self) -> tuple[float, float]:
        """``(a, c)`` of the solved system ``(a I + c H) x = grad L_query``."""
        if self.variant == "paper":
            return 1.0 + self.cg_damping, 1.0 / self.lam
        return 1.0 + self.cg_damping, 1.0 / (self.lam + RELEASED_HESSIAN_DAMPING)

    def task_meta_gradient(self, support_x: Tensor, support_y: Tensor, query_x: Tensor,
                           query_y: Tensor) -> tuple[Tensor, Tensor, Params]:
        """One task's query loss and metric at ``phi*`` and its implicit meta-gradient
        ``(I + H/lam)^-1 grad L_query(phi*)`` (all detached)."""
        phi = self.adapt_task(support_x, support_y, training=True)
        leaves = {n: p.detach().requires_grad_(True) for n, p in phi.items()}
        with torch.enable_grad():
            loss, metric = self.score(self.predict(leaves, query_x), query_y)
            grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
        query_grad = {n: torch.zeros_like(p) if g is None else g
                      for (n, p), g in zip(leaves.items(), grads, strict=True)}
        identity_coef, hessian_coef = self.system_coefficients()
        meta_grad = implicit_meta_gradient(
            hessian_vector_products(self.support_loss_of(support_x, support_y), phi),
            query_grad, identity_coef=identity_coef, hessian_coef=hessian_coef,
            steps=self.cg_steps)
        return loss.detach(), metric.detach(), meta_grad

    def training_task_losses(self, batch: TaskBatch) -> tuple[Tensor, dict[str, Tensor]]:
        """Per task, the surrogate ``L_query(phi*) + <g, theta> - <g, theta>.detach()``:
        the query loss in value, the implicit meta-gradient ``g`` in gradient."""
        theta = dict(self.model.named_parameters())
        losses, metrics = [], []
        for t in range(len(batch)):
            loss, metric, meta_grad = self.task_meta_gradient(
                batch.support_x[t], batch.support_y[t], batch.query_x[t], batch.query_y[t])
            linear = sum((meta_grad[n] * theta[n]).sum() for n in theta)
            losses.append(loss + (linear - linear.detach()))
            metrics.append(metric)
        return torch.stack(losses), {self.metric_name: torch.stack(metrics)}


def minimise_without_graph(loss_of, start: Params, rule: UpdateRule, steps: int,
                           proximal: float = 0.0) -> Params:
    """``steps`` steps of ``rule`` on ``loss_of(phi) + proximal/2 ||phi - start||^2`` from
    ``start``; every step's gradient is taken at detached leaves, so no graph survives a
    step (memory is that of one gradient whatever ``steps`` is)."""
    anchor = {n: p.detach() for n, p in start.items()}
    params = dict(anchor)
    state = rule.init(params)
    for _ in range(steps):
        leaves = {n: p.detach().requires_grad_(True) for n, p in params.items()}
        with torch.enable_grad():
            grads = torch.autograd.grad(loss_of(leaves), list(leaves.values()),
                                        allow_unused=True)
        with torch.no_grad():
            grads = {n: (torch.zeros_like(p) if g is None else g) + proximal * (p - anchor[n])
                     for (n, p), g in zip(params.items(), grads, strict=True)}
            params, state = rule.update(grads, state, params)
    return params
