"""ARM-CML with per-group normalization (official code's ``--adapt_bn 1``).

A model with `TaskBatchNorm` layers must see each group on its own, in training as at
test: the batch ``[x_1..K, c]`` of the group is normalized with its own statistics, so a
group's loss cannot depend on the other groups of the meta-batch (with pooled statistics it
does, and the test-time statistics then differ from the training ones: the mismatch that
held ARM-CML back on rotated MNIST).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from metalab.algorithms import ARMCML
from metalab.nn import TaskBatchNorm
from metalab.tasks import TaskBatch

CLASSES, SIDE, IMAGE, CONTEXT = 3, 4, 1, 2
EPS = 1e-5


def learner(seed: int = 0) -> ARMCML:
    torch.manual_seed(seed)
    model = nn.Sequential(TaskBatchNorm(IMAGE + CONTEXT), nn.Flatten(),
                          nn.Linear((IMAGE + CONTEXT) * SIDE * SIDE, CLASSES))
    with torch.no_grad():  # non-trivial affine parameters, so a wrong scale would show
        model[0].weight.uniform_(0.5, 1.5)
        model[0].bias.uniform_(-0.5, 0.5)
    return ARMCML(model, nn.Conv2d(IMAGE, CONTEXT, 1)).double()


def group_batch(tasks: int = 3, size: int = 5, seed: int = 0) -> TaskBatch:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tasks, size, IMAGE, SIDE, SIDE, generator=g, dtype=torch.float64)
    x = x + torch.arange(tasks, dtype=torch.float64).view(-1, 1, 1, 1, 1)  # groups differ
    y = torch.randint(0, CLASSES, (tasks, size), generator=g)
    return TaskBatch(x, y, x, y, num_classes=CLASSES, task_id=torch.arange(tasks))


def reference_logits(cml: ARMCML, x: torch.Tensor) -> torch.Tensor:
    """Written out: the mean context appended, batch norm with this batch's own biased
    statistics per channel, then the linear layer."""
    conv, (norm, _, linear) = cml.context_net, cml.model
    context = conv(x).mean(dim=0, keepdim=True).expand(len(x), -1, -1, -1)
    inputs = torch.cat([x, context], dim=1)
    mean = inputs.mean(dim=(0, 2, 3), keepdim=True)
    var = inputs.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
    normalized = (inputs - mean) / torch.sqrt(var + EPS)
    normalized = normalized * norm.weight.view(1, -1, 1, 1) + norm.bias.view(1, -1, 1, 1)
    return linear(normalized.flatten(1))


def test_training_loss_of_each_group_uses_its_own_statistics() -> None:
    cml, batch = learner(), group_batch()
    assert cml.normalizes_per_group
    losses, _ = cml.task_losses(batch, training=True)
    for t in range(len(batch)):
        expected = F.cross_entropy(reference_logits(cml, batch.query_x[t]), batch.query_y[t])
        torch.testing.assert_close(losses[t], expected)


def test_training_and_test_losses_agree() -> None:
    cml, batch = learner(1), group_batch(seed=1)
    training, _ = cml.task_losses(batch, training=True)
    testing, _ = cml.eval().task_losses(batch, training=False)
    torch.testing.assert_close(training.detach(), testing)


def test_other_inputs_are_normalized_with_the_support_batch() -> None:
    cml, batch = learner(2).eval(), group_batch(tasks=1, size=6, seed=2)
    support = batch.support_x[0]
    predictor = cml.adapt(support)
    torch.testing.assert_close(predictor(support[:2]), reference_logits(cml, support)[:2])
