"""Image corruptions (Hendrycks & Dietterich 2019) and corruption groups."""

import colorsys
import functools
import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from metalab.datasets.base import ImageDataset
from metalab.datasets.corrupted import CorruptedDataset, corrupted
from metalab.datasets.corrupted_glyphs import CorruptedGlyphs
from metalab.datasets.corruption_groups import ARM_SPLIT, corruption_groups, group_seed
from metalab.datasets.corruptions import CORRUPTIONS, available_corruptions, corrupt, disk_kernel

RANDOM = {"gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise", "glass_blur",
          "motion_blur", "elastic_transform"}
# Mean squared distance from the clean image grows strictly with severity for these; the
# reference parameters of the others are not ordered by pixel distance (see the module
# docstring and test_reference_severities_that_are_not_monotone below).
MONOTONE = ["gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise", "gaussian_blur",
            "defocus_blur", "zoom_blur", "brightness", "contrast", "jpeg_compression"]


@functools.cache
def _digits():
    from sklearn.datasets import load_digits

    return torch.as_tensor(load_digits().images[:16], dtype=torch.float32).unsqueeze(1) / 16


def digit_images(n=12, size=28):
    """Real strokes: scikit-learn digits, resized."""
    images = _digits()[:n]
    return F.interpolate(images, size=size, mode="bilinear", align_corners=False).clamp(0, 1)


def colour_images(n=8, size=24, seed=0):
    """Smooth random colour images."""
    coarse = torch.rand(n, 3, 4, 4, generator=torch.Generator().manual_seed(seed))
    return F.interpolate(coarse, size=size, mode="bicubic", align_corners=False).clamp(0, 1)


def run(images, name, severity, seed=0):
    return corrupt(images, name, severity, torch.Generator().manual_seed(seed))


def distance(a, b):
    return float((a - b).pow(2).mean())


def test_registry_lists_the_implemented_corruptions():
    assert available_corruptions() == list(CORRUPTIONS)
    assert set(available_corruptions()) == {
        "gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise", "gaussian_blur",
        "glass_blur", "defocus_blur", "motion_blur", "zoom_blur", "brightness", "contrast",
        "saturate", "pixelate", "jpeg_compression", "elastic_transform"}


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_every_corruption_keeps_shape_dtype_and_range(name):
    for images in (digit_images(3, 20), colour_images(2, 20)):
        for severity in (1, 5):
            out = run(images, name, severity)
            assert out.shape == images.shape and out.dtype == images.dtype
            assert out.min() >= 0 and out.max() <= 1
    single = colour_images(1, 16)[0].double()
    out = run(single, name, 3)
    assert out.shape == single.shape and out.dtype == torch.float64


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_corruptions_are_deterministic_for_a_generator_seed(name):
    images = colour_images(3, 16)
    assert torch.equal(run(images, name, 4, seed=1), run(images, name, 4, seed=1))
    if name in RANDOM:
        assert not torch.equal(run(images, name, 4, seed=1), run(images, name, 4, seed=2))


@pytest.mark.parametrize("name", MONOTONE)
def test_severity_increases_the_distortion(name):
    for images in (digit_images(), colour_images()):
        distances = [distance(run(images, name, s), images) for s in range(1, 6)]
        assert all(a < b for a, b in zip(distances, distances[1:], strict=False)), distances
        assert distances[0] > 0


