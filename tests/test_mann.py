"""MANN: least-recently-used access by hand, causality, offset labels, label equivariance."""

import math

import pytest
import torch
from tests.helpers import FlatEmbedding
from torch import nn

from metalab.algorithms.mann import MANN, MANNLSTM
from metalab.nn.mann import MANNNet, cosine_read, least_used, lru_write, usage_update

D, WAYS = 3, 4


def test_lru_write_read_and_usage_by_hand_on_two_slots():
    # Santoro et al. eqs. 2-8 with memory slots M(1) = (1, 0), M(2) = (0, 2).
    memory = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    usage = torch.tensor([0.5, 0.2], dtype=torch.float64)       # w^u_{t-1}: slot 2 least used
    last_read = torch.tensor([0.7, 0.3], dtype=torch.float64)   # w^r_{t-1}
    gate_logit = torch.tensor(math.log(3.0), dtype=torch.float64)  # sigmoid = 3/4
    key = torch.tensor([1.0, 1.0], dtype=torch.float64)

    new_memory, write = lru_write(memory, usage, last_read, gate_logit, key)
    # w^w = 3/4 (0.7, 0.3) + 1/4 (0, 1) = (0.525, 0.475)
    torch.testing.assert_close(write, torch.tensor([0.525, 0.475], dtype=torch.float64))
    # slot 2 is zeroed before the write: M(1) = (1.525, 0.525), M(2) = (0.475, 0.475)
    torch.testing.assert_close(new_memory, torch.tensor([[1.525, 0.525], [0.475, 0.475]],
                                                        dtype=torch.float64))

    weights, read = cosine_read(new_memory, key)
    cos1 = (1.525 + 0.525) / (math.sqrt(2) * math.sqrt(1.525 ** 2 + 0.525 ** 2))
    cos2 = 1.0
    w1 = math.exp(cos1) / (math.exp(cos1) + math.exp(cos2))
    torch.testing.assert_close(weights, torch.tensor([w1, 1 - w1], dtype=torch.float64))
    torch.testing.assert_close(read, torch.tensor([w1 * 1.525 + (1 - w1) * 0.475,
                                                   w1 * 0.525 + (1 - w1) * 0.475],
                                                  dtype=torch.float64))

    new_usage = usage_update(usage, weights, write, gamma=0.9)
    torch.testing.assert_close(new_usage, torch.tensor([0.9 * 0.5 + w1 + 0.525,
                                                        0.9 * 0.2 + (1 - w1) + 0.475],
                                                       dtype=torch.float64))


def test_least_used_marks_the_smallest_usage():
    assert least_used(torch.tensor([0.3, 0.1, 0.2])).tolist() == [0, 1, 0]
    assert least_used(torch.tensor([[0.3, 0.1, 0.2], [0.0, 0.5, 0.4]]), reads=2).tolist() == [
        [0, 1, 1], [1, 0, 1]]


def _net(memory=True):
    torch.manual_seed(0)
    return MANNNet(D + WAYS, WAYS, controller_size=5, slots=3, size=4, gamma=0.9,
                   memory=memory).double()


@pytest.mark.parametrize("memory", [True, False])
@pytest.mark.parametrize("t", [0, 3])
def test_mann_net_is_causal(memory, t):
    net = _net(memory)
    x = torch.randn(2, 6, D + WAYS, dtype=torch.float64)
    later = x.clone()
    later[:, t + 1:] = torch.randn_like(later[:, t + 1:])
    torch.testing.assert_close(net(later)[0][:, : t + 1], net(x)[0][:, : t + 1],
                               rtol=0, atol=1e-12)
    earlier = x.clone()
    earlier[:, t] += 1.0
    assert (net(earlier)[0][:, t:] - net(x)[0][:, t:]).abs().max() > 1e-6


def test_lstm_baseline_controller_is_torchs_lstm_cell():
    net = _net(memory=False)
    assert not hasattr(net, "key")
    x = torch.randn(5, D + WAYS, dtype=torch.float64)
    logits, _ = net(x)
    h = c = torch.zeros(1, 5, dtype=torch.float64)
    for t in range(5):
        h, c = net.controller(x[t:t + 1], (h, c))
        torch.testing.assert_close(logits[t], net.output(h)[0])


def _learner(cls=MANN):
    torch.manual_seed(1)
    options = dict(slots=3, size=4, gamma=0.9) if cls is MANN else {}
    return cls(FlatEmbedding(4, D), ways=WAYS, controller_size=5, shuffle=False, **options).double()


@pytest.mark.parametrize("cls", [MANN, MANNLSTM])
def test_step_t_sees_the_label_of_step_t_minus_1_only(cls):
    learner = _learner(cls)
    torch.manual_seed(2)
    x = torch.randn(7, 2, 2, dtype=torch.float64)
    y = torch.tensor([0, 2, 1, 0, 3, 2, 1])
    logits = learner.episode_logits(x, y)
    for t in (0, 3, 5):
        other = y.clone()
        other[t] = (y[t] + 1) % WAYS
        changed = learner.episode_logits(x, other)
        torch.testing.assert_close(changed[: t + 1], logits[: t + 1], rtol=0, atol=1e-12)
        assert (changed[t + 1] - logits[t + 1]).abs().max() > 1e-6


def test_predict_is_the_next_step_after_the_support():
    learner = _learner()
    torch.manual_seed(3)
    sx, sy = torch.randn(6, 2, 2, dtype=torch.float64), torch.tensor([0, 1, 2, 3, 1, 2])
    qx = torch.randn(3, 2, 2, dtype=torch.float64)
    predicted = learner.adapt(sx, sy)(qx)
    for q in range(3):  # each query on its own: the support sequence, then that query
        sequence = learner.episode_logits(torch.cat((sx, qx[q:q + 1])),
                                          torch.cat((sy, torch.tensor([0]))))
        torch.testing.assert_close(predicted[q], sequence[-1].detach())


