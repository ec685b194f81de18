"""Multi-task models, sources, MultiMNIST and the MultiTask learner."""

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from metalab.algorithms.multitask import MultiTask, per_task_metrics
from metalab.datasets import ImageDataset
from metalab.datasets.errors import MissingDatasetError
from metalab.datasets.multimnist import (
    OverlaidDigits,
    multimnist,
    nearest_indices,
    overlay,
    resize_nearest,
)
from metalab.nn.multitask import (
    FiLM,
    MultiHead,
    film_conv,
    film_lenet,
    multi_head_conv,
    multi_head_lenet,
)
from metalab.tasks.multitask import (
    MultiLabelSource,
    PartitionedTaskSource,
    multitask_batch,
    partition_by_info,
    split_per_class,
)

# -- helpers -----------------------------------------------------------------------------


def numbered_images(count: int, side: int = 4, channels: int = 1) -> torch.Tensor:
    """uint8 images whose first pixel is the image's index (recoverable after gathers)."""
    images = torch.zeros(count, channels, side, side, dtype=torch.uint8)
    images[:, 0, 0, 0] = torch.arange(count, dtype=torch.uint8)
    return images


def index_of(x: torch.Tensor) -> torch.Tensor:
    """Recover the indices written by `numbered_images` from float images in [0, 1]."""
    return (x[..., 0, 0, 0] * 255).round().long()


class Rows(torch.utils.data.Dataset):
    """A dataset of ``numbered_images`` with given labels (no ``gather``: the slow path)."""

    def __init__(self, labels):
        self.labels = torch.as_tensor(labels)
        self.images = numbered_images(len(self.labels))

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.images[i].float() / 255, self.labels[i]


def partitioned_dataset(classes: int = 6, per_class: int = 5) -> ImageDataset:
    labels = torch.arange(classes).repeat_interleave(per_class)
    info = [{"alphabet": "ABCABC"[c % 6] if c < 6 else "Z"} for c in range(classes)]
    return ImageDataset(numbered_images(len(labels)), labels, [f"c{c}" for c in range(classes)],
                        "train", info)


def two_head_model(dtype=torch.float64) -> MultiHead:
    torch.manual_seed(0)
    trunk = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.Tanh())
    return MultiHead(trunk, [nn.Linear(8, 3), nn.Linear(8, 5)]).to(dtype)


# -- models ------------------------------------------------------------------------------


def test_multi_head_routes_each_task_to_its_head():
    model = two_head_model()
    x = torch.randn(7, 1, 4, 4, dtype=torch.float64)
    assert model(x, 0).shape == (7, 3) and model(x, torch.tensor(1)).shape == (7, 5)
    torch.testing.assert_close(model(x, 1), model.heads[1](model.trunk(x)), rtol=0, atol=0)
    assert model.shared_parameter_names() == ["trunk.1.weight", "trunk.1.bias"]


@pytest.mark.parametrize("task_id, error, message", [
    (2, ValueError, "task_id=2 but the model has 2 tasks"),
    (-1, ValueError, "task_id=-1"),
    (1.0, TypeError, "task_id must be an int or a 0-d integer tensor, got float"),
    (True, TypeError, "got bool"),
    (torch.tensor([0]), ValueError, "of shape (1,)"),
    (torch.tensor(0.0), ValueError, "torch.float32 tensor"),
])
def test_task_id_errors(task_id, error, message):
    with pytest.raises(error) as info:
        two_head_model()(torch.randn(2, 1, 4, 4, dtype=torch.float64), task_id)
    assert message in str(info.value)


def test_constructor_errors():
    with pytest.raises(ValueError, match="heads must be a non-empty list"):
        MultiHead(nn.Identity(), [])
    with pytest.raises(ValueError, match="num_classes must be a non-empty list"):
        multi_head_conv([5, 0])
    with pytest.raises(ValueError, match="image_size=8 is too small"):
        multi_head_lenet([10, 10], image_size=8)
    with pytest.raises(ValueError, match="head has 3 modules but the FiLM stages have 2"):
        film_conv([4, 4], hidden=4, blocks=1, image_size=4).__class__(
            list(film_conv([4, 4], hidden=4, blocks=1, image_size=4).stages),
            [nn.Identity()] * 3)
    with pytest.raises(ValueError, match=r"FiLM expects x of shape \[batch, 3"):
        FiLM(2, 3)(torch.randn(2, 4), 0)


