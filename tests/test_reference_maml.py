"""Independent references for the gradient-based methods: MAML, FOMAML, Meta-SGD, ANIL.

The expected side is written out in the test in float64, without metalab code:

- MAML on linear regression ``y = x w`` with the MSE loss ``L(w) = 1/n |X w - y|^2`` has
  ``grad L = 2/n X^T (X w - y)`` and Hessian ``H = 2/n X^T X``, so (Finn et al. 2017, eq. 1)

      w'  = w - a * 2/n_s X_s^T (X_s w - y_s)                       (one inner step)
      dL_q(w')/dw = (I - a H_s) * 2/n_q X_q^T (X_q w' - y_q)         (second order)

  and with two steps ``w'' = w' - a grad L_s(w')`` the Jacobian is ``(I - a H_s)^2``.
- FOMAML's meta-gradient is the query gradient at ``w'`` (the Jacobian dropped).
- Meta-SGD: ``w' = w - alpha o grad L_s(w)``; ``dL_q/dw = (I - H_s diag(alpha)) g_q`` and
  ``dL_q/dalpha = -g_s o g_q`` with ``g_s = grad L_s(w)``, ``g_q = grad L_q(w')``.
- ANIL: only the head steps, on the body's features; the body is the same function.

A linear layer with a bias is ``z w`` on ``z = [x, 1]``, so the bias is checked the same way.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from metalab.algorithms import ANIL, MAML, MetaSGD
from metalab.nn import BodyHead
from metalab.tasks import TaskBatch

DIM = 3
SHOTS = 6
QUERIES = 5
TASKS = 3


def regression_batch(seed: int = 0, tasks: int = TASKS) -> TaskBatch:
    g = torch.Generator().manual_seed(seed)

    def draw(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    return TaskBatch(draw(tasks, SHOTS, DIM), draw(tasks, SHOTS, 1), draw(tasks, QUERIES, DIM),
                     draw(tasks, QUERIES, 1))


def linear_model(seed: int = 1, bias: bool = True) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(DIM, 1, bias=bias).double()


def with_ones(x: torch.Tensor) -> torch.Tensor:
    """``[x, 1]``: a bias is one more weight on a constant input."""
    return torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype)], dim=1)


def theta_of(model: nn.Linear) -> torch.Tensor:
    """``[w; b]`` as a column ``[DIM + 1, 1]``."""
    return torch.cat([model.weight.detach().T, model.bias.detach().view(1, 1)])


def mse_gradient(z: torch.Tensor, y: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    return 2.0 / z.shape[0] * z.T @ (z @ theta - y)


def mse_hessian(z: torch.Tensor) -> torch.Tensor:
    return 2.0 / z.shape[0] * z.T @ z


def maml_reference(model: nn.Linear, batch: TaskBatch, lr: float, steps: int,
                   first_order: bool = False) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Mean meta-gradient over the tasks ``[DIM + 1, 1]`` and each task's adapted theta."""
    theta = theta_of(model)
    identity = torch.eye(DIM + 1, dtype=torch.float64)
    total, adapted_all = torch.zeros_like(theta), []
    for t in range(len(batch)):
        zs, ys = with_ones(batch.support_x[t]), batch.support_y[t]
        zq, yq = with_ones(batch.query_x[t]), batch.query_y[t]
        adapted = theta
        for _ in range(steps):
            adapted = adapted - lr * mse_gradient(zs, ys, adapted)
        jacobian = torch.linalg.matrix_power(identity - lr * mse_hessian(zs), steps)
        query_gradient = mse_gradient(zq, yq, adapted)
        total += query_gradient if first_order else jacobian @ query_gradient
        adapted_all.append(adapted)
    return total / len(batch), adapted_all


def gradient_of(model: nn.Linear) -> torch.Tensor:
    return torch.cat([model.weight.grad.T, model.bias.grad.view(1, 1)])


def probe(predictor) -> torch.Tensor:
    """The adapted ``[w; b]`` read off a linear predictor: outputs at 0 and at the unit vectors."""
    at_zero = predictor(torch.zeros(1, DIM, dtype=torch.float64))
    at_units = predictor(torch.eye(DIM, dtype=torch.float64)) - at_zero
    return torch.cat([at_units, at_zero])


