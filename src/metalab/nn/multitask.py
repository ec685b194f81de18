"""Multi-task models: hard parameter sharing and task-conditioned (FiLM) networks.

Every model here is called as ``model(x, task_id)`` with ``task_id`` a Python int or a 0-d
integer tensor, and says which of its parameters all tasks share
(``shared_parameter_names()``); the others belong to single tasks.

- `MultiHead`: hard parameter sharing, ``f_t(x) = head_t(trunk(x))`` (Caruana 1997; the
  shared-encoder / task-decoder model of Sener & Koltun, NeurIPS 2018, sec. 3).
- `FiLMNet`: feature-wise linear modulation (Perez et al., AAAI 2018, sec. 2):
  ``FiLM(F_c | gamma_c, beta_c) = gamma_c * F_c + beta_c`` on every channel ``c`` of
  every stage, with ``(gamma, beta)`` looked up per task (the FiLM generator applied to a
  one-hot task code is a table of rows). One shared head, or one head per task.

Constructors: `LeNetTrunk` (the LeNet-style encoder Sener & Koltun use on MultiMNIST) and
`ConvTrunk` (Conv4-style blocks for glyphs), and `multi_head_lenet`, `multi_head_conv`,
`film_lenet`, `film_conv` around them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


def task_index(task_id: int | Tensor, num_tasks: int) -> int:
    """``task_id`` as a Python int in ``[0, num_tasks)``; a clear error otherwise."""
    if isinstance(task_id, Tensor):
        if task_id.dim() != 0 or task_id.is_floating_point() or task_id.is_complex() \
                or task_id.dtype == torch.bool:
            raise ValueError(f"task_id must be an int or a 0-d integer tensor, got a "
                             f"{task_id.dtype} tensor of shape {tuple(task_id.shape)}")
        task_id = int(task_id)
    elif isinstance(task_id, bool) or not isinstance(task_id, int):
        raise TypeError(f"task_id must be an int or a 0-d integer tensor, got "
                        f"{type(task_id).__name__}")
    if not 0 <= task_id < num_tasks:
        raise ValueError(f"task_id={task_id} but the model has {num_tasks} tasks "
                         f"(valid ids 0..{num_tasks - 1})")
    return task_id


def _check_classes(num_classes: Sequence[int]) -> list[int]:
    classes = list(num_classes)
    if not classes or any(isinstance(c, bool) or not isinstance(c, int) or c < 1
                          for c in classes):
        raise ValueError(f"num_classes must be a non-empty list of positive ints (one per "
                         f"task), got {num_classes!r}")
    return classes


class MultiHead(nn.Module):
    """A shared ``trunk`` and one head per task: ``forward(x, t) = heads[t](trunk(x))``."""

    def __init__(self, trunk: nn.Module, heads: Sequence[nn.Module]) -> None:
        super().__init__()
        if not isinstance(trunk, nn.Module):
            raise TypeError(f"trunk must be an nn.Module, got {type(trunk).__name__}")
        heads = list(heads)
        if not heads or not all(isinstance(h, nn.Module) for h in heads):
            raise ValueError("heads must be a non-empty list of nn.Modules (one per task)")
        self.trunk = trunk
        self.heads = nn.ModuleList(heads)

    @property
    def num_tasks(self) -> int:
        return len(self.heads)

    def forward(self, x: Tensor, task_id: int | Tensor) -> Tensor:
        return self.heads[task_index(task_id, self.num_tasks)](self.trunk(x))

    def shared_parameter_names(self) -> list[str]:
        """The trunk's parameters (the heads are task-specific)."""
        return [f"trunk.{name}" for name, _ in self.trunk.named_parameters()]


class FiLM(nn.Module):
    """Per-task feature-wise affine modulation of the channels (dim 1) of its input.

    ``gamma`` starts at one and ``beta`` at zero, so an untrained layer is the identity.
    """

    def __init__(self, num_tasks: int, channels: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(num_tasks, channels))
        self.beta = nn.Parameter(torch.zeros(num_tasks, channels))

    @property
    def num_tasks(self) -> int:
        return self.gamma.shape[0]

    def forward(self, x: Tensor, task_id: int | Tensor) -> Tensor:
        t = task_index(task_id, self.num_tasks)
        if x.dim() < 2 or x.shape[1] != self.gamma.shape[1]:
            raise ValueError(f"FiLM expects x of shape [batch, {self.gamma.shape[1]}, ...], got "
                             f"{tuple(x.shape)}")
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return self.gamma[t].view(shape) * x + self.beta[t].view(shape)


