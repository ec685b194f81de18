"""Labelled datasets for meta-learning.

Every dataset is a :class:`torch.utils.data.Dataset` returning ``(x, y)`` (float image
``[C, H, W]`` in ``[0, 1]``, int label) with ``labels`` (1-D LongTensor), ``class_names``
and ``images`` (uint8 ``[N, C, H, W]``, for one-gather episode sampling). Build one by
name with :func:`build`; :func:`available` lists the names.
"""

from .base import ImageDataset
from .cifar_fs import CIFARFS
from .digits import Digits
from .errors import CorruptDatasetError, DatasetFileError, MissingDatasetError
from .glyphs import Glyphs
from .groups import GroupDataset
from .mini_imagenet import MiniImageNet
from .mnist import MNIST
from .omniglot import Omniglot, preprocess_omniglot
from .paths import cache_dir
from .registry import available, build

__all__ = [
    "CIFARFS",
    "MNIST",
    "CorruptDatasetError",
    "DatasetFileError",
    "Digits",
    "Glyphs",
    "GroupDataset",
    "ImageDataset",
    "MiniImageNet",
    "MissingDatasetError",
    "Omniglot",
    "available",
    "build",
    "cache_dir",
    "preprocess_omniglot",
]
