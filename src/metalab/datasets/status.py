"""Which files a dataset needs, which are present, and whether they verify.

Used by ``metalab data info``; reading a status never downloads or extracts anything.
"""

from __future__ import annotations

import os
from pathlib import Path

from .download import verify_file
from .errors import CorruptDatasetError
from .paths import resolve_root

Status = list[tuple[str, str]]


def file_status(name: str, root: str | os.PathLike[str] | None = None) -> Status:
    """``(path or source, state)`` pairs describing the files of dataset ``name``."""
    checks = {
        "omniglot": _omniglot,
        "mnist": _mnist,
        "rotated-mnist": _mnist,  # the MNIST files, rotated on load
        "mini-imagenet": _mini_imagenet,
        "cifar-fs": _cifar_fs,
        "femnist": _femnist,
        "cifar10": _cifar10,
        "cifar10-c": _cifar10_c,
    }
    if name in EMBEDDED:
        return [EMBEDDED[name]]
    if name == "multimnist":
        return [("digits", "embedded: scikit-learn's digits, or the MNIST files when found"),
                *_mnist(resolve_root(root, "mnist"))]
    if name not in checks:
        raise ValueError(f"unknown dataset {name!r}; expected one of "
                         f"{sorted([*checks, *EMBEDDED, 'multimnist'])}")
    return checks[name](resolve_root(root, "mnist" if name == "rotated-mnist" else name))


EMBEDDED = {
    "glyphs": ("fonts", "embedded: rendered from matplotlib's fonts on first use, then cached"),
    "digits": ("sklearn", "embedded: bundled with scikit-learn"),
    "rotated-digits": ("sklearn", "embedded: scikit-learn's digits, rotated on load"),
    "corrupted-glyphs": ("fonts", "embedded: glyphs with the library's corruptions applied"),
}


def _omniglot(root: Path) -> Status:
    from .omniglot_files import ARCHIVES, folder_name

    status = []
    for source, remote in ARCHIVES.items():
        folder, archive = root / folder_name(source), root / remote.filename
        if folder.is_dir():
            status.append((str(folder), f"{source}: extracted folder present"))
        elif archive.is_file():
            try:
                verify_file(archive, remote)
                state = "sha256 ok"
            except CorruptDatasetError as exc:
                state = f"FAILS verification ({str(exc).split(': ', 1)[-1][:60]}...)"
            status.append((str(archive), f"{source}: {state}"))
        else:
            status.append((str(archive), f"{source}: missing (download=True fetches it)"))
    return status


def _mnist(root: Path) -> Status:
    from .errors import MissingDatasetError
    from .mnist import FILES, find_idx

    status = []
    for names in FILES.values():
        for name in names:
            try:
                status.append((str(find_idx(root, name)), "present"))
            except MissingDatasetError:
                status.append((str(root / name), "missing"))
    return status


def _mini_imagenet(root: Path) -> Status:
    status = []
    for split in ("train", "val", "test"):
        pickle_path, csv_path = root / f"mini-imagenet-cache-{split}.pkl", root / f"{split}.csv"
        if pickle_path.is_file():
            status.append((str(pickle_path), "present (pickle form)"))
        elif csv_path.is_file():
            status.append((str(csv_path), "present (CSV form, images in images/)"))
        else:
            status.append((str(pickle_path), f"missing (or {csv_path.name} + images/)"))
    return status


def _cifar_fs(root: Path) -> Status:
    from .cifar_fs import ARCHIVE, FOLDER

    folder = root / FOLDER
    present = [p for p in ("train", "test", "meta") if (folder / p).is_file()]
    if len(present) == 3:
        return [(str(folder), "present (train, test, meta)")]
    if (root / ARCHIVE).is_file():
        return [(str(root / ARCHIVE), "archive present (extracted on first use)")]
    return [(str(folder), f"missing (have {present or 'none'} of train, test, meta)")]


def _femnist(root: Path) -> Status:
    from .errors import MissingDatasetError
    from .femnist import find_layout

    try:
        folder, published = find_layout(root, "train")
    except MissingDatasetError:
        return [(str(root), "missing ({train,val,test}/*.json or all_data/*.json)")]
    kind = "published user split" if published else "all_data, divided by user on load"
    return [(str(folder.parent if published else folder), f"present ({kind})")]


def _cifar10(root: Path) -> Status:
    from .cifar10 import ARCHIVE, FOLDER, TEST_BATCH, TRAIN_BATCHES

    for folder in (root / FOLDER, root):
        present = [b for b in (*TRAIN_BATCHES, TEST_BATCH) if (folder / b).is_file()]
        if present:
            missing = len(TRAIN_BATCHES) + 1 - len(present)
            return [(str(folder), "present" if not missing else f"{missing} batch files missing")]
    if (root / ARCHIVE).is_file():
        return [(str(root / ARCHIVE), "archive present (extracted on first use)")]
    return [(str(root / FOLDER), f"missing (or {ARCHIVE})")]


def _cifar10_c(root: Path) -> Status:
    from .cifar10 import C_ARCHIVE, C_FOLDER, C_LABELS

    folder = root / C_FOLDER
    if (folder / C_LABELS).is_file():
        files = sorted(p.stem for p in folder.glob("*.npy") if p.name != C_LABELS)
        corrupted = (str(folder), f"present ({len(files)} corruptions)")
    elif (root / C_ARCHIVE).is_file():
        corrupted = (str(root / C_ARCHIVE), "archive present (extracted on first use)")
    else:
        corrupted = (str(folder), "missing: the test groups are generated from CIFAR-10 instead")
    return [*_cifar10(root), corrupted]