class FiLMStage(nn.Module):
    """``post(FiLM_t(pre(x)))``: e.g. pre = conv + normalization, post = ReLU + pooling."""

    def __init__(self, pre: nn.Module, channels: int, num_tasks: int, post: nn.Module) -> None:
        super().__init__()
        self.pre = pre
        self.film = FiLM(num_tasks, channels)
        self.post = post

    def forward(self, x: Tensor, task_id: int | Tensor) -> Tensor:
        return self.post(self.film(self.pre(x), task_id))


class FiLMNet(nn.Module):
    """Task-conditioned network: FiLM stages, flatten, then a shared head or per-task heads.

    Args:
        stages: `FiLMStage`s applied in order (all with the same number of tasks).
        head: one module shared by every task, or a list with one module per task.
        between: optional module applied after the stages, before the head (e.g. an MLP
            layer of the trunk); shared by the tasks.
    """

    def __init__(self, stages: Sequence[FiLMStage], head: nn.Module | Sequence[nn.Module],
                 between: nn.Module | None = None) -> None:
        super().__init__()
        stages = list(stages)
        if not stages or not all(isinstance(s, FiLMStage) for s in stages):
            raise ValueError("stages must be a non-empty list of FiLMStage modules")
        counts = {s.film.num_tasks for s in stages}
        if len(counts) != 1:
            raise ValueError(f"every FiLM stage needs the same number of tasks, got "
                             f"{sorted(counts)}")
        self.stages = nn.ModuleList(stages)
        self.between = nn.Flatten() if between is None else nn.Sequential(nn.Flatten(), between)
        self.shared_head = isinstance(head, nn.Module)
        if self.shared_head:
            self.head = head
        else:
            heads = list(head)
            if len(heads) != self.num_tasks:
                raise ValueError(f"head has {len(heads)} modules but the FiLM stages have "
                                 f"{self.num_tasks} tasks; give one head per task or one module")
            self.head = nn.ModuleList(heads)

    @property
    def num_tasks(self) -> int:
        return self.stages[0].film.num_tasks

    def forward(self, x: Tensor, task_id: int | Tensor) -> Tensor:
        t = task_index(task_id, self.num_tasks)
        for stage in self.stages:
            x = stage(x, t)
        features = self.between(x)
        return self.head(features) if self.shared_head else self.head[t](features)

    def shared_parameter_names(self) -> list[str]:
        """Everything but the FiLM tables (and the heads, when there is one per task)."""
        return [name for name, _ in self.named_parameters()
                if ".film." not in name and (self.shared_head or not name.startswith("head."))]


# -- the benchmark architectures ---------------------------------------------------------
def _lenet_side(image_size: int, kernel: int) -> int:
    side = (image_size - kernel + 1) // 2
    side = (side - kernel + 1) // 2
    if side < 1:
        raise ValueError(f"image_size={image_size} is too small for two {kernel}x{kernel} "
                         f"convolutions and 2x2 poolings")
    return side


class LeNetTrunk(nn.Module):
    """[5x5 conv, 2x2 max-pool, ReLU] x 2, flatten, linear, ReLU.

    The MultiMNIST encoder of Sener & Koltun (2018): 10 and 20 channels and 50 features on
    28x28 inputs (``feature_dim`` = ``features``).
    """

    def __init__(self, in_channels: int = 1, channels: tuple[int, int] = (10, 20),
                 features: int = 50, image_size: int = 28, kernel: int = 5) -> None:
        super().__init__()
        side = _lenet_side(image_size, kernel)
        self.layers = nn.Sequential(
            nn.Conv2d(in_channels, channels[0], kernel), nn.MaxPool2d(2), nn.ReLU(),
            nn.Conv2d(channels[0], channels[1], kernel), nn.MaxPool2d(2), nn.ReLU(),
            nn.Flatten(), nn.Linear(channels[1] * side * side, features), nn.ReLU(),
        )
        self.feature_dim = features

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


def _conv_side(image_size: int, blocks: int) -> int:
    side = image_size
    for _ in range(blocks):
        side //= 2
    if side < 1:
        raise ValueError(f"image_size={image_size} is too small for {blocks} 2x2 poolings")
    return side


