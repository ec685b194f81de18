"""BMAML and the ensemble of MAMLs against independent references (float64).

- SVGD for 2 particles in 1-D against the formula written out by hand;
- the median-heuristic bandwidth by hand;
- BMAML with one particle is MAML: the same adapted parameters (a hand-written SGD step)
  and the same meta-gradient as `MAML` on the same data (``meta_loss="predictive"``);
- the chaser loss against a hand-written chaser and leader for one particle of a linear
  model;
- the ensemble's members adapt independently (each a hand-written SGD step);
- the predictive: mean and variance of the particles' predictions plus the noise, positive
  and finite for one query point, samples reproducible under a seed.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from metalab.algorithms import MAML
from metalab.algorithms.bmaml import BMAML
from metalab.algorithms.maml_ensemble import MAMLEnsemble
from metalab.functional.svgd import median_bandwidth, squared_distances, svgd_step
from metalab.tasks import TaskBatch


def batch(seed: int = 0, tasks: int = 2, shots: int = 5, queries: int = 4) -> TaskBatch:
    g = torch.Generator().manual_seed(seed)

    def draw(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    return TaskBatch(draw(tasks, shots, 1), draw(tasks, shots, 1), draw(tasks, queries, 1),
                     draw(tasks, queries, 1))


def mlp(seed: int = 1) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(1, 8), nn.Tanh(), nn.Linear(8, 1)).double()


def test_svgd_two_particles_in_one_dimension_by_hand():
    a, b, ga, gb, eps = 0.3, -0.9, 1.5, -0.4, 0.1
    particles = {"w": torch.tensor([[a], [b]], dtype=torch.float64)}
    grads = {"w": torch.tensor([[ga], [gb]], dtype=torch.float64)}
    h = (a - b) ** 2 / math.log(2)  # median of one distance, squared, over log M
    k = math.exp(-(a - b) ** 2 / h)
    phi_a = 0.5 * (-ga + k * -gb + k * 2 / h * (a - b))
    phi_b = 0.5 * (-gb + k * -ga + k * 2 / h * (b - a))
    stepped = svgd_step(particles, grads, eps)["w"]
    assert torch.allclose(stepped, torch.tensor([[a + eps * phi_a], [b + eps * phi_b]],
                                                dtype=torch.float64))


def test_median_bandwidth_by_hand():
    points = torch.tensor([[0.0, 0.0], [3.0, 4.0], [0.0, 1.0]], dtype=torch.float64)
    d2 = squared_distances({"w": points})
    assert torch.allclose(d2, torch.tensor([[0.0, 25.0, 1.0], [25.0, 0.0, 18.0],
                                            [1.0, 18.0, 0.0]], dtype=torch.float64))
    # pairwise squared distances 25, 1, 18: median 18
    assert math.isclose(median_bandwidth(d2).item(), 18 / math.log(3))


def one_particle_pair(inner_steps: int = 1):
    model = mlp()
    maml = MAML(copy.deepcopy(model), inner_lr=0.05, inner_steps=inner_steps, loss="mse")
    bmaml = BMAML(copy.deepcopy(model), particles=1, inner_lr=0.05, inner_steps=inner_steps,
                  meta_loss="predictive", loss="mse")
    return model, maml, bmaml


def test_one_particle_adapts_like_a_hand_written_sgd_step():
    model, _, bmaml = one_particle_pair()
    data = batch()
    sx, sy = data.support_x[0], data.support_y[0]
    params = dict(model.named_parameters())
    loss = ((torch.func.functional_call(model, params, (sx,)) - sy) ** 2).mean()
    grads = torch.autograd.grad(loss, list(params.values()))
    expected = {n: p - 0.05 * g for (n, p), g in zip(params.items(), grads, strict=True)}
    adapted = bmaml.adapt_task(sx, sy, training=True)
    for name, value in expected.items():
        assert torch.allclose(adapted[name][0], value)


def test_one_particle_bmaml_has_maml_meta_gradient():
    _, maml, bmaml = one_particle_pair(inner_steps=2)
    data = batch()
    maml.meta_loss(data)[0].backward()
    bmaml.meta_loss(data)[0].backward()
    for name, p in maml.model.named_parameters():
        got = bmaml.particles[name.replace(".", "__")].grad[0]
        assert torch.allclose(got, p.grad), name


def test_chaser_loss_for_one_linear_particle_by_hand():
    model = nn.Linear(1, 1, bias=False).double()
    with torch.no_grad():
        model.weight.fill_(0.5)
    learner = BMAML(model, particles=1, inner_lr=0.1, inner_steps=1, leader_steps=1,
                    loss="mse")
    data = batch(tasks=1)
    sx, sy, qx, qy = (t[0, :, 0] for t in (data.support_x, data.support_y, data.query_x,
                                             data.query_y))
    w = 0.5
    chaser = w - 0.1 * 2 * ((w * sx - sy) * sx).mean()
    ax, ay = torch.cat([sx, qx]), torch.cat([sy, qy])
    leader = chaser - 0.1 * 2 * ((chaser * ax - ay) * ax).mean()
    loss, _ = learner.meta_loss(data)
    assert math.isclose(loss.item(), ((chaser - leader) ** 2).item(), rel_tol=1e-10)
    loss.backward()  # d/dw (c(w) - L)^2 with the leader constant: 2 (c - L) dc/dw
    dchaser = 1 - 0.1 * 2 * (sx * sx).mean()
    expected = 2 * (chaser - leader) * dchaser
    assert math.isclose(learner.particles["weight"].grad.item(), expected.item(), rel_tol=1e-9)


def test_the_chaser_distance_sums_over_every_entry_of_every_particle():
    """Two particles of a two-input linear model: eq. 6 is the sum of squared differences
    over all entries (a mean would be 4x smaller here)."""
    torch.manual_seed(3)
    learner = BMAML(nn.Linear(2, 1, bias=False).double(), particles=2, inner_lr=0.1,
                    inner_steps=1, leader_steps=1, loss="mse")
    g = torch.Generator().manual_seed(4)
    sx, qx = (torch.randn(1, n, 2, generator=g, dtype=torch.float64) for n in (5, 4))
    sy, qy = (torch.randn(1, n, 1, generator=g, dtype=torch.float64) for n in (5, 4))
    data = TaskBatch(sx, sy, qx, qy)
    start = learner.particles["weight"].detach().clone()          # [2, 1, 2]

    def svgd(w, x, y):
        grads = torch.stack([2 * ((x @ p.T - y) * x).mean(dim=0, keepdim=True) for p in w])
        return svgd_step({"w": w}, {"w": grads}, 0.1)["w"]

    chaser = svgd(start, sx[0], sy[0])
    leader = svgd(chaser, torch.cat([sx[0], qx[0]]), torch.cat([sy[0], qy[0]]))
    loss, _ = learner.meta_loss(data)
    assert math.isclose(loss.item(), ((chaser - leader) ** 2).sum().item(), rel_tol=1e-9)


def test_ensemble_members_adapt_independently():
    model = mlp()
    learner = MAMLEnsemble(model, particles=3, inner_lr=0.05, inner_steps=1, loss="mse")
    data = batch()
    sx, sy = data.support_x[0], data.support_y[0]
    adapted = learner.adapt_task(sx, sy, training=True)
    for m in range(3):
        params = {n: learner.particles[n.replace(".", "__")][m] for n in learner.names}
        loss = ((torch.func.functional_call(model, params, (sx,)) - sy) ** 2).mean()
        grads = torch.autograd.grad(loss, list(params.values()))
        for (name, p), g in zip(params.items(), grads, strict=True):
            assert torch.allclose(adapted[name][m], p - 0.05 * g)


def test_particles_start_different():
    learner = BMAML(mlp(), particles=3, loss="mse")
    weights = learner.particles["0__weight"]
    assert not torch.allclose(weights[0], weights[1])


def test_predictive_moments_and_single_point():
    learner = BMAML(mlp(), particles=4, noise_std=0.2, loss="mse")
    data = batch(tasks=1)
    predictive = learner.adapt(data.support_x[0], data.support_y[0])
    x = data.query_x[0][:1]
    state = learner.adapt_task(data.support_x[0], data.support_y[0], training=False)
    outputs = torch.stack([
        torch.func.functional_call(learner.model,
                                   {n: state[n][m].detach() for n in learner.names}, (x,))
        for m in range(4)])
    variance = predictive.variance(x)
    assert torch.allclose(predictive.mean(x), outputs.mean(0))
    assert torch.allclose(variance, ((outputs - outputs.mean(0)) ** 2).mean(0) + 0.04)
    assert variance.shape == (1, 1) and torch.isfinite(variance).all() and (variance > 0).all()
    first, again = predictive.sample(x, 5, seed=3), predictive.sample(x, 5, seed=3)
    assert torch.equal(first, again) and not torch.equal(first, predictive.sample(x, 5, seed=4))


def test_classification_predicts_the_mean_softmax():
    torch.manual_seed(0)
    model = nn.Linear(2, 3).double()
    learner = BMAML(model, particles=2, loss="cross_entropy", meta_loss="predictive")
    x = torch.randn(4, 2, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0])
    probs = torch.stack([
        torch.softmax(torch.func.functional_call(
            model, {n: learner.particles[n][m].detach() for n in learner.names}, (x,)), -1)
        for m in range(2)]).mean(0)
    out = learner.adapt(x, y, inner_steps=0)(x)
    assert torch.allclose(out.exp(), probs)


def test_vmap_matches_loop_for_the_chaser_loss():
    data = batch()
    model = mlp()
    loop = BMAML(copy.deepcopy(model), particles=3, loss="mse")
    vmap = copy.deepcopy(loop)
    vmap.strategy = "vmap"
    loss_loop = loop.meta_loss(data)[0]
    loss_vmap = vmap.meta_loss(data)[0]
    assert torch.allclose(loss_loop, loss_vmap)


def test_particles_of_a_bare_layer_start_apart_and_coincident_ones_stay_finite():
    learner = BMAML(nn.Linear(2, 1, bias=False).double(), particles=3, loss="mse")
    w = learner.particles["weight"].detach()
    assert not torch.equal(w[0], w[1]) and not torch.equal(w[1], w[2])
    same = {"w": torch.zeros(3, 2, dtype=torch.float64)}
    stepped = svgd_step(same, {"w": torch.ones(3, 2, dtype=torch.float64)}, 0.1)["w"]
    assert torch.isfinite(stepped).all()
    assert torch.allclose(stepped, torch.full((3, 2), -0.1, dtype=torch.float64))
