"""The episode-as-a-sequence view: which step sees which label, checked by hand."""

import pytest
import torch

from metalab.tasks.sequence import (
    episode_as_sequence,
    offset_label_inputs,
    presentation_numbers,
    queries_after_support,
    with_label_channel,
)


def _episode():
    # 3 support steps (labels 0, 1, 2) and 2 queries (labels 2, 0); x_i = i identifies a step.
    support_x = torch.tensor([[10.0], [11.0], [12.0]], dtype=torch.float64)
    query_x = torch.tensor([[20.0], [21.0]], dtype=torch.float64)
    return support_x, torch.tensor([0, 1, 2]), query_x, torch.tensor([2, 0])


def test_null_labels_support_sees_own_label_queries_see_zeros():
    seq = episode_as_sequence(*_episode(), ways=3, labels="null")
    assert seq.inputs.squeeze(1).tolist() == [10, 11, 12, 20, 21]
    assert seq.targets.tolist() == [0, 1, 2, 2, 0]
    assert seq.is_query.tolist() == [False, False, False, True, True]
    assert seq.label_inputs.tolist() == [[1, 0, 0], [0, 1, 0], [0, 0, 1],
                                         [0, 0, 0], [0, 0, 0]]
    assert seq.label_inputs.dtype == torch.float64


def test_offset_labels_step_t_sees_label_of_step_t_minus_1():
    seq = episode_as_sequence(*_episode(), ways=3, labels="offset")
    # targets 0, 1, 2, 2, 0: step 0 sees nothing, step t sees targets[t - 1]
    assert seq.label_inputs.tolist() == [[0, 0, 0], [1, 0, 0], [0, 1, 0],
                                         [0, 0, 1], [0, 0, 1]]


def test_order_permutes_steps_before_labels_are_offset():
    order = torch.tensor([3, 0, 4, 2, 1])  # query 20, support 10, query 21, support 12, 11
    seq = episode_as_sequence(*_episode(), ways=3, labels="offset", order=order)
    assert seq.inputs.squeeze(1).tolist() == [20, 10, 21, 12, 11]
    assert seq.targets.tolist() == [2, 0, 0, 2, 1]
    assert seq.is_query.tolist() == [True, False, True, False, False]
    assert seq.label_inputs.tolist() == [[0, 0, 0], [0, 0, 1], [1, 0, 0],
                                         [1, 0, 0], [0, 0, 1]]
    null = episode_as_sequence(*_episode(), ways=3, labels="null", order=order)
    assert null.label_inputs.tolist() == [[0, 0, 0], [1, 0, 0], [0, 0, 0],
                                          [0, 0, 1], [0, 1, 0]]


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="labels"):
        episode_as_sequence(*_episode(), ways=3, labels="shifted")
    with pytest.raises(ValueError, match="order"):
        episode_as_sequence(*_episode(), ways=3, order=torch.tensor([0, 0, 1, 2, 3]))
    with pytest.raises(ValueError, match="ways=2"):
        offset_label_inputs(torch.tensor([0, 2]), ways=2)


def test_queries_after_support_gives_each_query_its_own_sequence():
    support = torch.tensor([[1.0, 0.0], [2.0, 1.0]])
    queries = torch.tensor([[7.0, 0.0], [8.0, 0.0], [9.0, 0.0]])
    seqs = queries_after_support(support, queries)
    assert seqs.shape == (3, 3, 2)
    for q in range(3):
        assert seqs[q].tolist() == [[1, 0], [2, 1], [7 + q, 0]]


def test_with_label_channel_concatenates_and_checks_shapes():
    out = with_label_channel(torch.ones(2, 3), torch.zeros(2, 4))
    assert out.shape == (2, 7) and out[:, :3].eq(1).all() and out[:, 3:].eq(0).all()
    with pytest.raises(ValueError, match="label_inputs"):
        with_label_channel(torch.ones(2, 3), torch.zeros(3, 4))


def test_presentation_numbers_count_each_class_in_order():
    targets = torch.tensor([1, 0, 1, 1, 2, 0, 2, 1])
    assert presentation_numbers(targets).tolist() == [1, 1, 2, 3, 1, 2, 2, 4]


def test_accuracy_by_presentation_by_hand():
    from metalab.tasks.sequence import accuracy_by_presentation

    # episode 0: classes 1 0 1 1 0 -> presentations 1 1 2 3 2; correct 0 1 1 0 1
    # episode 1: classes 0 0 0 1 1 -> presentations 1 2 3 1 2; correct 1 0 1 1 1
    targets = torch.tensor([[1, 0, 1, 1, 0], [0, 0, 0, 1, 1]])
    presentations = torch.stack([presentation_numbers(t) for t in targets])
    correct = torch.tensor([[0, 1, 1, 0, 1], [1, 0, 1, 1, 1]], dtype=torch.bool)
    table = accuracy_by_presentation(correct, presentations, [1, 2, 3, 4])
    assert table[:, :3].tolist() == [[0.5, 1.0, 0.0], [1.0, 0.5, 1.0]]
    assert table[:, 3].isnan().all()
