"""WarpGrad (Flennerhag et al. 2020) against references written out here in float64.

The network is ``f(x) = T2 (W2 tanh(T1 (W1 x + b1)) + b2)``: task layers ``W, b`` and warp
layers ``T``. The reference re-derives, with plain tensors and autograd on that formula:

- identity warps: one inner step is a plain SGD step on the unwarped network;
- the warp objective: trajectories ``theta_0..theta_K`` by SGD (no graph), then the mean
  over tasks and points ``k < K`` of ``L_q(theta_k - a grad L_s(theta_k; T); T)`` with
  ``theta_k`` constant; its gradient w.r.t. ``T`` is the learner's, and the initialisation's
  gradient is the Reptile direction ``mean_t(theta_0 - theta_K^t)``.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from metalab.algorithms.warpgrad import WarpGrad
from metalab.tasks import TaskBatch

LR = 0.2
TASK = ("0.layer.weight", "0.layer.bias", "2.layer.weight", "2.layer.bias")
WARP = ("0.transform.weight", "2.transform.weight")


def _network() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()


def _batch(tasks=2, shots=6, queries=5, seed=0) -> TaskBatch:
    g = torch.Generator().manual_seed(seed)

    def draw(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    return TaskBatch(draw(tasks, shots, 3), draw(tasks, shots, 2), draw(tasks, queries, 3),
                     draw(tasks, queries, 2))


def _forward(x, w1, b1, w2, b2, t1, t2):
    hidden = torch.tanh((x @ w1.T + b1) @ t1.T)
    return (hidden @ w2.T + b2) @ t2.T


def _loss(theta, warp, x, y):
    return ((_forward(x, *theta, *warp) - y) ** 2).mean()


def _sgd(theta, warp, x, y, create_graph=False):
    grads = torch.autograd.grad(_loss(theta, warp, x, y), theta, create_graph=create_graph)
    return [p - LR * g for p, g in zip(theta, grads, strict=True)]


def _random_warps(learner: WarpGrad, seed: int = 5) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name in WARP:
            p = learner.model.get_parameter(name)
            p.add_(0.4 * torch.randn(p.shape, generator=g, dtype=p.dtype))


def test_identity_warps_make_a_warped_step_a_plain_sgd_step():
    plain = _network()
    learner = WarpGrad(copy.deepcopy(plain), inner_lr=LR, inner_steps=1, loss="mse")
    batch = _batch(tasks=1)
    x, y = batch.support_x[0], batch.support_y[0]
    theta = [p.detach().requires_grad_(True) for p in plain.parameters()]
    identity = [torch.eye(4, dtype=torch.float64), torch.eye(2, dtype=torch.float64)]
    expected = _sgd(theta, identity, x, y)
    for training in (True, False):
        adapted = learner.adapt_task(x, y, training=training)
        for name, value in zip(TASK, expected, strict=True):
            torch.testing.assert_close(adapted[name], value.detach(), rtol=1e-12, atol=1e-12)
    params = dict(learner.model.named_parameters())
    points = learner.trajectory({n: params[n] for n in TASK}, {n: params[n] for n in WARP},
                                x, y, 1)
    for name, value in zip(TASK, expected, strict=True):
        torch.testing.assert_close(points[1][name], value.detach(), rtol=1e-12, atol=1e-12)


def _reference_gradients(learner: WarpGrad, batch: TaskBatch, steps: int):
    """The warp objective's value and gradients w.r.t. the warps, and the Reptile direction."""
    params = dict(learner.model.named_parameters())
    theta0 = [params[n].detach() for n in TASK]
    warp = [params[n].detach().clone().requires_grad_(True) for n in WARP]
    losses, finals = [], []
    for t in range(len(batch)):
        xs, ys, xq, yq = batch.support_x[t], batch.support_y[t], batch.query_x[t], batch.query_y[t]
        theta = theta0
        for _ in range(steps):
            point = [p.detach().requires_grad_(True) for p in theta]
            losses.append(_loss(_sgd(point, warp, xs, ys, create_graph=True), warp, xq, yq))
            theta = [p.detach() for p in _sgd(point, [w.detach() for w in warp], xs, ys)]
        finals.append(theta)
    objective = torch.stack(losses).mean()
    warp_grads = torch.autograd.grad(objective, warp)
    reptile = [torch.stack([p0 - f[i] for f in finals]).mean(0) for i, p0 in enumerate(theta0)]
    return objective.detach(), warp_grads, reptile


@pytest.mark.parametrize("steps", [1, 3])
def test_warp_objective_gradient_equals_the_hand_written_reference(steps):
    learner = WarpGrad(_network(), inner_lr=LR, inner_steps=steps, warp_samples=None,
                       loss="mse")
    _random_warps(learner)
    batch = _batch(tasks=2)
    expected_loss, warp_grads, reptile = _reference_gradients(learner, batch, steps)
    learner.zero_grad()
    loss, _ = learner.meta_loss(batch)
    loss.backward()
    torch.testing.assert_close(loss.detach(), expected_loss, rtol=1e-12, atol=1e-12)
    for name, grad in zip(WARP, warp_grads, strict=True):
        assert grad.abs().sum() > 1e-6
        torch.testing.assert_close(learner.model.get_parameter(name).grad, grad,
                                   rtol=1e-10, atol=1e-12)
    for name, grad in zip(TASK, reptile, strict=True):
        torch.testing.assert_close(learner.model.get_parameter(name).grad, grad,
                                   rtol=1e-10, atol=1e-12)


def test_warp_samples_draws_that_many_points_of_each_trajectory():
    learner = WarpGrad(_network(), inner_steps=5, warp_samples=2, loss="mse")
    chosen = learner.sample_points(5)
    assert len(chosen) == 2 and len(set(chosen.tolist())) == 2 and chosen.max() < 5
    assert learner.sample_points(1).tolist() == [0]


def test_warpgrad_takes_the_loop_strategy_only():
    with pytest.raises(ValueError, match="strategy='loop' only"):
        WarpGrad(_network(), strategy="vmap")
