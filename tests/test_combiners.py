"""Per-task combiners: every batched computation against a straightforward reference (float64)."""

import io
import math

import pytest
import torch

from metalab.combiners import (
    COMBINERS,
    MGDA,
    CAGrad,
    GradNorm,
    GroupDRO,
    PCGrad,
    UncertaintyWeighting,
    build_combiner,
    gradient_statistics,
    pcgrad_coefficients,
)
from metalab.combiners.cagrad import conflict_averse_objective
from metalab.combiners.simplex import simplex_qp

DOUBLE = torch.float64


def _gradients(tasks, params=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    scales = torch.rand(tasks, 1, generator=g, dtype=DOUBLE) * 4 + 0.1
    return torch.randn(tasks, params, generator=g, dtype=DOUBLE) * scales


def _losses(tasks):
    return torch.linspace(0.5, 2.0, tasks, dtype=DOUBLE)


def _simplex_grid(tasks, resolution):
    """Every point of the simplex with coordinates in multiples of 1 / resolution."""
    if tasks == 2:
        a = torch.arange(resolution + 1, dtype=DOUBLE) / resolution
        return torch.stack([a, 1 - a], dim=1)
    a, b = torch.meshgrid(torch.arange(resolution + 1), torch.arange(resolution + 1),
                          indexing="ij")
    keep = a + b <= resolution
    a, b = a[keep].to(DOUBLE), b[keep].to(DOUBLE)
    return torch.stack([a, b, resolution - a - b], dim=1) / resolution


# -- PCGrad ---------------------------------------------------------------------------------

def _pcgrad_reference(grads, orders):
    """Yu et al., Algorithm 1, written literally: one projection per conflicting pair."""
    projected = []
    for i in range(grads.shape[0]):
        g = grads[i].clone()
        for j in orders[i].tolist():
            if j == i:
                continue
            dot = g @ grads[j]
            if dot < 0:
                g = g - dot / (grads[j] @ grads[j]) * grads[j]
        projected.append(g)
    return torch.stack(projected)


@pytest.mark.parametrize("order", ["random", "fixed"])
@pytest.mark.parametrize("tasks", [2, 3, 5, 8])
def test_pcgrad_batched_equals_the_per_pair_loop(order, tasks):
    conflicts = 0
    for seed in range(4):
        grads = _gradients(tasks, params=6, seed=seed)
        orders = PCGrad(order=order, seed=seed).sample_orders(tasks)
        expected = _pcgrad_reference(grads, orders)
        torch.testing.assert_close(pcgrad_coefficients(grads @ grads.T, orders) @ grads,
                                   expected, rtol=0, atol=1e-12)
        got = PCGrad(order=order, seed=seed).combine(grads, _losses(tasks), None)
        torch.testing.assert_close(got, expected.mean(0), rtol=0, atol=1e-12)
        summed = PCGrad(order=order, seed=seed, reduction="sum").combine(grads, _losses(tasks))
        torch.testing.assert_close(summed, expected.sum(0), rtol=0, atol=1e-12)
        conflicts += int(((grads @ grads.T) < 0).sum())
    assert conflicts > 0  # the projections were exercised


def test_pcgrad_random_orders_are_permutations_that_change_every_step():
    combiner = PCGrad(seed=1)
    first, second = combiner.sample_orders(6), combiner.sample_orders(6)
    for orders in (first, second):
        assert torch.equal(orders.sort(dim=1).values, torch.arange(6).expand(6, 6))
    assert not torch.equal(first, second)
    assert torch.equal(PCGrad(order="fixed").sample_orders(4), torch.arange(4).expand(4, 4))


def test_pcgrad_leaves_non_conflicting_gradients_unchanged():
    grads = _gradients(5).abs()  # positive entries: every pairwise dot product is > 0
    orders = PCGrad(seed=0).sample_orders(5)
    torch.testing.assert_close(pcgrad_coefficients(grads @ grads.T, orders) @ grads, grads,
                               rtol=0, atol=0)
    torch.testing.assert_close(PCGrad().combine(grads, _losses(5)), grads.mean(0),
                               rtol=0, atol=1e-15)
    torch.testing.assert_close(PCGrad(reduction="sum").combine(grads, _losses(5)),
                               grads.sum(0), rtol=0, atol=1e-14)


def test_pcgrad_two_tasks_projected_gradients_do_not_conflict():
    found = 0
    for seed in range(50):
        grads = _gradients(2, params=4, seed=seed)
        if grads[0] @ grads[1] >= 0:
            continue
        found += 1
        projected = pcgrad_coefficients(grads @ grads.T, torch.tensor([[0, 1], [0, 1]])) @ grads
        scale = grads.norm(dim=1).prod()
        assert projected[0] @ grads[1] >= -1e-12 * scale
        assert projected[1] @ grads[0] >= -1e-12 * scale
        # ... and each is exactly orthogonal to the other's original gradient.
        assert abs(projected[0] @ grads[1]) <= 1e-12 * scale
    assert found > 10


def test_pcgrad_two_tasks_is_independent_of_the_order():
    grads = torch.tensor([[1.0, 0.2, -0.5], [-2.0, 0.1, 0.3]], dtype=DOUBLE)
    assert grads[0] @ grads[1] < 0
    reference = PCGrad(order="fixed").combine(grads, _losses(2))
    for seed in range(5):
        torch.testing.assert_close(PCGrad(seed=seed).combine(grads, _losses(2)), reference,
                                   rtol=0, atol=0)
    swapped = PCGrad(order="fixed").combine(grads.flip(0), _losses(2))
    torch.testing.assert_close(swapped, reference, rtol=0, atol=1e-15)


def test_pcgrad_state_dict_round_trip_gives_the_same_next_order():
    grads = _gradients(6)
    combiner = PCGrad(seed=3)
    combiner.combine(grads, _losses(6))
    buffer = io.BytesIO()
    torch.save(combiner.state_dict(), buffer)
    buffer.seek(0)
    restored = PCGrad(seed=99)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    torch.testing.assert_close(restored.combine(grads, _losses(6)),
                               combiner.combine(grads, _losses(6)), rtol=0, atol=0)
    assert torch.equal(restored.sample_orders(6), combiner.sample_orders(6))


def test_pcgrad_handles_a_zero_gradient():
    grads = _gradients(3)
    grads[1] = 0.0
    orders = PCGrad(seed=0).sample_orders(3)
    got = PCGrad(seed=0).combine(grads, _losses(3))
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, _pcgrad_reference(grads, orders).mean(0), rtol=0,
                               atol=1e-12)


