"""Rainbow digits: the online meta-learning benchmark of Finn, Rajeswaran, Kakade & Levine
(2019, "Online Meta-Learning", sec. 6, "Rainbow MNIST").

Each task is a 10-way digit classification under one transform: a background colour
(7: the rainbow), a scale (full or half size) and a rotation (0, 90, 180, 270 degrees),
7 x 2 x 4 = 56 tasks. The transform of a grey digit ``d`` in ``[0, 1]`` (``[1, S, S]``):

1. scale ``1``: ``d``; scale ``1/2``: 2x2 average pooling, pasted at the centre of a black
   ``S x S`` canvas (offset ``S // 4``);
2. rotation by ``k`` quarter turns counter-clockwise (``torch.rot90``, exact);
3. colour: a white digit on the background colour ``c``: ``out[ch] = c[ch] (1 - d) + d``.

The digits are MNIST when a ``root`` with the MNIST files is given (its official *test*
set of 10,000 images only, which is what /work/shared/data/mnist holds; it is divided once
with a fixed seed into a training pool and a held-out pool, ``held_out_fraction``), else
scikit-learn's embedded 8x8 digits (1,797 images, divided the same way). Each task draws
its training examples from the training pool and its held-out examples from the held-out
pool (without replacement within a task; tasks may share base digits, under different
transforms).
"""

from __future__ import annotations

import itertools
import os

import torch
import torch.nn.functional as F
from torch import Tensor

from metalab.datasets.digits import Digits
from metalab.datasets.mnist import MNIST
from metalab.tasks.stream import StreamTask
from metalab.validation import check_positive_int

COLOURS = {
    "red": (1.0, 0.0, 0.0), "orange": (1.0, 0.5, 0.0), "yellow": (1.0, 1.0, 0.0),
    "green": (0.0, 1.0, 0.0), "blue": (0.0, 0.0, 1.0), "indigo": (0.29, 0.0, 0.51),
    "violet": (0.56, 0.0, 1.0),
}
SCALES = (1.0, 0.5)
QUARTER_TURNS = (0, 1, 2, 3)
DIGIT_SOURCES = (None, "mnist", "embedded")
SPLIT_SEED = 0  # the fixed division of the base digits into training and held-out pools


def rainbow_transform(digits: Tensor, colour: tuple[float, float, float], scale: float,
                      quarter_turns: int) -> Tensor:
    """``[N, 1, S, S]`` grey digits in ``[0, 1]`` -> ``[N, 3, S, S]`` (module doc, 1-3)."""
    if digits.dim() != 4 or digits.shape[1] != 1:
        raise ValueError(f"digits must have shape [N, 1, S, S], got {tuple(digits.shape)}")
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale}")
    if scale == 0.5:
        side = digits.shape[-1]
        if side % 2:
            raise ValueError(f"scale 0.5 needs an even image side, got {side}")
        small = F.avg_pool2d(digits, 2)
        canvas = torch.zeros_like(digits)
        start = side // 4
        canvas[..., start: start + side // 2, start: start + side // 2] = small
        digits = canvas
    digits = torch.rot90(digits, int(quarter_turns), dims=(-2, -1))
    background = torch.tensor(colour, dtype=digits.dtype).view(1, 3, 1, 1)
    return background * (1 - digits) + digits


def rainbow_transforms() -> list[dict]:
    """The 56 transforms, colour-major: ``{"colour", "scale", "quarter_turns"}``."""
    return [{"colour": c, "scale": s, "quarter_turns": k}
            for c, s, k in itertools.product(COLOURS, SCALES, QUARTER_TURNS)]


def base_digits(root: str | os.PathLike[str] | None = None, image_size: int = 14,
                held_out_fraction: float = 0.2, digits: str | None = None
                ) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """``((train_x, train_y), (held_x, held_y))``: grey digits ``[N, 1, S, S]`` in
    ``[0, 1]``, divided with the fixed seed ``SPLIT_SEED``. ``digits``: ``"mnist"`` (MNIST's
    test set from ``root``, or metalab's default data folder for "mnist" without one: an
    error naming the missing file when it is not there), ``"embedded"`` (scikit-learn's
    digits), or ``None``: MNIST when ``root`` is given, else the embedded digits."""
    check_positive_int("image_size", image_size)
    if not 0 < held_out_fraction < 1:
        raise ValueError(f"held_out_fraction must be in (0, 1), got {held_out_fraction}")
    if digits not in DIGIT_SOURCES:
        raise ValueError(f"digits must be one of {DIGIT_SOURCES}, got {digits!r}")
    if digits == "embedded" and root is not None:
        raise ValueError(f"digits 'embedded' reads no files; got root {str(root)!r} "
                         f"(set digits: mnist, or drop root)")
    use_mnist = digits == "mnist" or (digits is None and root is not None)
    dataset = MNIST("test", root=root) if use_mnist else Digits("all")
    images = dataset.images.to(torch.float32) / 255.0
    if images.shape[-1] != image_size:
        images = F.interpolate(images, size=image_size, mode="bilinear", align_corners=False)
    images = images.clamp(0, 1)
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(SPLIT_SEED))
    cut = int(len(images) * (1 - held_out_fraction))
    labels = torch.as_tensor(dataset.labels, dtype=torch.long)
    train, held = order[:cut], order[cut:]
    return (images[train], labels[train]), (images[held], labels[held])


def rainbow_tasks(root: str | os.PathLike[str] | None = None, *, tasks: int = 56,
                  train_per_task: int = 200, test_per_task: int = 100, image_size: int = 14,
                  seed: int = 0, shuffle_order: bool = False,
                  digits: str | None = None) -> list[StreamTask]:
    """The first ``tasks`` Rainbow tasks (colour-major order, or shuffled by ``seed`` with
    ``shuffle_order``), each ``train_per_task`` training and ``test_per_task`` held-out
    examples drawn from the pools of `base_digits` (``root``, ``digits``: which digits) with
    a generator seeded by ``seed``."""
    transforms = rainbow_transforms()
    if not 1 <= tasks <= len(transforms):
        raise ValueError(f"tasks must be in [1, {len(transforms)}], got {tasks}")
    (train_x, train_y), (held_x, held_y) = base_digits(root, image_size, digits=digits)
    for name, wanted, pool in (("train_per_task", train_per_task, train_x),
                               ("test_per_task", test_per_task, held_x)):
        if not 1 <= check_positive_int(name, wanted) <= len(pool):
            raise ValueError(f"{name} must be at most the pool size {len(pool)}, got {wanted}")
    generator = torch.Generator().manual_seed(int(seed))
    if shuffle_order:
        transforms = [transforms[i] for i in torch.randperm(len(transforms),
                                                            generator=generator).tolist()]
    stream = []
    for transform in transforms[:tasks]:
        colour = COLOURS[transform["colour"]]
        picks = torch.randperm(len(train_x), generator=generator)[:train_per_task]
        held = torch.randperm(len(held_x), generator=generator)[:test_per_task]
        stream.append(StreamTask(
            rainbow_transform(train_x[picks], colour, transform["scale"],
                              transform["quarter_turns"]), train_y[picks],
            rainbow_transform(held_x[held], colour, transform["scale"],
                              transform["quarter_turns"]), held_y[held]))
    return stream
