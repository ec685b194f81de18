"""Group shift: GroupDataset, group batch samplers, rotated digits/MNIST, FEMNIST files."""

import json

import numpy as np
import pytest
import torch

from helpers import write_idx
from metalab.datasets import CorruptDatasetError, MissingDatasetError
from metalab.datasets.femnist import CLASS_NAMES, FEMNIST
from metalab.datasets.groups import GroupDataset
from metalab.datasets.rotated import (
    ARM_WEIGHTS,
    ROTATIONS,
    RotatedDigits,
    RotatedMNIST,
    arm_group_sizes,
    rotate_images,
)
from metalab.tasks.groups import GroupBatchSampler, GroupEvalSampler
from metalab.train.evaluator import Evaluator

# ------------------------------------------------------------------------- fixtures


def toy_groups(sizes=(6, 3, 0, 1), classes=4, seed=0, split="train"):
    """Images whose first pixel encodes the item index, so batches can be traced back."""
    n = sum(sizes)
    images = torch.zeros(n, 1, 4, 4, dtype=torch.uint8)
    images[:, 0, 0, 0] = torch.arange(n, dtype=torch.uint8)
    labels = torch.randint(classes, (n,), generator=torch.Generator().manual_seed(seed))
    groups = torch.arange(len(sizes)).repeat_interleave(torch.tensor(sizes))
    return GroupDataset(images, labels, [f"c{i}" for i in range(classes)], split, groups,
                        [f"g{i}" for i in range(len(sizes))])


def item_ids(x):
    """Dataset indices of the examples of a batch ``[T, B, 1, 4, 4]``."""
    return (x[..., 0, 0, 0] * 255).round().long()


@pytest.fixture(scope="module")
def digits_train():
    return RotatedDigits("train")


@pytest.fixture(scope="module")
def digits_test():
    return RotatedDigits("test")


# ----------------------------------------------------------------------- GroupDataset


def test_group_dataset_counts_indices_and_summary():
    data = toy_groups()
    assert data.num_groups == 4 and data.group_counts().tolist() == [6, 3, 0, 1]
    assert [m.tolist() for m in data.group_indices()] == [[0, 1, 2, 3, 4, 5], [6, 7, 8], [], [9]]
    assert torch.allclose(data.group_proportions(), torch.tensor([0.6, 0.3, 0.0, 0.1],
                                                                 dtype=torch.float64))
    summary = data.summary()
    assert summary["groups"] == 4 and summary["groups_with_images"] == 3
    assert summary["images_per_group"] == [1, 6]


@pytest.mark.parametrize("changes, message", [
    ({"groups": torch.zeros(9, dtype=torch.long)}, "one group index per image (10)"),
    ({"groups": torch.full((10,), 4)}, "groups must lie in [0, 4)"),
    ({"groups": torch.zeros(10)}, "integer group indices"),
    ({"group_names": ["a", "a", "b", "c"]}, "group_names must be distinct"),
    ({"group_names": []}, "non-empty sequence"),
    ({"group_info": [{}]}, "group_info has 1 entries but there are 4 groups"),
])
def test_group_dataset_rejects_inconsistent_groups(changes, message):
    data = toy_groups()
    fields = dict(images=data.images, labels=data.labels, class_names=data.class_names,
                  split="train", groups=data.groups, group_names=data.group_names)
    fields.update(changes)
    with pytest.raises((ValueError, TypeError)) as error:
        GroupDataset(**fields)
    assert message in str(error.value)


# ------------------------------------------------------------------ GroupBatchSampler


def test_group_batch_is_one_group_per_task_and_query_is_support():
    data = toy_groups()
    batch = GroupBatchSampler(data, groups_per_batch=5, support_size=7, seed=1).sample()
    assert batch.support_x.shape == (5, 7, 1, 4, 4) and batch.num_classes == 4
    assert batch.query_x is batch.support_x
    assert torch.equal(batch.support_y, batch.query_y)
    ids = item_ids(batch.support_x)
    assert torch.equal(batch.query_y, data.labels[ids])
    assert torch.equal(data.groups[ids], batch.task_id.view(-1, 1).expand(-1, 7))
    assert 2 not in batch.task_id.tolist()  # the empty group is never drawn