# -- MGDA -----------------------------------------------------------------------------------

def _min_norm_weights(grads):
    return MGDA().combination_weights(grads @ grads.T, _losses(len(grads)), None)


@pytest.mark.parametrize("tasks", [2, 3])
def test_mgda_is_the_min_norm_point_of_the_hull(tasks):
    grid = _simplex_grid(tasks, 300)
    for seed in range(4):
        grads = _gradients(tasks, params=4, seed=seed)
        w = _min_norm_weights(grads)
        assert (w >= 0).all() and abs(float(w.sum()) - 1.0) < 1e-12  # in the hull
        direction = MGDA().combine(grads, _losses(tasks))
        torch.testing.assert_close(direction, w @ grads, rtol=0, atol=1e-12)
        brute = ((grid @ grads).square().sum(dim=1)).min()
        norm2 = direction @ direction
        assert norm2 <= brute + 1e-10  # at least as good as every grid point
        assert brute - norm2 <= 5e-3 * grads.square().sum(dim=1).max()  # and the grid agrees


def test_mgda_satisfies_the_optimality_conditions_for_many_tasks():
    """KKT of min w^T G w on the simplex: (G w)_i >= w^T G w, with equality where w_i > 0."""
    for seed, (tasks, params) in enumerate([(5, 3), (8, 20), (6, 100), (16, 10), (32, 500)]):
        grads = _gradients(tasks, params, seed=seed)
        gram = grads @ grads.T
        w = _min_norm_weights(grads)
        value, scale = w @ gram @ w, gram.diagonal().max()
        assert (gram @ w >= value - 1e-10 * scale).all()
        assert ((gram @ w - value).abs() * w).max() <= 1e-10 * scale


def test_mgda_reduction_sum_multiplies_by_the_number_of_tasks():
    grads = _gradients(4)
    torch.testing.assert_close(MGDA(reduction="sum").combine(grads, _losses(4)),
                               4 * MGDA().combine(grads, _losses(4)), rtol=1e-12, atol=0)


def _quadratic(x, hessian, linear):
    return x @ linear + ((x @ hessian) * x).sum(-1) / 2