@pytest.mark.parametrize("strategy", ["loop", "vmap"])
@pytest.mark.parametrize("steps", [1, 2])
def test_maml_meta_gradient_on_linear_regression_is_the_closed_form(steps, strategy):
    model, batch, lr = linear_model(), regression_batch(), 0.07
    learner = MAML(model, inner_lr=lr, inner_steps=steps, loss="mse", strategy=strategy)
    loss, _ = learner.meta_loss(batch)
    loss.backward()
    expected, adapted = maml_reference(model, batch, lr, steps)
    torch.testing.assert_close(gradient_of(model), expected, rtol=1e-10, atol=1e-12)
    expected_loss = torch.stack([
        ((with_ones(batch.query_x[t]) @ adapted[t] - batch.query_y[t]) ** 2).mean()
        for t in range(len(batch))]).mean()
    torch.testing.assert_close(loss.detach(), expected_loss, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("steps", [1, 2])
def test_maml_task_losses_are_the_query_losses_at_the_adapted_parameters(steps):
    model, batch, lr = linear_model(), regression_batch(seed=3), 0.05
    learner = MAML(model, inner_lr=lr, inner_steps=steps, loss="mse")
    losses, metrics = learner.task_losses(batch, training=True)
    _, adapted = maml_reference(model, batch, lr, steps)
    expected = torch.stack([((with_ones(batch.query_x[t]) @ adapted[t] - batch.query_y[t]) ** 2
                             ).mean() for t in range(len(batch))])
    torch.testing.assert_close(losses.detach(), expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(metrics["mse"].detach(), expected, rtol=1e-12, atol=1e-12)
    assert losses.requires_grad


@pytest.mark.parametrize("steps", [0, 1, 3])
def test_maml_adapt_returns_theta_minus_alpha_grad(steps):
    model, batch, lr = linear_model(), regression_batch(seed=5, tasks=1), 0.1
    learner = MAML(model, inner_lr=lr, inner_steps=steps, loss="mse")
    predictor = learner.adapt(batch.support_x[0], batch.support_y[0])
    _, adapted = maml_reference(model, batch, lr, steps)
    torch.testing.assert_close(probe(predictor), adapted[0], rtol=1e-12, atol=1e-12)


def test_maml_meta_test_uses_eval_inner_steps_not_inner_steps():
    model, batch, lr = linear_model(), regression_batch(seed=6), 0.1
    learner = MAML(model, inner_lr=lr, inner_steps=1, eval_inner_steps=3, loss="mse")
    _, three_steps = maml_reference(model, batch, lr, 3)
    predictor = learner.adapt(batch.support_x[0], batch.support_y[0])
    torch.testing.assert_close(probe(predictor), three_steps[0], rtol=1e-12, atol=1e-12)
    losses, _ = learner.task_losses(batch, training=False)
    expected = torch.stack([((with_ones(batch.query_x[t]) @ three_steps[t] - batch.query_y[t])
                             ** 2).mean() for t in range(len(batch))])
    torch.testing.assert_close(losses, expected, rtol=1e-12, atol=1e-12)
    # and meta-training still takes inner_steps=1
    _, one_step = maml_reference(model, batch, lr, 1)
    train_losses, _ = learner.task_losses(batch, training=True)
    expected_train = torch.stack([((with_ones(batch.query_x[t]) @ one_step[t]
                                    - batch.query_y[t]) ** 2).mean() for t in range(len(batch))])
    torch.testing.assert_close(train_losses.detach(), expected_train, rtol=1e-12, atol=1e-12)


def test_maml_evaluation_losses_are_detached_and_leave_no_gradient():
    model, batch = linear_model(), regression_batch()
    learner = MAML(model, inner_lr=0.1, inner_steps=1, loss="mse")
    losses, _ = learner.task_losses(batch, training=False)
    assert not losses.requires_grad
    assert model.weight.grad is None


@pytest.mark.parametrize("steps", [1, 2])
def test_fomaml_meta_gradient_is_the_query_gradient_at_the_adapted_weights(steps):
    model, batch, lr = linear_model(), regression_batch(seed=2), 0.07
    learner = MAML(model, inner_lr=lr, inner_steps=steps, first_order=True, loss="mse")
    learner.meta_loss(batch)[0].backward()
    expected, _ = maml_reference(model, batch, lr, steps, first_order=True)
    torch.testing.assert_close(gradient_of(model), expected, rtol=1e-10, atol=1e-12)
    second_order, _ = maml_reference(model, batch, lr, steps)
    assert (expected - second_order).abs().max() > 1e-3  # the two really differ here


def test_adapt_names_restrict_the_inner_step_to_those_parameters():
    model, batch, lr = linear_model(), regression_batch(seed=4, tasks=1), 0.1
    learner = MAML(model, inner_lr=lr, inner_steps=1, loss="mse", adapt=["bias"])
    theta = theta_of(model)
    zs, ys = with_ones(batch.support_x[0]), batch.support_y[0]
    expected = theta.clone()
    expected[-1] -= lr * mse_gradient(zs, ys, theta)[-1]
    predictor = learner.adapt(batch.support_x[0], batch.support_y[0])
    torch.testing.assert_close(probe(predictor), expected, rtol=1e-12, atol=1e-12)


# -- Meta-SGD -----------------------------------------------------------------------------------


def test_meta_sgd_steps_each_entry_by_its_own_rate_and_learns_the_rates():
    model, batch = linear_model(bias=False), regression_batch(seed=7, tasks=2)
    learner = MetaSGD(model, inner_lr=0.1, inner_steps=1, loss="mse")
    assert set(learner.inner_lrs.keys()) == {"weight"}
    rates = torch.tensor([[0.02, 0.11, 0.3]], dtype=torch.float64)
    with torch.no_grad():
        learner.inner_lrs["weight"].copy_(rates)
    alpha = rates.T  # [DIM, 1], aligned with the column w
    w = model.weight.detach().T
    grad_w, grad_alpha = torch.zeros_like(w), torch.zeros_like(w)
    for t in range(len(batch)):
        xs, ys, xq, yq = (batch.support_x[t], batch.support_y[t], batch.query_x[t],
                          batch.query_y[t])
        g_s = mse_gradient(xs, ys, w)
        adapted = w - alpha * g_s
        g_q = mse_gradient(xq, yq, adapted)
        # dw'/dw = I - diag(alpha) H_s, so the chain rule gives its transpose I - H_s diag(alpha)
        grad_w += (torch.eye(DIM, dtype=torch.float64) - mse_hessian(xs) * alpha.T) @ g_q
        grad_alpha += -g_s * g_q
        predictor = learner.adapt(xs, ys)
        torch.testing.assert_close(predictor(torch.eye(DIM, dtype=torch.float64)), adapted,
                                   rtol=1e-12, atol=1e-12)
    learner.meta_loss(batch)[0].backward()
    torch.testing.assert_close(model.weight.grad.T, grad_w / len(batch), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(learner.inner_lrs["weight"].grad.T, grad_alpha / len(batch),
                               rtol=1e-10, atol=1e-12)


def test_meta_sgd_rates_are_keyed_by_parameter_name_with_dots_replaced():
    model = nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 1)).double()
    learner = MetaSGD(model, inner_lr=0.25)
    assert set(learner.inner_lrs.keys()) == {"0__weight", "0__bias", "2__weight", "2__bias"}
    for name, p in model.named_parameters():
        rates = learner.inner_lrs[name.replace(".", "__")]
        assert rates.shape == p.shape and torch.all(rates == 0.25)


# -- ANIL ---------------------------------------------------------------------------------------


def _anil_model(seed: int = 0) -> BodyHead:
    torch.manual_seed(seed)
    return BodyHead(nn.Sequential(nn.Linear(DIM, 4), nn.Tanh()), nn.Linear(4, 1)).double()


def _anil_reference(model: BodyHead, batch: TaskBatch, lr: float):
    """Mean query loss with the head stepped by hand on the body's features (plain torch)."""
    A, a = model.body[0].weight, model.body[0].bias
    w, b = model.head.weight, model.head.bias
    losses, heads = [], []
    for t in range(len(batch)):
        fs = torch.tanh(batch.support_x[t] @ A.T + a)
        fq = torch.tanh(batch.query_x[t] @ A.T + a)
        residual = fs @ w.T + b - batch.support_y[t]  # [n, 1]
        n = fs.shape[0]
        w1 = w - lr * 2.0 / n * residual.T @ fs
        b1 = b - lr * 2.0 / n * residual.sum(0)
        heads.append((w1, b1))
        losses.append(((fq @ w1.T + b1 - batch.query_y[t]) ** 2).mean())
    return torch.stack(losses).mean(), heads


def test_anil_steps_only_the_head_and_its_meta_gradient_reaches_the_body():
    model, batch, lr = _anil_model(), regression_batch(seed=8), 0.3
    learner = ANIL(model, inner_lr=lr, inner_steps=1, loss="mse")
    expected_loss, heads = _anil_reference(model, batch, lr)
    params = list(model.parameters())
    expected_grads = torch.autograd.grad(expected_loss, params)
    loss, _ = learner.meta_loss(batch)
    loss.backward()
    torch.testing.assert_close(loss.detach(), expected_loss.detach(), rtol=1e-12, atol=1e-12)
    for p, g in zip(params, expected_grads, strict=True):
        torch.testing.assert_close(p.grad, g, rtol=1e-10, atol=1e-12)
    # adapt: the body is the same function, the head is the hand-stepped one
    x = torch.randn(7, DIM, dtype=torch.float64)
    predictor = learner.adapt(batch.support_x[0], batch.support_y[0])
    w1, b1 = heads[0]
    with torch.no_grad():
        expected = torch.tanh(x @ model.body[0].weight.T + model.body[0].bias) @ w1.T + b1
    torch.testing.assert_close(predictor(x), expected, rtol=1e-12, atol=1e-12)