def test_frequency_sampling_matches_the_arm_training_proportions(digits_train):
    """The group of every task follows the rotated training proportions (chi-square)."""
    counts = digits_train.group_counts().double()
    spec = torch.tensor(ARM_WEIGHTS, dtype=torch.float64)
    # the dataset holds int(p * N / 5) images per group, so its proportions are ARM's
    # p / sum(p) up to that rounding
    assert torch.all((counts - spec * 1213 / 5).abs() < 1)
    assert torch.allclose(counts / counts.sum(), spec / spec.sum(), atol=2e-3)
    sampler = GroupBatchSampler(digits_train, groups_per_batch=50, support_size=1,
                                sampling="frequency", seed=0)
    drawn = torch.cat([sampler.sample().task_id for _ in range(400)])
    observed = torch.bincount(drawn, minlength=14).double()
    expected = counts / counts.sum() * len(drawn)
    chi2 = float(((observed - expected) ** 2 / expected).sum())
    assert chi2 < 34.5  # chi-square 0.999 quantile, 13 degrees of freedom
    assert observed[:3].sum() / len(drawn) == pytest.approx(3 * 169 / 718, abs=0.01)


def test_uniform_sampling_is_uniform_over_groups_with_examples():
    data = toy_groups(sizes=(60, 3, 0, 1))
    sampler = GroupBatchSampler(data, groups_per_batch=30, support_size=2, sampling="uniform",
                                seed=3)
    drawn = torch.cat([sampler.sample().task_id for _ in range(300)])
    share = torch.bincount(drawn, minlength=4).double() / len(drawn)
    assert share[2] == 0
    assert torch.allclose(share[[0, 1, 3]], torch.full((3,), 1 / 3, dtype=torch.float64),
                          atol=0.02)


def test_examples_are_drawn_with_replacement_within_the_group():
    data = toy_groups(sizes=(2, 5))
    sampler = GroupBatchSampler(data, groups_per_batch=1, support_size=200, sampling="uniform",
                                seed=0)
    for _ in range(4):
        batch = sampler.sample()
        ids = item_ids(batch.support_x)[0]
        members = data.group_indices()[int(batch.task_id[0])]
        assert set(ids.tolist()) == set(members.tolist())  # all members, each many times


def test_distinct_groups_never_repeat_within_a_batch():
    data = toy_groups(sizes=(5, 5, 5, 5))
    sampler = GroupBatchSampler(data, 4, 1, distinct_groups=True, seed=0)
    for _ in range(10):
        assert sorted(sampler.sample().task_id.tolist()) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="groups_per_batch=4 distinct groups but split "
                                         "'train' has 3 groups with examples"):
        GroupBatchSampler(toy_groups(), 4, 1, distinct_groups=True)


def test_group_sampler_is_deterministic_and_resumes():
    data = toy_groups()
    first = GroupBatchSampler(data, 3, 4, seed=7)
    second = GroupBatchSampler(data, 3, 4, seed=7)
    for _ in range(3):
        a, b = first.sample(), second.sample()
        assert torch.equal(a.support_x, b.support_x) and torch.equal(a.task_id, b.task_id)
    state = first.state_dict()
    expected = [first.sample() for _ in range(3)]
    resumed = GroupBatchSampler(data, 3, 4, seed=123)
    resumed.load_state_dict(state)
    for want in expected:
        got = resumed.sample()
        assert torch.equal(got.support_x, want.support_x)
        assert torch.equal(got.task_id, want.task_id)
    other = GroupBatchSampler(data, 3, 4, seed=8).sample()
    assert not torch.equal(other.support_x, GroupBatchSampler(data, 3, 4, seed=7).sample()
                           .support_x)


@pytest.mark.parametrize("kwargs, message", [
    ({"support_size": 0}, "support_size must be an integer >= 1"),
    ({"groups_per_batch": 0}, "groups_per_batch must be an integer >= 1"),
    ({"sampling": "balanced"}, "sampling must be one of ['frequency', 'uniform']"),
])
def test_group_sampler_errors(kwargs, message):
    args = {"groups_per_batch": 2, "support_size": 3, **kwargs}
    with pytest.raises(ValueError) as error:
        GroupBatchSampler(toy_groups(), **args)
    assert message in str(error.value)