def test_reference_severities_that_are_not_monotone():
    """Measured patterns that follow from the CIFAR-10-C parameters themselves."""
    images = digit_images()
    motion = [distance(run(images, "motion_blur", s), images) for s in range(1, 6)]
    # radius 6 vs 8 at sigma 2: the extra taps weigh exp(-169 / 8) ~ 1e-9
    assert motion[0] < motion[1] < motion[2] < motion[4]
    assert motion[3] == pytest.approx(motion[2], rel=1e-6)
    pixel = [distance(run(images, "pixelate", s), images) for s in range(1, 6)]
    assert pixel[1] < pixel[2] < pixel[3] < pixel[4] and pixel[0] < pixel[4]
    # the affine jitter (.08 .. .03 x side) dominates the smooth displacement, so the
    # elastic distortion shrinks with severity at this image size
    elastic = [distance(run(images, "elastic_transform", s), images) for s in range(1, 6)]
    assert all(a > b for a, b in zip(elastic, elastic[1:], strict=False))
    colour = colour_images()
    saturation = [distance(run(colour, "saturate", s), colour) for s in range(1, 6)]
    assert saturation[2] < saturation[0] < saturation[1]  # factors .3, .1 then 1.5


def test_gaussian_blur_matches_scipy_gaussian_filter():
    from scipy import ndimage

    images = colour_images(2, 17).double()
    for severity, sigma in ((1, 0.4), (5, 1.0)):
        ours = run(images, "gaussian_blur", severity)
        reference = ndimage.gaussian_filter(images.numpy(), sigma=(0, 0, sigma, sigma),
                                            mode="nearest", truncate=4.0)
        assert np.allclose(ours.numpy(), reference, atol=1e-6)


def test_defocus_blur_is_a_disk_correlation_with_mirrored_edges():
    from scipy import ndimage

    kernel = disk_kernel(1.5, 0.1)
    assert kernel.sum().item() == pytest.approx(1.0)
    assert torch.allclose(kernel, kernel.flip(0)) and torch.allclose(kernel, kernel.T)
    centre = kernel.shape[0] // 2
    assert kernel[centre, centre] == kernel.max() and kernel[0, 0] < 1e-20
    images = digit_images(2, 15).double()
    ours = run(images, "defocus_blur", 5)
    reference = ndimage.correlate(images.numpy(), kernel.numpy()[None, None], mode="mirror")
    assert np.allclose(ours.numpy(), reference, atol=1e-6)


@pytest.mark.parametrize("name, change", [
    ("brightness", lambda h, s, v, k: (h, s, min(1.0, v + (.05, .1, .15, .2, .3)[k]))),
    ("saturate", lambda h, s, v, k: (h, min(1.0, max(0.0, s * (.3, .1, 1.5, 2, 2.5)[k]
                                                     + (0, 0, 0, .1, .2)[k])), v)),
])
def test_hsv_corruptions_match_a_per_pixel_hsv_round_trip(name, change):
    images = colour_images(2, 6).double()
    images[0, :, 0, 0] = 0.0  # black
    images[0, :, 0, 1] = 0.6  # grey: hue 0 by convention
    for severity in range(1, 6):
        ours = run(images, name, severity)
        pixels = images.permute(0, 2, 3, 1).reshape(-1, 3).tolist()
        expected = [colorsys.hsv_to_rgb(*change(*colorsys.rgb_to_hsv(*p), severity - 1))
                    for p in pixels]
        expected = torch.tensor(expected, dtype=torch.float64).reshape(2, 6, 6, 3)
        assert torch.allclose(ours, expected.permute(0, 3, 1, 2), atol=1e-6)  # float32


def test_single_channel_photometric_corruptions():
    images = digit_images(4, 12)
    assert torch.equal(run(images, "saturate", 5), images)
    assert torch.allclose(run(images, "brightness", 2), (images + 0.1).clamp(0, 1))
    mean = images.mean(dim=(2, 3), keepdim=True)
    assert torch.allclose(run(images, "contrast", 5), (images - mean) * 0.15 + mean, atol=1e-6)


