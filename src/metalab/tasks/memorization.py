"""Non-mutually-exclusive regression task families (Yin et al., "Meta-Learning without
Memorization", ICLR 2020).

A task family is *non-mutually-exclusive* when one function of the query input solves every
meta-training task at once, so a meta-learner can ignore the support set and memorize the
tasks. Two such families:

- `NonMutuallyExclusiveSinusoid` (the paper's sinusoid experiment, Table 1): the task's
  amplitude index is appended to x as a one-hot vector, so the query input identifies the
  task during meta-training; at meta-test the amplitude is continuous and the one-hot
  carries no information about it.
- `GlyphPose` (the paper's Pascal3D pose task made from character images that run here):
  predict a character image's rotation relative to a per-character canonical orientation.
  A network that recognises the training characters can memorize their canonical
  orientations and ignore the support set; on novel characters only the support set tells
  the canonical orientation.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from metalab.tasks.batch import TaskBatch
from metalab.tasks.episodes import gather_inputs, indices_by_class
from metalab.tasks.source import TaskSource
from metalab.validation import check_choice, check_interval, check_positive_int

SPLITS = ("train", "test")


class NonMutuallyExclusiveSinusoid(TaskSource):
    """The non-mutually-exclusive sinusoid family of Yin et al. (2020).

    A task is ``y = A sin(x - phase) + eps`` with ``eps ~ N(0, noise^2)``, ``phase = 0`` and
    ``x ~ U[-5, 5]``. The input is ``[x, onehot(k)]`` of size ``1 + num_amplitudes``.

    - ``split="train"``: ``k`` is drawn from the first ``train_amplitudes`` indices and
      ``A = linspace(0.1, 4, num_amplitudes)[k]``: the one-hot identifies the amplitude.
    - ``split="test"``: ``A ~ U[0.1, 4]`` (continuous) and ``k`` is drawn independently of
      ``A`` from the same training indices, so the one-hot is uninformative. The query
      points are ``queries`` equally spaced points on ``[-4.5, 4.5]``.

    Defaults follow the authors' sinusoid notebook (google-research
    ``meta_learning_without_memorization/sinusoid``): 20 amplitudes of which the first 16
    (``randint(0, K_amp - 5)``) are used for meta-training, noise 0.1, 10 support + 10 query
    points during meta-training, 5 support points and a 200-point grid at meta-test.
    Differences: the notebook adds the support noise twice at meta-test (std 0.1 * sqrt 2);
    here every target gets the same ``noise`` once.

    Shapes: ``x [T, N, 1 + num_amplitudes]``, ``y [T, N, 1]``; ``task_id [T]`` is ``k``.
    """

    def __init__(self, split: str = "train", shots: int | None = None,
                 queries: int | None = None, tasks_per_batch: int = 1,
                 num_amplitudes: int = 20, train_amplitudes: int = 16,
                 amplitude_range=(0.1, 4.0), x_range=(-5.0, 5.0), phase: float = 0.0,
                 noise: float = 0.1, seed: int | None = None) -> None:
        super().__init__(tasks_per_batch, seed)
        self.split = check_choice("split", split, SPLITS)
        test = self.split == "test"
        self.shots = check_positive_int("shots", (5 if test else 10) if shots is None else shots)
        self.queries = check_positive_int("queries",
                                          (200 if test else 10) if queries is None else queries)
        self.num_amplitudes = check_positive_int("num_amplitudes", num_amplitudes)
        self.train_amplitudes = check_positive_int("train_amplitudes", train_amplitudes)
        if self.train_amplitudes > self.num_amplitudes:
            raise ValueError(f"train_amplitudes={train_amplitudes} but there are only "
                             f"num_amplitudes={num_amplitudes} amplitudes")
        self.amplitude_range = check_interval("amplitude_range", amplitude_range)
        self.x_range = check_interval("x_range", x_range)
        if self.split == "test" and self.x_range[1] - self.x_range[0] <= 1.0:
            raise ValueError(f"x_range must be wider than 1 for the test grid, got {x_range!r}")
        if noise < 0:
            raise ValueError(f"noise must be >= 0, got {noise!r}")
        self.noise = float(noise)
        self.phase = float(phase)

    @property
    def amplitudes(self) -> Tensor:
        """The discrete meta-training amplitudes, ``linspace(low, high, num_amplitudes)``."""
        return torch.linspace(*self.amplitude_range, self.num_amplitudes, dtype=torch.float64
                              ).float()

    def _amplitudes(self, index: Tensor) -> Tensor:
        if self.split == "train":
            return self.amplitudes[index]
        low, high = self.amplitude_range
        return low + (high - low) * torch.rand(len(index), generator=self.generator)

    def _inputs(self, tasks: int) -> tuple[Tensor, Tensor]:
        """Support and query x, ``[T, shots, 1]`` and ``[T, queries, 1]``."""
        low, high = self.x_range
        support = low + (high - low) * torch.rand(tasks, self.shots, 1, generator=self.generator)
        if self.split == "test":
            grid = torch.linspace(low + 0.5, high - 0.5, self.queries)
            return support, grid.view(1, -1, 1).expand(tasks, -1, -1)
        query = low + (high - low) * torch.rand(tasks, self.queries, 1, generator=self.generator)
        return support, query

    def sample(self) -> TaskBatch:
        tasks = self.tasks_per_batch
        index = torch.randint(self.train_amplitudes, (tasks,), generator=self.generator)
        amplitude = self._amplitudes(index).view(tasks, 1, 1)
        support_x, query_x = self._inputs(tasks)
        onehot = F.one_hot(index, self.num_amplitudes).float().view(tasks, 1, -1)

        def targets(x: Tensor) -> Tensor:
            y = amplitude * torch.sin(x - self.phase)
            if self.noise:
                y = y + self.noise * torch.randn(y.shape, generator=self.generator)
            return y

        def features(x: Tensor) -> Tensor:
            return torch.cat([x, onehot.expand(-1, x.shape[1], -1)], dim=-1)

        return TaskBatch(features(support_x), targets(support_x), features(query_x),
                         targets(query_x), task_id=index)


def rotate_images(images: Tensor, angles: Tensor) -> Tensor:
    """Rotate ``images [B, C, H, W]`` about their centres by ``angles [B]`` radians.

    Positive angles turn the picture counter-clockwise as displayed (row 0 at the top), the
    convention of `torch.rot90` with ``k=1``. Bilinear interpolation; pixels that come from
    outside the image are 0 (the background of glyphs and Omniglot after inversion).
    """
    if images.dim() != 4:
        raise ValueError(f"images must have shape [B, C, H, W], got {tuple(images.shape)}")
    if tuple(angles.shape) != (images.shape[0],):
        raise ValueError(f"angles must have shape [{images.shape[0]}], got "
                         f"{tuple(angles.shape)}")
    cos, sin = torch.cos(angles), torch.sin(angles)
    zero = torch.zeros_like(angles)
    # affine_grid maps output coordinates (x right, y down) to input coordinates: the inverse
    # of the counter-clockwise-as-displayed rotation.
    theta = torch.stack([torch.stack([cos, -sin, zero], -1),
                         torch.stack([sin, cos, zero], -1)], dim=1).to(images.dtype)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros",
                         align_corners=False)


class GlyphPose(TaskSource):
    """Pose regression on character images: the angle relative to a canonical orientation.

    The image analogue of the paper's pose prediction task on Pascal 3D objects:
    each character ``c`` of ``dataset`` gets a fixed random canonical orientation
    ``phi_c ~ U(canonical_range)``. A task is one character; an example is one of its
    drawings rotated by ``a ~ U(rotation_range)`` and labelled with the pose
    ``y = a - phi_c`` in radians. Support and query hold distinct drawings.

    Why this is non-mutually-exclusive: a network that recognises the (few) meta-training
    characters can store their ``phi_c`` and answer without the support set; for novel
    characters ``phi_c`` is only known through the support set.

    Target representation: the angle in radians, a bounded scalar with no wrap-around
    (``|y| <= max|a| + max|phi|``, below pi with the defaults), so plain MSE is the
    paper's pose MSE without the 0/2pi discontinuity its full-circle azimuths have. The
    paper's targets are ``azimuth / 2pi * 10`` in [0, 10); numbers are not comparable.

    Args:
        dataset: a labelled image dataset (``labels``, images ``[C, H, W]`` in [0, 1] on a
            0 background), e.g. ``datasets.build("glyphs", "train")``. Use disjoint splits
            for meta-training and meta-test (`check_disjoint_characters`).
        shots, queries: drawings per task in the support and query sets (the paper uses 15
            and 15 of 100 renders per object; glyphs have 20 drawings per character).
        rotation_range: the range of the applied rotation ``a``.
        canonical_range: the range of the canonical orientations ``phi_c``.
        characters: use only this many characters (a fixed random subset, drawn with
            ``canonical_seed``); the paper meta-trains on 50 objects. ``None``: all.
        canonical_seed: seed of the canonical orientations and of the character subset, so
            they are a property of the family, not of the sampling seed.

    Shapes: ``x [T, N, C, H, W]``, ``y [T, N, 1]``; ``task_id [T]`` is the dataset label.
    """

    def __init__(self, dataset, shots: int = 10, queries: int = 10, tasks_per_batch: int = 10,
                 rotation_range=(-math.pi / 2, math.pi / 2),
                 canonical_range=(-math.pi / 2, math.pi / 2), characters: int | None = None,
                 canonical_seed: int = 0, seed: int | None = None) -> None:
        super().__init__(tasks_per_batch, seed)
        self.dataset = dataset
        self.shots = check_positive_int("shots", shots)
        self.queries = check_positive_int("queries", queries)
        self.rotation_range = check_interval("rotation_range", rotation_range)
        self.canonical_range = check_interval("canonical_range", canonical_range)
        self.class_ids, self.class_indices = indices_by_class(dataset)
        chooser = torch.Generator().manual_seed(int(canonical_seed))
        low, high = self.canonical_range
        self.canonical = low + (high - low) * torch.rand(len(self.class_ids), generator=chooser,
                                                         dtype=torch.float64)
        order = torch.randperm(len(self.class_ids), generator=chooser)
        if characters is not None:
            characters = check_positive_int("characters", characters)
            if characters > len(self.class_ids):
                raise ValueError(f"characters={characters} but the dataset has "
                                 f"{len(self.class_ids)} characters")
            order = order[:characters]
        self.positions = order.sort().values
        self._check_sizes()

    def _check_sizes(self) -> None:
        needed = self.shots + self.queries
        sizes = torch.tensor([len(self.class_indices[p]) for p in self.positions.tolist()])
        smallest = int(sizes.argmin())
        if sizes[smallest] < needed:
            name = self.characters[smallest]
            raise ValueError(f"shots+queries={needed} but character {name!r} has "
                             f"{int(sizes[smallest])} drawings")

    @property
    def characters(self) -> list[str]:
        """Names of the characters tasks are drawn from (dataset class names if it has them)."""
        names = getattr(self.dataset, "class_names", None)
        ids = [self.class_ids[p] for p in self.positions.tolist()]
        return [str(names[i]) if names is not None else str(i) for i in ids]

    def canonical_angle(self, label: int) -> float:
        """The canonical orientation ``phi_c`` of the character with dataset label ``label``."""
        try:
            position = self.class_ids.index(int(label))
        except ValueError:
            raise ValueError(f"label {label} is not a class of the dataset") from None
        return float(self.canonical[position])

    def sample(self) -> TaskBatch:
        tasks, per_task = self.tasks_per_batch, self.shots + self.queries
        picks = torch.randint(len(self.positions), (tasks,), generator=self.generator)
        positions = self.positions[picks]
        indices = torch.stack([
            self.class_indices[p][torch.randperm(len(self.class_indices[p]),
                                                 generator=self.generator)[:per_task]]
            for p in positions.tolist()])
        low, high = self.rotation_range
        rotation = low + (high - low) * torch.rand(tasks, per_task, generator=self.generator,
                                                   dtype=torch.float64)
        images = gather_inputs(self.dataset, indices.reshape(-1))
        x = rotate_images(images, rotation.reshape(-1)).reshape(tasks, per_task,
                                                                *images.shape[1:])
        y = (rotation - self.canonical[positions].unsqueeze(1)).to(x.dtype).unsqueeze(-1)
        labels = torch.tensor([self.class_ids[p] for p in positions.tolist()])
        return TaskBatch(x[:, : self.shots], y[:, : self.shots], x[:, self.shots:],
                         y[:, self.shots:], task_id=labels)


def check_disjoint_characters(train: GlyphPose, test: GlyphPose) -> None:
    """Raise if the two sources share a character (compared by name)."""
    shared = sorted(set(train.characters) & set(test.characters))
    if shared:
        raise ValueError(f"meta-training and meta-test sources share {len(shared)} characters, "
                         f"e.g. {shared[:3]}; use disjoint dataset splits")


__all__ = ["GlyphPose", "NonMutuallyExclusiveSinusoid", "check_disjoint_characters",
           "rotate_images"]
