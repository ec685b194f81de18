"""ERM and the ARM methods: label independence, batch size 1, second-order gradients of
ARM-LL against finite differences, the test-time API (adapt and streams) and errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from metalab.algorithms import ARMBN, ARMCML, ARMLL, ERM, MAML
from metalab.nn import TaskBatchNorm
from metalab.nn.arm import (
    ARMConvNet,
    ChannelStatistics,
    ContextNet,
    LearnedLoss,
    task_norm_statistics,
)
from metalab.tasks import TaskBatch, TaskSource
from metalab.train import Trainer

CLASSES = 3
SIDE = 6
SMALL = dict(num_classes=CLASSES, hidden=4, fc_hidden=6, kernel_size=3, image_size=SIDE,
             padding="same")


def erm(seed=0):
    torch.manual_seed(seed)
    return ERM(ARMConvNet(norm="batch", **SMALL)).double()


def arm_bn(seed=0):
    torch.manual_seed(seed)
    return ARMBN(ARMConvNet(norm="task", **SMALL)).double()


def arm_cml(seed=0):
    torch.manual_seed(seed)
    model = ARMConvNet(in_channels=3, norm="batch", extra_conv=False, **SMALL)
    return ARMCML(model, ContextNet(1, 2, hidden=4, kernel_size=3, norm="batch")).double()


def arm_ll(seed=0, **kwargs):
    torch.manual_seed(seed)
    model = ARMConvNet(norm="task", **SMALL)
    return ARMLL(model, LearnedLoss(CLASSES, hidden=5, layers=2), **kwargs).double()


ARM_METHODS = {"arm-bn": arm_bn, "arm-cml": arm_cml, "arm-ll": arm_ll}
ALL_METHODS = {"erm": erm, **ARM_METHODS}


def group_batch(tasks=2, size=5, seed=0, side=SIDE) -> TaskBatch:
    """Each task one group's batch; the query set is the same inputs, as the samplers make."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tasks, size, 1, side, side, generator=g, dtype=torch.float64)
    y = torch.randint(0, CLASSES, (tasks, size), generator=g)
    return TaskBatch(x, y, x, y, num_classes=CLASSES, task_id=torch.arange(tasks))


def with_labels(batch: TaskBatch, support_y, query_y) -> TaskBatch:
    return TaskBatch(batch.support_x, support_y, batch.query_x, query_y,
                     num_classes=batch.num_classes, task_id=batch.task_id)


def recorded_outputs(learner, batch: TaskBatch, training: bool) -> torch.Tensor:
    """The outputs the learner scores, captured from its loss function."""
    captured = []

    def loss_fn(outputs, labels):
        captured.append(outputs.detach().clone())
        return F.cross_entropy(outputs, labels)

    learner.loss_fn = loss_fn
    learner.train(training)
    learner.task_losses(batch, training=training)
    return torch.stack(captured)


# -- labels are never read ------------------------------------------------------------------


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("name", sorted(ALL_METHODS))
def test_predictions_depend_only_on_the_inputs(name, training):
    batch = group_batch()
    g = torch.Generator().manual_seed(1)
    permuted = batch.support_y[:, torch.randperm(batch.support_y.shape[1], generator=g)]
    replaced = torch.randint(0, CLASSES, batch.support_y.shape, generator=g)
    reference = recorded_outputs(ALL_METHODS[name](), batch, training)
    for support_y, query_y in [(permuted, batch.query_y), (replaced, batch.query_y),
                               (replaced, permuted), (batch.support_y, replaced)]:
        outputs = recorded_outputs(ALL_METHODS[name](), with_labels(batch, support_y, query_y),
                                   training)
        torch.testing.assert_close(outputs, reference, rtol=0, atol=0)


def test_the_label_check_detects_a_method_that_reads_support_labels():
    """Negative control: MAML adapts with the support labels, so its outputs change."""
    batch = group_batch()

    def maml():
        torch.manual_seed(0)
        return MAML(ARMConvNet(norm="task", **SMALL).double(), inner_lr=0.5)

    replaced = (batch.support_y + 1) % CLASSES
    before = recorded_outputs(maml(), batch, True)
    after = recorded_outputs(maml(), with_labels(batch, replaced, batch.query_y), True)
    assert not torch.allclose(before, after)


@pytest.mark.parametrize("name", sorted(ALL_METHODS))
def test_adapt_ignores_labels_and_matches_the_evaluation_pass(name):
    learner = ALL_METHODS[name]()
    batch = group_batch()
    learner.eval()
    outputs = recorded_outputs(learner, batch, training=False)
    for t in range(len(batch)):
        x = batch.support_x[t]
        unlabelled = learner.adapt(x)(x)
        labelled = learner.adapt(x, torch.zeros(len(x), dtype=torch.long))(x)
        torch.testing.assert_close(unlabelled, labelled, rtol=0, atol=0)
        torch.testing.assert_close(unlabelled, outputs[t], rtol=1e-12, atol=1e-12)