def test_noise_statistics():
    grey = torch.full((1, 1, 200, 200), 0.5)
    assert (run(grey, "gaussian_noise", 3) - grey).std().item() == pytest.approx(0.08, rel=0.03)
    assert (run(grey, "speckle_noise", 5) - grey).std().item() == pytest.approx(0.1, rel=0.03)
    shot = run(grey, "shot_noise", 5)
    assert shot.mean().item() == pytest.approx(0.5, abs=0.002)
    assert shot.var().item() == pytest.approx(0.5 / 50, rel=0.05)
    impulse = run(grey, "impulse_noise", 5)
    changed = impulse != grey
    assert changed.float().mean().item() == pytest.approx(0.07, abs=0.005)
    assert (impulse[changed] == 1).float().mean().item() == pytest.approx(0.5, abs=0.03)


def test_jpeg_compression_is_pillow_jpeg():
    images = colour_images(1, 16)
    data = (images[0] * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    buffer = io.BytesIO()
    Image.fromarray(data, mode="RGB").save(buffer, format="JPEG", quality=40)
    expected = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))
    ours = (run(images, "jpeg_compression", 5)[0] * 255).round().permute(1, 2, 0).numpy()
    assert np.array_equal(ours.astype(np.uint8), expected)


def test_geometric_corruptions_fix_what_they_must():
    flat = torch.full((2, 3, 15, 15), 0.4)
    for name in ("zoom_blur", "pixelate", "elastic_transform", "motion_blur", "defocus_blur"):
        assert torch.allclose(run(flat, name, 5), flat, atol=1e-6), name
    images = digit_images(3, 15)
    centre = run(images, "zoom_blur", 5)[..., 7, 7]
    assert torch.allclose(centre, images[..., 7, 7], atol=1e-6)  # zooms about the centre
    dot = torch.zeros(4, 1, 41, 41)
    dot[:, :, 20, 20] = 1.0
    streak = run(dot, "motion_blur", 5)
    assert torch.allclose(streak.sum(dim=(1, 2, 3)), torch.ones(4), atol=1e-5)
    assert (streak > 1e-3).sum(dim=(1, 2, 3)).min() >= 5  # spread along a line


def test_glass_blur_at_severity_1_only_swaps_quantised_pixels():
    images = digit_images(3, 16)
    out = run(images, "glass_blur", 1)  # sigma .05: the blurs keep every value
    quantised = (images * 255).floor() / 255
    assert not torch.equal(out, quantised)
    assert torch.allclose(out.flatten(1).sort(1).values, quantised.flatten(1).sort(1).values,
                          atol=1e-6)


@pytest.mark.parametrize("call, error, message", [
    (lambda x: corrupt(x, "snow", 1), ValueError, "unknown corruption 'snow'"),
    (lambda x: corrupt(x, "contrast", 0), ValueError, "severity must be an integer in 1..5"),
    (lambda x: corrupt(x, "contrast", 6), ValueError, "severity must be an integer in 1..5"),
    (lambda x: corrupt(x, "contrast", True), ValueError, "severity must be an integer in 1..5"),
    (lambda x: corrupt((x * 255).byte(), "contrast", 1), TypeError, "must be a float tensor"),
    (lambda x: corrupt(x * 2, "contrast", 1), ValueError, "must lie in [0, 1]"),
    (lambda x: corrupt(x[0, 0], "contrast", 1), ValueError, "[C, H, W] or [N, C, H, W]"),
])
def test_corruption_errors(call, error, message):
    with pytest.raises(error) as raised:
        call(colour_images(1, 8))
    assert message in str(raised.value)


# ------------------------------------------------------------------------------ groups


def test_arm_corruption_split_is_disjoint_and_counted():
    groups = {s: corruption_groups(s) for s in ("train", "val", "test")}
    assert [len(groups[s]) for s in ("train", "val", "test")] == [43, 16, 16]
    assert not set(groups["train"]) & set(groups["val"])
    assert not set(groups["train"]) & set(groups["test"])
    assert not set(groups["val"]) & set(groups["test"])
    names = {s: {name for name, _ in groups[s]} for s in groups}
    assert names["train"] & names["test"] == {"jpeg_compression"}
    assert ("jpeg_compression", 4) in groups["test"] and ("jpeg_compression", 5) in groups["val"]
    assert {"impulse_noise", "motion_blur", "elastic_transform"} <= names["test"]
    assert len(corruption_groups("val", channels=1)) == 11
    assert all(n in CORRUPTIONS for names_, extra in ARM_SPLIT.values() for n in names_)
    with pytest.raises(ValueError, match="unknown corruption split 'trainval'"):
        corruption_groups("trainval")


