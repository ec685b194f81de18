"""Augmentation of training tasks: labels kept, training only, seeded, resumable."""

from __future__ import annotations

import math

import pytest
import torch

from helpers import ToyImages
from metalab.tasks import AugmentedTasks, EpisodeSampler, ImageAugmentation, LabelledBatches
from metalab.tasks.image_augmentation import (
    color_jitter,
    parse_augmentation,
    random_affine,
    random_crop,
    random_flip,
)
from metalab.train.config import resolve
from metalab.train.sources import build_task_source

EVERYTHING = ImageAugmentation(rotate=10, scale=0.1, translate=0.1, crop_padding=2, flip=True,
                               color_jitter=0.3)


def _sampler(seed=0, tasks=3):
    return EpisodeSampler(ToyImages(classes=8, per_class=6, size=12), ways=4, shots=2,
                          queries=3, tasks_per_batch=tasks, seed=seed)


def test_labels_never_change_and_images_do():
    plain = _sampler(seed=5).sample()
    augmented = AugmentedTasks(_sampler(seed=5), EVERYTHING).sample()
    assert torch.equal(augmented.support_y, plain.support_y)
    assert torch.equal(augmented.query_y, plain.query_y)
    assert augmented.num_classes == plain.num_classes
    assert augmented.support_x.shape == plain.support_x.shape
    assert not torch.allclose(augmented.support_x, plain.support_x)
    assert not torch.allclose(augmented.query_x, plain.query_x)


def test_augmentation_is_reproducible_under_a_seed_and_resumes_exactly():
    a, b = AugmentedTasks(_sampler(1), EVERYTHING), AugmentedTasks(_sampler(1), EVERYTHING)
    assert torch.equal(a.sample().query_x, b.sample().query_x)
    assert not torch.equal(AugmentedTasks(_sampler(2), EVERYTHING).sample().query_x,
                           AugmentedTasks(_sampler(1), EVERYTHING).sample().query_x)
    state = a.state_dict()
    expected = a.sample()
    resumed = AugmentedTasks(_sampler(99), EVERYTHING)
    resumed.load_state_dict(state)
    got = resumed.sample()
    assert torch.equal(got.support_x, expected.support_x)
    assert torch.equal(got.query_x, expected.query_x)


GLYPHS = {"algorithm": {"name": "protonet"}, "model": {"name": "conv4"},
          "data": {"name": "glyphs", "ways": 3, "shots": 1, "queries": 2,
                   "augment": "characters"},
          "train": {"steps": 1, "meta_batch": 2}, "eval": {"episodes": 1}}


def test_only_training_sources_are_augmented():
    config = resolve(GLYPHS)
    train = build_task_source(config, "train", 2, seed=0)
    assert isinstance(train, AugmentedTasks)
    for split in ("val", "test"):
        source = build_task_source(config, split, 2, seed=0)
        assert not isinstance(source, AugmentedTasks)
        plain = build_task_source(resolve({**GLYPHS, "data": {**GLYPHS["data"],
                                                              "augment": None}}),
                                  split, 2, seed=0)
        assert torch.equal(source.sample().query_x, plain.sample().query_x)


def test_flips_are_refused_for_characters():
    config = resolve({**GLYPHS, "data": {**GLYPHS["data"], "augment": {"flip": True}}})
    with pytest.raises(ValueError, match="holds characters"):
        build_task_source(config, "train", 2, seed=0)
    with pytest.raises(ValueError, match="data.augment must be one of"):
        parse_augmentation("sideways")
    with pytest.raises(ValueError, match=r"augment keys \['flop'\] are unknown"):
        parse_augmentation({"flop": True})
    with pytest.raises(ValueError, match="augment.rotate must be a non-negative number"):
        ImageAugmentation(rotate=-1)


def test_labelled_batches_can_be_augmented_too():
    source = AugmentedTasks(LabelledBatches(ToyImages(classes=5, per_class=4, size=8), 6,
                                            seed=0), parse_augmentation("characters"))
    plain = LabelledBatches(ToyImages(classes=5, per_class=4, size=8), 6, seed=0).sample()
    batch = source.sample()
    assert torch.equal(batch.query_y, plain.query_y)
    assert batch.support_x.shape[1] == 0


# -- each transformation against a hand computation -----------------------------------------
def test_affine_jitter_samples_the_documented_map():
    """``x'(p) = x(A p + t)``, ``A = R(angle) / factor``: re-derived from the same draws."""
    import torch.nn.functional as F

    x = torch.rand(3, 1, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    got = random_affine(x, 20.0, 0.2, 0.1, torch.Generator().manual_seed(9))
    g = torch.Generator().manual_seed(9)
    angle = (-20 + 40 * torch.rand(3, generator=g, dtype=torch.float64)) * math.pi / 180
    factor = 0.8 + 0.4 * torch.rand(3, generator=g, dtype=torch.float64)
    shift = (-0.1 + 0.2 * torch.rand(6, generator=g, dtype=torch.float64)).view(3, 2)
    for i in range(3):
        c, s = math.cos(angle[i]) / factor[i], math.sin(angle[i]) / factor[i]
        theta = torch.tensor([[[c, -s, shift[i, 0]], [s, c, shift[i, 1]]]], dtype=x.dtype)
        grid = F.affine_grid(theta, [1, 1, 6, 6], align_corners=False)
        expected = F.grid_sample(x[i: i + 1], grid, align_corners=False)
        torch.testing.assert_close(got[i: i + 1], expected, rtol=0, atol=1e-12)
    identity = random_affine(x, 0.0, 0.0, 0.0, torch.Generator().manual_seed(0))
    torch.testing.assert_close(identity, x, rtol=0, atol=1e-12)


def test_crop_flip_and_colour_against_hand_computations():
    x = torch.rand(6, 3, 5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(4)
    cropped = random_crop(x, 1, g)
    offsets = torch.randint(3, (6, 2), generator=torch.Generator().manual_seed(4))
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1))
    for i, (top, left) in enumerate(offsets.tolist()):
        assert torch.equal(cropped[i], padded[i, :, top: top + 5, left: left + 5])
    flipped = random_flip(x, torch.Generator().manual_seed(1))
    chosen = torch.rand(6, generator=torch.Generator().manual_seed(1)) < 0.5
    assert 0 < int(chosen.sum()) < 6
    for i in range(6):
        assert torch.equal(flipped[i], x[i].flip(-1) if chosen[i] else x[i])
    # colour jitter of strength 0 is the identity; otherwise values stay in [0, 1]
    assert torch.allclose(color_jitter(x, 0.0, torch.Generator().manual_seed(0)), x)
    jittered = color_jitter(x, 0.5, torch.Generator().manual_seed(0))
    assert jittered.min() >= 0 and jittered.max() <= 1 and not torch.allclose(jittered, x)
