"""PLATIPUS and amortized Bayesian MAML for classification, against hand computations
(float64, a linear softmax classifier ``f(x) = x W^T + b``).

- the predictive of ``K`` drawn classifiers is the mean of their softmax probabilities,
  ``p(c | x) = (1/K) sum_k softmax(f_k(x))_c``, and calling it gives its logarithm;
- ABML's likelihood term is the cross-entropy *summed* over the points (the categorical
  log-likelihood), so the per-point negative ELBO is the mean cross-entropy plus KL / N.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from metalab.algorithms.abml import ABML
from metalab.algorithms.calibration import negative_log_likelihood
from metalab.algorithms.platipus import PLATIPUS
from metalab.tasks import TaskBatch
from metalab.train.evaluator import Evaluator

F64 = torch.float64


def classifier(dim: int = 3, classes: int = 3) -> nn.Linear:
    torch.manual_seed(0)
    return nn.Linear(dim, classes).double()


def episode(seed: int = 0, shots: int = 2, queries: int = 4, classes: int = 3, dim: int = 3):
    g = torch.Generator().manual_seed(seed)
    sx = torch.randn(shots * classes, dim, generator=g, dtype=F64)
    qx = torch.randn(queries * classes, dim, generator=g, dtype=F64)
    sy = torch.arange(classes).repeat_interleave(shots)
    qy = torch.arange(classes).repeat_interleave(queries)
    return sx, sy, qx, qy


def hand_softmax(logits: torch.Tensor) -> torch.Tensor:
    exp = torch.exp(logits - logits.max(dim=-1, keepdim=True).values)
    return exp / exp.sum(dim=-1, keepdim=True)


def platipus() -> PLATIPUS:
    return PLATIPUS(classifier(), loss="cross_entropy", inner_lr=0.3, prior_std=0.5,
                    samples=4).double()


def abml() -> ABML:
    return ABML(classifier(), loss="cross_entropy", inner_lr=0.3, prior_std=0.5,
                samples=4).double()


def test_platipus_classifier_is_the_mean_softmax_of_its_draws():
    model = platipus()
    sx, sy, qx, _ = episode()
    predictive = model.adapt(sx, sy, seed=3)
    # the same draws, from the same seeded generator, as whole weight sets
    state = model.draw_adapted(sx, sy, 4, torch.Generator().manual_seed(3))
    per_draw = [hand_softmax(qx @ state["weight"][k].T + state["bias"][k]) for k in range(4)]
    expected = sum(per_draw) / 4
    assert torch.allclose(predictive.probabilities(qx), expected, atol=1e-12)
    assert torch.allclose(predictive(qx), torch.log(expected), atol=1e-12)
    # the mixture of the draws, not the softmax of their mean logits
    mean_logits = sum(qx @ state["weight"][k].T + state["bias"][k] for k in range(4)) / 4
    assert not torch.allclose(expected, hand_softmax(mean_logits), atol=1e-6)
    assert torch.allclose(predictive.probabilities(qx).sum(-1), torch.ones(len(qx), dtype=F64))


def test_abml_classifier_is_the_mean_softmax_of_its_weight_draws():
    model = abml()
    sx, sy, qx, _ = episode(1)
    predictive = model.adapt(sx, sy, seed=2)
    with torch.no_grad():
        state = model.adapt_task(sx, sy, training=False, seed=2)
    weights = model.draw_weights(state, 4, torch.Generator().manual_seed(2))
    expected = sum(hand_softmax(qx @ weights["weight"][k].T + weights["bias"][k])
                   for k in range(4)) / 4
    assert torch.allclose(predictive.probabilities(qx), expected, atol=1e-12)
    again = model.adapt(sx, sy, seed=2).probabilities(qx)
    assert torch.equal(again, predictive.probabilities(qx))  # reproducible under a seed
    assert not torch.equal(model.adapt(sx, sy, seed=5).probabilities(qx), again)


def test_abml_classification_likelihood_is_the_summed_cross_entropy():
    model = abml()
    sx, sy, _, _ = episode(2)
    weights = {n: p.detach() for n, p in model.model.named_parameters()}
    probabilities = hand_softmax(sx @ weights["weight"].T + weights["bias"])
    by_hand = -sum(math.log(probabilities[i, int(c)]) for i, c in enumerate(sy))
    assert model.nll(weights, sx, sy).item() == pytest.approx(by_hand, rel=1e-12)
    # with the posterior at the prior (zero steps, KL 0) the per-point negative ELBO with
    # one draw of zero noise is the mean cross-entropy
    model.standard_normal_like = lambda name, like, generator=None: torch.zeros_like(like)
    phi = model.adapt_task(sx, sy, training=True, inner_steps=0)
    assert model.negative_elbo(phi, model.prior(True), sx, sy).item() == pytest.approx(
        by_hand / len(sy), rel=1e-12)


@pytest.mark.parametrize("make", [platipus, abml])
def test_evaluator_scores_the_mixture(make):
    model = make()
    batch = TaskBatch(*(torch.stack(parts) for parts in
                        zip(*(episode(s) for s in (3, 4)), strict=True)), num_classes=3)

    class Source:
        def sample(self):
            return batch

    result = Evaluator(episodes=2).evaluate(model, Source())
    nll = [negative_log_likelihood(model.adapt(batch.support_x[t], batch.support_y[t])
                                   .probabilities(batch.query_x[t]), batch.query_y[t])
           for t in range(2)]
    assert result["nll"] == pytest.approx(torch.stack(nll).mean().item(), rel=1e-10)
    assert 0 <= result["ece"] <= 1 and 0 < result["confidence"] <= 1


@pytest.mark.parametrize("make", [platipus, abml])
def test_meta_training_reaches_every_meta_parameter(make):
    model = make()
    batch = TaskBatch(*(torch.stack(parts) for parts in
                        zip(*(episode(s) for s in (5, 6)), strict=True)), num_classes=3)
    loss, _ = model.meta_loss(batch)
    loss.backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
