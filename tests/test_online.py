"""Online meta-learning protocols: the metrics by hand, FTML's update as a hand-written
MAML step, and what each baseline changes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from metalab.algorithms.maml import MAML
from metalab.tasks.stream import StreamTask, TaskStream
from metalab.train.online import (
    OnlineResult,
    accuracy_at,
    examples_to_threshold,
    protocols,
    run_online,
)

ALPHA, BETA = 0.3, 0.1


def test_examples_to_threshold_and_accuracy_at_by_hand():
    examples, accuracy = [10, 20, 30, 40], [0.5, 0.85, 0.92, 0.88]
    assert examples_to_threshold(examples, accuracy, 0.9) == 30
    assert examples_to_threshold(examples, accuracy, 0.85) == 20  # reaching counts (>=)
    assert examples_to_threshold(examples, accuracy, 0.95) is None
    assert accuracy_at(examples, accuracy, 25) == 0.92
    assert accuracy_at(examples, accuracy, 41) is None
    result = OnlineResult("x", [list(zip(examples, accuracy, strict=True)),
                                [(10, 0.1), (20, 0.2)]])
    assert result.to_threshold(0.9) == [30.0, 21.0]  # never reached: its examples + 1
    assert result.to_threshold(0.9, censor_at=100) == [30.0, 100.0]


def one_task(seed: int = 0, size: int = 8) -> list[StreamTask]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(size, 4, generator=g, dtype=torch.float64)
    y = torch.randint(3, (size,), generator=g)
    return [StreamTask(x, y, x[:4].clone(), y[:4].clone())]


def linear_learner(built: list, **options) -> MAML:
    model = nn.Linear(4, 3).double()
    with torch.no_grad():
        g = torch.Generator().manual_seed(7)
        model.weight.copy_(torch.randn(3, 4, generator=g, dtype=torch.float64))
        model.bias.copy_(torch.randn(3, generator=g, dtype=torch.float64))
    learner = MAML(model, inner_lr=ALPHA, **options)
    built.append((learner, model.weight.detach().clone(), model.bias.detach().clone()))
    return learner


def hand_maml_step(w, b, batch):
    """theta' = theta - alpha grad L_s(theta); theta <- theta - beta grad_theta L_q(theta')."""
    w, b = w.clone().requires_grad_(True), b.clone().requires_grad_(True)
    sx, sy, qx, qy = batch.support_x[0], batch.support_y[0], batch.query_x[0], batch.query_y[0]
    support_loss = F.cross_entropy(sx @ w.T + b, sy)
    gw, gb = torch.autograd.grad(support_loss, (w, b), create_graph=True)
    w1, b1 = w - ALPHA * gw, b - ALPHA * gb
    query_loss = F.cross_entropy(qx @ w1.T + b1, qy)
    mw, mb = torch.autograd.grad(query_loss, (w, b))
    return (w - BETA * mw).detach(), (b - BETA * mb).detach()


def run_one_update(protocol_name: str):
    built: list = []
    stream = TaskStream(one_task(), batch_size=8, seed=3, num_classes=3)
    run_online(lambda **o: linear_learner(built, **o), stream,
               protocols(inner_steps=1)[protocol_name], updates_per_batch=1,
               tasks_per_update=1, support=3, query=3, lr=BETA, optimizer="sgd")
    # the same draws from an independent copy of the stream: one batch, one buffer draw
    twin = TaskStream(one_task(), batch_size=8, seed=3, num_classes=3)
    twin.begin_task()
    twin.next_batch()
    batch = twin.sample_buffer(1, 3, 3)
    learner, w0, b0 = built[0]
    return learner, w0, b0, batch


def test_ftml_update_on_a_one_task_buffer_is_a_hand_written_maml_step():
    learner, w0, b0, batch = run_one_update("ftml")
    expected_w, expected_b = hand_maml_step(w0, b0, batch)
    assert not torch.allclose(expected_w, w0)
    assert torch.allclose(learner.model.weight, expected_w, atol=1e-12)
    assert torch.allclose(learner.model.bias, expected_b, atol=1e-12)


def test_ftl_and_toe_update_is_joint_training_on_the_query_without_adaptation():
    learner, w0, b0, batch = run_one_update("ftl")
    w, b = w0.clone().requires_grad_(True), b0.clone().requires_grad_(True)
    loss = F.cross_entropy(batch.query_x[0] @ w.T + b, batch.query_y[0])
    gw, gb = torch.autograd.grad(loss, (w, b))
    assert torch.allclose(learner.model.weight, w0 - BETA * gw, atol=1e-12)
    assert torch.allclose(learner.model.bias, b0 - BETA * gb, atol=1e-12)


def test_scratch_never_updates_and_toe_evaluates_without_adaptation():
    learner, w0, b0, _ = run_one_update("scratch")
    assert torch.equal(learner.model.weight.detach(), w0)
    assert protocols(eval_inner_steps=5)["toe"].eval_inner_steps == 0
    assert protocols(eval_inner_steps=5)["ftl"].eval_inner_steps == 5


def test_curves_record_examples_arrived_after_each_batch():
    built: list = []
    stream = TaskStream(one_task(size=8) * 2, batch_size=3, seed=0, num_classes=3)
    result = run_online(lambda **o: linear_learner(built, **o), stream,
                        protocols()["scratch"], support=2, query=1)
    assert [[count for count, _ in curve] for curve in result.curves] == [[3, 6, 8]] * 2
    assert all(0.0 <= a <= 1.0 for curve in result.curves for _, a in curve)


def test_unknown_protocol_is_named():
    from metalab.train.online import Protocol
    with pytest.raises(ValueError, match="protocol"):
        run_online(lambda **o: None, TaskStream(one_task(), 4), Protocol("x", {}, 0, True))
