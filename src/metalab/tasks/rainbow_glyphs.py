"""Rainbow glyphs: an online meta-learning stream of character tasks, the Glyphs analogue of
Rainbow MNIST (Finn, Rajeswaran, Kakade & Levine 2019, sec. 6).

Task ``t`` is a ``ways``-way classification of ``ways`` characters of one Glyphs alphabet,
seen through one Rainbow transform (`metalab.tasks.rainbow.rainbow_transform`: background
colour, full or half scale, quarter turns). Drawn with a generator seeded by ``seed``:

1. the alphabets, in a random order (task ``t`` takes alphabet ``t``; at most one task per
   alphabet, so ``tasks`` is at most the number of alphabets);
2. per task, ``ways`` of its alphabet's characters (labels ``0 .. ways-1`` in the drawn
   order, so a label means a different character in every task) and one of the 56
   transforms;
3. per character, its drawings split at random into ``train_per_class`` training and
   ``test_per_class`` held-out ones.

Unlike Rainbow digits, whose label ``d`` is the digit ``d`` in every task, nothing here
carries over from one task's labels to the next: one model trained on every task at once
(TOE) cannot work, and what transfers is how to learn a new alphabet fast.
The glyphs are rendered at 28x28 and average-pooled to ``image_size`` (14 by default).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from metalab.datasets.glyphs import Glyphs
from metalab.tasks.rainbow import COLOURS, rainbow_transform, rainbow_transforms
from metalab.tasks.stream import StreamTask
from metalab.validation import check_positive_int


def _images(dataset: Glyphs, image_size: int) -> Tensor:
    images = dataset.images.to(torch.float32) / 255.0
    if images.shape[-1] != image_size:
        images = F.adaptive_avg_pool2d(images, image_size)
    return images.clamp(0, 1)


def _character_indices(dataset: Glyphs) -> dict[str, list[list[int]]]:
    """Per alphabet, per character (class order), the indices of its drawings."""
    by_class: dict[int, list[int]] = {}
    for index, label in enumerate(dataset.labels.tolist()):
        by_class.setdefault(label, []).append(index)
    alphabets: dict[str, list[list[int]]] = {}
    for label, info in enumerate(dataset.class_info):
        alphabets.setdefault(info["alphabet"], []).append(by_class.get(label, []))
    return alphabets


def rainbow_glyph_tasks(*, tasks: int = 12, ways: int = 10, train_per_class: int = 15,
                        test_per_class: int = 5, image_size: int = 14, seed: int = 0,
                        dataset: Glyphs | None = None) -> list[StreamTask]:
    """The stream of the module doc: ``tasks`` tasks of ``ways`` classes, each with
    ``ways * train_per_class`` training and ``ways * test_per_class`` held-out examples
    ``[N, 3, image_size, image_size]``. ``dataset``: the Glyphs to draw from (default
    ``Glyphs("all")``)."""
    for name, value in (("tasks", tasks), ("ways", ways), ("train_per_class", train_per_class),
                        ("test_per_class", test_per_class), ("image_size", image_size)):
        check_positive_int(name, value)
    dataset = Glyphs("all") if dataset is None else dataset
    alphabets = {name: [c for c in chars if len(c) >= train_per_class + test_per_class]
                 for name, chars in _character_indices(dataset).items()}
    usable = sorted(name for name, chars in alphabets.items() if len(chars) >= ways)
    if tasks > len(usable):
        raise ValueError(f"tasks must be at most {len(usable)} (alphabets with {ways} "
                         f"characters of {train_per_class + test_per_class} drawings), "
                         f"got {tasks}")
    images = _images(dataset, image_size)
    generator = torch.Generator().manual_seed(int(seed))
    order = [usable[i] for i in torch.randperm(len(usable), generator=generator).tolist()]
    transforms = rainbow_transforms()
    stream = []
    for alphabet in order[:tasks]:
        characters = alphabets[alphabet]
        chosen = torch.randperm(len(characters), generator=generator)[:ways].tolist()
        transform = transforms[int(torch.randint(len(transforms), (1,), generator=generator))]
        train, held = [], []
        for label, character in enumerate(chosen):
            drawings = torch.tensor(characters[character])
            drawings = drawings[torch.randperm(len(drawings), generator=generator)]
            train += [(int(i), label) for i in drawings[:train_per_class]]
            held += [(int(i), label) for i in
                     drawings[train_per_class: train_per_class + test_per_class]]
        stream.append(StreamTask(*_transformed(images, train, transform),
                                 *_transformed(images, held, transform)))
    return stream


def _transformed(images: Tensor, picks: list[tuple[int, int]], transform: dict
                 ) -> tuple[Tensor, Tensor]:
    indices = torch.tensor([i for i, _ in picks])
    labels = torch.tensor([label for _, label in picks])
    x = rainbow_transform(images[indices], COLOURS[transform["colour"]], transform["scale"],
                          transform["quarter_turns"])
    return x, labels
