"""The task stream of online meta-learning and the Rainbow digits tasks."""

from __future__ import annotations

import io

import pytest
import torch

from metalab.tasks.rainbow import COLOURS, rainbow_tasks, rainbow_transform, rainbow_transforms
from metalab.tasks.stream import BufferSource, StreamTask, TaskStream


def numbered_tasks(count: int = 3, size: int = 10, held: int = 4) -> list[StreamTask]:
    """Task ``t``'s training example ``i`` is the scalar ``100 t + i`` (so every example
    names its task and index); labels ``i % 2``."""
    tasks = []
    for t in range(count):
        train = (100.0 * t + torch.arange(size, dtype=torch.float64)).view(size, 1)
        test = -(100.0 * t + torch.arange(held, dtype=torch.float64)).view(held, 1) - 1
        tasks.append(StreamTask(train, torch.arange(size) % 2, test, torch.arange(held) % 2))
    return tasks


def drain(stream: TaskStream) -> list[tuple[int, list[int]]]:
    """(task index, example values) of every batch to the end of the stream."""
    seen = []
    while True:
        if stream.task_index >= 0 and stream.has_batch():
            x, _ = stream.next_batch()
            seen.append((stream.task_index, x.view(-1).long().tolist()))
        elif stream.task_index + 1 < len(stream):
            stream.begin_task()
        else:
            return seen


def copy_state(state: dict) -> dict:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


def test_stream_is_ordered_and_every_example_arrives_once():
    stream = TaskStream(numbered_tasks(), batch_size=4, seed=0)
    batches = drain(stream)
    assert [t for t, _ in batches] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert [len(v) for _, v in batches] == [4, 4, 2] * 3
    for task in range(3):
        values = sorted(v for t, vs in batches if t == task for v in vs)
        assert values == [100 * task + i for i in range(10)]
    with pytest.raises(StopIteration):
        stream.begin_task()


def test_stream_is_reproducible_from_its_seed():
    first = drain(TaskStream(numbered_tasks(), batch_size=3, seed=5))
    again = drain(TaskStream(numbered_tasks(), batch_size=3, seed=5))
    other = drain(TaskStream(numbered_tasks(), batch_size=3, seed=6))
    assert first == again
    assert first != other


def advance(stream: TaskStream, tasks: int, batches: int) -> None:
    for _ in range(tasks):
        stream.begin_task()
        while stream.has_batch():
            stream.next_batch()
    stream.begin_task()
    for _ in range(batches):
        stream.next_batch()


def test_resuming_mid_stream_gives_the_same_buffer_next_batches_and_buffer_draws():
    original = TaskStream(numbered_tasks(), batch_size=3, seed=1, num_classes=2)
    advance(original, tasks=1, batches=2)
    original.sample_buffer(2, 2, 2)
    state = copy_state(original.state_dict())
    resumed = TaskStream(numbered_tasks(), batch_size=3, seed=99, num_classes=2)
    resumed.load_state_dict(state)

    assert resumed.buffer_sizes() == original.buffer_sizes() == [10, 6]
    for task in range(2):
        assert torch.equal(resumed.received(task)[0], original.received(task)[0])
    draw_a, draw_b = original.sample_buffer(3, 2, 2), resumed.sample_buffer(3, 2, 2)
    assert torch.equal(draw_a.support_x, draw_b.support_x)
    assert torch.equal(draw_a.query_x, draw_b.query_x)
    assert torch.equal(draw_a.task_id, draw_b.task_id)
    assert drain(resumed) == drain(original)


