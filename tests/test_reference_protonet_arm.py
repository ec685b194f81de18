"""Independent references for ProtoNet and the ARM methods, by hand in float64.

- ProtoNet (Snell et al. 2017, eqs. 1-2): ``c_k = 1/|S_k| sum f(s)``, logits
  ``-||f(q) - c_k||^2``; checked through `task_losses` and through `adapt`.
- ARM-BN: every batch norm normalizes with the mean and (biased) variance of the group's
  batch; `adapt` records them on the support batch and applies them to other inputs.
- ARM-CML: the model sees ``[x, 1/K sum_k g(x_k)]`` (the support batch's mean context).
- ARM-LL: ``theta' = theta - alpha grad_theta L_phi(f(x_1..K; theta))``, then the query loss.

The models are tiny, hand-written torch modules, so every expected value is a formula.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from metalab.algorithms import ARMBN, ARMCML, ARMLL, ProtoNet
from metalab.nn import TaskBatchNorm
from metalab.tasks import TaskBatch

WAYS, SHOTS, QUERIES, DIM, EMBED = 4, 3, 5, 6, 5


def episode_batch(tasks: int = 2, seed: int = 0) -> TaskBatch:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(WAYS)
    support_y = labels.repeat_interleave(SHOTS).expand(tasks, -1).contiguous()
    query_y = labels.repeat(QUERIES).expand(tasks, -1).contiguous()
    # shift the support so that the class means are far from the origin (a sum differs)
    support_x = torch.randn(tasks, WAYS * SHOTS, DIM, generator=g, dtype=torch.float64) + 1.5
    query_x = torch.randn(tasks, WAYS * QUERIES, DIM, generator=g, dtype=torch.float64) + 1.5
    return TaskBatch(support_x, support_y, query_x, query_y, num_classes=WAYS)


def embedding(seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(DIM, EMBED, bias=False).double()


def protonet_logits(W: torch.Tensor, support_x, support_y, query_x) -> torch.Tensor:
    """``-||f(q) - mean_k f(s_k)||^2`` with explicit loops, ``f(x) = W x``."""
    logits = torch.empty(len(query_x), WAYS, dtype=torch.float64)
    for k in range(WAYS):
        members = [W @ support_x[i] for i in range(len(support_x)) if support_y[i] == k]
        center = sum(members) / len(members)
        for i in range(len(query_x)):
            diff = W @ query_x[i] - center
            logits[i, k] = -sum(d * d for d in diff)
    return logits


def cross_entropy_by_hand(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return (torch.logsumexp(logits, dim=1) - logits[torch.arange(len(labels)), labels]).mean()


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("strategy", ["loop", "vmap"])
def test_protonet_task_losses_use_negative_squared_distances_to_class_means(training, strategy):
    model, batch = embedding(), episode_batch()
    learner = ProtoNet(model, strategy=strategy)
    losses, metrics = learner.task_losses(batch, training=training)
    W = model.weight.detach()
    for t in range(len(batch)):
        logits = protonet_logits(W, batch.support_x[t], batch.support_y[t], batch.query_x[t])
        torch.testing.assert_close(losses[t].detach(),
                                   cross_entropy_by_hand(logits, batch.query_y[t]),
                                   rtol=1e-12, atol=1e-12)
        accuracy = (logits.argmax(1) == batch.query_y[t]).double().mean()
        torch.testing.assert_close(metrics["accuracy"][t], accuracy)
    assert losses.requires_grad == training


def test_protonet_adapt_returns_the_logits_themselves():
    model, batch = embedding(seed=1), episode_batch(tasks=1, seed=2)
    learner = ProtoNet(model)
    predictor = learner.adapt(batch.support_x[0], batch.support_y[0])
    expected = protonet_logits(model.weight.detach(), batch.support_x[0], batch.support_y[0],
                               batch.query_x[0])
    torch.testing.assert_close(predictor(batch.query_x[0]), expected, rtol=1e-12, atol=1e-12)


def test_protonet_gradient_is_that_of_the_hand_written_loss():
    model, batch = embedding(seed=3), episode_batch(tasks=1, seed=4)
    learner = ProtoNet(model)
    learner.meta_loss(batch)[0].backward()
    W = model.weight.detach().clone().requires_grad_(True)
    logits = protonet_logits(W, batch.support_x[0], batch.support_y[0], batch.query_x[0])
    cross_entropy_by_hand(logits, batch.query_y[0]).backward()
    torch.testing.assert_close(model.weight.grad, W.grad, rtol=1e-10, atol=1e-12)


# -- ARM-BN -------------------------------------------------------------------------------------


class NormNet(nn.Module):
    """``W2 BN(W1 x + b1) + b2`` with a `TaskBatchNorm` over the hidden units."""

    def __init__(self, hidden: int = 4, classes: int = 3) -> None:
        super().__init__()
        self.first = nn.Linear(DIM, hidden)
        self.norm = TaskBatchNorm(hidden)
        self.last = nn.Linear(hidden, classes)
        with torch.no_grad():  # a non-trivial affine part
            self.norm.weight.uniform_(0.5, 2.0)
            self.norm.bias.uniform_(-1.0, 1.0)

    def forward(self, x):
        return self.last(self.norm(self.first(x)))


def norm_net(seed: int = 0) -> NormNet:
    torch.manual_seed(seed)
    return NormNet().double()


def normalized_by(model: NormNet, x: torch.Tensor, statistics_of: torch.Tensor) -> torch.Tensor:
    """The model's outputs on ``x`` with the hidden units normalized by the mean and biased
    variance of ``statistics_of``'s hidden units, written out."""
    with torch.no_grad():
        h = x @ model.first.weight.T + model.first.bias
        reference = statistics_of @ model.first.weight.T + model.first.bias
        n = reference.shape[0]
        mean = reference.sum(0) / n
        var = ((reference - mean) ** 2).sum(0) / n
        normed = (h - mean) / torch.sqrt(var + model.norm.eps)
        normed = normed * model.norm.weight + model.norm.bias
        return normed @ model.last.weight.T + model.last.bias