def test_film_is_the_identity_at_init_and_modulates_each_task_separately():
    film = FiLM(num_tasks=2, channels=3).double()
    x = torch.randn(4, 3, 5, 5, dtype=torch.float64)
    torch.testing.assert_close(film(x, 1), x, rtol=0, atol=0)
    with torch.no_grad():
        film.gamma[1] = torch.tensor([2.0, -1.0, 0.5], dtype=torch.float64)
        film.beta[1] = torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64)
    expected = x * film.gamma[1].view(1, 3, 1, 1) + film.beta[1].view(1, 3, 1, 1)
    torch.testing.assert_close(film(x, 1), expected, rtol=0, atol=0)
    torch.testing.assert_close(film(x, 0), x, rtol=0, atol=0)


@pytest.mark.parametrize("shared_head", [False, True])
def test_film_net_routing_shapes_and_shared_parameters(shared_head):
    torch.manual_seed(0)
    model = film_conv([3, 5], hidden=4, blocks=2, image_size=8, shared_head=shared_head).double()
    x = torch.randn(6, 1, 8, 8, dtype=torch.float64)
    assert model(x, 0).shape == (6, 5 if shared_head else 3) and model(x, 1).shape == (6, 5)
    before = model(x, 0)
    with torch.no_grad():  # task 1's FiLM rows do not touch task 0's outputs
        for stage in model.stages:
            stage.film.gamma[1].mul_(3.0)
            stage.film.beta[1].add_(1.0)
    torch.testing.assert_close(model(x, 0), before, rtol=0, atol=0)
    shared = set(model.shared_parameter_names())
    names = {n for n, _ in model.named_parameters()}
    films = {n for n in names if ".film." in n}
    heads = {n for n in names if n.startswith("head.")}
    assert films and heads and not shared & films
    assert (heads <= shared) == shared_head and not (heads & shared) == shared_head
    assert shared | films | (set() if shared_head else heads) == names


def test_film_gradient_matches_finite_differences():
    torch.manual_seed(0)
    model = film_lenet([4, 3], channels=(2, 3), features=5, head_hidden=None,
                       image_size=16).double()
    x = torch.randn(3, 1, 16, 16, dtype=torch.float64)
    y = torch.tensor([0, 1, 2])
    params = dict(model.named_parameters())

    def loss_of(gamma, weight):
        values = {**params, "stages.1.film.gamma": gamma, "stages.0.pre.weight": weight}
        return F.cross_entropy(functional_call(model, values, (x, 1)), y)

    inputs = (params["stages.1.film.gamma"].detach().clone().requires_grad_(True),
              params["stages.0.pre.weight"].detach().clone().requires_grad_(True))
    assert torch.autograd.gradcheck(loss_of, inputs)


def test_benchmark_architectures_output_shapes():
    x = torch.randn(4, 1, 28, 28)
    assert multi_head_lenet([10, 10])(x, 1).shape == (4, 10)
    assert film_lenet([10, 10], shared_head=True)(x, 0).shape == (4, 10)
    model = multi_head_conv([5, 7], hidden=8, blocks=3)
    assert model(x, 1).shape == (4, 7) and model.trunk.feature_dim == 8 * 3 * 3
    model(x, 0)
    assert model.trunk.layers[1].num_batches_tracked == 2  # ordinary running statistics


# -- sources -----------------------------------------------------------------------------


def test_empty_support_task_batch_is_accepted():
    batch = multitask_batch(torch.randn(3, 4, 2), torch.zeros(3, 4, dtype=torch.long), 5,
                            torch.arange(3))
    assert batch.support_x.shape == (3, 0, 2) and batch.support_y.shape == (3, 0)
    assert len(batch[:2]) == 2


@pytest.mark.parametrize("with_gather", [True, False])
def test_multilabel_source_shares_images_across_tasks(with_gather):
    labels = torch.stack([torch.arange(30) % 2, torch.arange(30) % 7], dim=1)
    data = Rows(labels)
    if with_gather:
        data.gather = lambda i: data.images[i].float() / 255
    source = MultiLabelSource(data, batch_size=8, seed=3)
    batch = source.sample()
    assert batch.query_x.shape == (2, 8, 1, 4, 4) and batch.support_x.shape == (2, 0, 1, 4, 4)
    assert batch.query_x.stride(0) == 0  # one set of images, expanded over the tasks
    assert batch.task_id.tolist() == [0, 1] and batch.num_classes == 7
    assert source.classes_per_task == [2, 7]
    index = index_of(batch.query_x[0])
    assert len(set(index.tolist())) == 8
    torch.testing.assert_close(batch.query_y, labels[index].T)