def test_simplex_qp_matches_a_brute_force_search():
    g = torch.Generator().manual_seed(0)
    grid = _simplex_grid(3, 300)
    for _ in range(6):
        a = torch.randn(3, 3, generator=g, dtype=DOUBLE)
        hessian, linear = a @ a.T + 0.01 * torch.eye(3, dtype=DOUBLE), torch.randn(3, generator=g,
                                                                                 dtype=DOUBLE)
        w = torch.from_numpy(simplex_qp(hessian.numpy(), linear.numpy()))
        assert (w >= 0).all() and abs(float(w.sum()) - 1) < 1e-12
        brute = _quadratic(grid, hessian, linear).min()
        assert _quadratic(w, hessian, linear) <= brute + 1e-12
        assert brute - _quadratic(w, hessian, linear) <= 1e-3 * hessian.diagonal().max()


# -- CAGrad ---------------------------------------------------------------------------------

def test_cagrad_with_c_zero_is_the_mean():
    grads = _gradients(5)
    for rescale in (0, 1, 2):
        torch.testing.assert_close(CAGrad(c=0.0, rescale=rescale).combine(grads, _losses(5)),
                                   grads.mean(0), rtol=0, atol=1e-15)


@pytest.mark.parametrize("tasks", [2, 3])
def test_cagrad_weights_minimise_the_dual_objective(tasks):
    grid = _simplex_grid(tasks, 300)
    for seed in range(4):
        grads = _gradients(tasks, params=3, seed=seed)
        gram = grads @ grads.T
        radius = 0.5 * grads.mean(0).norm()
        combiner = CAGrad(c=0.5, rescale=0)
        weights = combiner.combination_weights(gram, _losses(tasks), None)
        # Undo d = (1/T + radius w / |g_w|) @ grads to read the solver's w.
        w = weights - 1.0 / tasks
        w = w / w.sum()
        value = conflict_averse_objective(w, gram, radius)
        brute = (grid @ gram.mean(1) + radius * ((grid @ gram) * grid).sum(1).sqrt()).min()
        assert value <= brute + 1e-10
        assert brute - value <= 1e-3 * gram.diagonal().max().sqrt()


def test_cagrad_direction_solves_the_primal_problem():
    """max_d min_i g_i.d over |d - g0| <= c|g0| (Liu et al., Eq. 3): d is on the ball and
    no random point of the ball does better; the optimum equals the dual objective."""
    g = torch.Generator().manual_seed(0)
    for seed, (tasks, params, c) in enumerate([(2, 3, 0.5), (3, 5, 0.8), (5, 20, 0.4)]):
        grads = _gradients(tasks, params, seed=seed)
        g0 = grads.mean(0)
        d = CAGrad(c=c, rescale=0).combine(grads, _losses(tasks))
        torch.testing.assert_close((d - g0).norm(), c * g0.norm(), rtol=1e-12, atol=0)
        worst = (grads @ d).min()
        u = torch.randn(20000, params, generator=g, dtype=DOUBLE)
        u = u / u.norm(dim=1, keepdim=True) * torch.rand(20000, 1, generator=g,
                                                           dtype=DOUBLE) ** (1 / params)
        candidates = g0 + c * g0.norm() * u
        assert worst >= (candidates @ grads.T).min(dim=1).values.max() - 1e-9
        for rescale, factor in ((1, 1 + c * c), (2, 1 + c)):
            torch.testing.assert_close(CAGrad(c=c, rescale=rescale).combine(grads,
                                                                            _losses(tasks)),
                                       d / factor, rtol=1e-10, atol=0)


# -- GradNorm -------------------------------------------------------------------------------

def _gradnorm_step_reference(weights, grads, losses, initial, alpha, lr):
    """L_grad by autograd (Chen et al. Eq. 2, target held constant), then the same step."""
    w = weights.clone().requires_grad_(True)
    norms = grads.norm(dim=1)
    weighted = w * norms
    ratios = losses / initial
    target = (weighted.mean() * (ratios / ratios.mean()) ** alpha).detach()
    (weighted - target).abs().sum().backward()
    stepped = (weights - lr * w.grad / norms.mean()).clamp_min(1e-6)
    return stepped * (len(weights) / stepped.sum())