def test_group_sampler_needs_a_group_dataset():
    from helpers import ToyImages

    with pytest.raises(TypeError, match="ToyImages lacks groups"):
        GroupBatchSampler(ToyImages(), 2, 3)


# ------------------------------------------------------------------- GroupEvalSampler


def test_eval_sampler_cycles_groups_in_order_with_single_group_batches():
    data = toy_groups(sizes=(6, 3, 0, 4))
    sampler = GroupEvalSampler(data, batch_size=3, seed=0)
    order = [int(sampler.sample().task_id[0]) for _ in range(9)]
    assert order == [0, 1, 3] * 3
    sampler = GroupEvalSampler(data, batch_size=3, groups_per_batch=2, seed=0)
    batch = sampler.sample()
    assert batch.task_id.tolist() == [0, 1]
    ids = item_ids(batch.support_x)
    assert torch.equal(data.groups[ids], batch.task_id.view(-1, 1).expand(-1, 3))
    assert batch.query_x is batch.support_x and torch.equal(batch.query_y, data.labels[ids])


def test_eval_sampler_covers_every_example_of_every_group():
    data = toy_groups(sizes=(7, 3, 0, 4))
    sampler = GroupEvalSampler(data, batch_size=3, seed=5)
    assert sampler.episodes_to_cover == 3 * 3  # 3 groups, ceil(7 / 3) = 3 visits
    seen = {0: [], 1: [], 3: []}
    for _ in range(sampler.episodes_to_cover):
        batch = sampler.sample()
        ids = item_ids(batch.support_x)[0].tolist()
        assert len(set(ids)) == 3  # distinct examples within a batch
        seen[int(batch.task_id[0])].extend(ids)
    for group, ids in seen.items():
        assert set(ids) == set(data.group_indices()[group].tolist())


def test_eval_sampler_batch_size_one_and_resume():
    data = toy_groups(sizes=(2, 1, 3))
    sampler = GroupEvalSampler(data, batch_size=1, seed=2)
    first = [sampler.sample() for _ in range(4)]
    assert all(b.support_x.shape == (1, 1, 1, 4, 4) for b in first)
    state = sampler.state_dict()
    expected = [item_ids(sampler.sample().support_x).item() for _ in range(5)]
    resumed = GroupEvalSampler(data, batch_size=1, seed=2)
    resumed.load_state_dict(state)
    assert [item_ids(resumed.sample().support_x).item() for _ in range(5)] == expected
    again = GroupEvalSampler(data, batch_size=1, seed=2)
    assert [item_ids(b.support_x).item() for b in first] == [
        item_ids(again.sample().support_x).item() for _ in range(4)]


def test_eval_sampler_errors():
    with pytest.raises(ValueError, match="batch_size=2 but group 'g3' of split 'train' has 1"):
        GroupEvalSampler(toy_groups(), batch_size=2)
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1"):
        GroupEvalSampler(toy_groups(), batch_size=0)


class _MeanLabel(torch.nn.Module):
    """Stands in for a learner: reports each task's group and its mean query label."""

    metric_name = "group"

    def task_losses(self, batch, training):
        return batch.query_y.float().mean(1), {"group": batch.task_id.float()}


def test_evaluator_gives_every_group_the_same_number_of_batches(digits_test):
    sampler = GroupEvalSampler(digits_test, batch_size=50, groups_per_batch=4, seed=0)
    values = Evaluator(episodes=14 * 3).per_task(_MeanLabel(), sampler)
    groups = values["group"].long()
    assert torch.bincount(groups, minlength=14).tolist() == [3] * 14


# --------------------------------------------------------------------------- rotations


def test_rotation_by_0_is_identity_and_by_90_is_rot90():
    images = torch.randint(0, 256, (5, 2, 9, 9), dtype=torch.uint8)
    for interpolation in ("nearest", "bilinear"):
        assert torch.equal(rotate_images(images, 0, interpolation), images)
        assert torch.equal(rotate_images(images, 90, interpolation),
                           torch.rot90(images, 1, (-2, -1)))
        assert torch.equal(rotate_images(images, 180, interpolation),
                           torch.rot90(images, 2, (-2, -1)))
    floats = torch.rand(3, 1, 8, 8, dtype=torch.float64)
    assert torch.allclose(rotate_images(floats, 90), torch.rot90(floats, 1, (-2, -1)))
    with pytest.raises(ValueError, match="interpolation must be one of"):
        rotate_images(images, 10, "cubic")