# -- batch size 1 -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(ARM_METHODS))
def test_batch_size_one_is_finite(name):
    learner = ARM_METHODS[name]()
    batch = group_batch(tasks=3, size=1)
    zeros = torch.zeros_like(batch.support_x)  # a blank image: zero variance everywhere
    for x in (batch.support_x, zeros):
        b = TaskBatch(x, batch.support_y, x, batch.query_y, num_classes=CLASSES)
        loss, _ = learner.meta_loss(b)
        loss.backward()
        assert torch.isfinite(loss)
        assert all(torch.isfinite(p.grad).all() for p in learner.parameters()
                   if p.grad is not None)
        assert torch.isfinite(learner.adapt(x[0])(x[0])).all()


def test_arm_bn_single_value_per_channel_outputs_the_bias():
    """A batch norm over features with one example: normalized value 0, output beta."""
    torch.manual_seed(0)
    norm = TaskBatchNorm(4).double()
    with torch.no_grad():
        norm.bias.copy_(torch.tensor([0.5, -1.0, 2.0, 0.0]))
    model = nn.Sequential(nn.Flatten(), nn.Linear(SIDE * SIDE, 4), norm, nn.ReLU(),
                          nn.Linear(4, CLASSES)).double()
    learner = ARMBN(model)
    x = torch.randn(1, 1, SIDE, SIDE, dtype=torch.float64)
    seen = []
    norm.register_forward_hook(lambda module, args, output: seen.append(output))
    logits = learner.adapt(x)(x)
    assert torch.isfinite(logits).all()
    torch.testing.assert_close(seen[-1], norm.bias.detach().unsqueeze(0))
    loss, _ = learner.meta_loss(TaskBatch(x[None], torch.zeros(1, 1, dtype=torch.long), x[None],
                                          torch.zeros(1, 1, dtype=torch.long),
                                          num_classes=CLASSES))
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in learner.parameters())