def test_gradnorm_update_matches_autograd_of_its_loss():
    tasks = 4
    combiner = GradNorm(num_tasks=tasks, alpha=1.5, lr=0.05).double()
    first_losses = _losses(tasks)
    weights = combiner.task_weights.clone()
    grads = _gradients(tasks, seed=0)
    combiner.combine(grads, first_losses)
    torch.testing.assert_close(combiner.initial_losses, first_losses, rtol=0, atol=0)
    expected = _gradnorm_step_reference(weights, grads, first_losses, first_losses, 1.5, 0.05)
    torch.testing.assert_close(combiner.task_weights, expected, rtol=0, atol=1e-14)
    for step in range(1, 6):
        grads = _gradients(tasks, seed=step)
        losses = first_losses * torch.tensor([0.9, 0.5, 1.1, 0.7], dtype=DOUBLE) ** step
        weights = combiner.task_weights.clone()
        direction = combiner.combine(grads, losses)
        torch.testing.assert_close(direction, weights @ grads / tasks, rtol=0, atol=1e-14)
        expected = _gradnorm_step_reference(weights, grads, losses, first_losses, 1.5, 0.05)
        torch.testing.assert_close(combiner.task_weights, expected, rtol=0, atol=1e-14)
    torch.testing.assert_close(combiner.initial_losses, first_losses, rtol=0, atol=0)


def test_gradnorm_weights_stay_positive_and_sum_to_the_number_of_tasks():
    combiner = GradNorm(num_tasks=3, lr=2.0).double()  # a large step hits the clamp
    for step in range(30):
        grads = _gradients(3, seed=step) * torch.tensor([[100.0], [1.0], [0.01]], dtype=DOUBLE)
        combiner.combine(grads, torch.rand(3, dtype=DOUBLE) + 0.1)
        w = combiner.task_weights
        assert (w > 0).all()
        assert abs(float(w.sum()) - 3.0) < 1e-12


def test_gradnorm_uses_task_ids_and_freezes_in_eval_mode():
    combiner = GradNorm(num_tasks=5).double()
    grads, ids = _gradients(3), torch.tensor([4, 0, 2])
    direction = combiner.combine(grads, _losses(3), ids)
    torch.testing.assert_close(direction, grads.mean(0), rtol=0, atol=1e-15)
    seen = ~torch.isnan(combiner.initial_losses)
    assert seen.tolist() == [True, False, True, False, True]
    combiner.eval()
    before = {k: v.clone() for k, v in combiner.state_dict().items()}
    combiner.combine(grads, _losses(3), ids)
    for key, value in combiner.state_dict().items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0, equal_nan=True)
    with pytest.raises(ValueError, match="num_tasks=5"):
        combiner.combine(grads, _losses(3), None)
    combiner.train()
    with pytest.raises(ValueError, match="gradnorm needs positive task losses"):
        combiner.combine(grads, _losses(3) - 1.0, ids)


# -- Loss weighting -------------------------------------------------------------------------

def test_mean_and_sum_are_exact():
    losses = _losses(4)
    assert torch.equal(build_combiner("mean").combine_losses(losses, None), losses.mean())
    assert torch.equal(build_combiner("sum").combine_losses(losses, None), losses.sum())


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_uncertainty_weighting_gradients_match_the_formula(reduction):
    combiner = UncertaintyWeighting(num_tasks=3, reduction=reduction).double()
    with torch.no_grad():
        combiner.log_variance.copy_(torch.tensor([0.3, -0.7, 1.2], dtype=DOUBLE))
    losses = torch.tensor([0.5, 2.0, 1.5, 0.25], dtype=DOUBLE, requires_grad=True)
    ids = torch.tensor([1, 0, 1, 2])
    combiner.combine_losses(losses, ids).backward()
    s = combiner.log_variance.detach()
    scale = 0.25 if reduction == "mean" else 1.0
    # d/ds_k sum_{t: k(t)=k} exp(-s_k) L_t + s_k = sum_t (1 - exp(-s_k) L_t)
    expected_s = torch.zeros(3, dtype=DOUBLE).index_add(
        0, ids, 1 - torch.exp(-s[ids]) * losses.detach()) * scale
    torch.testing.assert_close(combiner.log_variance.grad, expected_s, rtol=0, atol=1e-15)
    torch.testing.assert_close(losses.grad, torch.exp(-s[ids]) * scale, rtol=0, atol=1e-15)


def test_uncertainty_weighting_starts_as_the_mean_and_checks_ids():
    combiner = UncertaintyWeighting(num_tasks=3).double()
    torch.testing.assert_close(combiner.combine_losses(_losses(3)), _losses(3).mean(),
                               rtol=0, atol=0)
    with pytest.raises(ValueError, match="num_tasks=3"):
        combiner.combine_losses(_losses(4))
    with pytest.raises(ValueError, match=r"task_ids must lie in \[0, num_tasks=3\)"):
        combiner.combine_losses(_losses(2), torch.tensor([0, 3]))