def group_batch(tasks: int = 2, size: int = 8, seed: int = 0, same: bool = True) -> TaskBatch:
    g = torch.Generator().manual_seed(seed)
    # groups differ by a shift and a scale: exactly what batch statistics adapt to
    x = torch.randn(tasks, size, DIM, generator=g, dtype=torch.float64)
    x = x * torch.arange(1, tasks + 1, dtype=torch.float64).view(-1, 1, 1) + 3.0
    y = torch.randint(0, 3, (tasks, size), generator=g)
    query_x = x if same else torch.randn(tasks, size, DIM, generator=g, dtype=torch.float64)
    return TaskBatch(x, y, query_x, y, num_classes=3)


@pytest.mark.parametrize("same", [True, False])
def test_arm_bn_normalizes_with_the_statistics_of_each_groups_batch(same):
    model, batch = norm_net(), group_batch(same=same)
    learner = ARMBN(model)
    losses, _ = learner.task_losses(batch, training=True)
    for t in range(len(batch)):
        outputs = normalized_by(model, batch.query_x[t], batch.support_x[t])
        expected = cross_entropy_by_hand(outputs, batch.query_y[t])
        torch.testing.assert_close(losses[t].detach(), expected, rtol=1e-10, atol=1e-12)


def test_arm_bn_adapt_applies_the_support_statistics_to_other_inputs():
    model, batch = norm_net(seed=1), group_batch(seed=3)
    learner = ARMBN(model)
    support = batch.support_x[0]
    other = torch.randn(5, DIM, dtype=torch.float64) * 0.3 - 2.0  # other statistics
    predictor = learner.adapt(support)
    torch.testing.assert_close(predictor(other), normalized_by(model, other, support),
                               rtol=1e-10, atol=1e-12)
    one = other[:1]  # a single input is normalized by the group's statistics too
    torch.testing.assert_close(predictor(one), normalized_by(model, one, support),
                               rtol=1e-10, atol=1e-12)


# -- ARM-CML ------------------------------------------------------------------------------------


IMAGE_CHANNELS, CONTEXT_CHANNELS, SIDE = 2, 3, 4


