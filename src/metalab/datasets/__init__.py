"""Labelled datasets for meta-learning.

Every dataset is a :class:`torch.utils.data.Dataset` returning ``(x, y)`` (float image
``[C, H, W]`` in ``[0, 1]``, int label) with ``labels`` (1-D LongTensor), ``class_names``
and ``images`` (uint8 ``[N, C, H, W]``, for one-gather episode sampling). Build one by
name with :func:`build`; :func:`available` lists the names.
"""

from .base import ImageDataset
from .cifar10 import CIFAR10, CIFAR10C, cifar10_c
from .cifar_fs import CIFARFS
from .corruptions import (
    CorruptedDataset,
    available_corruptions,
    corrupt,
    corrupted,
    corrupted_glyphs,
    corruption_groups,
)
from .digits import Digits
from .errors import CorruptDatasetError, DatasetFileError, MissingDatasetError
from .femnist import FEMNIST
from .glyphs import Glyphs
from .groups import GroupDataset
from .mini_imagenet import MiniImageNet
from .mnist import MNIST
from .multimnist import MultiMNIST, multimnist
from .omniglot import Omniglot, preprocess_omniglot
from .paths import cache_dir
from .registry import available, build
from .rotated import RotatedDataset, rotated_digits, rotated_mnist

__all__ = [
    "CIFAR10",
    "CIFAR10C",
    "CIFARFS",
    "FEMNIST",
    "MNIST",
    "CorruptDatasetError",
    "CorruptedDataset",
    "DatasetFileError",
    "Digits",
    "Glyphs",
    "GroupDataset",
    "ImageDataset",
    "MiniImageNet",
    "MissingDatasetError",
    "MultiMNIST",
    "Omniglot",
    "RotatedDataset",
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
