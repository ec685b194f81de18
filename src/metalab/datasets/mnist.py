"""MNIST from its IDX files (LeCun et al.), gzipped or not.

Looked up in ``root``, ``root/raw`` and ``root/MNIST/raw`` (torchvision's layout), under the
official names ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte`` (also ``.idx3-ubyte`` spellings),
each optionally with ``.gz``.
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np
import torch

from .base import ImageDataset, check_split
from .errors import CorruptDatasetError, MissingDatasetError
from .paths import resolve_root

FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
SPLITS = tuple(FILES)
IDX_UBYTE = 0x08


def read_idx(path: Path) -> np.ndarray:
    """Read an unsigned-byte IDX file (``.gz`` allowed) into an array of its shape."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as handle:
                data = handle.read()
        else:
            data = path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        raise CorruptDatasetError(path, f"cannot be read: truncated or corrupt ({exc})") from exc
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise CorruptDatasetError(path, "is not an IDX file (bad magic number)")
    if data[2] != IDX_UBYTE:
        raise CorruptDatasetError(path, f"IDX element type 0x{data[2]:02x}; expected 0x08 (ubyte)")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise CorruptDatasetError(path, "is truncated inside its IDX header")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(shape))
    if len(data) != expected:
        raise CorruptDatasetError(
            path,
            f"has {len(data)} bytes but its IDX header {shape} implies {expected} (truncated?)",
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def find_idx(root: Path, name: str) -> Path:
    """Locate one IDX file under ``root`` (see module docstring) or raise naming it."""
    spellings = [name, name.replace("-idx", ".idx")]
    folders = [root, root / "raw", root / "MNIST" / "raw"]
    for folder in folders:
        for spelling in spellings:
            for suffix in ("", ".gz"):
                path = folder / (spelling + suffix)
                if path.is_file():
                    return path
    raise MissingDatasetError(
        root / name,
        f"MNIST file {name}[.gz] not found in {[str(f) for f in folders]}; place the IDX "
        f"files (from the MNIST distribution) at {root / (name + '.gz')}",
    )


class MNIST(ImageDataset):
    """MNIST digits as ``[1, 28, 28]`` images: the 60k ``"train"`` or the 10k ``"test"`` set.

    ``root``: the folder with the IDX files (module docstring; default: the metalab data
    folder for "mnist"). ``files`` are the two files read.
    """

    splits = SPLITS
    needs_files = True
    description = "MNIST handwritten digits from the IDX files (gzipped or not)"
    root: Path
    files: list[Path]

    def __init__(self, split: str = "train", root: str | os.PathLike[str] | None = None
                 ) -> None:
        check_split(split, SPLITS, "MNIST")
        self.root = resolve_root(root, "mnist")
        image_name, label_name = FILES[split]
        image_path, label_path = find_idx(self.root, image_name), find_idx(self.root, label_name)
        images = read_idx(image_path)
        labels = read_idx(label_path)
        if images.ndim != 3:
            raise CorruptDatasetError(image_path, f"expected [N, H, W] images, got {images.shape}")
        if labels.ndim != 1 or len(labels) != len(images):
            raise CorruptDatasetError(
                label_path, f"has {labels.shape} labels for {len(images)} images in {image_path}"
            )
        if labels.size and labels.max() > 9:
            raise CorruptDatasetError(label_path, f"label {labels.max()} is not a digit 0-9")
        tensor = torch.from_numpy(images.copy()).unsqueeze(1)
        super().__init__(
            tensor, torch.from_numpy(labels.astype(np.int64)), list("0123456789"), split
        )
        self.files = [image_path, label_path]
