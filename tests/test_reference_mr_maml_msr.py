"""Independent references for MR-MAML's KL terms and MSR's ``vec(W) = U v`` layer.

- MR-MAML(W) (Yin et al. 2020): ``beta * KL(N(mu, sigma^2) || N(0, 1))`` summed over the
  body's weights, with the Gaussian KL in closed form
  ``log(s2 / s1) + (s1^2 + (m1 - m2)^2) / (2 s2^2) - 1/2`` and, as a peer,
  `torch.distributions.kl_divergence`.
- MR-MAML(A): each task's training loss is its query loss plus ``beta`` times the KL of
  its query codes ``N(mu(x), softplus(r(x))^2)`` averaged over points and code dimensions.
- MSR (Zhou et al. 2021): ``W = reshape(U v)``; the inner loop steps ``v`` only, by
  ``v' = v - a U^T vec(dL/dW)`` (the chain rule through the product), never ``U``.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from metalab.algorithms import MAML, MRMAMLA, MRMAMLW
from metalab.nn import BodyHead, MSRLinear, inner_parameter_names
from metalab.tasks import TaskBatch


def sinusoid_like_batch(tasks=2, shots=5, queries=4, seed=0) -> TaskBatch:
    g = torch.Generator().manual_seed(seed)
    sx = torch.rand(tasks, shots, 1, generator=g, dtype=torch.float64) * 10 - 5
    qx = torch.rand(tasks, queries, 1, generator=g, dtype=torch.float64) * 10 - 5
    return TaskBatch(sx, torch.sin(sx), qx, torch.sin(qx))


def gaussian_kl(m1, s1, m2=0.0, s2=1.0):
    return math.log(s2 / s1) + (s1 ** 2 + (m1 - m2) ** 2) / (2 * s2 ** 2) - 0.5


@pytest.mark.parametrize("transform", ["exp", "softplus"])
def test_mr_maml_w_kl_is_the_closed_form_summed_over_the_weights(transform):
    torch.manual_seed(0)
    model = BodyHead(nn.Sequential(nn.Linear(1, 4), nn.ReLU(), nn.Linear(4, 3)),
                     nn.Linear(3, 1)).double()
    beta = 0.03
    learner = MRMAMLW(model, beta=beta, sigma_transform=transform, loss="mse", init_rho=-1.0)
    with torch.no_grad():
        for raw in learner.sigma_parameters.values():
            raw.uniform_(-2.0, 0.5)
    expected = 0.0
    body = dict(model.body.named_parameters())
    for name in ("0.weight", "2.weight"):  # the weights, not the biases
        mean = body[name].detach().reshape(-1)
        raw = learner.sigma_parameters[name.replace(".", "__")].detach().reshape(-1)
        for m, r in zip(mean.tolist(), raw.tolist(), strict=True):
            sigma = math.exp(r) if transform == "exp" else math.log1p(math.exp(r))
            expected += gaussian_kl(m, sigma)
    assert learner.kl().item() == pytest.approx(expected, rel=1e-12)
    assert learner.regularizer().item() == pytest.approx(beta * expected, rel=1e-12)
    peer = sum(torch.distributions.kl_divergence(
        torch.distributions.Normal(body[n].detach(), learner.sigmas()[n].detach()),
        torch.distributions.Normal(0.0, 1.0)).sum() for n in ("0.weight", "2.weight"))
    assert peer.item() == pytest.approx(expected, rel=1e-10)


def test_mr_maml_w_meta_loss_adds_beta_kl_once_to_the_mean_query_loss():
    torch.manual_seed(1)
    model = BodyHead(nn.Sequential(nn.Linear(1, 4), nn.ReLU()), nn.Linear(4, 1)).double()
    learner = MRMAMLW(model, beta=0.5, loss="mse", inner_lr=0.01)
    batch = sinusoid_like_batch()
    torch.manual_seed(7)
    loss, summary = learner.meta_loss(batch)
    torch.manual_seed(7)
    losses, _ = learner.task_losses(batch, training=True)
    expected = losses.mean() + 0.5 * learner.kl()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-12)
    assert summary["query_loss"] == pytest.approx(losses.mean().item(), rel=1e-12)


def test_mr_maml_a_adds_beta_times_the_mean_kl_of_the_query_codes():
    torch.manual_seed(2)
    codes = 2
    model = BodyHead(nn.Sequential(nn.Linear(1, 8), nn.Tanh(), nn.Linear(8, 2 * codes)),
                     nn.Linear(codes, 1)).double()
    batch = sinusoid_like_batch(seed=3)
    losses = {}
    for beta in (0.0, 0.7):
        learner = MRMAMLA(model, beta=beta, loss="mse", inner_lr=0.01)
        torch.manual_seed(11)
        values, metrics = learner.task_losses(batch, training=True)
        losses[beta] = values.detach()
    for t in range(len(batch)):
        with torch.no_grad():
            out = model.body(batch.query_x[t])
        total, count = 0.0, 0
        for row in out.tolist():
            for j in range(codes):
                mean, sigma = row[j], math.log1p(math.exp(row[codes + j]))
                total += gaussian_kl(mean, sigma)
                count += 1
        kl = total / count
        assert metrics["kl"][t].item() == pytest.approx(kl, rel=1e-10)
        assert (losses[0.7][t] - losses[0.0][t]).item() == pytest.approx(0.7 * kl, rel=1e-9)


# -- MSR ----------------------------------------------------------------------------------------


def test_msr_linear_is_the_explicit_u_v_product():
    torch.manual_seed(3)
    layer = MSRLinear(4, 3, num_filter_params=5, bias=True).double()
    x = torch.randn(6, 4, dtype=torch.float64)
    U, v = layer.U.detach(), layer.v.detach()
    W = torch.zeros(3, 4, dtype=torch.float64)
    for row in range(3):
        for col in range(4):
            W[row, col] = sum(U[row * 4 + col, k] * v[k] for k in range(5))
    bias = layer.bias_U.detach() @ layer.bias_v.detach()
    torch.testing.assert_close(layer(x).detach(), x @ W.T + bias, rtol=1e-12, atol=1e-12)


def test_maml_on_msr_steps_v_through_u_and_leaves_u_fixed():
    torch.manual_seed(4)
    model = nn.Sequential(MSRLinear(4, 1, num_filter_params=3)).double()
    names = inner_parameter_names(model)
    assert names == ["0.v"]
    lr = 0.2
    learner = MAML(model, inner_lr=lr, inner_steps=1, loss="mse", adapt=names)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(8, 4, generator=g, dtype=torch.float64)
    y = torch.randn(8, 1, generator=g, dtype=torch.float64)
    U, v = model[0].U.detach(), model[0].v.detach()
    W = (U @ v).view(1, 4)
    grad_W = 2.0 / 8 * (x @ W.T - y).T @ x  # dL/dW, [1, 4]
    v_adapted = v - lr * U.T @ grad_W.reshape(-1)
    W_adapted = (U @ v_adapted).view(1, 4)
    predictor = learner.adapt(x, y)
    probe = torch.eye(4, dtype=torch.float64)
    torch.testing.assert_close(predictor(probe), probe @ W_adapted.T, rtol=1e-12, atol=1e-12)
    # the meta-gradient reaches U through the query pass (checked against plain torch)
    batch = TaskBatch(x[None, :5], y[None, :5], x[None, 5:], y[None, 5:])
    learner.meta_loss(batch)[0].backward()
    Ur = model[0].U.detach().clone().requires_grad_(True)
    vr = model[0].v.detach().clone().requires_grad_(True)
    Wr = (Ur @ vr).view(1, 4)
    inner = F.mse_loss(x[:5] @ Wr.T, y[:5])
    (gv,) = torch.autograd.grad(inner, vr, create_graph=True)
    outer = F.mse_loss(x[5:] @ (Ur @ (vr - lr * gv)).view(1, 4).T, y[5:])
    outer.backward()
    torch.testing.assert_close(model[0].U.grad, Ur.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(model[0].v.grad, vr.grad, rtol=1e-10, atol=1e-12)