def test_multilabel_source_is_deterministic_resumable_and_walks_the_split():
    labels = torch.stack([torch.arange(23) % 3, torch.arange(23) % 4], dim=1)
    first, second = MultiLabelSource(Rows(labels), 5, seed=1), MultiLabelSource(Rows(labels),
                                                                                 5, seed=1)
    for _ in range(3):
        torch.testing.assert_close(first.sample().query_x, second.sample().query_x)
    state = first.state_dict()
    expected = [first.sample().query_x for _ in range(2)]
    second.load_state_dict(state)
    for value in expected:
        torch.testing.assert_close(second.sample().query_x, value)
    walked = list(first.evaluation_batches())
    assert [b.query_x.shape[1] for b in walked] == [5, 5, 5, 5, 3]
    assert torch.cat([index_of(b.query_x[0]) for b in walked]).tolist() == list(range(23))
    assert not torch.equal(first.sample().query_x, MultiLabelSource(Rows(labels), 5,
                                                                    seed=2).sample().query_x)


def test_multilabel_source_errors():
    with pytest.raises(ValueError, match=r"labels must be \[N, tasks\]"):
        MultiLabelSource(Rows(torch.arange(5)), 2)
    with pytest.raises(ValueError, match="batch_size=9 but the dataset has 5 examples"):
        MultiLabelSource(Rows(torch.zeros(5, 2, dtype=torch.long)), 9)
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1"):
        MultiLabelSource(Rows(torch.zeros(5, 2, dtype=torch.long)), 0)
    with pytest.raises(TypeError, match="must have a 'labels' attribute"):
        MultiLabelSource([1, 2], 1)


def test_partitioned_source_relabels_within_tasks():
    data = partitioned_dataset(classes=7, per_class=5)
    partition = [1, 0, -1, 1, 0, 1, 0]  # task 0: classes 1, 4, 6; task 1: classes 0, 3, 5
    source = PartitionedTaskSource(data, partition, batch_size=4, seed=0,
                                   task_names=["even", "odd"])
    batch = source.sample()
    assert batch.query_x.shape == (2, 4, 1, 4, 4) and batch.support_x.shape[1] == 0
    assert batch.task_id.tolist() == [0, 1] and batch.num_classes == 3
    classes = data.labels[index_of(batch.query_x)]
    local = {1: 0, 4: 1, 6: 2, 0: 0, 3: 1, 5: 2}
    assert set(classes[0].tolist()) <= {1, 4, 6} and set(classes[1].tolist()) <= {0, 3, 5}
    assert batch.query_y.tolist() == [[local[c] for c in row] for row in classes.tolist()]
    assert source.classes_per_task == [3, 3]


def test_partitioned_source_is_deterministic_resumable_and_walks_every_task_once():
    data = partitioned_dataset(classes=6, per_class=5)
    partition = [0, 0, 1, 1, 1, 2]
    source = PartitionedTaskSource(data, partition, batch_size=4, seed=7)
    again = PartitionedTaskSource(data, partition, batch_size=4, seed=7)
    torch.testing.assert_close(source.sample().query_x, again.sample().query_x)
    state = source.state_dict()
    value = source.sample().query_x
    again.load_state_dict(state)
    torch.testing.assert_close(again.sample().query_x, value)
    walked = list(source.evaluation_batches())
    assert [b.task_id.tolist() for b in walked] == [[0]] * 3 + [[1]] * 4 + [[2]] * 2
    assert [b.query_x.shape[:2] for b in walked][:3] == [(1, 4), (1, 4), (1, 2)]
    seen = torch.cat([index_of(b.query_x[0]) for b in walked])
    assert sorted(seen.tolist()) == list(range(30))


@pytest.mark.parametrize("partition, batch_size, message", [
    ([0, 0, 2, 2, 2, 2], 2, "leaves tasks [1] without classes"),
    ([0, 0, 1], 2, "partition has 3 entries but the dataset has labels up to 5"),
    ([-1] * 6, 2, "at least one class assigned"),
    ([0, 0, 0, 0, 0, 1], 6, "batch_size=6 but task '1' has 5 examples"),
    ([[0, 1]], 2, "partition must be a 1-D integer sequence"),
])
def test_partitioned_source_errors(partition, batch_size, message):
    with pytest.raises(ValueError) as info:
        PartitionedTaskSource(partitioned_dataset(), partition, batch_size)
    assert message in str(info.value)