class PooledClassifier(nn.Module):
    """A 1x1 convolution over image and context channels, averaged over positions."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(IMAGE_CHANNELS + CONTEXT_CHANNELS, 3, 1)

    def forward(self, x):
        return self.conv(x).mean(dim=(2, 3))


def cml_learner(seed: int = 0) -> ARMCML:
    torch.manual_seed(seed)
    context_net = nn.Sequential(nn.Conv2d(IMAGE_CHANNELS, CONTEXT_CHANNELS, 1), nn.Tanh())
    return ARMCML(PooledClassifier(), context_net=context_net).double()


def cml_reference(learner: ARMCML, support_x, query_x) -> torch.Tensor:
    """``model([x, 1/K sum_k g(s_k)])`` with the mean written as a loop."""
    with torch.no_grad():
        contexts = [learner.context_net(support_x[k:k + 1])[0] for k in range(len(support_x))]
        context = sum(contexts) / len(contexts)
        inputs = torch.cat([query_x, context.expand(len(query_x), *context.shape)], dim=1)
        return learner.model(inputs)


def image_group_batch(tasks=2, size=6, seed=0, same=True) -> TaskBatch:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tasks, size, IMAGE_CHANNELS, SIDE, SIDE, generator=g, dtype=torch.float64)
    x = x + torch.arange(tasks, dtype=torch.float64).view(-1, 1, 1, 1, 1)
    y = torch.randint(0, 3, (tasks, size), generator=g)
    query_x = x if same else torch.randn(x.shape, generator=g, dtype=torch.float64)
    return TaskBatch(x, y, query_x, y, num_classes=3)


@pytest.mark.parametrize("same", [True, False])
def test_arm_cml_feeds_the_mean_context_of_the_support_batch(same):
    learner, batch = cml_learner(), image_group_batch(same=same)
    losses, _ = learner.task_losses(batch, training=True)
    for t in range(len(batch)):
        outputs = cml_reference(learner, batch.support_x[t], batch.query_x[t])
        torch.testing.assert_close(losses[t].detach(),
                                   cross_entropy_by_hand(outputs, batch.query_y[t]),
                                   rtol=1e-10, atol=1e-12)
    predictor = learner.adapt(batch.support_x[0])
    other = torch.randn(3, IMAGE_CHANNELS, SIDE, SIDE, dtype=torch.float64)
    torch.testing.assert_close(predictor(other), cml_reference(learner, batch.support_x[0], other),
                               rtol=1e-10, atol=1e-12)


# -- ARM-LL -------------------------------------------------------------------------------------


class SquaredSumLoss(nn.Module):
    """A learned loss ``sum_i (v . z_i + c)^2`` of the logits ``z`` (a tiny, smooth phi)."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.v = nn.Parameter(torch.randn(classes) * 0.5)
        self.c = nn.Parameter(torch.tensor(0.3))

    def forward(self, logits):
        return ((logits @ self.v + self.c) ** 2).sum()


def ll_learner(steps: int, lr: float = 0.05, seed: int = 0) -> ARMLL:
    torch.manual_seed(seed)
    return ARMLL(nn.Linear(DIM, 3), loss_net=SquaredSumLoss(), inner_lr=lr,
                 inner_steps=steps).double()


def ll_reference(learner: ARMLL, support_x, query_x, query_y, steps: int):
    """Query cross-entropy after ``steps`` hand-written SGD steps on the learned loss,
    differentiable in the model's and the loss's parameters (plain torch)."""
    W, b = learner.model.weight, learner.model.bias
    v, c = learner.loss_net.v, learner.loss_net.c
    for _ in range(steps):
        unsupervised = ((support_x @ W.T + b) @ v + c).pow(2).sum()
        gW, gb = torch.autograd.grad(unsupervised, (W, b), create_graph=True)
        W, b = W - learner.inner_lr * gW, b - learner.inner_lr * gb
    return cross_entropy_by_hand(query_x @ W.T + b, query_y), (W, b)


@pytest.mark.parametrize("steps", [1, 2])
def test_arm_ll_steps_on_the_learned_loss_and_differentiates_through_it(steps):
    learner, batch = ll_learner(steps), group_batch(tasks=2, seed=5, same=False)
    loss, _ = learner.meta_loss(batch)
    loss.backward()
    expected = sum(ll_reference(learner, batch.support_x[t], batch.query_x[t],
                                batch.query_y[t], steps)[0] for t in range(len(batch))) / 2
    params = list(learner.model.parameters()) + list(learner.loss_net.parameters())
    expected_grads = torch.autograd.grad(expected, params)
    torch.testing.assert_close(loss.detach(), expected.detach(), rtol=1e-10, atol=1e-12)
    for p, g in zip(params, expected_grads, strict=True):
        torch.testing.assert_close(p.grad, g, rtol=1e-9, atol=1e-12)
    # adapt: the predictor is the hand-stepped linear model
    _, (W, b) = ll_reference(learner, batch.support_x[0], batch.query_x[0], batch.query_y[0],
                             steps)
    other = torch.randn(4, DIM, dtype=torch.float64)
    predictor = learner.adapt(batch.support_x[0])
    torch.testing.assert_close(predictor(other), (other @ W.T + b).detach(), rtol=1e-10,
                               atol=1e-12)
