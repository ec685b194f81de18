"""Class probabilities of adapted learners against independent references (float64):
MAML's softmax, the ensemble's mean of its members' probabilities (each member re-adapted by
a hand-written MAML step), BMAML's mean over particles, LLAMA's Laplace curvature and probit
predictive for a linear softmax model by hand; and the evaluator's NLL and pooled ECE."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.func import functional_call

from metalab.algorithms import MAML, CategoricalPredictive
from metalab.algorithms.bmaml import BMAML
from metalab.algorithms.calibration import expected_calibration_error
from metalab.algorithms.llama import LLAMA
from metalab.algorithms.maml_ensemble import MAMLEnsemble
from metalab.tasks import TaskBatch
from metalab.train.evaluator import Evaluator
from metalab.train.report import format_result

F64 = torch.float64


def data(seed: int = 0, n: int = 6, dim: int = 3, classes: int = 3):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=g, dtype=F64)
    return x, torch.arange(n) % classes


def linear(dim: int = 3, classes: int = 3, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(dim, classes).double()


def test_maml_probabilities_are_the_softmax_of_its_logits():
    x, y = data()
    learner = MAML(linear(), inner_lr=0.3, inner_steps=2)
    predictor = learner.adapt(x, y)
    assert isinstance(predictor, CategoricalPredictive)
    assert torch.allclose(predictor.probabilities(x), torch.softmax(predictor(x), -1))


def sgd_step(params: dict, x, y, model, lr: float) -> dict:
    params = {n: p.detach().requires_grad_(True) for n, p in params.items()}
    loss = nn.functional.cross_entropy(functional_call(model, params, (x,)), y)
    grads = torch.autograd.grad(loss, list(params.values()))
    return {n: p - lr * g for (n, p), g in zip(params.items(), grads, strict=True)}


def test_ensemble_probabilities_are_the_mean_of_its_members_adapted_alone():
    x, y = data()
    model = linear()
    learner = MAMLEnsemble(model, particles=3, inner_lr=0.5, inner_steps=2,
                           loss="cross_entropy")
    probs = learner.adapt(x, y).probabilities(x)
    members = []
    for m in range(3):
        params = {n: learner.particles[n][m].detach() for n in learner.names}
        for _ in range(2):
            params = sgd_step(params, x, y, model, 0.5)
        members.append(torch.softmax(functional_call(model, params, (x,)), -1))
    assert torch.allclose(probs, torch.stack(members).mean(0))
    # not the softmax of the mean logits, which differs for members that disagree
    assert not torch.allclose(probs, torch.softmax(torch.log(torch.stack(members)).mean(0), -1))
    assert torch.allclose(probs.sum(-1), torch.ones(len(x), dtype=F64))


def test_bmaml_probabilities_are_the_mean_over_its_adapted_particles():
    x, y = data()
    learner = BMAML(linear(), particles=3, inner_lr=0.5, inner_steps=2, loss="cross_entropy")
    predictor = learner.adapt(x, y)
    state = learner.adapt_task(x, y, training=False)
    manual = torch.stack([
        torch.softmax(functional_call(learner.model, {n: state[n][m].detach()
                                                      for n in learner.names}, (x,)), -1)
        for m in range(3)]).mean(0)
    assert torch.allclose(predictor.probabilities(x), manual)
    assert torch.allclose(predictor(x).exp(), manual)


def test_llama_classification_curvature_by_hand():
    # f = W x + b: d f_o / d W[o', j] = [o = o'] x_j, d f_o / d b_o' = [o = o'], so
    # h_W[o, j] = sum_i p_io (1 - p_io) x_ij^2 and h_b[o] = sum_i p_io (1 - p_io).
    x, y = data()
    learner = LLAMA(linear(), loss="cross_entropy", inner_lr=0.3, inner_steps=1)
    params = {n: p.detach() for n, p in learner.model.named_parameters()}
    p = torch.softmax(x @ params["weight"].T + params["bias"], -1)
    h = learner.curvature(params, x)
    h_w = torch.zeros(3, 3, dtype=F64)
    for i in range(len(x)):
        for o in range(3):
            for j in range(3):
                h_w[o, j] += p[i, o] * (1 - p[i, o]) * x[i, j] ** 2
    assert torch.allclose(h["weight"], h_w)
    assert torch.allclose(h["bias"], (p * (1 - p)).sum(0))


def test_llama_probit_predictive_by_hand():
    x, y = data()
    learner = LLAMA(linear(), loss="cross_entropy", inner_lr=0.3, inner_steps=1,
                    prior_precision=2.0)
    predictor = learner.adapt(x, y, inner_steps=1)
    adapted = learner.adapt_task(x, y, training=False, inner_steps=1)
    w, b = adapted["weight"].detach(), adapted["bias"].detach()
    p_support = torch.softmax(x @ w.T + b, -1)
    prec_w = (p_support * (1 - p_support)).T @ (x ** 2) + 2.0       # [o, j]
    prec_b = (p_support * (1 - p_support)).sum(0) + 2.0              # [o]
    query = torch.randn(4, 3, generator=torch.Generator().manual_seed(5), dtype=F64)
    logits = query @ w.T + b
    variance = (query ** 2) @ (1 / prec_w).T + 1 / prec_b            # [m, o]
    expected = torch.softmax(logits / torch.sqrt(1 + math.pi * variance / 8), -1)
    assert torch.allclose(predictor.probabilities(query), expected)
    assert torch.allclose(predictor(query), torch.log(expected))


def test_llama_probit_tends_to_the_softmax_as_the_prior_precision_grows():
    x, y = data()
    sharp = LLAMA(linear(), loss="cross_entropy", inner_lr=0.3, prior_precision=1e9)
    predictor = sharp.adapt(x, y)
    maml = MAML(linear(), inner_lr=0.3).adapt(x, y)
    assert torch.allclose(predictor.probabilities(x), maml.probabilities(x), atol=1e-7)
    broad = LLAMA(linear(), loss="cross_entropy", inner_lr=0.3, prior_precision=1e-2)
    # parameter uncertainty lowers the confidence
    assert (broad.adapt(x, y).probabilities(x).max(-1).values
            < maml.probabilities(x).max(-1).values).all()


def classification_batch(tasks: int = 4, shots: int = 2, queries: int = 5, classes: int = 3):
    g = torch.Generator().manual_seed(1)
    sx = torch.randn(tasks, shots * classes, 3, generator=g, dtype=F64)
    qx = torch.randn(tasks, queries * classes, 3, generator=g, dtype=F64)
    sy = torch.arange(classes).repeat_interleave(shots).expand(tasks, -1)
    qy = torch.arange(classes).repeat_interleave(queries).expand(tasks, -1)
    return TaskBatch(sx, sy, qx, qy, num_classes=classes)


class OneBatch:
    def __init__(self, batch):
        self.batch = batch

    def sample(self):
        return self.batch


def test_evaluator_reports_nll_and_the_pooled_ece():
    batch = classification_batch()
    learner = MAMLEnsemble(linear(), particles=2, inner_lr=0.3, loss="cross_entropy")
    result = Evaluator(episodes=4).evaluate(learner, OneBatch(batch))
    probs = [learner.adapt(batch.support_x[t], batch.support_y[t]).probabilities(
        batch.query_x[t]) for t in range(4)]
    nll = torch.stack([-torch.log(p[torch.arange(len(p)), batch.query_y[t]]).mean()
                       for t, p in enumerate(probs)])
    assert result["nll"] == pytest.approx(nll.mean().item())
    assert result["ece"] == pytest.approx(expected_calibration_error(
        torch.cat(probs), batch.query_y.reshape(-1)).item())
    assert result["ece_ci95"] >= 0
    confidence = torch.cat(probs).max(dim=1).values.mean()  # every query's top probability
    assert result["confidence"] == pytest.approx(confidence.item())
    assert "calibration_bins" not in result
    assert "NLL" in format_result(result) and "ECE" in format_result(result)


def test_evaluation_scores_each_query_set_with_one_forward_pass_and_the_same_numbers():
    """Meta-test takes the probabilities from the logits it already has (one query pass per
    task, not two) and gives exactly the loss, metric, NLL and bins of scoring the logits
    and the probabilities with separate passes."""
    from metalab.algorithms.calibration import calibration_bins

    batch = classification_batch()
    learner = MAML(linear(), inner_lr=0.3, inner_steps=2)
    query_passes = []
    learner.model.register_forward_hook(
        lambda _m, inputs, _o: query_passes.append(inputs[0].shape[0]))
    losses, metrics = learner.task_losses(batch, training=False)
    assert query_passes.count(batch.query_x.shape[1]) == len(batch)
    for t in range(len(batch)):  # the two-pass computation, written plainly
        predictor = learner.adapt(batch.support_x[t], batch.support_y[t])
        logits = predictor(batch.query_x[t])
        probabilities = predictor.probabilities(batch.query_x[t])
        y = batch.query_y[t]
        assert losses[t].item() == nn.functional.cross_entropy(logits, y).item()
        assert metrics["accuracy"][t].item() == (logits.argmax(-1) == y).double().mean().item()
        nll = -torch.log(probabilities[torch.arange(len(y)), y]).mean()
        assert metrics["nll"][t].item() == pytest.approx(nll.item(), rel=1e-12, abs=0)
        assert torch.equal(metrics["calibration_bins"][t], calibration_bins(probabilities, y))


def test_probabilities_ignore_outputs_they_are_not_a_function_of():
    """A predictive whose probabilities are not the softmax of its outputs (a mixture, a
    sampled predictive) computes them from the inputs, whatever outputs it is handed."""
    x, _ = data()
    predictor = CategoricalPredictive(lambda v: v, lambda v: torch.full_like(v, 0.25))
    assert torch.equal(predictor.probabilities(x, outputs=torch.zeros_like(x)),
                       torch.full_like(x, 0.25))
    logits = CategoricalPredictive.from_logits(lambda v: 2 * v)
    assert torch.equal(logits.probabilities(x, outputs=2 * x), torch.softmax(2 * x, -1))
