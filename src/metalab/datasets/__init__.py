"""Labelled datasets for meta-learning.

Every dataset is a :class:`torch.utils.data.Dataset` returning ``(x, y)`` (float image
``[C, H, W]`` in ``[0, 1]``, int label) with ``labels`` (1-D LongTensor), ``class_names``
and ``images`` (uint8 ``[N, C, H, W]``, for one-gather episode sampling). Every registered
dataset is built the same way, ``Dataset(split, root=None, **options)``; build one by name
with :func:`build`, and :func:`available` lists the names.

Modules, one job each: the readers of each format (``omniglot``, ``mnist``, ``cifar10``
…); the embedded ones (``digits``, ``glyphs``); the group-shift datasets (``groups``: the
`GroupDataset` type; ``rotated``; ``femnist``; ``corruptions``: the corruption functions,
built on ``filters``; ``corruption_groups``: ARM's groups; ``corrupted``: a dataset under
corruptions; ``corrupted_glyphs`` and ``cifar10_shift``: the corruption benchmarks);
``multimnist``; ``registry``: name -> class.
"""

from .base import ImageDataset
from .cifar10 import CIFAR10, CIFAR10C
from .cifar10_shift import CIFAR10CShift, cifar10_c
from .cifar_fs import CIFARFS
from .corrupted import CorruptedDataset, corrupted
from .corrupted_glyphs import CorruptedGlyphs, corrupted_glyphs
from .corruption_groups import corruption_groups
from .corruptions import available_corruptions, corrupt
from .digits import Digits
from .errors import CorruptDatasetError, DatasetFileError, MissingDatasetError
from .femnist import FEMNIST
from .glyphs import Glyphs
from .groups import GroupDataset
from .mini_imagenet import MiniImageNet
from .mnist import MNIST
from .multimnist import MultiMNIST, OverlaidDigits, multimnist
from .omniglot import Omniglot, preprocess_omniglot
from .paths import cache_dir
from .registry import available, build
from .rotated import RotatedDataset, RotatedDigits, RotatedMNIST, rotated_digits, rotated_mnist

__all__ = [
    "CIFAR10",
    "CIFAR10C",
    "CIFARFS",
    "FEMNIST",
    "MNIST",
    "CIFAR10CShift",
    "CorruptDatasetError",
    "CorruptedDataset",
    "CorruptedGlyphs",
    "DatasetFileError",
    "Digits",
    "Glyphs",
    "GroupDataset",
    "ImageDataset",
    "MiniImageNet",
    "MissingDatasetError",
    "MultiMNIST",
    "Omniglot",
    "OverlaidDigits",
    "RotatedDataset",
    "RotatedDigits",
    "RotatedMNIST",
    "available",
    "available_corruptions",
    "build",
    "cache_dir",
    "cifar10_c",
    "corrupt",
    "corrupted",
    "corrupted_glyphs",
    "corruption_groups",
    "multimnist",
    "preprocess_omniglot",
    "rotated_digits",
    "rotated_mnist",
]
