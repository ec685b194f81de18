"""Statistical checks of what the task families and samplers draw (not only their bounds).

Each test draws thousands of tasks from a fixed seed and compares the empirical
distribution with the documented one: a Kolmogorov-Smirnov statistic (written here) for
continuous quantities, a chi-square statistic for frequencies. The thresholds are the
0.1% critical values (KS: ``1.95 / sqrt(n)``; chi-square: the Wilson-Hilferty
approximation of the 99.9% quantile), so a correct sampler fails about once in a thousand
seeds, and the seeds are fixed: these tests are deterministic. A sampler that draws from
the wrong range, with the wrong weights or with a bias towards some classes fails by a
wide margin (the statistics then grow with the number of draws).
"""

from __future__ import annotations

import math

import torch

from metalab.tasks import EpisodeSampler, GroupBatchSampler, GroupEvalSampler, Sinusoid

KS_CRITICAL = 1.95  # sqrt(-log(0.001 / 2) / 2): P(sqrt(n) D > 1.95) ~ 0.001


def ks_uniform(values: torch.Tensor, low: float, high: float) -> float:
    """``sqrt(n) * sup |F_n - F|`` against ``U[low, high]``."""
    x, _ = torch.sort(values.double().reshape(-1))
    n = len(x)
    cdf = ((x - low) / (high - low)).clamp(0.0, 1.0)
    ranks = torch.arange(1, n + 1, dtype=torch.float64)
    distance = torch.maximum(ranks / n - cdf, cdf - (ranks - 1) / n).max().item()
    return math.sqrt(n) * distance


def chi2_critical(dof: int, z: float = 3.0902) -> float:
    """The 99.9% quantile of chi-square(dof) by the Wilson-Hilferty approximation."""
    a = 2.0 / (9.0 * dof)
    return dof * (1.0 - a + z * math.sqrt(a)) ** 3


def chi_square(counts: torch.Tensor, expected: torch.Tensor) -> float:
    counts, expected = counts.double().reshape(-1), expected.double().reshape(-1)
    return float(((counts - expected) ** 2 / expected).sum())


# -- the sinusoid family ---------------------------------------------------------------------