def test_group_dro_upweights_the_group_with_the_larger_loss():
    combiner = GroupDRO(num_groups=3, step_size=0.1).double()
    losses = torch.tensor([1.0, 3.0, 3.0], dtype=DOUBLE)
    ids = torch.tensor([0, 1, 1])
    for _ in range(5):
        combiner.combine_losses(losses, ids)
    q = combiner.group_weights
    assert q[1] > q[0] and q[1] > q[2]
    assert abs(float(q.sum()) - 1) < 1e-12


def test_group_dro_follows_algorithm_1():
    combiner = GroupDRO(num_groups=4, step_size=0.5).double()
    with torch.no_grad():
        combiner.group_weights.copy_(torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=DOUBLE))
    losses = torch.tensor([1.0, 2.0, 4.0, 0.5], dtype=DOUBLE, requires_grad=True)
    ids = torch.tensor([2, 0, 2, 1])  # group 3 is absent
    loss = combiner.combine_losses(losses, ids)
    group_loss = torch.tensor([2.0, 0.5, 2.5, 0.0], dtype=DOUBLE)
    unnormalised = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=DOUBLE) * torch.exp(
        0.5 * group_loss)  # exp(0) = 1: the absent group keeps its weight
    q = unnormalised / unnormalised.sum()
    torch.testing.assert_close(combiner.group_weights, q, rtol=0, atol=1e-15)
    present = q[:3]
    torch.testing.assert_close(loss, (present * group_loss[:3]).sum() / present.sum(),
                               rtol=0, atol=1e-15)
    loss.backward()  # each task: q_g / (tasks in g) / sum of present q
    expected = q[ids] / torch.tensor([2.0, 1.0, 2.0, 1.0], dtype=DOUBLE) / present.sum()
    torch.testing.assert_close(losses.grad, expected, rtol=0, atol=1e-15)


def test_group_dro_state_and_errors():
    combiner = GroupDRO(num_groups=2)
    assert "group_weights" in combiner.state_dict()
    combiner.eval()
    combiner.combine_losses(torch.tensor([5.0, 1.0]), torch.tensor([0, 1]))
    assert torch.equal(combiner.group_weights, torch.tensor([0.5, 0.5]))
    with pytest.raises(ValueError, match="group_dro needs task_ids"):
        combiner.combine_losses(torch.tensor([1.0, 2.0]), None)
    with pytest.raises(ValueError, match="num_groups=2"):
        combiner.combine_losses(torch.tensor([1.0, 2.0]), torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="integer tensor of shape"):
        combiner.combine_losses(torch.tensor([1.0, 2.0]), torch.tensor([0.0, 1.0]))


# -- Diagnostics ----------------------------------------------------------------------------

def test_gradient_statistics_match_a_pairwise_loop():
    grads = _gradients(5)
    grads[2] = -grads[0] * 0.5  # one certain conflict
    stats = gradient_statistics(grads @ grads.T)
    cosines = [float(torch.nn.functional.cosine_similarity(grads[i], grads[j], dim=0))
               for i in range(5) for j in range(i + 1, 5)]
    norms = grads.norm(dim=1)
    assert stats["mean_cosine"] == pytest.approx(sum(cosines) / len(cosines), abs=1e-12)
    assert stats["min_cosine"] == pytest.approx(min(cosines), abs=1e-12)
    assert stats["min_cosine"] == pytest.approx(-1.0, abs=1e-12)
    assert stats["fraction_conflicting"] == sum(c < 0 for c in cosines) / len(cosines)
    assert stats["norm_ratio"] == pytest.approx(float(norms.max() / norms.min()), rel=1e-12)
    assert all(isinstance(v, float) for v in stats.values())


def test_gradient_statistics_edge_cases():
    one = gradient_statistics(torch.ones(1, 1, dtype=DOUBLE))
    assert math.isnan(one["mean_cosine"]) and one["norm_ratio"] == 1.0
    zero = torch.tensor([[1.0, 0.0], [0.0, 0.0]], dtype=DOUBLE)
    stats = gradient_statistics(zero)
    assert stats["norm_ratio"] == math.inf and stats["mean_cosine"] == 0.0
    with pytest.raises(ValueError, match="square"):
        gradient_statistics(torch.ones(2, 3))


# -- Degenerate inputs ----------------------------------------------------------------------

GRADIENT_COMBINERS = [("pcgrad", {}), ("mgda", {}), ("cagrad", {}), ("gradnorm", {"num_tasks": 1})]