def small_dataset(n=10, size=12):
    images = (colour_images(n, size, seed=4) * 255).round().to(torch.uint8)
    return ImageDataset(images, torch.arange(n) % 3, ["a", "b", "c"], "test")


def test_corrupted_dataset_has_one_group_per_corruption_and_severity():
    base = small_dataset()
    data = corrupted(base, ["gaussian_noise", ("jpeg_compression", 4)], severities=(1, 3),
                     seed=5)
    assert data.group_names == ["gaussian_noise-1", "gaussian_noise-3", "jpeg_compression-4"]
    assert data.group_info[2] == {"corruption": "jpeg_compression", "severity": 4}
    assert data.group_counts().tolist() == [10, 10, 10] and data.split == "test"
    assert torch.equal(data.labels[data.groups == 1], base.labels)
    clean = base.images.float() / 255
    generator = torch.Generator().manual_seed(group_seed(5, "gaussian_noise", 3))
    expected = (corrupt(clean, "gaussian_noise", 3, generator) * 255).round().to(torch.uint8)
    assert torch.equal(data.images[data.groups == 1], expected)
    alone = corrupted(base, [("gaussian_noise", 3)], seed=5)  # same group, built alone
    assert torch.equal(alone.images, expected)
    assert not torch.equal(corrupted(base, [("gaussian_noise", 3)], seed=6).images, expected)


def test_corrupted_dataset_subsets_images_per_group():
    base = small_dataset(n=20)
    data = CorruptedDataset(base, ["contrast"], severities=(2, 5), images_per_group=6, seed=1)
    assert data.group_counts().tolist() == [6, 6]
    again = CorruptedDataset(base, ["contrast"], severities=(2, 5), images_per_group=6, seed=1)
    assert torch.equal(again.images, data.images) and torch.equal(again.labels, data.labels)


@pytest.mark.parametrize("kwargs, error, message", [
    ({"corruptions": ["fog"]}, ValueError, "unknown corruption 'fog'"),
    ({"corruptions": "contrast"}, ValueError, "non-empty list of names"),
    ({"corruptions": ["contrast", ("contrast", 2)]}, ValueError, "must be distinct"),
    ({"corruptions": [("contrast", 7)]}, ValueError, "severity must be an integer in 1..5"),
    ({"corruptions": ["contrast"], "images_per_group": 11}, ValueError, "must be in [1, 10]"),
])
def test_corrupted_dataset_errors(kwargs, error, message):
    with pytest.raises(error) as raised:
        CorruptedDataset(small_dataset(), **kwargs)
    assert message in str(raised.value)


def test_corrupted_dataset_needs_uint8_images():
    from helpers import ToyImages

    with pytest.raises(TypeError, match="ImageDataset with uint8 images"):
        CorruptedDataset(ToyImages(), ["contrast"])


def test_corrupted_glyphs_share_classes_and_split_the_corruptions():
    test = CorruptedGlyphs("test", images_per_group=3)
    val = CorruptedGlyphs("val", images_per_group=3)
    assert test.class_names == val.class_names and test.num_classes == 49
    assert all(name.startswith("Latin/") for name in test.class_names)
    assert test.num_groups == 16 and val.num_groups == 11
    assert not set(test.group_names) & set(val.group_names)
    assert "saturate-1" not in val.group_names  # the identity on single-channel glyphs
    assert test.group_counts().tolist() == [3] * 16 and test.image_shape == (1, 28, 28)
    with pytest.raises(ValueError, match="embedded and take no root"):
        CorruptedGlyphs("train", root="/data")
