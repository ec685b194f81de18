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
        "mini-imagenet": _mini_imagenet,
        "cifar-fs": _cifar_fs,
    }
    if name == "glyphs":
        return [("fonts", "embedded: rendered from matplotlib's fonts on first use, then cached")]
    if name == "digits":
        return [("sklearn", "embedded: bundled with scikit-learn")]
    if name not in checks:
        raise ValueError(f"unknown dataset {name!r}; expected one of {list(checks)}")
    return checks[name](resolve_root(root, name))


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