def test_buffer_samples_only_arrived_examples_of_seen_tasks_support_and_query_apart():
    stream = TaskStream(numbered_tasks(count=4), batch_size=3, seed=2, num_classes=2)
    assert stream.sample_buffer(1, 1, 1) is None  # nothing seen yet
    advance(stream, tasks=1, batches=1)  # task 0 whole, 3 examples of task 1
    arrived = {v for t in range(2) for v in stream.received(t)[0].view(-1).long().tolist()}
    for _ in range(20):
        batch = stream.sample_buffer(4, 1, 2)
        assert set(batch.task_id.tolist()) <= {0, 1}
        for t in range(len(batch)):
            support = batch.support_x[t].view(-1).long().tolist()
            query = batch.query_x[t].view(-1).long().tolist()
            assert set(support + query) <= arrived
            assert not set(support) & set(query)
            assert {v // 100 for v in support + query} == {int(batch.task_id[t])}
    # task 1 has 3 arrived examples: with support + query = 4 only task 0 is eligible
    assert set(stream.sample_buffer(10, 2, 2).task_id.tolist()) == {0}
    assert BufferSource(stream, 1, 2, 2).ready()
    assert not BufferSource(stream, 1, 10, 1).ready()


def test_stream_refuses_a_bad_batch_size_and_unseen_tasks():
    with pytest.raises(ValueError, match="batch_size"):
        TaskStream(numbered_tasks(), batch_size=0)
    stream = TaskStream(numbered_tasks(), batch_size=3)
    stream.begin_task()
    with pytest.raises(ValueError, match="seen so far"):
        stream.received(1)


# -- Rainbow --------------------------------------------------------------------------------
DIGIT = torch.tensor([[0.0, 1.0, 0.0, 0.0],
                      [0.0, 1.0, 0.0, 0.0],
                      [0.0, 1.0, 1.0, 0.0],
                      [0.0, 0.0, 0.0, 0.0]], dtype=torch.float64).view(1, 1, 4, 4)


def test_rainbow_full_scale_quarter_turn_on_red_by_hand():
    out = rainbow_transform(DIGIT, (1.0, 0.0, 0.0), 1.0, 1)
    # a quarter turn counter-clockwise: new[i][j] = old[j][3 - i]
    turned = torch.tensor([[0.0, 0.0, 0.0, 0.0],
                           [0.0, 0.0, 1.0, 0.0],
                           [1.0, 1.0, 1.0, 0.0],
                           [0.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    assert out.shape == (1, 3, 4, 4)
    assert torch.equal(out[0, 0], torch.ones(4, 4, dtype=torch.float64))  # red: 1 everywhere
    assert torch.equal(out[0, 1], turned)  # green and blue: 0 background, 1 on the digit
    assert torch.equal(out[0, 2], turned)


def test_rainbow_half_scale_on_a_mixed_colour_by_hand():
    out = rainbow_transform(DIGIT, (0.5, 0.25, 0.0), 0.5, 0)
    # 2x2 average pooling of the four 2x2 blocks: [[0.5, 0], [0.25, 0.25]], at rows/cols 1..2
    digit = torch.zeros(4, 4, dtype=torch.float64)
    digit[1:3, 1:3] = torch.tensor([[0.5, 0.0], [0.25, 0.25]], dtype=torch.float64)
    for channel, background in enumerate((0.5, 0.25, 0.0)):
        expected = background * (1 - digit) + digit
        assert torch.allclose(out[0, channel], expected)
    assert out[0, 0, 1, 1] == 0.75  # 0.5 * (1 - 0.5) + 0.5


def test_rainbow_has_56_distinct_transforms_and_reproducible_tasks():
    transforms = rainbow_transforms()
    assert len(transforms) == 56 == len(COLOURS) * 2 * 4
    assert len({tuple(t.values()) for t in transforms}) == 56
    first = rainbow_tasks(tasks=3, train_per_task=20, test_per_task=10, seed=3)
    again = rainbow_tasks(tasks=3, train_per_task=20, test_per_task=10, seed=3)
    assert len(first) == 3
    assert first[0].train_x.shape == (20, 3, 14, 14)
    assert first[0].test_x.shape == (10, 3, 14, 14)
    for a, b in zip(first, again, strict=True):
        assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_y, b.test_y)
    # task 0 is red at full scale: channel 0 (red) is 1 wherever the digit is not
    assert torch.all(first[0].train_x[:, 0] >= 1 - 1e-6)


def test_advance_walks_the_whole_stream_and_counts_its_arrivals():
    stream = TaskStream(numbered_tasks(count=2, size=5), batch_size=2, seed=4)
    assert stream.arrivals() == 6  # ceil(5 / 2) = 3 per task
    seen = []
    while stream.has_next():
        x, _ = stream.advance()
        seen.append((stream.task_index, len(x)))
    assert seen == [(0, 2), (0, 2), (0, 1), (1, 2), (1, 2), (1, 1)]
    with pytest.raises(StopIteration):
        stream.advance()


def test_example_batch_gives_the_sizes_without_drawing():
    stream = TaskStream(numbered_tasks(), batch_size=3, seed=1, num_classes=2)
    before = stream.generator.get_state()
    batch = BufferSource(stream, 4, 2, 3).example_batch()
    assert batch.support_x.shape == (1, 2, 1) and batch.query_x.shape == (1, 3, 1)
    assert batch.num_classes == 2
    assert torch.equal(stream.generator.get_state(), before) and stream.task_index == -1


# -- rainbow glyphs -------------------------------------------------------------------------
class FakeGlyphs:
    """What `rainbow_glyph_tasks` reads of a Glyphs dataset: 4 alphabets x 6 characters x 5
    drawings; drawing id ``30 alphabet + 5 character + drawing + 1`` is the intensity of a
    2x2 block (kept exactly by the half scale's 2x2 pooling)."""

    def __init__(self) -> None:
        self.class_info, images, labels = [], [], []
        for a in range(4):
            for c in range(6):
                self.class_info.append({"alphabet": f"A{a}", "char": str(c)})
                for d in range(5):
                    image = torch.zeros(1, 4, 4, dtype=torch.uint8)
                    image[0, :2, :2] = 30 * a + 5 * c + d + 1
                    images.append(image)
                    labels.append(6 * a + c)
        self.images, self.labels = torch.stack(images), torch.tensor(labels)


def test_rainbow_glyph_tasks_one_alphabet_each_disjoint_drawings_and_reproducible():
    from metalab.tasks.rainbow_glyphs import rainbow_glyph_tasks

    fake = FakeGlyphs()
    tasks = rainbow_glyph_tasks(tasks=3, ways=4, train_per_class=3, test_per_class=2,
                                image_size=4, seed=5, dataset=fake)
    again = rainbow_glyph_tasks(tasks=3, ways=4, train_per_class=3, test_per_class=2,
                                image_size=4, seed=5, dataset=fake)
    assert len(tasks) == 3
    for task, twin in zip(tasks, again, strict=True):
        assert task.train_x.shape == (12, 3, 4, 4) and task.test_x.shape == (8, 3, 4, 4)
        assert sorted(task.train_y.tolist()) == sorted([0, 1, 2, 3] * 3)
        assert torch.equal(task.train_x, twin.train_x)
    raw = {int(v) for v in fake.images.view(len(fake.images), -1).max(1).values}
    alphabets = []
    for task in tasks:
        # read each example's drawing id off by undoing the colour (out = c (1 - d) + d) on
        # a channel whose background c is below 1; c is that channel's smallest value
        colour = task.train_x.amin(dim=(0, 2, 3))
        channel = int(torch.argmin(colour))
        c = float(colour[channel])
        values = []
        for x in (task.train_x, task.test_x):
            d = (x[:, channel] - c) / (1 - c)  # out = c (1 - d) + d
            values.append({round(float(v) * 255) for v in d.flatten(1).max(1).values})
        train_ids, test_ids = values
        assert train_ids <= raw and test_ids <= raw
        assert not train_ids & test_ids  # training and held-out drawings apart
        alphabets.append({(v - 1) // 30 for v in train_ids | test_ids})
    assert all(len(a) == 1 for a in alphabets)  # one alphabet per task
    assert len(set.union(*alphabets)) == 3  # a different alphabet for every task
    other = rainbow_glyph_tasks(tasks=3, ways=4, train_per_class=3, test_per_class=2,
                                image_size=4, seed=6, dataset=fake)
    assert any(not torch.equal(a.train_x, b.train_x) for a, b in zip(tasks, other, strict=True))
    with pytest.raises(ValueError, match="tasks must be at most 4"):
        rainbow_glyph_tasks(tasks=5, ways=4, train_per_class=3, test_per_class=2,
                            image_size=4, dataset=fake)