def test_split_per_class_and_partition_by_info():
    data = partitioned_dataset(classes=7, per_class=5)
    train, test = split_per_class(data, held_out=2, seed=0)
    assert len(train) == 21 and len(test) == 14
    assert train.class_counts().tolist() == [3] * 7 and test.class_counts().tolist() == [2] * 7
    train_ids, test_ids = index_of(train.images.float() / 255), index_of(test.images.float() / 255)
    assert not set(train_ids.tolist()) & set(test_ids.tolist())
    torch.testing.assert_close(data.labels[train_ids], train.labels)
    assert torch.equal(split_per_class(data, 2, seed=0)[1].images, test.images)
    assert not torch.equal(split_per_class(data, 2, seed=1)[1].images, test.images)
    with pytest.raises(ValueError, match="held_out=5 but class 'c0' has 5 examples"):
        split_per_class(data, 5)
    partition, names = partition_by_info(data, "alphabet", groups=2)
    # alphabets: A (classes 0, 3), B (1, 4), C (2, 5), Z (6): the two largest, ties by order
    assert names == ["A", "B"] and partition.tolist() == [0, 1, -1, 0, 1, -1, -1]
    with pytest.raises(ValueError, match="groups=5 but the dataset has 4 distinct alphabet"):
        partition_by_info(data, groups=5)
    with pytest.raises(ValueError, match="lack the key 'script'"):
        partition_by_info(data, "script")


# -- MultiMNIST ----------------------------------------------------------------------------


def test_overlay_places_left_top_left_right_offset_and_takes_the_max():
    left = torch.tensor([[[1, 2], [3, 4]]], dtype=torch.uint8)
    right = torch.tensor([[[9, 0], [0, 5]]], dtype=torch.uint8)
    canvas = overlay(left, right, offset=1, canvas=4)
    expected = torch.tensor([[1, 2, 0, 0], [3, 9, 0, 0], [0, 0, 5, 0], [0, 0, 0, 0]],
                            dtype=torch.uint8)
    assert torch.equal(canvas[0], expected)
    with pytest.raises(ValueError, match="offset=3 places a 2x2 image outside a 4x4 canvas"):
        overlay(left, right, offset=3, canvas=4)


def test_resize_nearest_samples_pixel_centres_like_nearest_exact():
    images = torch.rand(2, 1, 36, 36)
    torch.testing.assert_close(resize_nearest(images, 28),
                               F.interpolate(images, size=28, mode="nearest-exact"),
                               rtol=0, atol=0)
    assert nearest_indices(4, 2).tolist() == [1, 3]


def toy_digits(count: int = 12, side: int = 8):
    """Digit-like source: image i is a distinct random pattern, label i % 10."""
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (count, 1, side, side), generator=g).to(torch.uint8)
    return SimpleNamespace(images=images, labels=torch.arange(count) % 10,
                           class_names=[str(d) for d in range(10)], split="train")


def test_multimnist_labels_match_the_digits_placed():
    digits = toy_digits()
    data = OverlaidDigits(digits, seed=4, copies=2, offset=2, canvas=10, image_size=7)
    assert data.images.shape == (24, 1, 7, 7) and data.labels.shape == (24, 2)
    assert data.left_index.tolist() == list(range(12)) * 2
    for k in range(len(data)):
        left, right = digits.images[data.left_index[k]], digits.images[data.right_index[k]]
        assert torch.equal(data.images[k], resize_nearest(overlay(left, right, 2, 10), 7))
        assert data.labels[k].tolist() == [int(digits.labels[data.left_index[k]]),
                                           int(digits.labels[data.right_index[k]])]
    again = OverlaidDigits(digits, seed=4, copies=2, offset=2, canvas=10, image_size=7)
    assert torch.equal(again.images, data.images) and torch.equal(again.labels, data.labels)
    other = OverlaidDigits(digits, seed=5, copies=2, offset=2, canvas=10, image_size=7)
    assert not torch.equal(other.right_index, data.right_index)
    x, y = data[3]
    assert x.dtype == torch.float32 and float(x.max()) <= 1
    assert y.tolist() == data.labels[3].tolist()
    assert data.classes_per_task == [10, 10] and data.task_names == ("left", "right")


