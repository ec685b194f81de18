"""Glyphs: an Omniglot-like few-shot dataset rendered from fonts that ship with matplotlib.

Nothing is downloaded. Every character class is one Unicode character of one alphabet (a
script or Unicode block, see :mod:`metalab.datasets.glyph_alphabets`); its images are
"drawn" by the different bundled faces that can render it (DejaVu Sans/Serif/Mono and their
bold/oblique variants, STIX, Computer Modern), each with a random affine distortion and
stroke-width jitter (:mod:`metalab.datasets.glyph_drawers`).

How the classes are chosen, per alphabet, in a fixed order:

1. candidates are the letters, numbers and symbols that at least ``min_faces`` faces map;
2. glyphs that look like an already chosen class are dropped (binary IoU of the first
   face's renderings at the output size above ``DUPLICATE_IOU``: Cyrillic "A" after Latin
   "A", near-identical arrows …), so no two classes are the same picture;
3. up to ``max_chars_per_alphabet`` characters are taken, spread evenly over the block,
   keeping only characters that at least ``min_faces`` faces really draw (no missing glyph,
   empty bitmap or .notdef "tofu" box).

The whole dataset (all splits) is built once per option set, deterministically for
``seed``, and cached atomically under the user cache directory.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .base import ImageDataset, check_no_root, check_split
from .cache import cache_key, cache_path, load_or_build
from .fonts import Face, bundled_faces
from .glyph_alphabets import ALPHABETS, Alphabet
from .glyph_drawers import draw

SPLITS = ("train", "val", "test", "all")
BUILD_VERSION = 2
SUPERSAMPLE = 2
DUPLICATE_IOU = 0.8
CLASSES_PER_CHUNK = 64
MIN_CHARS_PER_ALPHABET = 10


class Glyphs(ImageDataset):
    """Embedded Omniglot-like character dataset (no download).

    Args:
        split: ``"train"``, ``"val"``, ``"test"`` (disjoint alphabets) or ``"all"``.
        root: must be None (embedded).
        image_size: side of the square images (strokes 1 on background 0).
        seed: seed of the drawers' random distortions (the classes do not depend on it).
        images_per_class: drawings per character (20, as in Omniglot).
        max_chars_per_alphabet: at most this many characters of each alphabet.
        min_faces: a character needs at least this many faces that render it.
        alphabets: restrict to these alphabet names (default: all of them).
        cache: store the built dataset under the cache directory and reuse it.

    ``class_info`` holds per class ``alphabet``, ``char``, ``codepoint``, ``unicode_name``
    and ``faces``; ``alphabets`` lists the alphabets of the split.
    """

    splits = SPLITS
    description = "embedded Omniglot-like glyphs rendered from matplotlib's fonts (no download)"
    alphabets: list[str]
    seed: int

    def __init__(
        self,
        split: str = "train",
        root: None = None,
        image_size: int = 28,
        seed: int = 0,
        images_per_class: int = 20,
        max_chars_per_alphabet: int = 55,
        min_faces: int = 2,
        alphabets: Sequence[str] | None = None,
        cache: bool = True,
    ) -> None:
        check_split(split, SPLITS, "Glyphs")
        check_no_root(root, "glyphs")
        chosen = select_alphabets(alphabets)
        options = {
            "image_size": int(image_size),
            "seed": int(seed),
            "images_per_class": int(images_per_class),
            "max_chars_per_alphabet": int(max_chars_per_alphabet),
            "min_faces": int(min_faces),
            "alphabets": [a.name for a in chosen],
        }
        _check_options(options)
        key = cache_key(version=BUILD_VERSION, fonts=_font_fingerprint(), **options)
        content = load_or_build(
            cache_path("glyphs", "all", key),
            lambda: build_glyphs(chosen, **_build_args(options)),
            cache,
        )
        images, labels, info = _take_split(content, split)
        names = [f"{c['alphabet']}/{c['char']}" for c in info]
        super().__init__(images, labels, names, split, info)
        self.alphabets = list(dict.fromkeys(c["alphabet"] for c in info))
        self.seed = int(seed)


def select_alphabets(names: Sequence[str] | None) -> list[Alphabet]:
    """The :data:`ALPHABETS` named in ``names`` (all of them for None), in table order."""
    if names is None:
        return list(ALPHABETS)
    known = {a.name: a for a in ALPHABETS}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown Glyphs alphabets {unknown}; expected names from {list(known)}")
    wanted = set(names)
    return [a for a in ALPHABETS if a.name in wanted]


def build_glyphs(
    alphabets: Sequence[Alphabet],
    image_size: int,
    seed: int,
    images_per_class: int,
    max_chars_per_alphabet: int,
    min_faces: int,
) -> dict[str, Any]:
    """Render the dataset: ``images`` uint8 ``[N, 1, S, S]``, ``labels``, ``classes``."""
    faces = bundled_faces(image_size * SUPERSAMPLE)
    classes: list[dict[str, Any]] = []
    renders: list[list[np.ndarray]] = []
    kept = torch.zeros(0, image_size * image_size)
    for alphabet in alphabets:
        chars, faces_used, masks = choose_characters(
            alphabet, faces, kept, image_size, max_chars_per_alphabet, min_faces
        )
        if len(chars) < MIN_CHARS_PER_ALPHABET:
            continue  # the installed fonts cover too little of this block
        kept = torch.cat([kept, masks])
        for cp, drawn in zip(chars, faces_used, strict=True):
            classes.append(_class_info(alphabet, cp, [name for name, _ in drawn]))
            renders.append([image for _, image in drawn])
    images = _draw_all(renders, image_size, seed, images_per_class)
    labels = torch.arange(len(classes)).repeat_interleave(images_per_class)
    return {"images": images, "labels": labels, "classes": classes}


def choose_characters(
    alphabet: Alphabet,
    faces: Sequence[Face],
    kept: Tensor,
    image_size: int,
    limit: int,
    min_faces: int,
) -> tuple[list[int], list[list[tuple[str, np.ndarray]]], Tensor]:
    """Pick an alphabet's characters (see module docstring) and render them in every face.

    Returns the code points, for each the ``(face name, rendering)`` pairs, and the binary
    masks (flattened, output size) used to detect duplicates.
    """
    candidates, masks = [], []
    for cp in alphabet.codepoints():
        if unicodedata.category(chr(cp))[0] not in "LNS":
            continue
        covering = [face for face in faces if cp in face.charmap]
        if len(covering) < min_faces:
            continue
        first = next((r for r in (f.render(cp) for f in covering) if r is not None), None)
        if first is not None:
            candidates.append(cp)
            masks.append(_mask(first, image_size))
    if not candidates:
        return [], [], torch.zeros(0, image_size * image_size)
    distinct = _distinct(torch.stack(masks), kept)
    chars, drawn, chosen_masks = [], [], []
    for index in _spread(len(distinct), limit):
        cp = candidates[distinct[index]]
        renders = [(face.name, r) for face in faces if (r := face.render(cp)) is not None]
        if len(renders) >= min_faces:
            chars.append(cp)
            drawn.append(renders)
            chosen_masks.append(masks[distinct[index]])
        if len(chars) == limit:
            break
    stacked = torch.stack(chosen_masks) if chosen_masks else torch.zeros(0, kept.shape[1])
    return chars, drawn, stacked


def _mask(render: np.ndarray, image_size: int) -> Tensor:
    """Binary ink mask of a rendering at the output size, flattened."""
    image = torch.from_numpy(render).float().div(255).view(1, 1, *render.shape)
    small = F.adaptive_avg_pool2d(image, image_size)
    return (small > 0.3).float().flatten()


def _iou(a: Tensor, b: Tensor) -> Tensor:
    inter = a @ b.T
    union = a.sum(1, keepdim=True) + b.sum(1).view(1, -1) - inter
    return inter / union.clamp_min(1)


def _distinct(masks: Tensor, kept: Tensor) -> list[int]:
    """Indices of masks that duplicate neither a kept mask nor an earlier candidate."""
    fresh = torch.ones(len(masks), dtype=torch.bool)
    if len(kept):
        fresh &= _iou(masks, kept).amax(1) <= DUPLICATE_IOU
    clash = (_iou(masks, masks) > DUPLICATE_IOU).numpy()
    chosen: list[int] = []
    for i in range(len(masks)):
        if fresh[i] and not clash[i, chosen].any():
            chosen.append(i)
    return chosen


def _spread(n: int, limit: int) -> list[int]:
    """All of ``range(n)``: first ``limit`` evenly spaced indices, then the others."""
    first = sorted({min(n - 1, (i * n) // limit) for i in range(min(n, limit))})
    rest = [i for i in range(n) if i not in set(first)]
    return first + rest


def _class_info(alphabet: Alphabet, cp: int, faces: list[str]) -> dict[str, Any]:
    return {
        "alphabet": alphabet.name,
        "split": alphabet.split,
        "char": chr(cp),
        "codepoint": cp,
        "unicode_name": unicodedata.name(chr(cp), f"U+{cp:04X}"),
        "faces": faces,
    }


def _draw_all(
    renders: list[list[np.ndarray]], image_size: int, seed: int, per_class: int
) -> Tensor:
    """Drawings of every class, in class order, ``per_class`` each."""
    out = []
    for start in range(0, len(renders), CLASSES_PER_CHUNK):
        generator = torch.Generator().manual_seed(seed * 1_000_003 + start)
        clean = []
        for faces in renders[start : start + CLASSES_PER_CHUNK]:
            order = torch.randperm(len(faces), generator=generator).tolist()
            clean.extend(faces[order[j % len(faces)]] for j in range(per_class))
        stack = torch.from_numpy(np.stack(clean)).unsqueeze(1).float().div_(255)
        out.append(draw(stack, image_size, generator))
    if not out:
        return torch.zeros(0, 1, image_size, image_size, dtype=torch.uint8)
    return torch.cat(out)


def _take_split(content: dict[str, Any], split: str) -> tuple[Tensor, Tensor, list[dict]]:
    """Images, relabelled labels and class info of one split."""
    classes = content["classes"]
    chosen = [i for i, c in enumerate(classes) if split == "all" or c["split"] == split]
    if not chosen:
        raise ValueError(f"Glyphs split {split!r} has no classes with the chosen alphabets")
    relabel = torch.full((len(classes),), -1, dtype=torch.long)
    relabel[chosen] = torch.arange(len(chosen))
    new_labels = relabel[content["labels"]]
    keep = new_labels >= 0
    return content["images"][keep], new_labels[keep], [classes[i] for i in chosen]


def _build_args(options: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in options.items() if k != "alphabets"}


def _check_options(options: dict[str, Any]) -> None:
    for name in ("image_size", "images_per_class", "max_chars_per_alphabet", "min_faces"):
        if options[name] < 1:
            raise ValueError(f"{name} must be a positive int, got {options[name]}")


def _font_fingerprint() -> list[Any]:
    """Names and sizes of the bundled faces (a font update gives a new cache file)."""
    return [[face.name, face.path.stat().st_size] for face in bundled_faces(1)]