def sinusoid_parameters(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Amplitude and phase of ``y = A sin(x - phi)`` from each task's points, by least
    squares on ``y = a sin x + b cos x`` (``a = A cos phi``, ``b = -A sin phi``)."""
    design = torch.stack([torch.sin(x), torch.cos(x)], dim=-1).double()  # [T, N, 2]
    solution = torch.linalg.lstsq(design, y.double().unsqueeze(-1)).solution.squeeze(-1)
    a, b = solution[:, 0], solution[:, 1]
    return torch.hypot(a, b), torch.atan2(-b, a)


def draw_sinusoids(source: Sinusoid, batches: int):
    xs, ys = [], []
    for _ in range(batches):
        batch = source.sample()
        xs.append(torch.cat([batch.support_x, batch.query_x], dim=1).squeeze(-1))
        ys.append(torch.cat([batch.support_y, batch.query_y], dim=1).squeeze(-1))
    return torch.cat(xs), torch.cat(ys)


def test_sinusoid_amplitude_phase_and_inputs_are_uniform_on_the_papers_ranges():
    source = Sinusoid(shots=3, queries=2, tasks_per_batch=500, seed=0)
    x, y = draw_sinusoids(source, 8)  # 4000 tasks, 20000 inputs
    amplitude, phase = sinusoid_parameters(x, y)
    assert ks_uniform(amplitude, 0.1, 5.0) < KS_CRITICAL
    assert ks_uniform(phase, 0.0, math.pi) < KS_CRITICAL
    assert ks_uniform(x, -5.0, 5.0) < KS_CRITICAL
    # moments, as a second view: mean (low + high) / 2, variance (high - low)^2 / 12
    n = len(amplitude)
    assert abs(amplitude.mean().item() - 2.55) < 4 * math.sqrt(4.9 ** 2 / 12 / n)
    assert abs(amplitude.var().item() - 4.9 ** 2 / 12) < 0.1
    assert abs(phase.mean().item() - math.pi / 2) < 4 * math.sqrt(math.pi ** 2 / 12 / n)


def test_sinusoid_support_and_query_points_belong_to_the_same_function():
    source = Sinusoid(shots=4, queries=6, tasks_per_batch=200, seed=1)
    batch = source.sample()
    amplitude, phase = sinusoid_parameters(batch.support_x.squeeze(-1),
                                           batch.support_y.squeeze(-1))
    predicted = amplitude[:, None] * torch.sin(batch.query_x.squeeze(-1).double() - phase[:, None])
    torch.testing.assert_close(predicted, batch.query_y.squeeze(-1).double(), rtol=1e-4,
                               atol=1e-4)


def test_sinusoid_honours_custom_ranges_and_adds_gaussian_noise_of_the_given_scale():
    source = Sinusoid(shots=3, queries=3, tasks_per_batch=400, amplitude=(1.0, 2.0),
                      phase=(0.5, 1.0), x_range=(0.0, 3.0), seed=2)
    x, y = draw_sinusoids(source, 5)
    amplitude, phase = sinusoid_parameters(x, y)
    assert ks_uniform(amplitude, 1.0, 2.0) < KS_CRITICAL
    assert ks_uniform(phase, 0.5, 1.0) < KS_CRITICAL
    assert ks_uniform(x, 0.0, 3.0) < KS_CRITICAL
    clean = Sinusoid(shots=3, queries=3, tasks_per_batch=2000, seed=3)
    noisy = Sinusoid(shots=3, queries=3, tasks_per_batch=2000, noise=0.3, seed=3)
    _, y_clean = draw_sinusoids(clean, 1)
    _, y_noisy = draw_sinusoids(noisy, 1)
    residual = (y_noisy - y_clean).reshape(-1)  # same draws of A, phi, x; then the noise
    assert abs(residual.std().item() - 0.3) < 0.01
    assert abs(residual.mean().item()) < 4 * 0.3 / math.sqrt(residual.numel())


# -- episodes ------------------------------------------------------------------------------------


class IndexDataset(torch.utils.data.Dataset):
    """Item ``i`` is the input ``[i]`` with label ``labels[i]`` (so a batch names its items)."""

    def __init__(self, labels: list[int], groups: list[int] | None = None) -> None:
        self.labels = labels
        if groups is not None:
            self.groups = groups
            self.num_classes = max(labels) + 1

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return torch.tensor([float(i)]), self.labels[i]

    def gather(self, indices: torch.Tensor) -> torch.Tensor:
        return indices.double().view(-1, 1)


CLASSES, PER_CLASS = 12, 9


def episode_items(sampler: EpisodeSampler, batches: int):
    """Dataset indices of the support and query items, and their task labels."""
    support, query, support_y, query_y = [], [], [], []
    for _ in range(batches):
        batch = sampler.sample()
        support.append(batch.support_x.reshape(len(batch), -1).long())
        query.append(batch.query_x.reshape(len(batch), -1).long())
        support_y.append(batch.support_y)
        query_y.append(batch.query_y)
    return torch.cat(support), torch.cat(query), torch.cat(support_y), torch.cat(query_y)


def test_episode_sampler_draws_classes_examples_and_labels_uniformly():
    labels = [c for c in range(CLASSES) for _ in range(PER_CLASS)]
    dataset = IndexDataset(labels)
    ways, shots, queries, tasks = 5, 2, 3, 3000
    sampler = EpisodeSampler(dataset, ways, shots, queries, tasks_per_batch=100, seed=0)
    support, query, support_y, query_y = episode_items(sampler, tasks // 100)
    label_of = torch.tensor(labels)
    items = torch.cat([support, query], dim=1)
    task_labels = torch.cat([support_y, query_y], dim=1)
    # within a task: distinct items, each label one class, `shots` support items per label
    for t in range(0, tasks, 97):
        assert len(set(items[t].tolist())) == items.shape[1]
        for k in range(ways):
            assert len(set(label_of[items[t][task_labels[t] == k]].tolist())) == 1
            assert int((support_y[t] == k).sum()) == shots
    # class frequencies: every class in ways/CLASSES of the tasks
    classes_in_task = torch.stack([label_of[items[t][task_labels[t] == k][0]]
                                   for t in range(tasks) for k in range(ways)]).view(tasks, ways)
    counts = torch.bincount(classes_in_task.reshape(-1), minlength=CLASSES)
    expected = torch.full((CLASSES,), tasks * ways / CLASSES)
    assert chi_square(counts, expected) < chi2_critical(CLASSES - 1)
    # label assignment: each (class, label) pair equally often
    pairs = torch.zeros(CLASSES, ways)
    for k in range(ways):
        pairs[:, k] = torch.bincount(classes_in_task[:, k], minlength=CLASSES)
    assert chi_square(pairs, torch.full_like(pairs, tasks / CLASSES)) < chi2_critical(
        CLASSES * ways - 1)
    # examples within a class: each used (shots + queries) / PER_CLASS of its class's tasks
    example_counts = torch.bincount(items.reshape(-1), minlength=len(labels)).double()
    expected_examples = counts.double()[label_of] * (shots + queries) / PER_CLASS
    assert chi_square(example_counts, expected_examples) < chi2_critical(len(labels) - CLASSES)


def test_episode_sampler_fixed_labels_keep_each_class_on_one_label_and_draw_uniformly():
    labels = [c for c in range(CLASSES) for _ in range(PER_CLASS)]
    dataset = IndexDataset(labels)
    ways, tasks = 4, 2000
    sampler = EpisodeSampler(dataset, ways, 1, 1, tasks_per_batch=100, shuffle_labels=False,
                             seed=1)
    support, _, support_y, _ = episode_items(sampler, tasks // 100)
    classes = torch.tensor(labels)[support]  # [tasks, ways], column k carries label k
    label_of_class = {}
    for c, k in zip(classes.reshape(-1).tolist(), support_y.reshape(-1).tolist(), strict=True):
        assert label_of_class.setdefault(c, k) == k
    assert len(label_of_class) == CLASSES
    # within each label's group of classes, the class is uniform
    for k in range(ways):
        members = sorted(c for c, label in label_of_class.items() if label == k)
        counts = torch.tensor([(classes[:, k] == c).sum().item() for c in members])
        expected = torch.full((len(members),), tasks / len(members))
        assert chi_square(counts, expected) < chi2_critical(len(members) - 1)


# -- group samplers ------------------------------------------------------------------------------


GROUP_SIZES = [10, 30, 60, 0, 100]


def group_dataset() -> IndexDataset:
    groups = [g for g, size in enumerate(GROUP_SIZES) for _ in range(size)]
    labels = [(i * 7) % 3 for i in range(len(groups))]
    return IndexDataset(labels, groups)


def sampled_groups(sampler: GroupBatchSampler, batches: int, dataset: IndexDataset):
    ids, items = [], []
    group_of = torch.tensor(dataset.groups)
    label_of = torch.tensor(dataset.labels)
    for _ in range(batches):
        batch = sampler.sample()
        index = batch.support_x.reshape(len(batch), -1).long()
        assert torch.equal(group_of[index], batch.task_id[:, None].expand_as(index))
        assert torch.equal(label_of[index], batch.query_y)
        assert batch.query_x is batch.support_x or torch.equal(batch.query_x, batch.support_x)
        ids.append(batch.task_id)
        items.append(index)
    return torch.cat(ids), torch.cat(items)


def test_group_sampler_frequency_sampling_is_proportional_to_group_size():
    dataset = group_dataset()
    sampler = GroupBatchSampler(dataset, groups_per_batch=50, support_size=4, seed=0)
    ids, items = sampled_groups(sampler, 60, dataset)  # 3000 tasks
    counts = torch.bincount(ids, minlength=len(GROUP_SIZES))
    assert counts[3] == 0
    sizes = torch.tensor(GROUP_SIZES, dtype=torch.float64)
    present = sizes > 0
    expected = len(ids) * sizes / sizes.sum()
    assert chi_square(counts[present], expected[present]) < chi2_critical(int(present.sum()) - 1)
    # examples: uniform with replacement within the group
    example_counts = torch.bincount(items.reshape(-1), minlength=len(dataset)).double()
    group_of = torch.tensor(dataset.groups)
    expected_examples = counts.double()[group_of] * 4 / sizes[group_of]
    assert chi_square(example_counts, expected_examples) < chi2_critical(
        len(dataset) - int(present.sum()))


def test_group_sampler_uniform_sampling_is_uniform_over_groups_with_data():
    dataset = group_dataset()
    sampler = GroupBatchSampler(dataset, groups_per_batch=40, support_size=2,
                                sampling="uniform", seed=1)
    ids, _ = sampled_groups(sampler, 50, dataset)
    counts = torch.bincount(ids, minlength=len(GROUP_SIZES))
    assert counts[3] == 0
    present = torch.tensor([s > 0 for s in GROUP_SIZES])
    expected = torch.full((int(present.sum()),), len(ids) / int(present.sum()))
    assert chi_square(counts[present], expected) < chi2_critical(int(present.sum()) - 1)


def test_group_sampler_distinct_groups_never_repeat_a_group_in_a_batch():
    dataset = group_dataset()
    sampler = GroupBatchSampler(dataset, groups_per_batch=3, support_size=2,
                                distinct_groups=True, seed=2)
    for _ in range(200):
        ids = sampler.sample().task_id.tolist()
        assert len(set(ids)) == 3 and 3 not in ids


def test_group_eval_sampler_visits_groups_equally_and_covers_every_example():
    dataset = group_dataset()
    sampler = GroupEvalSampler(dataset, batch_size=7, groups_per_batch=2, seed=0)
    ids, items = [], []
    for _ in range(-(-sampler.episodes_to_cover // 2)):
        batch = sampler.sample()
        ids.append(batch.task_id)
        items.append(batch.support_x.reshape(len(batch), -1).long())
    ids, items = torch.cat(ids), torch.cat(items)
    groups_with_data = [g for g, size in enumerate(GROUP_SIZES) if size]
    visits = torch.bincount(ids, minlength=len(GROUP_SIZES))
    assert visits[3] == 0
    assert visits[groups_with_data].max() - visits[groups_with_data].min() <= 1
    assert set(items.reshape(-1).tolist()) == set(range(len(dataset)))
    for row in items:  # each evaluation batch holds distinct examples of one group
        assert len(set(row.tolist())) == len(row)