def test_rotation_matches_the_arm_reference_rotation(digits_test):
    """ARM rotates with scipy.ndimage.rotate(order=0, reshape=False); so do we, exactly."""
    from scipy import ndimage

    upright = digits_test.images[digits_test.groups == 0][:40]
    for group in (1, 5, 13):
        angle = ROTATIONS[group]
        ours = digits_test.images[digits_test.groups == group][:40, 0].numpy()
        reference = np.stack([ndimage.rotate(img[0].numpy(), angle, reshape=False, order=0)
                              for img in upright])
        assert np.array_equal(ours, reference)


def test_rotated_digits_training_groups_follow_arm(digits_train):
    assert digits_train.group_counts().tolist() == arm_group_sizes(1213)
    assert arm_group_sizes(1213) == [169] * 3 + [48] * 3 + [14] * 3 + [7] * 3 + [2] * 2
    assert arm_group_sizes(54000) == [7560] * 3 + [2160] * 3 + [648] * 3 + [324] * 3 + [108] * 2
    assert digits_train.group_names == [f"rot{a}" for a in range(0, 140, 10)]
    assert [info["angle"] for info in digits_train.group_info] == list(ROTATIONS)
    val = RotatedDigits("val")
    assert val.group_counts().tolist() == [135] * 14
    train_pool = set(digits_train.source_index.tolist())
    assert not train_pool & set(val.source_index.tolist())
    again, other = RotatedDigits("train", seed=0), RotatedDigits("train", seed=1)
    assert torch.equal(again.images, digits_train.images)
    assert not torch.equal(other.source_index, digits_train.source_index)


def test_rotated_digits_test_holds_every_image_at_every_angle(digits_test):
    assert digits_test.group_counts().tolist() == [449] * 14
    upright = digits_test.images[digits_test.groups == 0]
    quarter = digits_test.images[digits_test.groups == ROTATIONS.index(90)]
    assert torch.equal(quarter, torch.rot90(upright, 1, (-2, -1)))
    assert torch.equal(digits_test.labels[digits_test.groups == 3],
                       digits_test.labels[digits_test.groups == 0])
    assert upright.shape[1:] == (1, 28, 28)
    assert upright[:, :, :4].max() == 0 and upright[:, :, -4:].max() == 0  # 20-in-28 canvas



def test_rotated_mnist_reads_mnist_files(tmp_path):
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 200), ("t10k", 30)):
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", rng.integers(0, 10, n))
    train = RotatedMNIST("train", root=str(tmp_path))
    assert train.group_counts().tolist() == arm_group_sizes(180)
    test = RotatedMNIST("test", root=str(tmp_path))
    assert test.group_counts().tolist() == [30] * 14
    assert RotatedMNIST("val", root=str(tmp_path)).group_counts().tolist() == [20] * 14
    with pytest.raises(ValueError, match="unknown rotated split 'all'"):
        RotatedMNIST("all", root=str(tmp_path))


def test_rotated_digits_errors():
    with pytest.raises(ValueError, match="embedded and take no root"):
        RotatedDigits("train", root="/tmp")
    with pytest.raises(ValueError, match="unknown rotated split 'trainval'"):
        RotatedDigits("trainval")


# ----------------------------------------------------------------------------- FEMNIST


def _user(n, label_offset=0, value=0.0):
    return {"x": [[value] * 784 for _ in range(n)], "y": [(label_offset + i) % 62
                                                          for i in range(n)]}


def _write_leaf(folder, users, name="part.json", **overrides):
    folder.mkdir(parents=True, exist_ok=True)
    content = {"users": list(users), "num_samples": [len(u["y"]) for u in users.values()],
               "user_data": users}
    content.update(overrides)
    (folder / name).write_text(json.dumps(content))
    return folder / name


