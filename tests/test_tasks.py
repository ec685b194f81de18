import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import ToyImages
from metalab.tasks import EpisodeSampler, Sinusoid, Task, TaskBatch


def _batch(**changes):
    fields = dict(support_x=torch.randn(2, 5, 3), support_y=torch.tensor([[0, 1, 2, 3, 4]] * 2),
                  query_x=torch.randn(2, 10, 3), query_y=torch.randint(0, 5, (2, 10)),
                  num_classes=5)
    fields.update(changes)
    return TaskBatch(**fields)


def test_task_batch_len_index_slice_and_to():
    batch = _batch()
    assert len(batch) == 2
    task = batch[1]
    assert isinstance(task, Task) and task.support_x.shape == (5, 3)
    assert len(batch[:1]) == 1
    moved = batch.to(torch.float64)
    assert moved.support_x.dtype == torch.float64 and moved.support_y.dtype == torch.long


@pytest.mark.parametrize("changes, message", [
    ({"query_x": torch.randn(3, 10, 3), "query_y": torch.zeros(3, 10, dtype=torch.long)},
     "query_x has 3 tasks but support_x has 2"),
    ({"support_y": torch.zeros(2, 4, dtype=torch.long)}, "support_y has 4 examples per task"),
    ({"query_y": torch.zeros(2, 10)}, "query_y must hold integer class labels"),
    ({"query_y": torch.full((2, 10), 5)}, "num_classes=5 allows [0, 4]"),
    ({"support_y": torch.full((2, 5), -1)}, "support_y holds labels in [-1, -1]"),
    ({"support_x": torch.randn(5)}, "support_x must have shape [tasks, examples, ...]"),
    ({"support_x": [[1.0]]}, "support_x must be a torch.Tensor"),
])
def test_task_batch_errors_name_the_field(changes, message):
    with pytest.raises((ValueError, TypeError)) as error:
        _batch(**changes)
    assert message in str(error.value)


def test_regression_batch_accepts_float_targets():
    batch = TaskBatch(torch.randn(4, 5, 1), torch.randn(4, 5, 1), torch.randn(4, 7, 1),
                      torch.randn(4, 7, 1))
    assert batch.num_classes is None


def _episode_classes(dataset, batch):
    """Class of every support/query example, recovered from the image values."""
    lookup = {float(img.sum()): label for img, label in zip(dataset.images, dataset.labels,
                                                             strict=True)}

    def classes(x):
        return torch.tensor([[lookup[float(img.sum())] for img in task] for task in x])

    return classes(batch.support_x), classes(batch.query_x)


def test_episode_counts_disjoint_sets_and_consistent_labels():
    data = ToyImages(classes=12, per_class=20)
    batch = EpisodeSampler(data, ways=5, shots=2, queries=3, tasks_per_batch=4, seed=0).sample()
    assert batch.support_x.shape == (4, 10, 1, 16, 16) and batch.query_x.shape == (4, 15, 1, 16, 16)
    assert batch.num_classes == 5
    support_classes, query_classes = _episode_classes(data, batch)
    for t in range(4):
        assert torch.bincount(batch.support_y[t]).tolist() == [2] * 5
        assert torch.bincount(batch.query_y[t]).tolist() == [3] * 5
        assert len(set(support_classes[t].tolist())) == 5
        # one class per label, the same in support and query
        for label in range(5):
            s = set(support_classes[t][batch.support_y[t] == label].tolist())
            q = set(query_classes[t][batch.query_y[t] == label].tolist())
            assert len(s) == 1 and s == q
        support_items = {float(img.sum()) for img in batch.support_x[t]}
        query_items = {float(img.sum()) for img in batch.query_x[t]}
        assert not support_items & query_items


def _label_maps(shuffle: bool, seed: int = 0):
    data = ToyImages(classes=10, per_class=6)
    batch = EpisodeSampler(data, ways=5, shots=1, queries=1, tasks_per_batch=200,
                           shuffle_labels=shuffle, seed=seed).sample()
    support_classes, _ = _episode_classes(data, batch)
    pairs = set()
    for t in range(len(batch)):
        pairs |= set(zip(support_classes[t].tolist(), batch.support_y[t].tolist(), strict=True))
    return pairs


