"""The within-alphabet protocol: every class of an episode from one alphabet."""

from __future__ import annotations

import json

import pytest
import torch

from metalab.cli.main import main
from metalab.datasets import Glyphs
from metalab.tasks import EpisodeSampler


class Alphabets(torch.utils.data.Dataset):
    """Images whose single pixel is the class id; ``class_info`` gives each an alphabet."""

    def __init__(self, sizes: dict[str, int], per_class: int = 3) -> None:
        self.class_info, classes = [], 0
        for alphabet, size in sizes.items():
            self.class_info += [{"alphabet": alphabet} for _ in range(size)]
            classes += size
        # interleave the alphabets' classes so that a by-position bug mixes them
        order = torch.randperm(classes, generator=torch.Generator().manual_seed(3))
        self.class_info = [self.class_info[i] for i in order.tolist()]
        self.labels = torch.arange(classes).repeat_interleave(per_class)
        self.images = self.labels.double().view(-1, 1, 1, 1)
        self.split = "test"

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.images[i], int(self.labels[i])


def alphabets_of_episode(dataset, x: torch.Tensor) -> set[str]:
    """The alphabets of the images ``x [N, 1, 1, 1]``, read from the dataset's metadata."""
    return {dataset.class_info[int(v)]["alphabet"] for v in x.flatten().tolist()}


def test_every_class_of_an_episode_comes_from_one_alphabet():
    data = Alphabets({"A": 6, "B": 5, "C": 8})
    sampler = EpisodeSampler(data, ways=4, shots=1, queries=2, tasks_per_batch=50, seed=0,
                             within="alphabet")
    batch = sampler.sample()
    seen = set()
    for t in range(len(batch)):
        alphabets = alphabets_of_episode(data, torch.cat([batch.support_x[t], batch.query_x[t]]))
        assert len(alphabets) == 1
        (alphabet,) = alphabets
        assert sampler.task_names[int(batch.task_id[t])] == alphabet
        assert len(set(batch.support_x[t].flatten().tolist())) == 4  # 4 distinct classes
        seen.add(alphabet)
    assert seen == {"A", "B", "C"}
    # the random-class protocol mixes alphabets (the option is not ignored)
    mixed = EpisodeSampler(data, 4, 1, 2, tasks_per_batch=50, seed=0).sample()
    assert any(len(alphabets_of_episode(data, mixed.support_x[t])) > 1 for t in range(50))


def test_within_alphabet_on_glyphs_checked_against_its_class_info():
    data = Glyphs("test")
    label_of = {bytes(image.numpy()): int(label)
                for image, label in zip(data.images, data.labels, strict=True)}
    batch = EpisodeSampler(data, ways=20, shots=1, queries=1, tasks_per_batch=10, seed=1,
                           within="alphabet").sample()
    for t in range(len(batch)):
        images = torch.cat([batch.support_x[t], batch.query_x[t]])
        uint8 = (images * 255).round().to(torch.uint8)
        labels = {label_of[bytes(image.numpy())] for image in uint8}
        assert len(labels) == 20
        assert len({data.class_info[label]["alphabet"] for label in labels}) == 1


def test_an_alphabet_with_fewer_characters_than_ways_is_a_clear_error():
    data = Alphabets({"Big": 6, "Tagalog": 3})
    with pytest.raises(ValueError, match=r"alphabet 'Tagalog' of split 'test' has 3 classes "
                                         r"but ways=4"):
        EpisodeSampler(data, ways=4, shots=1, queries=1, within="alphabet")
    sampler = EpisodeSampler(data, ways=4, shots=1, queries=1, tasks_per_batch=20,
                             within="alphabet", skip_small_groups=True, seed=0)
    assert sampler.task_names == ["Big"]
    assert alphabets_of_episode(data, sampler.sample().support_x) == {"Big"}
    with pytest.raises(ValueError, match="no alphabet of split 'test' has ways=7 classes; "
                                         "the largest has 6"):
        EpisodeSampler(data, ways=7, shots=1, queries=1, within="alphabet",
                       skip_small_groups=True)
    with pytest.raises(ValueError, match="needs per-class metadata"):
        _no_info_sampler()


def _no_info_sampler():
    data = Alphabets({"A": 4})
    data.class_info = None
    return EpisodeSampler(data, ways=2, shots=1, queries=1, within="alphabet")


def test_within_alphabet_episodes_are_reproducible_from_a_seed_and_resume():
    data = Alphabets({"A": 6, "B": 5, "C": 8})

    def sampler(seed):
        return EpisodeSampler(data, 4, 1, 2, tasks_per_batch=5, seed=seed, within="alphabet")

    a, b = sampler(7), sampler(7)
    for _ in range(3):
        first, second = a.sample(), b.sample()
        assert torch.equal(first.support_x, second.support_x)
        assert torch.equal(first.task_id, second.task_id)
    assert not torch.equal(sampler(8).sample().query_x, sampler(7).sample().query_x)
    state = a.state_dict()
    expected = a.sample()
    resumed = sampler(0)
    resumed.load_state_dict(state)
    assert torch.equal(resumed.sample().query_x, expected.query_x)


def test_metalab_eval_within_alphabet(tmp_path):
    run = tmp_path / "protonet"
    assert main(["train", "protonet-glyphs-5w1s", "train.steps=1", "train.meta_batch=1",
                 "model.hidden=8", "data.queries=1", "train.val_every=0",
                 "train.progress=false", "--out", str(run)]) == 0
    assert main(["eval", str(run), "--episodes", "4", "--within", "alphabet"]) == 0
    result = json.loads((run / "eval-within-alphabet.json").read_text())
    assert result["within"] == "alphabet" and result["episodes"] == 4
    assert set(result["per_group"]) <= {str(i) for i in range(len(Glyphs("test").alphabets))}