def test_recorded_normalization_matches_task_batch_norm_values_and_gradients():
    """ARM-BN's own normalization gives TaskBatchNorm's numbers, to first and second order."""
    torch.manual_seed(0)
    model = ARMConvNet(norm="task", **SMALL).double()
    x = torch.randn(5, 1, SIDE, SIDE, dtype=torch.float64)
    params = list(model.parameters())

    def grads(loss):
        first = torch.autograd.grad(loss, params, create_graph=True)
        second = torch.autograd.grad(sum(g.pow(2).sum() for g in first), params)
        return [g.detach() for g in first], second

    plain = model(x)
    with task_norm_statistics(model, "record", {}):
        recorded = model(x)
    with task_norm_statistics(model, "batch", {}):
        batch = model(x)
    torch.testing.assert_close(recorded, plain, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(batch, plain, rtol=0, atol=0)
    reference = grads(plain.pow(2).sum())
    for other in (recorded, batch):
        for a, b in zip(reference, grads(other.pow(2).sum()), strict=True):
            for ga, gb in zip(a, b, strict=True):
                torch.testing.assert_close(gb, ga, rtol=1e-8, atol=1e-10)


def test_channel_statistics_merge_equals_the_union():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(3, 4, 5, 5, generator=g, dtype=torch.float64)
    b = 2 + 3 * torch.randn(7, 4, 5, 5, generator=g, dtype=torch.float64)
    merged = ChannelStatistics.of(a).merge(ChannelStatistics.of(b))
    union = ChannelStatistics.of(torch.cat([a, b]))
    assert merged.count == union.count == 10 * 25
    torch.testing.assert_close(merged.mean, union.mean)
    torch.testing.assert_close(merged.var, union.var)


# -- gradients ----------------------------------------------------------------------------------


def directional_check(learner, batch, direction_of, eps=1e-6):
    """Autograd's derivative of the meta-loss along a random direction vs central differences."""
    params = [p for p in learner.parameters()]
    g = torch.Generator().manual_seed(3)
    direction = [direction_of(name) * torch.randn(p.shape, generator=g, dtype=p.dtype)
                 for name, p in learner.named_parameters()]
    learner.zero_grad()
    loss, _ = learner.meta_loss(batch)
    loss.backward()
    analytic = sum((p.grad * d).sum() for p, d in zip(params, direction, strict=True)
                   if p.grad is not None)

    def loss_at(scale):
        with torch.no_grad():
            for p, d in zip(params, direction, strict=True):
                p.add_(scale * d)
        value = learner.meta_loss(batch)[0].item()
        with torch.no_grad():
            for p, d in zip(params, direction, strict=True):
                p.sub_(scale * d)
        return value

    numeric = (loss_at(eps) - loss_at(-eps)) / (2 * eps)
    return analytic.item(), numeric


@pytest.mark.parametrize("steps", [1, 2])
@pytest.mark.parametrize("part", ["all", "loss_net"])
def test_arm_ll_second_order_gradient_matches_finite_differences(part, steps):
    learner = arm_ll(inner_lr=0.3, inner_steps=steps)
    batch = group_batch(tasks=2, size=4)

    def direction_of(name):
        return 1.0 if part == "all" or name.startswith("loss_net.") else 0.0

    analytic, numeric = directional_check(learner, batch, direction_of)
    assert abs(numeric) > 1e-6  # the learned loss does influence the meta-loss
    assert analytic == pytest.approx(numeric, rel=1e-6, abs=1e-9)


def test_arm_ll_first_order_gives_the_learned_loss_no_gradient():
    learner = arm_ll(first_order=True)
    loss, _ = learner.meta_loss(group_batch())
    loss.backward()
    assert all(p.grad is None or not p.grad.any() for p in learner.loss_net.parameters())
    assert any(p.grad is not None and p.grad.any() for p in learner.model.parameters())


def test_arm_bn_gradient_with_a_separate_query_set_matches_finite_differences():
    """Predicting other inputs of the group: the gradient flows through the support statistics."""
    batch = group_batch(tasks=2, size=4)
    other = group_batch(tasks=2, size=3, seed=5)
    mixed = TaskBatch(batch.support_x, batch.support_y, other.query_x, other.query_y,
                      num_classes=CLASSES)
    analytic, numeric = directional_check(arm_bn(), mixed, lambda name: 1.0)
    assert analytic == pytest.approx(numeric, rel=1e-6, abs=1e-9)


def test_arm_cml_batched_pass_equals_the_per_group_loop_in_eval_mode():
    learner = arm_cml()
    learner.train()
    learner.meta_loss(group_batch(seed=4))  # move the running statistics off their init
    learner.eval()
    batch = group_batch(tasks=3)
    losses, _ = learner.task_losses(batch, training=False)
    for t in range(len(batch)):
        logits = learner.adapt(batch.support_x[t])(batch.query_x[t])
        torch.testing.assert_close(losses[t], F.cross_entropy(logits, batch.query_y[t]))


# -- context and streams --------------------------------------------------------------------------


def test_arm_cml_context_is_permutation_invariant():
    learner = arm_cml().eval()
    x = group_batch(tasks=1, size=7).support_x[0]
    order = torch.randperm(7, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(learner.context(x[order]), learner.context(x))
    torch.testing.assert_close(learner.adapt(x[order])(x), learner.adapt(x)(x))


@pytest.mark.parametrize("name", sorted(ALL_METHODS))
def test_streaming_one_batch_equals_adapt(name):
    learner = ALL_METHODS[name]()
    x = group_batch(tasks=1, size=6).support_x[0]
    probe = group_batch(tasks=1, size=4, seed=9).support_x[0]
    stream = learner.stream().update(x)
    assert stream.count == 6
    torch.testing.assert_close(stream(probe), learner.adapt(x)(probe), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["arm-cml", "arm-ll"])
def test_streaming_several_batches_equals_adapting_on_their_union(name):
    learner = ALL_METHODS[name]()
    x = group_batch(tasks=1, size=9).support_x[0]
    probe = group_batch(tasks=1, size=4, seed=9).support_x[0]
    stream = learner.stream()
    for part in (x[:2], x[2:3], x[3:]):
        stream.update(part)
    torch.testing.assert_close(stream(probe), learner.adapt(x)(probe), rtol=1e-10, atol=1e-12)


def test_arm_bn_stream_pools_first_layer_statistics_exactly():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), TaskBatchNorm(3), nn.ReLU(),
                          nn.Flatten(), nn.Linear(3 * SIDE * SIDE, CLASSES)).double()
    learner = ARMBN(model)
    x = group_batch(tasks=1, size=9).support_x[0]
    probe = group_batch(tasks=1, size=4, seed=9).support_x[0]
    stream = learner.stream()
    for part in (x[:1], x[1:4], x[4:]):
        stream.update(part)
    torch.testing.assert_close(stream(probe), learner.adapt(x)(probe), rtol=1e-10, atol=1e-12)


def test_arm_bn_stream_of_repeated_batches_equals_adapt():
    learner = arm_bn()
    x = group_batch(tasks=1, size=5).support_x[0]
    probe = group_batch(tasks=1, size=4, seed=9).support_x[0]
    stream = learner.stream()
    for _ in range(3):
        stream.update(x)
    torch.testing.assert_close(stream(probe), learner.adapt(x)(probe), rtol=1e-10, atol=1e-12)


