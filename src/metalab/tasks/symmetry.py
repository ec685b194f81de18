"""Synthetic equivariant regression families of MSR (Zhou, Knowles, Finn, ICLR 2021, sec. 5.1).

Every task is a linear map with a hidden weight-sharing pattern; a meta-learner that discovers
the pattern from the training tasks adapts to a new task from a single example.

- `TranslationEquivariantTasks` (1-D, "rank k"): a task is a locally connected layer with
  a 3-tap filter per output position, ``y[p] = sum_j w[p, j] x[p + j]`` (valid
  cross-correlation, no bias; input length 70, output 68). The filters are
  ``w = A B``: ``A = softmax(randn(68, k), dim=1)`` is fixed for the whole pool, ``B =
  randn(k, 3)`` is drawn per task. With ``k = 1`` every row of ``A`` is 1, so every
  position shares one filter: a true convolution. With ``k = 2, 5`` the sharing is partial.
- `RotationEquivariantTasks` (2-D): a task is a lifting group convolution over the
  rotations by 90 degrees (``C4``) or rotations and reflections (``D4``) with random 3x3
  filters: ``out[f, g] = conv2d(x, T_g w_f)``, so rotating (reflecting) the input rotates
  (reflects) every output map and permutes the group channels.

As in the official code, a fixed pool of 10,000 tasks of 20 examples each is drawn from a
data seed and split 80/20 (train: the first 8,000 tasks, test: the last 2,000); a batch
draws distinct tasks and, per task, 1 support and 19 query examples in random order. The
pool is generated lazily: task ``i`` is a pure function of ``(data_seed, i)``, so the train
and test sources of one data seed describe one pool without storing it. (The official
2-D pools use 45-degree rotations through e2cnn's steerable basis; here the groups are the
exact pixel permutations C4 and D4, written in torch.)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from metalab.tasks.batch import TaskBatch
from metalab.tasks.source import TaskSource
from metalab.validation import check_choice, check_positive_int

SPLITS = ("train", "test")
ORDERS = ("random", "sequential")
RANKS = (1, 2, 5)
GROUPS = {
    # (reflect first?, then rotate by 90 degrees this many times)
    "C4": tuple((0, turns) for turns in range(4)),
    "D4": tuple((flip, turns) for flip in (0, 1) for turns in range(4)),
}


# -- groups of pixel permutations -------------------------------------------------------------
def check_group(group: str) -> str:
    """``group`` if it names one of :data:`GROUPS`."""
    return check_choice("group", group, GROUPS)


def transform_image(x: Tensor, element: tuple[int, int]) -> Tensor:
    """Apply a group element ``(flip, turns)`` to the last two (spatial) dimensions.

    ``T(x) = rot90^turns(mirror^flip(x))`` with the mirror reversing the last dimension.
    """
    flip, turns = element
    if flip:
        x = torch.flip(x, dims=(-1,))
    return torch.rot90(x, turns, dims=(-2, -1)) if turns else x


def group_filter_bank(filters: Tensor, group: str) -> Tensor:
    """Every filter transformed by every group element: ``[F, C, k, k] -> [F * |G|, C, k, k]``.

    Output channel ``f * |G| + g`` holds ``T_g filters[f]``: the filter bank of a lifting
    group convolution (Cohen & Welling 2016), whose channels are ``|G|``-long regular fields.
    """
    if filters.dim() != 4 or filters.shape[-1] != filters.shape[-2]:
        raise ValueError(f"filters must have shape [filters, channels, k, k] (square), got "
                         f"{tuple(filters.shape)}")
    stacked = torch.stack([transform_image(filters, g) for g in GROUPS[check_group(group)]],
                          dim=1)
    return stacked.reshape(-1, *filters.shape[1:])


def group_composition(group: str) -> list[list[int]]:
    """``table[h][g]``: the index of the element ``T_h T_g``, found by acting on a probe image."""
    elements = GROUPS[check_group(group)]
    probe = torch.arange(9.0).view(3, 3)
    images = [transform_image(probe, g) for g in elements]

    def index_of(image: Tensor) -> int:
        return next(i for i, other in enumerate(images) if torch.equal(other, image))

    return [[index_of(transform_image(images[g], h)) for g in range(len(elements))]
            for h in elements]


# -- the task pool -------------------------------------------------------------------------
def _task_seed(data_seed: int, index: int) -> int:
    """Seed of task ``index`` in the pool of ``data_seed`` (distinct for distinct pairs)."""
    return (data_seed * 1_000_003 + index + 1) % (2**63 - 1)


class _TaskPool(TaskSource):
    """A fixed pool of regression tasks split into train and test; subclasses define `task`.

    Each batch holds ``tasks_per_batch`` distinct tasks of the split: drawn at random
    (``order="random"``) or in pool order, wrapping around (``order="sequential"``, to meta-test
    every test task exactly once). Per task, ``shots + queries`` of its examples are drawn
    without replacement, the first ``shots`` forming the support set.
    """

    def __init__(self, split: str, tasks_per_batch: int, seed: int | None, data_seed: int,
                 num_tasks: int, examples_per_task: int, shots: int, queries: int,
                 train_fraction: float, order: str, dtype: torch.dtype) -> None:
        super().__init__(tasks_per_batch, seed)
        check_choice("split", split, SPLITS)
        check_choice("order", order, ORDERS)
        if not 0.0 < train_fraction < 1.0:
            raise ValueError(f"train_fraction must be in (0, 1), got {train_fraction!r}")
        check_positive_int("data_seed", data_seed, minimum=0)
        if not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating-point dtype, got {dtype}")
        self.split, self.order, self.dtype = split, order, dtype
        self.data_seed = data_seed
        self.num_tasks = check_positive_int("num_tasks", num_tasks, 2)
        self.examples_per_task = check_positive_int("examples_per_task", examples_per_task)
        self.shots = check_positive_int("shots", shots)
        self.queries = check_positive_int("queries", queries)
        if self.shots + self.queries > self.examples_per_task:
            raise ValueError(f"shots+queries={self.shots + self.queries} but every task has "
                             f"examples_per_task={self.examples_per_task} examples")
        cutoff = int(train_fraction * self.num_tasks)
        if not 0 < cutoff < self.num_tasks:
            raise ValueError(f"train_fraction={train_fraction} of num_tasks={num_tasks} leaves "
                             f"a split empty")
        self.task_indices = (torch.arange(cutoff) if split == "train"
                             else torch.arange(cutoff, self.num_tasks))
        if self.tasks_per_batch > len(self.task_indices):
            raise ValueError(f"tasks_per_batch={self.tasks_per_batch} but split {split!r} has "
                             f"{len(self.task_indices)} tasks")
        self.cursor = 0

    def task_generator(self, index: int) -> torch.Generator:
        if not 0 <= index < self.num_tasks:
            raise IndexError(f"task index must be in [0, {self.num_tasks}), got {index}")
        return torch.Generator().manual_seed(_task_seed(self.data_seed, index))

    def task(self, index: int) -> tuple[Tensor, Tensor]:
        """All ``examples_per_task`` inputs and targets of pool task ``index``."""
        raise NotImplementedError

    def _next_tasks(self) -> Tensor:
        count = self.tasks_per_batch
        if self.order == "random":
            chosen = torch.randperm(len(self.task_indices), generator=self.generator)[:count]
        else:
            chosen = (self.cursor + torch.arange(count)) % len(self.task_indices)
            self.cursor = int(chosen[-1] + 1) % len(self.task_indices)
        return self.task_indices[chosen]

    def sample(self) -> TaskBatch:
        indices = self._next_tasks()
        xs, ys = [], []
        for index in indices.tolist():
            x, y = self.task(index)
            pick = torch.randperm(self.examples_per_task,
                                  generator=self.generator)[: self.shots + self.queries]
            xs.append(x[pick])
            ys.append(y[pick])
        x, y = torch.stack(xs), torch.stack(ys)
        s = self.shots
        return TaskBatch(x[:, :s], y[:, :s], x[:, s:], y[:, s:], task_id=indices)

    def state_dict(self) -> dict:
        return {**super().state_dict(), "cursor": self.cursor}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.cursor = int(state.get("cursor", 0))


class TranslationEquivariantTasks(_TaskPool):
    """1-D tasks with full (``rank=1``) or partial (``rank=2, 5``) translation symmetry.

    Inputs ``x [T, N, 1, input_length]`` ~ N(0, 1); targets ``y [T, N, 1, input_length -
    kernel_size + 1]`` with ``y[p] = sum_j w[p, j] x[p + j]`` and the task's per-position
    filters ``w = connectivity @ basis`` (module docstring). ``connectivity`` ``[outputs,
    rank]`` is shared by every task of the pool (a function of ``data_seed`` and ``rank``).

    Args:
        rank: 1, 2 or 5 (the official families; other positive ranks are accepted too).
        split: ``"train"`` (first ``train_fraction`` of the pool) or ``"test"``.
        tasks_per_batch, seed: batch size and the seed of the sampling generator.
        data_seed: seed of the pool (the same for a train/test pair).
        num_tasks, examples_per_task, shots, queries: 10,000 / 20 / 1 / 19 as the paper.
        input_length, kernel_size: 70 and 3.
        order: ``"random"`` or ``"sequential"`` task order.
        dtype: dtype of the generated data (float32; float64 for exact checks).
    """

    def __init__(self, rank: int = 1, split: str = "train", tasks_per_batch: int = 32,
                 seed: int | None = None, data_seed: int = 0, num_tasks: int = 10_000,
                 examples_per_task: int = 20, shots: int = 1, queries: int = 19,
                 input_length: int = 70, kernel_size: int = 3, train_fraction: float = 0.8,
                 order: str = "random", dtype: torch.dtype = torch.float32) -> None:
        super().__init__(split, tasks_per_batch, seed, data_seed, num_tasks, examples_per_task,
                         shots, queries, train_fraction, order, dtype)
        self.rank = check_positive_int("rank", rank)
        self.kernel_size = check_positive_int("kernel_size", kernel_size)
        self.input_length = check_positive_int("input_length", input_length, self.kernel_size)
        self.output_length = self.input_length - self.kernel_size + 1
        pool = torch.Generator().manual_seed(_task_seed(data_seed, -1 - self.rank))
        logits = torch.randn(self.output_length, self.rank, generator=pool, dtype=torch.float64)
        self.connectivity = torch.softmax(logits, dim=1).to(dtype)

    def basis(self, index: int) -> Tensor:
        """The per-task basis filters ``B [rank, kernel_size]`` of pool task ``index``."""
        return torch.randn(self.rank, self.kernel_size, generator=self.task_generator(index),
                           dtype=self.dtype)

    def filters(self, index: int) -> Tensor:
        """The per-position filters ``A B [outputs, kernel_size]`` of pool task ``index``."""
        return self.connectivity @ self.basis(index)

    def sharing_matrix(self) -> Tensor:
        """The pool's true symmetry matrix: ``vec(W_task) = U vec(B_task)`` for every task.

        ``W [outputs, input_length]`` is the task's dense weight matrix (row-major ``vec``),
        ``W[p, p + j] = sum_r A[p, r] B[r, j]``; ``U [outputs * input_length, rank *
        kernel_size]``. For rank 1 it is the sharing matrix of a convolution.
        """
        p, r, j = torch.meshgrid(torch.arange(self.output_length), torch.arange(self.rank),
                                 torch.arange(self.kernel_size), indexing="ij")
        U = torch.zeros(self.output_length * self.input_length, self.rank * self.kernel_size,
                        dtype=self.dtype)
        U[(p * self.input_length + p + j).reshape(-1), (r * self.kernel_size + j).reshape(-1)] = (
            self.connectivity[p, r].reshape(-1))
        return U

    def task(self, index: int) -> tuple[Tensor, Tensor]:
        generator = self.task_generator(index)
        basis = torch.randn(self.rank, self.kernel_size, generator=generator, dtype=self.dtype)
        filters = self.connectivity @ basis
        x = torch.randn(self.examples_per_task, 1, self.input_length, generator=generator,
                        dtype=self.dtype)
        windows = x.unfold(-1, self.kernel_size, 1)  # [N, 1, outputs, kernel_size]
        return x, (windows * filters).sum(-1)


class RotationEquivariantTasks(_TaskPool):
    """2-D tasks equivariant to 90-degree rotations (``C4``) or rotations and flips (``D4``).

    Inputs ``x [T, N, 1, image_size, image_size]`` ~ N(0, 1); targets ``y [T, N, filters *
    |G|, image_size - kernel_size + 1, ...]`` = ``conv2d(x, group_filter_bank(w, group))``
    with the task's ``filters`` random ``kernel_size`` x ``kernel_size`` filters ``w`` (He
    scale, std ``sqrt(2 / kernel_size^2)``). Arguments as `TranslationEquivariantTasks`.
    """

    def __init__(self, group: str = "C4", split: str = "train", tasks_per_batch: int = 32,
                 seed: int | None = None, data_seed: int = 0, num_tasks: int = 10_000,
                 examples_per_task: int = 20, shots: int = 1, queries: int = 19,
                 image_size: int = 32, filters: int = 3, kernel_size: int = 3,
                 train_fraction: float = 0.8, order: str = "random",
                 dtype: torch.dtype = torch.float32) -> None:
        super().__init__(split, tasks_per_batch, seed, data_seed, num_tasks, examples_per_task,
                         shots, queries, train_fraction, order, dtype)
        self.group = check_group(group)
        self.num_filters = check_positive_int("filters", filters)
        self.kernel_size = check_positive_int("kernel_size", kernel_size)
        self.image_size = check_positive_int("image_size", image_size, self.kernel_size)
        self.out_channels = self.num_filters * len(GROUPS[self.group])

    def _draw_filters(self, generator: torch.Generator) -> Tensor:
        k = self.kernel_size
        return (2.0 / (k * k)) ** 0.5 * torch.randn(self.num_filters, 1, k, k,
                                                    generator=generator, dtype=self.dtype)

    def filters(self, index: int) -> Tensor:
        """The base filters ``[filters, 1, k, k]`` of pool task ``index``."""
        return self._draw_filters(self.task_generator(index))

    def task(self, index: int) -> tuple[Tensor, Tensor]:
        generator = self.task_generator(index)
        filters = self._draw_filters(generator)
        x = torch.randn(self.examples_per_task, 1, self.image_size, self.image_size,
                        generator=generator, dtype=self.dtype)
        return x, F.conv2d(x, group_filter_bank(filters, self.group))