def _relabelled(learner, perm):
    new = _learner(type(learner))
    new.load_state_dict(learner.state_dict())
    with torch.no_grad():
        w = new.net.controller.weight_ih
        w[:, D + perm] = learner.net.controller.weight_ih[:, D:D + WAYS].detach()
        new.net.output.weight[perm] = learner.net.output.weight.detach()
        new.net.output.bias[perm] = learner.net.output.bias.detach()
    return new


@pytest.mark.parametrize("cls", [MANN, MANNLSTM])
def test_relabelling_classes_permutes_the_scores(cls):
    learner = _learner(cls)
    torch.manual_seed(4)
    x = torch.randn(8, 2, 2, dtype=torch.float64)
    y = torch.tensor([1, 0, 3, 1, 2, 0, 3, 2])
    perm = torch.tensor([2, 0, 3, 1])
    logits = learner.episode_logits(x, y).detach()
    new_logits = _relabelled(learner, perm).episode_logits(x, perm[y]).detach()
    torch.testing.assert_close(new_logits[:, perm], logits)
    assert (learner.episode_logits(x, perm[y]).detach()[:, perm] - logits).abs().max() > 1e-6
    predicted = learner.adapt(x[:5], y[:5])(x[5:])
    torch.testing.assert_close(_relabelled(learner, perm).adapt(x[:5], perm[y[:5]])(x[5:])
                               [:, perm], predicted)


def test_training_loss_is_the_mean_over_every_step():
    from metalab.tasks import TaskBatch

    learner = _learner()
    torch.manual_seed(5)
    sx, qx = torch.randn(2, 4, 2, 2, dtype=torch.float64), torch.randn(2, 2, 2, 2,
                                                                         dtype=torch.float64)
    sy, qy = torch.tensor([[0, 1, 2, 3]] * 2), torch.tensor([[3, 0]] * 2)
    batch = TaskBatch(sx, sy, qx, qy, num_classes=WAYS)
    losses, metrics = learner.task_losses(batch)
    for i in range(2):  # shuffle=False: the support then the queries
        logits = learner.episode_logits(torch.cat((sx[i], qx[i])), torch.cat((sy[i], qy[i])))
        expected = nn.functional.cross_entropy(logits, torch.cat((sy[i], qy[i])))
        torch.testing.assert_close(losses[i], expected)
    assert metrics["accuracy"].shape == (2,)


def test_bad_options_are_named():
    with pytest.raises(ValueError, match="sequence_loss"):
        MANN(FlatEmbedding(4, D), ways=WAYS, sequence_loss="last")
    with pytest.raises(ValueError, match="gamma"):
        MANNNet(7, 4, gamma=1.5)


@pytest.mark.parametrize("data", ["glyphs", "omniglot"])
@pytest.mark.parametrize("name,cls", [("mann", MANN), ("mann-lstm", MANNLSTM)])
def test_the_configs_build(name, cls, data):
    from pathlib import Path

    import metalab
    from metalab.train.build import build_meta_learner
    from metalab.train.config import load_config

    path = Path(metalab.__file__).parent / "configs" / f"{name}-{data}-5w.yaml"
    learner = build_meta_learner(load_config(path))
    assert type(learner) is cls and learner.net.has_memory == (cls is MANN)
    assert learner.net.controller.hidden_size == 200


def test_read_strength_sharpens_the_cosine_read_by_hand():
    # the 2-slot memory above, beta = 3: softmax(3 cos)
    memory = torch.tensor([[1.525, 0.525], [0.475, 0.475]], dtype=torch.float64)
    key = torch.tensor([1.0, 1.0], dtype=torch.float64)
    cos1 = (1.525 + 0.525) / (math.sqrt(2) * math.sqrt(1.525 ** 2 + 0.525 ** 2))
    w1 = math.exp(3 * cos1) / (math.exp(3 * cos1) + math.exp(3 * 1.0))
    weights, read = cosine_read(memory, key, strength=torch.tensor(3.0, dtype=torch.float64))
    torch.testing.assert_close(weights, torch.tensor([w1, 1 - w1], dtype=torch.float64))
    torch.testing.assert_close(read, w1 * memory[0] + (1 - w1) * memory[1])


def test_mann_step_reads_with_the_controllers_key_strength():
    torch.manual_seed(0)
    net = MANNNet(D + WAYS, WAYS, controller_size=5, slots=3, size=4, gamma=0.9,
                  read_strength=2.5).double()
    state = net.initial_state((2,), torch.zeros(1, dtype=torch.float64))
    for _ in range(3):  # a few steps so that the memory rows differ
        _, state = net.step(torch.randn(2, D + WAYS, dtype=torch.float64), state)
    h, memory = state.hidden, state.memory
    key = h @ net.key.weight.T + net.key.bias
    beta = 2.5 * (1 + torch.log1p(torch.exp(h @ net.strength.weight[0] + net.strength.bias)))
    cosines = torch.stack([torch.stack([
        memory[b, i] @ key[b] / (memory[b, i].norm() * key[b].norm()) for i in range(3)])
        for b in range(2)])
    expected = torch.softmax(beta[:, None] * cosines, dim=-1)
    torch.testing.assert_close(state.read_weights, expected)
    assert not torch.allclose(state.read_weights, torch.softmax(cosines, dim=-1))


def test_read_strength_is_checked():
    with pytest.raises(ValueError, match="read_strength"):
        MANNNet(7, 4, read_strength=0.0)
    with pytest.raises(ValueError, match="read_strength"):
        MANNNet(7, 4, memory=False, read_strength=5.0)
    assert not hasattr(MANNNet(7, 4), "strength")