def test_adapt_and_streams_restore_the_training_mode():
    learner = arm_cml().train()
    x = group_batch(tasks=1).support_x[0]
    learner.adapt(x)(x)
    learner.stream().update(x)(x)
    assert learner.training and learner.context_net.training


# -- the trainer ------------------------------------------------------------------------------


class HandMadeGroups(TaskSource):
    """Groups = rotations by multiples of 90 degrees of class-dependent patterns."""

    def __init__(self, tasks_per_batch=4, size=8, seed=0):
        super().__init__(tasks_per_batch, seed)
        self.size = size
        self.patterns = torch.rand(CLASSES, 1, SIDE, SIDE, generator=torch.Generator()
                                   .manual_seed(0))

    def sample(self) -> TaskBatch:
        groups = torch.randint(0, 4, (self.tasks_per_batch,), generator=self.generator)
        y = torch.randint(0, CLASSES, (self.tasks_per_batch, self.size), generator=self.generator)
        x = torch.stack([torch.rot90(self.patterns[y[t]], int(groups[t]), dims=(2, 3))
                         for t in range(self.tasks_per_batch)])
        x = x + 0.1 * torch.randn(x.shape, generator=self.generator)
        return TaskBatch(x, y, x, y, num_classes=CLASSES, task_id=groups)


@pytest.mark.parametrize("name", sorted(ALL_METHODS))
def test_every_method_trains_with_the_trainer(name, tmp_path):
    learner = ALL_METHODS[name]().float()
    source = HandMadeGroups()
    before = learner.task_losses(source.sample(), training=False)[0].mean()
    Trainer(learner, HandMadeGroups(seed=1), tmp_path, steps=15, lr=1e-2, progress=False,
            log_every=15, checkpoint_every=15).fit()
    after = learner.task_losses(HandMadeGroups().sample(), training=False)[0].mean()
    assert after < before


# -- errors ---------------------------------------------------------------------------------------


def test_errors_name_the_argument():
    with pytest.raises(TypeError, match="TaskBatchNorm"):
        ARMBN(ARMConvNet(norm="batch", **SMALL))
    with pytest.raises(TypeError, match="running statistics"):
        ARMBN(nn.Sequential(nn.Conv2d(1, 2, 3), TaskBatchNorm(2), nn.BatchNorm2d(2)))
    with pytest.raises(ValueError, match="in_channels=3"):
        ARMCML(ARMConvNet(in_channels=1, **SMALL), ContextNet(1, 2))
    with pytest.raises(ValueError, match="num_classes"):
        ARMLL(nn.Sequential(nn.Flatten(), nn.Linear(SIDE * SIDE, CLASSES)))
    with pytest.raises(ValueError, match="inner_steps"):
        ARMLL(ARMConvNet(**SMALL), inner_steps=-1)
    with pytest.raises(ValueError, match="image_size=6 is too small"):
        ARMConvNet(image_size=6, kernel_size=5, padding="valid")
    with pytest.raises(ValueError, match="norm must be one of"):
        ARMConvNet(norm="layer")
    with pytest.raises(ValueError, match="kernel_size must be odd"):
        ContextNet(kernel_size=4)
    with pytest.raises(ValueError, match=r"logits of shape \[batch, 3\]"):
        LearnedLoss(3)(torch.zeros(2, 4))


@pytest.mark.parametrize("name", sorted(ARM_METHODS))
def test_bad_inputs_raise_clear_errors(name):
    learner = ARM_METHODS[name]()
    with pytest.raises(ValueError, match="support_x must have shape"):
        learner.adapt(torch.zeros(0, 1, SIDE, SIDE, dtype=torch.float64))
    with pytest.raises(TypeError, match="support_x must hold floating-point"):
        learner.adapt(torch.zeros(2, 1, SIDE, SIDE, dtype=torch.long))
    with pytest.raises(TypeError, match="batch must be a TaskBatch"):
        learner.task_losses((torch.zeros(1), torch.zeros(1)))
    stream = learner.stream()
    with pytest.raises(RuntimeError, match="call update"):
        stream(torch.zeros(2, 1, SIDE, SIDE, dtype=torch.float64))
    stream.update(torch.zeros(2, 1, SIDE, SIDE, dtype=torch.float64))
    with pytest.raises(ValueError, match="x_batch holds examples of shape"):
        stream.update(torch.zeros(2, 1, SIDE + 2, SIDE + 2, dtype=torch.float64))


def test_statistics_modes_are_checked():
    model = ARMConvNet(norm="task", **SMALL)
    with pytest.raises(ValueError, match="record them on a batch first"), \
            task_norm_statistics(model, "apply", {}):
        pass
    with pytest.raises(ValueError, match="mode must be one of"), \
            task_norm_statistics(model, "running", {}):
        pass
