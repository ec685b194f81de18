"""Meta-Curvature (Park & Oliva 2019) against plain references written out here in float64.

- identity factors: the step is MAML's, so the meta-gradient equals MAML's exactly;
- given factors: the first inner step is ``theta - a * (M_o kron M_i [kron M_f]) vec(G)``,
  written with ``torch.kron`` on the row-major vectorised gradient (linear and conv);
- the meta-gradient w.r.t. a factor equals a central finite difference of a two-line
  reference loss of linear regression (closed-form gradient, no autograd, no metalab);
- a rule built for another model fails when the learner is built, naming the keys.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers import classification_batch
from metalab.algorithms import MAML
from metalab.algorithms.metacurvature import MetaCurvatureMAML
from metalab.functional import SGD, Chain
from metalab.functional.preconditioners import MetaCurvature
from metalab.nn import Conv4
from metalab.tasks import TaskBatch

LR = 0.3


def _regression_batch(seed=0, tasks=2, shots=6, queries=5, dim=3, out=2) -> TaskBatch:
    g = torch.Generator().manual_seed(seed)

    def draw(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    return TaskBatch(draw(tasks, shots, dim), draw(tasks, shots, out), draw(tasks, queries, dim),
                     draw(tasks, queries, out))


def _random_factors(learner: MetaCurvatureMAML, seed: int = 3) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for factor in learner.parameters():
            if factor.dim() == 2 and factor.shape[0] == factor.shape[1] and any(
                    factor is f for f in learner.update_rule.parameters()):
                factor.add_(0.3 * torch.randn(factor.shape, generator=g, dtype=factor.dtype))


def _curvature(learner: MetaCurvatureMAML, name: str):
    return learner.update_rule.rules[0].curvatures[name.replace(".", "__")].factors


def _meta_gradients(learner, batch):
    learner.zero_grad()
    loss, _ = learner.meta_loss(batch)
    loss.backward()
    return {n: p.grad.clone() for n, p in learner.model.named_parameters()}


@pytest.mark.parametrize("first_order", [False, True])
def test_identity_factors_give_maml_meta_gradient_exactly(first_order):
    torch.manual_seed(0)
    model = Conv4(hidden=4, image_size=16, out_features=5).double()
    batch = classification_batch(tasks=2, size=16)
    maml = MAML(copy.deepcopy(model), inner_lr=LR, inner_steps=2, first_order=first_order)
    curvature = MetaCurvatureMAML(model, inner_lr=LR, inner_steps=2, first_order=first_order)
    expected, got = _meta_gradients(maml, batch), _meta_gradients(curvature, batch)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-10, atol=1e-12)


def test_first_step_of_a_linear_layer_is_kronecker_preconditioned():
    torch.manual_seed(0)
    model = nn.Linear(3, 2).double()
    learner = MetaCurvatureMAML(model, inner_lr=LR, inner_steps=1, loss="mse")
    _random_factors(learner)
    batch = _regression_batch(tasks=1)
    x, y = batch.support_x[0], batch.support_y[0]
    w, b = model.weight.detach(), model.bias.detach()
    residual = x @ w.T + b - y  # mse = mean over n * out entries
    grad_w = 2.0 / residual.numel() * residual.T @ x
    grad_b = 2.0 / residual.numel() * residual.sum(0)
    m_o, m_i = (f.detach() for f in _curvature(learner, "weight"))
    (m_b,) = (f.detach() for f in _curvature(learner, "bias"))
    expected_w = w - LR * (torch.kron(m_o, m_i) @ grad_w.reshape(-1)).reshape(2, 3)
    expected_b = b - LR * m_b @ grad_b
    adapted = learner.adapt_task(x, y, training=True)
    torch.testing.assert_close(adapted["weight"], expected_w, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(adapted["bias"], expected_b, rtol=1e-12, atol=1e-12)
    # the same as M_o G M_i^T written with einsum
    einsum_w = w - LR * torch.einsum("ac,cd,bd->ab", m_o, grad_w, m_i)
    torch.testing.assert_close(adapted["weight"], einsum_w, rtol=1e-12, atol=1e-12)


def test_first_step_of_a_convolution_uses_three_mode_factors():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.Flatten(), nn.Linear(12, 4)).double()
    learner = MetaCurvatureMAML(model, inner_lr=LR, inner_steps=1)
    _random_factors(learner)
    x = torch.randn(4, 2, 4, 4, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3])
    weight = model[0].weight.detach().requires_grad_(True)
    logits = F.linear(F.conv2d(x, weight, model[0].bias).flatten(1), model[2].weight,
                      model[2].bias)
    (grad,) = torch.autograd.grad(F.cross_entropy(logits, y), weight)
    m_o, m_i, m_f = (f.detach() for f in _curvature(learner, "0.weight"))
    assert (m_o.shape, m_i.shape, m_f.shape) == ((3, 3), (2, 2), (9, 9))
    expected = weight.detach() - LR * (torch.kron(m_o, torch.kron(m_i, m_f))
                                       @ grad.reshape(-1)).reshape(3, 2, 3, 3)
    adapted = learner.adapt_task(x, y, training=True)
    torch.testing.assert_close(adapted["0.weight"], expected, rtol=1e-12, atol=1e-12)


def _reference_query_loss(w, m_o, m_i, xs, ys, xq, yq):
    """Linear regression without bias: one preconditioned step, then the query MSE."""
    adapted = w - LR * m_o @ (2.0 / ys.numel() * (xs @ w.T - ys).T @ xs) @ m_i.T
    return ((xq @ adapted.T - yq) ** 2).mean()


def test_meta_gradient_of_the_factors_matches_finite_differences():
    torch.manual_seed(0)
    model = nn.Linear(3, 2, bias=False).double()
    learner = MetaCurvatureMAML(model, inner_lr=LR, inner_steps=1, loss="mse")
    _random_factors(learner)
    batch = _regression_batch(tasks=1)
    factors = _curvature(learner, "weight")
    learner.zero_grad()
    learner.meta_loss(batch)[0].backward()
    data = (batch.support_x[0], batch.support_y[0], batch.query_x[0], batch.query_y[0])
    w = model.weight.detach()
    base = [f.detach().clone() for f in factors]
    eps = 1e-6
    for which in (0, 1):
        numeric = torch.zeros_like(base[which])
        for index in zip(*torch.nonzero(torch.ones_like(base[which])).T.tolist(), strict=True):
            loss = []
            for sign in (1, -1):
                moved = [b.clone() for b in base]
                moved[which][index] += sign * eps
                loss.append(_reference_query_loss(w, *moved, *data))
            numeric[index] = (loss[0] - loss[1]) / (2 * eps)
        torch.testing.assert_close(factors[which].grad, numeric, rtol=1e-6, atol=1e-9)
        assert numeric.abs().max() > 1e-3  # the check is not vacuous


def test_vmap_strategy_gives_the_loop_meta_gradient():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    loop = MetaCurvatureMAML(copy.deepcopy(model), inner_lr=LR, inner_steps=2, loss="mse")
    vmap = MetaCurvatureMAML(model, inner_lr=LR, inner_steps=2, loss="mse", strategy="vmap")
    vmap.load_state_dict(loop.state_dict())
    _random_factors(loop)
    vmap.load_state_dict(loop.state_dict())
    batch = _regression_batch(tasks=3)
    grads = []
    for learner in (loop, vmap):
        learner.zero_grad()
        learner.meta_loss(batch)[0].backward()
        grads.append({n: p.grad.clone() for n, p in learner.named_parameters()})
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-9, atol=1e-12)


def test_a_rule_built_for_another_model_fails_at_build_naming_the_keys():
    model = Conv4(hidden=4, image_size=16, out_features=5)
    other = Conv4(hidden=8, image_size=16, out_features=5)
    rule = Chain(MetaCurvature(dict(other.named_parameters())), SGD(LR))
    expected = (r"shape mismatch for body\.0\.0\.bias .*"
                r"head\.weight \(rule \(5, 8\), model \(5, 4\)\)")
    with pytest.raises(ValueError, match=expected):
        MetaCurvatureMAML(model, update_rule=rule)
    only_head = Chain(MetaCurvature({"head.weight": other.head.weight}), SGD(LR))
    with pytest.raises(ValueError, match=r"no factors for \['body\.0\.0\.bias'"):
        MetaCurvatureMAML(model, update_rule=only_head)