def test_multimnist_errors_and_the_embedded_fallback(tmp_path):
    with pytest.raises(ValueError, match=r"digits must have uint8 images \[N, 1, S, S\]"):
        OverlaidDigits(SimpleNamespace(images=torch.zeros(3, 1, 4, 5, dtype=torch.uint8),
                                   labels=torch.zeros(3)))
    with pytest.raises(ValueError, match="copies must be a positive int"):
        OverlaidDigits(toy_digits(), copies=0)
    with pytest.raises(MissingDatasetError):
        multimnist("test", root=str(tmp_path), source="mnist")
    data = multimnist("test", root=str(tmp_path), seed=0)
    assert data.source == "digits" and data.images.shape == (449, 1, 28, 28)
    assert data.labels.shape == (449, 2) and data.split == "test"
    assert data.images[:, :, :4, :4].float().mean() < data.images[:, :, 8:20, 8:20].float().mean()


# -- the learner ---------------------------------------------------------------------------


def test_task_losses_equal_a_per_task_computation_in_float64():
    model = two_head_model()
    learner = MultiTask(model)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 6, 1, 4, 4, generator=g, dtype=torch.float64)
    y = torch.stack([torch.randint(0, 3, (6,), generator=g),
                     torch.randint(0, 5, (6,), generator=g)])
    batch = multitask_batch(x, y, 5, torch.tensor([0, 1]))
    losses, metrics = learner.task_losses(batch)
    expected = [F.cross_entropy(model.heads[t](model.trunk(batch.query_x[t])), batch.query_y[t])
                for t in range(2)]
    torch.testing.assert_close(losses, torch.stack(expected), rtol=0, atol=0)
    accuracy = [(model(batch.query_x[t], t).argmax(-1) == batch.query_y[t]).double().mean()
                for t in range(2)]
    torch.testing.assert_close(metrics["accuracy"], torch.stack(accuracy), rtol=0, atol=0)
    params = list(learner.parameters())
    for t in range(2):  # per-task gradients: the task's head and the trunk, nothing else
        got = torch.autograd.grad(losses[t], params, retain_graph=True, allow_unused=True)
        want = torch.autograd.grad(expected[t], params, retain_graph=True, allow_unused=True)
        for g, w, p in zip(got, want, params, strict=True):
            w = torch.zeros_like(p) if w is None else w
            torch.testing.assert_close(g, w, rtol=0, atol=0)
        other_head = model.heads[1 - t].weight
        assert not torch.autograd.grad(losses[t], other_head, retain_graph=True)[0].any()
    loss, summary = learner.meta_loss(batch)
    torch.testing.assert_close(loss, torch.stack(expected).mean(), rtol=0, atol=0)
    assert summary["loss"] == pytest.approx(loss.item())


def test_task_ids_route_entries_and_evaluation_builds_no_graph():
    model = two_head_model()
    learner = MultiTask(model)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 6, 1, 4, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (2, 6), generator=g)
    batch = multitask_batch(x, y, 5, torch.tensor([1, 0]))  # entry 0 is task 1
    losses, _ = learner.task_losses(batch, training=False)
    assert not losses.requires_grad
    torch.testing.assert_close(losses[0], F.cross_entropy(model(x[0], 1), y[0]), rtol=0, atol=0)
    torch.testing.assert_close(losses[1], F.cross_entropy(model(x[1], 0), y[1]), rtol=0, atol=0)
    torch.testing.assert_close(learner.predictor(torch.tensor(1))(x[0]), model(x[0], 1))


def test_shared_parameter_names_and_errors():
    assert MultiTask(two_head_model()).shared_parameter_names() == [
        "model.trunk.1.weight", "model.trunk.1.bias"]
    film = MultiTask(film_conv([2, 3], hidden=4, blocks=1, image_size=4, shared_head=True))
    names = dict(film.named_parameters())
    assert set(film.shared_parameter_names()) <= set(names)
    assert "model.head.weight" in film.shared_parameter_names()
    assert not any(".film." in n for n in film.shared_parameter_names())
    plain = MultiTask(nn.Linear(2, 2))
    assert plain.shared_parameter_names() == ["model.weight", "model.bias"]
    with pytest.raises(NotImplementedError, match=r"use learner.predictor\(task_id\)"):
        plain.adapt(torch.zeros(1, 2), torch.zeros(1, dtype=torch.long))
    with pytest.raises(TypeError, match="model must be an nn.Module"):
        MultiTask(lambda x, t: x)
    empty = multitask_batch(torch.zeros(2, 0, 1, 4, 4), torch.zeros(2, 0, dtype=torch.long), 5,
                            torch.arange(2))
    with pytest.raises(ValueError, match="batch.query_x has 0 examples per task"):
        MultiTask(two_head_model(torch.float32)).task_losses(empty)


