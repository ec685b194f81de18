"""TRPO's pieces against independent references in float64: the Fisher-vector product and
conjugate gradient against a dense Fisher matrix written from the policy's Jacobian, the
step's scale and the line search's KL bound on a KL with a known Hessian, and the Gaussian
KL against numerical integration."""

import math

import pytest
import torch

from metalab.rl import GaussianMLPPolicy, conjugate_gradient, fisher_vector_product, gaussian_kl
from metalab.rl.trpo import flat, trpo_step, unflat


def tiny_policy_kl():
    """A float64 policy (2 -> 3 -> 2), observations, and ``kl(p)`` = the mean KL from the
    policy at its current parameters to the policy at ``p``."""
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(2, 2, hidden=(3,), init_log_std=-0.3).double()
    with torch.no_grad():
        policy.log_std.copy_(torch.tensor([-0.3, 0.2], dtype=torch.float64))
    observations = torch.randn(40, 2, dtype=torch.float64)
    names = [n for n, _ in policy.named_parameters()]
    params = list(policy.parameters())
    with torch.no_grad():
        old_mean, old_log_std = policy(observations)

    def outputs(values):
        return torch.func.functional_call(policy, dict(zip(names, values, strict=True)),
                                          (observations,))

    def kl(values):
        mean, log_std = outputs(values)
        return gaussian_kl(old_mean, old_log_std, mean, log_std).mean()

    return policy, observations, names, params, outputs, kl


def dense_fisher(policy, observations, names, params):
    """``F = mean_s J_mu(s)^T diag(1 / sigma^2) J_mu(s)`` plus ``2 I`` on the log-std
    entries: the Fisher information of a diagonal Gaussian policy, from the Jacobian of
    the mean (each observation's Jacobian by autograd, one output at a time)."""
    start = flat(params).detach()
    inverse_variance = torch.exp(-2 * policy.log_std.detach())
    fisher = torch.zeros(start.numel(), start.numel(), dtype=torch.float64)

    def means_of(vector):
        values = unflat(vector, params)
        return torch.func.functional_call(policy, dict(zip(names, values, strict=True)),
                                          (observations,))[0]

    jacobians = torch.autograd.functional.jacobian(means_of, start)  # [N, 2, P]
    for jacobian in jacobians:
        fisher += jacobian.T @ torch.diag(inverse_variance) @ jacobian / len(observations)
    index = names.index("log_std")
    offset = sum(p.numel() for p in params[:index])
    fisher[offset:offset + 2, offset:offset + 2] += 2 * torch.eye(2, dtype=torch.float64)
    return fisher


def test_fisher_vector_product_and_conjugate_gradient_against_a_dense_fisher():
    policy, observations, names, params, _, kl = tiny_policy_kl()
    fisher = dense_fisher(policy, observations, names, params)
    damping = 1e-3
    product = fisher_vector_product(kl(params), params, damping)
    vector = torch.randn(fisher.shape[0], dtype=torch.float64)
    torch.testing.assert_close(product(vector), fisher @ vector + damping * vector)
    g = torch.randn(fisher.shape[0], dtype=torch.float64)
    solved = conjugate_gradient(product, g, iterations=5 * fisher.shape[0], tolerance=1e-28)
    exact = torch.linalg.solve(fisher + damping * torch.eye(len(g), dtype=torch.float64), g)
    torch.testing.assert_close(solved, exact, rtol=1e-6, atol=1e-8)


def test_conjugate_gradient_on_a_small_spd_system_is_exact_after_n_steps():
    a = torch.tensor([[4.0, 1.0, 0.5], [1.0, 3.0, 0.2], [0.5, 0.2, 2.0]], dtype=torch.float64)
    b = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    torch.testing.assert_close(conjugate_gradient(lambda v: a @ v, b, iterations=3),
                               torch.linalg.solve(a, b))


