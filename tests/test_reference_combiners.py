"""Each combiner against its paper's algorithm written literally, in float64 numpy/torch.

- MGDA-UB (Sener & Koltun 2018): Algorithm 1's closed form for two tasks,
  ``a = clip(((g2 - g1) . g2) / |g1 - g2|^2, 0, 1)``, ``d = a g1 + (1 - a) g2``; for more
  tasks the Frank-Wolfe solver of their Algorithm 2, run to convergence.
- CAGrad (Liu et al. 2021): the official code's dual solved with scipy's SLSQP, then
  ``d = g0 + c |g0| / |g_w| g_w``, rescaled by ``1 / (1 + c^2)``.
- GradNorm (Chen et al. 2018): the weighted direction ``sum w_t g_t`` and one step of the
  weights on ``L_grad = sum_t |w_t |g_t| - mean(w |g|) r_t^alpha|`` (target constant), with
  metalab's documented ``lr / mean_t |g_t|`` scaling, then renormalisation to ``sum = T``.
- Uncertainty weighting (Kendall et al. 2018): ``exp(-s_k) L_t + s_k``, averaged.
- Group DRO (Sagawa et al. 2020, Algorithm 1): ``q_g <- q_g exp(eta L_g)``, normalise,
  loss ``sum_g q_g L_g``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from metalab.combiners import build_combiner


def gradients(tasks: int, params: int = 6, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    grads = torch.randn(tasks, params, generator=g, dtype=torch.float64)
    grads[1] = -0.6 * grads[0] + 0.3 * grads[1]  # a conflicting pair
    return grads


def losses_for(tasks: int) -> torch.Tensor:
    return torch.linspace(0.5, 2.0, tasks, dtype=torch.float64)


# -- MGDA ---------------------------------------------------------------------------------------


def mgda_two_tasks(g1: np.ndarray, g2: np.ndarray) -> np.ndarray:
    """Sener & Koltun, Algorithm 1 (the two-task min-norm element)."""
    a = float(np.dot(g2 - g1, g2) / np.dot(g1 - g2, g1 - g2))
    a = min(max(a, 0.0), 1.0)
    return a * g1 + (1 - a) * g2


def mgda_frank_wolfe(grads: np.ndarray, iterations: int = 5000) -> np.ndarray:
    """Sener & Koltun, Algorithm 2: Frank-Wolfe on the simplex with exact line search."""
    tasks = len(grads)
    gram = grads @ grads.T
    alpha = np.full(tasks, 1.0 / tasks)
    for _ in range(iterations):
        t = int(np.argmin(gram @ alpha))
        current = alpha @ grads
        # the two-task line search between the current point and the vertex g_t
        step_target = grads[t]
        diff = current - step_target
        denominator = float(diff @ diff)
        if denominator <= 1e-30:
            break
        gamma = min(max(float((current - step_target) @ current) / denominator, 0.0), 1.0)
        alpha = (1 - gamma) * alpha
        alpha[t] += gamma
    return alpha @ grads


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mgda_two_tasks_is_the_closed_form_min_norm_element(seed):
    grads = gradients(2, seed=seed)
    direction = build_combiner("mgda").combine(grads, losses_for(2))
    expected = mgda_two_tasks(grads[0].numpy(), grads[1].numpy())
    np.testing.assert_allclose(direction.numpy(), expected, rtol=1e-9, atol=1e-12)
    summed = build_combiner("mgda", reduction="sum").combine(grads, losses_for(2))
    np.testing.assert_allclose(summed.numpy(), 2 * expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("tasks", [3, 5])
def test_mgda_many_tasks_matches_frank_wolfe(tasks):
    grads = gradients(tasks, params=8, seed=tasks)
    direction = build_combiner("mgda").combine(grads, losses_for(tasks)).numpy()
    expected = mgda_frank_wolfe(grads.numpy())
    # |d|^2 is 2-strongly convex in d, so the exact min-norm point d* satisfies
    # |d_fw - d*|^2 <= |d_fw|^2 - |d*|^2 <= the Frank-Wolfe duality gap of d_fw.
    gap = 2 * (expected @ expected - (grads.numpy() @ expected).min())
    assert ((direction - expected) ** 2).sum() <= gap + 1e-14
    assert gap < 1e-2 * (expected @ expected)  # the reference is near the optimum
    assert direction @ direction <= expected @ expected * (1 + 1e-9) + 1e-15


# -- CAGrad -------------------------------------------------------------------------------------


def cagrad_official(grads: np.ndarray, c: float, rescale: int) -> np.ndarray:
    """The official ``cagrad`` (Liu et al. 2021, Algorithm 1), transposed to rows = tasks."""
    from scipy.optimize import minimize

    tasks = len(grads)
    gram = grads @ grads.T
    g0_norm = np.sqrt(gram.mean())
    radius = c * g0_norm
    b = np.full(tasks, 1.0 / tasks)

    def objective(x):
        return float(x @ gram @ b + radius * np.sqrt(x @ gram @ x))

    result = minimize(objective, b.copy(), bounds=[(0, 1)] * tasks,
                      constraints={"type": "eq", "fun": lambda x: 1 - x.sum()},
                      method="SLSQP", options={"ftol": 1e-15, "maxiter": 2000})
    w = result.x
    gw = w @ grads
    direction = grads.mean(0) + radius / np.linalg.norm(gw) * gw
    return {0: direction, 1: direction / (1 + c ** 2), 2: direction / (1 + c)}[rescale]


@pytest.mark.parametrize(("tasks", "c", "rescale"), [(2, 0.5, 1), (3, 0.4, 0), (4, 0.8, 2)])
def test_cagrad_matches_the_official_algorithm(tasks, c, rescale):
    pytest.importorskip("scipy", reason="the CAGrad reference solves its dual with scipy SLSQP")
    grads = gradients(tasks, seed=10 + tasks)
    direction = build_combiner("cagrad", c=c, rescale=rescale).combine(grads, losses_for(tasks))
    expected = cagrad_official(grads.numpy(), c, rescale)
    np.testing.assert_allclose(direction.numpy(), expected, rtol=1e-4,
                               atol=1e-5 * np.abs(expected).max())


# -- GradNorm -----------------------------------------------------------------------------------


def test_gradnorm_direction_and_weight_updates_follow_the_paper():
    tasks, alpha, lr = 3, 1.5, 0.1
    combiner = build_combiner("gradnorm", num_tasks=tasks, alpha=alpha, lr=lr).double()
    weights = torch.ones(tasks, dtype=torch.float64)
    initial = None
    for step in range(4):
        grads = gradients(tasks, seed=20 + step) * torch.tensor([[1.0], [3.0], [0.5]],
                                                               dtype=torch.float64)
        losses = torch.tensor([1.0, 0.8, 0.9], dtype=torch.float64) * (0.9 ** step) \
            * torch.tensor([1.0, 1.0 - 0.1 * step, 1.0], dtype=torch.float64)
        direction = combiner.combine(grads, losses)
        torch.testing.assert_close(direction, (weights[:, None] * grads).sum(0) / tasks,
                                   rtol=1e-12, atol=1e-12)
        # the paper's update, with autograd on L_grad (the target held constant)
        initial = losses.clone() if initial is None else initial
        w = weights.clone().requires_grad_(True)
        norms = grads.norm(dim=1)
        G = w * norms
        ratio = losses / initial
        r = ratio / ratio.mean()
        target = (G.mean() * r ** alpha).detach()
        (grad_w,) = torch.autograd.grad((G - target).abs().sum(), w)
        weights = (weights - lr * grad_w / norms.mean()).clamp_min(1e-6)
        weights = weights * tasks / weights.sum()
        torch.testing.assert_close(combiner.task_weights, weights, rtol=1e-12, atol=1e-12)


# -- uncertainty weighting ----------------------------------------------------------------------


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_uncertainty_weighting_is_exp_minus_s_times_loss_plus_s(reduction):
    combiner = build_combiner("uncertainty", num_tasks=3, reduction=reduction).double()
    with torch.no_grad():
        combiner.log_variance.copy_(torch.tensor([0.3, -0.5, 1.2], dtype=torch.float64))
    losses = torch.tensor([0.7, 1.9, 0.4, 1.1], dtype=torch.float64, requires_grad=True)
    ids = torch.tensor([0, 1, 2, 1])
    combined = combiner.combine_losses(losses, ids)
    s = [0.3, -0.5, 1.2]
    terms = [np.exp(-s[k]) * loss + s[k] for loss, k in zip([0.7, 1.9, 0.4, 1.1], [0, 1, 2, 1],
                                                           strict=True)]
    expected = sum(terms) / (4 if reduction == "mean" else 1)
    assert combined.item() == pytest.approx(expected, rel=1e-12)
    combined.backward()
    scale = 4 if reduction == "mean" else 1
    expected_s = [(1 - np.exp(-s[0]) * 0.7) / scale,
                  (2 - np.exp(-s[1]) * (1.9 + 1.1)) / scale,
                  (1 - np.exp(-s[2]) * 0.4) / scale]
    np.testing.assert_allclose(combiner.log_variance.grad.numpy(), expected_s, rtol=1e-10)
    np.testing.assert_allclose(losses.grad.numpy(),
                               [np.exp(-s[k]) / scale for k in [0, 1, 2, 1]], rtol=1e-12)


# -- group DRO ----------------------------------------------------------------------------------


def test_group_dro_follows_algorithm_1_over_several_steps():
    groups, eta = 3, 0.5
    combiner = build_combiner("group_dro", num_groups=groups, step_size=eta).double()
    q = np.full(groups, 1.0 / groups)
    steps = [([1.0, 2.0, 0.5, 0.1], [0, 1, 2, 0]),
             ([0.3, 3.0, 1.5], [0, 1, 1]),  # group 2 absent
             ([2.0, 0.2, 0.7], [2, 1, 0])]
    for values, ids in steps:
        losses = torch.tensor(values, dtype=torch.float64, requires_grad=True)
        combined = combiner.combine_losses(losses, torch.tensor(ids))
        group_loss = np.zeros(groups)
        present = np.zeros(groups, dtype=bool)
        for g in range(groups):
            members = [v for v, i in zip(values, ids, strict=True) if i == g]
            if members:
                group_loss[g] = sum(members) / len(members)
                present[g] = True
        q = q * np.exp(eta * group_loss * present)
        q = q / q.sum()
        expected = (q * group_loss * present).sum() / (q * present).sum()
        np.testing.assert_allclose(combiner.group_weights.numpy(), q, rtol=1e-12)
        assert combined.item() == pytest.approx(expected, rel=1e-12)
        combined.backward()
        expected_grad = [q[i] / (q * present).sum() / sum(1 for j in ids if j == i)
                         for i in ids]
        np.testing.assert_allclose(losses.grad.numpy(), expected_grad, rtol=1e-12)
    # the largest-loss group gained weight overall
    assert combiner.group_weights.argmax().item() == 1