@pytest.mark.parametrize("name, options", GRADIENT_COMBINERS)
def test_one_task_passes_its_gradient_through(name, options):
    grads = _gradients(1)
    # CAGrad with one task: d = g + c |g| g / |g|, then rescaled by 1 / (1 + c^2).
    expected = grads[0] * 1.5 / 1.25 if name == "cagrad" else grads[0]
    torch.testing.assert_close(build_combiner(name, **options).double().combine(grads,
                                                                                _losses(1)),
                               expected, rtol=1e-12, atol=0)


@pytest.mark.parametrize("name, options", GRADIENT_COMBINERS[:3])
def test_zero_and_opposite_gradients_give_finite_directions(name, options):
    zero = torch.zeros(3, 5, dtype=DOUBLE)
    assert torch.equal(build_combiner(name, **options).combine(zero, _losses(3)),
                       torch.zeros(5, dtype=DOUBLE))
    g = _gradients(1)[0]
    opposite = torch.stack([g, -g])  # mean 0: every combiner here returns 0
    got = build_combiner(name, **options).combine(opposite, _losses(2))
    torch.testing.assert_close(got, torch.zeros_like(g), rtol=0, atol=1e-12)


@pytest.mark.parametrize("name, options", GRADIENT_COMBINERS[:3])
def test_float32_gradients_give_a_float32_direction(name, options):
    grads = _gradients(4)
    got = build_combiner(name, **options).combine(grads.float(), _losses(4).float())
    assert got.dtype == torch.float32
    expected = build_combiner(name, **options).combine(grads, _losses(4))
    torch.testing.assert_close(got, expected.float(), rtol=1e-4, atol=1e-5)


# -- Registry and errors --------------------------------------------------------------------

def test_registry_kinds():
    assert set(COMBINERS) == {"mean", "sum", "pcgrad", "gradnorm", "mgda", "cagrad",
                              "uncertainty", "group_dro"}
    gradient = {n for n, c in COMBINERS.items() if c.needs_gradients}
    assert gradient == {"pcgrad", "gradnorm", "mgda", "cagrad"}
    assert list(build_combiner("uncertainty", num_tasks=2).parameters())
    for name in ("mean", "pcgrad", "group_dro"):
        options = {"num_groups": 2} if name == "group_dro" else {}
        assert not list(build_combiner(name, **options).parameters())


@pytest.mark.parametrize("name, options, message", [
    ("pcgrads", {}, "combiner must be one of"),
    ("mean", {"num_tasks": 3}, "unexpected keyword argument 'num_tasks'"),
    ("pcgrad", {"orders": "random"}, "unexpected keyword argument 'orders'"),
    ("gradnorm", {}, "missing a required argument: 'num_tasks'"),
    ("pcgrad", {"order": "sorted"}, "order must be one of"),
    ("pcgrad", {"reduction": "avg"}, "reduction must be one of"),
    ("pcgrad", {"seed": -1}, "seed must be an integer >= 0"),
    ("cagrad", {"c": -0.5}, "c must be a finite number >= 0"),
    ("cagrad", {"rescale": 3}, "rescale must be one of"),
    ("mgda", {"steps": 10}, "unexpected keyword argument 'steps'"),
    ("gradnorm", {"num_tasks": 2, "lr": 0.0}, "lr must be a finite number > 0"),
    ("group_dro", {"num_groups": 0}, "num_groups must be an integer >= 1"),
    ("group_dro", {"num_groups": 2, "step_size": float("nan")}, "step_size must be"),
    ("uncertainty", {"num_tasks": None}, "num_tasks must be an integer"),
])
def test_bad_names_and_options_raise_clear_errors(name, options, message):
    with pytest.raises(ValueError, match=message):
        build_combiner(name, **options)


def test_bad_inputs_raise_clear_errors():
    grads = _gradients(3)
    with pytest.raises(ValueError, match="one gradient row per task loss"):
        PCGrad().combine(grads, _losses(4))
    with pytest.raises(ValueError, match=r"grads must be a 2-D floating tensor"):
        PCGrad().combine(grads[0], _losses(3))
    with pytest.raises(ValueError, match="losses must be a non-empty 1-D"):
        MGDA().combine(grads, _losses(3)[:, None])
    with pytest.raises(ValueError, match="task_ids must be an integer tensor of shape"):
        CAGrad().combine(grads, _losses(3), torch.tensor([0, 1]))
    with pytest.raises(TypeError, match="call combine_losses"):
        build_combiner("mean").combine(grads, _losses(3))
    with pytest.raises(TypeError, match="call combine\\(grads"):
        PCGrad().combine_losses(_losses(3))