class ConvTrunk(nn.Module):
    """``blocks`` x [3x3 conv, batch norm, ReLU, 2x2 max-pool], flattened (Conv4-style).

    Unlike the meta-learning `Conv4` (transductive `TaskBatchNorm`), multi-task learning is
    ordinary supervised learning, so the batch norm keeps running statistics and
    evaluation (``eval()``) uses them.
    """

    def __init__(self, in_channels: int = 1, hidden: int = 32, blocks: int = 3,
                 image_size: int = 28) -> None:
        super().__init__()
        side = _conv_side(image_size, blocks)
        layers: list[nn.Module] = []
        width = in_channels
        for _ in range(blocks):
            layers += [nn.Conv2d(width, hidden, 3, padding=1), nn.BatchNorm2d(hidden),
                       nn.ReLU(), nn.MaxPool2d(2)]
            width = hidden
        self.layers = nn.Sequential(*layers, nn.Flatten())
        self.feature_dim = hidden * side * side

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


def _mlp_head(features: int, hidden: int | None, classes: int) -> nn.Module:
    if hidden is None:
        return nn.Linear(features, classes)
    return nn.Sequential(nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, classes))


def multi_head_lenet(num_classes: Sequence[int], in_channels: int = 1,
                     channels: tuple[int, int] = (10, 20), features: int = 50,
                     head_hidden: int | None = 50, image_size: int = 28) -> MultiHead:
    """LeNet trunk and per-task [linear, ReLU, linear] heads (Sener & Koltun's MultiMNIST)."""
    classes = _check_classes(num_classes)
    trunk = LeNetTrunk(in_channels, channels, features, image_size)
    return MultiHead(trunk, [_mlp_head(features, head_hidden, c) for c in classes])


def multi_head_conv(num_classes: Sequence[int], in_channels: int = 1, hidden: int = 32,
                    blocks: int = 3, image_size: int = 28) -> MultiHead:
    """Conv trunk and one linear head per task."""
    classes = _check_classes(num_classes)
    trunk = ConvTrunk(in_channels, hidden, blocks, image_size)
    return MultiHead(trunk, [nn.Linear(trunk.feature_dim, c) for c in classes])


def _heads(features: int, hidden: int | None, classes: list[int],
           shared_head: bool) -> nn.Module | list[nn.Module]:
    if shared_head:
        return _mlp_head(features, hidden, max(classes))
    return [_mlp_head(features, hidden, c) for c in classes]


def film_lenet(num_classes: Sequence[int], in_channels: int = 1,
               channels: tuple[int, int] = (10, 20), features: int = 50,
               head_hidden: int | None = 50, image_size: int = 28,
               shared_head: bool = False) -> FiLMNet:
    """LeNet with FiLM after each convolution: [5x5 conv, FiLM_t, 2x2 max-pool, ReLU] x 2.

    A shared head outputs ``max(num_classes)`` logits.
    """
    classes = _check_classes(num_classes)
    side = _lenet_side(image_size, 5)
    tasks = len(classes)
    stages = [
        FiLMStage(nn.Conv2d(in_channels, channels[0], 5), channels[0], tasks,
                  nn.Sequential(nn.MaxPool2d(2), nn.ReLU())),
        FiLMStage(nn.Conv2d(channels[0], channels[1], 5), channels[1], tasks,
                  nn.Sequential(nn.MaxPool2d(2), nn.ReLU())),
    ]
    between = nn.Sequential(nn.Linear(channels[1] * side * side, features), nn.ReLU())
    return FiLMNet(stages, _heads(features, head_hidden, classes, shared_head), between)


def film_conv(num_classes: Sequence[int], in_channels: int = 1, hidden: int = 32,
              blocks: int = 3, image_size: int = 28, shared_head: bool = False) -> FiLMNet:
    """Conv blocks [3x3 conv, batch norm (no affine), FiLM_t, ReLU, 2x2 max-pool].

    As in Perez et al.'s residual blocks, FiLM replaces the batch norm's own affine part.
    """
    classes = _check_classes(num_classes)
    side = _conv_side(image_size, blocks)
    stages, width = [], in_channels
    for _ in range(blocks):
        pre = nn.Sequential(nn.Conv2d(width, hidden, 3, padding=1),
                            nn.BatchNorm2d(hidden, affine=False))
        stages.append(FiLMStage(pre, hidden, len(classes),
                                nn.Sequential(nn.ReLU(), nn.MaxPool2d(2))))
        width = hidden
    return FiLMNet(stages, _heads(hidden * side * side, None, classes, shared_head))