def test_femnist_published_split_reads_users_as_groups(tmp_path):
    _write_leaf(tmp_path / "train", {"f2": _user(3, 5, 1.0), "f1": _user(2, 60)}, "a.json")
    _write_leaf(tmp_path / "train", {"f0": _user(1)}, "b.json")
    _write_leaf(tmp_path / "test", {"f9": _user(4)})
    with pytest.raises(MissingDatasetError, match="no FEMNIST LEAF files"):
        FEMNIST("train", root=tmp_path)  # LEAF's train/test alone divide samples, not users
    _write_leaf(tmp_path / "val", {"f5": _user(2)})
    data = FEMNIST("train", root=str(tmp_path))
    assert data.user_split == "published"
    assert data.group_names == ["f0", "f1", "f2"] and data.group_counts().tolist() == [1, 2, 3]
    assert data.num_classes == 62 and CLASS_NAMES[10] == "A" and CLASS_NAMES[36] == "a"
    assert data.image_shape == (1, 28, 28)
    f2 = data.groups == 2
    assert data.labels[f2].tolist() == [5, 6, 7] and data.images[f2].max() == 0  # 1 - white
    assert data.images[data.groups == 0].min() == 255  # background 0 -> ink 255
    assert data.labels[data.groups == 1].tolist() == [60, 61]
    assert FEMNIST("test", root=tmp_path).group_names == ["f9"]
    assert FEMNIST("val", root=tmp_path).group_names == ["f5"]


def test_femnist_all_data_is_split_by_users(tmp_path):
    users = {f"u{i:02d}": _user(1 + i % 3, i) for i in range(20)}
    _write_leaf(tmp_path / "all_data", dict(list(users.items())[:12]), "p1.json")
    _write_leaf(tmp_path / "all_data", dict(list(users.items())[12:]), "p2.json")
    splits = {s: FEMNIST(s, root=tmp_path, seed=3) for s in ("train", "val", "test")}
    names = {s: set(d.group_names) for s, d in splits.items()}
    assert [len(names[s]) for s in ("train", "val", "test")] == [16, 2, 2]
    assert names["train"] | names["val"] | names["test"] == set(users)
    assert not names["train"] & names["val"] and not names["val"] & names["test"]
    assert splits["train"].user_split == "seeded"
    assert set(FEMNIST("train", root=tmp_path, seed=4).group_names) != names["train"]


@pytest.mark.parametrize("mutate, message", [
    (lambda c: c.pop("user_data"), "has no 'user_data' object"),
    (lambda c: c.update(num_samples=[9]), "num_samples says 9 but x holds 2"),
    (lambda c: c["user_data"]["u"].update(x=[[0.0] * 783] * 2), "flattened 28x28"),
    (lambda c: c["user_data"]["u"].update(y=[0, 62]), "labels must be integers in [0, 62)"),
    (lambda c: c["user_data"]["u"].update(y=[0]), "has 2 images but 1 labels"),
    (lambda c: c["user_data"]["u"].update(x=[[1.5] * 784] * 2), "pixel values must lie"),
])
def test_femnist_malformed_files_name_the_file(tmp_path, mutate, message):
    content = {"users": ["u"], "num_samples": [2], "user_data": {"u": _user(2)}}
    mutate(content)
    folder = tmp_path / "all_data"
    folder.mkdir()
    (folder / "bad.json").write_text(json.dumps(content))
    with pytest.raises(CorruptDatasetError) as error:
        FEMNIST("train", root=tmp_path)
    assert message in str(error.value) and "bad.json" in str(error.value)


def test_femnist_truncated_json_and_duplicate_users(tmp_path):
    path = _write_leaf(tmp_path / "all_data", {"u": _user(1)})
    path.write_text(path.read_text()[:-20])
    with pytest.raises(CorruptDatasetError, match="is not readable JSON"):
        FEMNIST("train", root=tmp_path)
    _write_leaf(tmp_path / "all_data", {"u": _user(1)}, "part.json")
    _write_leaf(tmp_path / "all_data", {"u": _user(2)}, "second.json")
    with pytest.raises(CorruptDatasetError, match="user 'u' also appears in"):
        FEMNIST("train", root=tmp_path)