def test_per_task_metrics_weights_examples_over_the_walk():
    labels = torch.stack([torch.arange(11) % 3, torch.arange(11) % 5], dim=1)
    data = Rows(labels)
    data.images = torch.randint(0, 256, (11, 1, 4, 4), generator=torch.Generator().manual_seed(0),
                                dtype=torch.uint8)
    source = MultiLabelSource(data, batch_size=4)
    learner = MultiTask(two_head_model(torch.float32)).train()
    result = per_task_metrics(learner, source.evaluation_batches(), num_tasks=2)
    assert learner.training and result["examples"].tolist() == [11.0, 11.0]
    x = data.images.float() / 255
    for t in range(2):
        with torch.no_grad():
            outputs = learner.model(x, t)
        accuracy = (outputs.argmax(-1) == labels[:, t]).double().mean()
        assert result["accuracy"][t].item() == pytest.approx(accuracy.item(), abs=1e-6)
        loss = F.cross_entropy(outputs, labels[:, t]).double()
        assert result["loss"][t].item() == pytest.approx(loss.item(), rel=1e-5)
    with pytest.raises(ValueError, match=r"no examples of tasks \[2\]"):
        per_task_metrics(learner, source.evaluation_batches(), num_tasks=3)


def test_trainer_fits_a_multitask_learner(tmp_path):
    from metalab.train.trainer import Trainer

    data = partitioned_dataset(classes=6, per_class=8)
    g = torch.Generator().manual_seed(0)
    patterns = torch.randint(0, 256, (6, 1, 4, 4), generator=g, dtype=torch.uint8)
    data.images = patterns[data.labels]
    source = PartitionedTaskSource(data, [0, 0, 0, 1, 1, 1], batch_size=6, seed=0)
    torch.manual_seed(0)
    model = MultiHead(nn.Sequential(nn.Flatten(), nn.Linear(16, 16), nn.ReLU()),
                      [nn.Linear(16, 3), nn.Linear(16, 3)])
    learner = MultiTask(model)
    before = per_task_metrics(learner, source.evaluation_batches(), 2)["loss"]
    Trainer(learner, source, tmp_path / "run", steps=40, lr=1e-2, progress=False).fit()
    after = per_task_metrics(learner, source.evaluation_batches(), 2)
    assert bool((after["loss"] < 0.5 * before).all())
    assert after["accuracy"].tolist() == [1.0, 1.0]


@pytest.mark.parametrize("model", ["multihead", "film"])
def test_trainer_combines_the_shared_parameters_of_a_multitask_learner(tmp_path, model):
    from metalab.combiners import build_combiner
    from metalab.train.trainer import Trainer

    labels = torch.stack([torch.arange(20) % 3, torch.arange(20) % 4], dim=1)
    data = Rows(labels)
    data.images = torch.randint(0, 256, (20, 1, 8, 8), generator=torch.Generator().manual_seed(0),
                                dtype=torch.uint8)
    torch.manual_seed(0)
    net = (multi_head_conv([3, 4], hidden=4, blocks=2, image_size=8) if model == "multihead"
           else film_conv([3, 4], hidden=4, blocks=2, image_size=8))
    learner = MultiTask(net)
    before = {n: p.detach().clone() for n, p in learner.named_parameters()}
    trainer = Trainer(learner, MultiLabelSource(data, 6, seed=0), tmp_path / "run", steps=2,
                      progress=False, combiner=build_combiner("pcgrad"),
                      combine_params="shared")
    assert {id(p) for p in trainer.backward_step.combined} == {
        id(p) for n, p in learner.named_parameters() if n in learner.shared_parameter_names()}
    trainer.fit()
    assert all(not torch.equal(before[n], p) for n, p in learner.named_parameters())