def test_shuffled_labels_vary_and_fixed_labels_do_not():
    shuffled = _label_maps(True)
    assert len({label for cls, label in shuffled if cls == 0}) == 5
    fixed = _label_maps(False)
    per_class = {}
    for cls, label in fixed:
        per_class.setdefault(cls, set()).add(label)
    assert all(len(labels) == 1 for labels in per_class.values())
    assert len(per_class) == 10  # every class still appears


def test_sampler_is_deterministic_for_a_seed_and_resumable():
    data = ToyImages()
    a = EpisodeSampler(data, 5, 1, 2, tasks_per_batch=3, seed=7)
    b = EpisodeSampler(data, 5, 1, 2, tasks_per_batch=3, seed=7)
    assert torch.equal(a.sample().query_x, b.sample().query_x)
    state = a.state_dict()
    expected = a.sample().support_x
    a.load_state_dict(state)
    assert torch.equal(a.sample().support_x, expected)
    assert not torch.equal(EpisodeSampler(data, 5, 1, 2, 3, seed=8).sample().support_x,
                           b.sample().support_x)


def test_sampler_errors():
    data = ToyImages(classes=12, per_class=20, split="test")
    with pytest.raises(ValueError, match="ways=20 but split 'test' has 12 classes"):
        EpisodeSampler(data, ways=20, shots=1, queries=1)
    with pytest.raises(ValueError, match="shots\\+queries=21 but class 'class0' has 20 examples"):
        EpisodeSampler(data, ways=5, shots=1, queries=20)
    with pytest.raises(ValueError, match="shots must be an integer >= 1, got 0"):
        EpisodeSampler(data, ways=5, shots=0, queries=1)
    with pytest.raises(TypeError, match="must have a 'labels' sequence"):
        EpisodeSampler(torch.utils.data.TensorDataset(torch.randn(4, 2)), 2, 1, 1)


def test_sinusoid_ranges_shapes_and_determinism():
    family = Sinusoid(shots=5, queries=10, tasks_per_batch=500, seed=0)
    batch = family.sample()
    assert batch.support_x.shape == (500, 5, 1) and batch.query_y.shape == (500, 10, 1)
    x = torch.cat([batch.support_x, batch.query_x], 1)
    y = torch.cat([batch.support_y, batch.query_y], 1)
    assert x.min() >= -5 and x.max() <= 5
    amplitude = y.abs().amax(dim=1)
    assert amplitude.max() <= 5 + 1e-6
    # recover amplitude and phase of each task by least squares: y = a sin x + b cos x
    design = torch.cat([torch.sin(x), torch.cos(x)], -1)
    coef = torch.linalg.lstsq(design.double(), y.double()).solution.squeeze(-1)
    amp = coef.norm(dim=-1)
    phase = torch.atan2(-coef[:, 1], coef[:, 0])
    assert amp.min() >= 0.1 - 1e-6 and amp.max() <= 5 + 1e-6
    assert phase.min() >= -1e-6 and phase.max() <= math.pi + 1e-6
    again = Sinusoid(shots=5, queries=10, tasks_per_batch=500, seed=0).sample()
    assert torch.equal(again.query_y, batch.query_y)
    with pytest.raises(ValueError, match="amplitude must be a \\(low, high\\) pair"):
        Sinusoid(5, 5, amplitude=(5, 1))


@settings(max_examples=25, deadline=None)
@given(ways=st.integers(1, 6), shots=st.integers(1, 4), queries=st.integers(1, 4),
       tasks=st.integers(1, 3), shuffle=st.booleans(), seed=st.integers(0, 2**31))
def test_sampler_invariants_for_any_request(ways, shots, queries, tasks, shuffle, seed):
    data = ToyImages(classes=8, per_class=8, size=4)
    batch = EpisodeSampler(data, ways, shots, queries, tasks, shuffle_labels=shuffle,
                           seed=seed).sample()
    assert batch.support_x.shape == (tasks, ways * shots, 1, 4, 4)
    assert batch.query_x.shape == (tasks, ways * queries, 1, 4, 4)
    for t in range(tasks):
        assert torch.bincount(batch.support_y[t], minlength=ways).tolist() == [shots] * ways
        assert torch.bincount(batch.query_y[t], minlength=ways).tolist() == [queries] * ways
        support = {float(img.sum()) for img in batch.support_x[t]}
        assert len(support) == ways * shots  # distinct examples
        assert not support & {float(img.sum()) for img in batch.query_x[t]}