def quadratic_problem(quartic: float):
    """Surrogate ``g . p`` and KL ``p^T A p / 2 + quartic (p^T A p)^2`` (Hessian ``A`` at 0)."""
    a = torch.tensor([[2.0, 0.3], [0.3, 1.0]], dtype=torch.float64)
    g = torch.tensor([1.0, -0.5], dtype=torch.float64)

    def evaluate(values, differentiable):
        (p,) = values
        form = p @ a @ p
        return g @ p, 0.5 * form + quartic * form**2

    return a, g, evaluate


def full_step(a, g, max_kl):
    """The step along ``A^-1 g`` whose quadratic KL is ``max_kl``, by hand."""
    x = torch.linalg.solve(a, g)
    return math.sqrt(2 * max_kl / float(x @ a @ x)) * x


def test_trpo_step_reaches_the_kl_bound_of_the_quadratic_model():
    a, g, evaluate = quadratic_problem(quartic=0.0)
    start = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    result = trpo_step(evaluate, [start], max_kl=0.01, damping=0.0, cg_iterations=2)
    torch.testing.assert_close(result.step, full_step(a, g, 0.01))
    assert result.accepted and result.backtracks == 0
    assert result.kl == pytest.approx(0.01, rel=1e-9)
    assert result.surrogate_after == pytest.approx(float(g @ result.step))


def test_trpo_line_search_backtracks_until_the_actual_kl_is_within_the_bound():
    # the actual KL grows faster than its quadratic model: the full step breaks the bound
    a, g, evaluate = quadratic_problem(quartic=50.0)
    start = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    step = full_step(a, g, 0.01)
    assert evaluate([step], False)[1] > 0.01
    result = trpo_step(evaluate, [start], max_kl=0.01, damping=0.0, cg_iterations=2,
                       backtrack_ratio=0.5)
    assert result.accepted and result.backtracks >= 1
    assert result.kl <= 0.01
    torch.testing.assert_close(result.step, 0.5**result.backtracks * step)
    assert evaluate([0.5 ** (result.backtracks - 1) * step], False)[1] > 0.01  # the first
    assert result.surrogate_after > 0  # improved


def test_trpo_keeps_the_parameters_when_no_candidate_improves():
    def evaluate(values, differentiable):
        (p,) = values
        return -(p**2).sum() + 0.0 * p.sum(), 0.5 * (p**2).sum()  # a maximum at 0

    start = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    result = trpo_step(evaluate, [start], max_kl=0.01, max_backtracks=3)
    assert not result.accepted and torch.equal(result.step, torch.zeros(2, dtype=torch.float64))


def test_gaussian_kl_against_numerical_integration():
    # KL(p || q) = integral p log(p / q), one dimension at a time (asymmetric: p != q)
    mean_p, log_std_p = torch.tensor([0.3, -1.0]), torch.tensor([-0.5, 0.4])
    mean_q, log_std_q = torch.tensor([-0.2, 0.5]), torch.tensor([0.1, -0.3])
    x = torch.linspace(-15, 15, 200001, dtype=torch.float64)
    total = 0.0
    for i in range(2):
        p = torch.distributions.Normal(mean_p[i].double(), log_std_p[i].double().exp())
        q = torch.distributions.Normal(mean_q[i].double(), log_std_q[i].double().exp())
        density = p.log_prob(x).exp()
        total += torch.trapezoid(density * (p.log_prob(x) - q.log_prob(x)), x).item()
    value = gaussian_kl(mean_p.double(), log_std_p.double(), mean_q.double(),
                        log_std_q.double()).item()
    assert value == pytest.approx(total, rel=1e-6)
    reverse = gaussian_kl(mean_q.double(), log_std_q.double(), mean_p.double(),
                          log_std_p.double()).item()
    assert abs(reverse - total) > 0.1  # the direction matters on this pair


def test_trpo_names_a_bad_argument():
    _, _, evaluate = quadratic_problem(0.0)
    start = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    with pytest.raises(ValueError, match="max_kl"):
        trpo_step(evaluate, [start], max_kl=0.0)
    with pytest.raises(ValueError, match="backtrack_ratio"):
        trpo_step(evaluate, [start], max_kl=0.01, backtrack_ratio=1.5)
