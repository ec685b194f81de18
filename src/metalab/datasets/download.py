"""Fetching, verifying and extracting dataset archives.

A :class:`RemoteFile` names a file by its canonical URL and sha256. :func:`ensure_file`
returns the verified local copy, downloading it (to a temporary name, renamed once the
checksum matches) only when asked to; :func:`extract_zip` unpacks an archive into a
temporary folder and renames it into place, so a folder is either complete or absent.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .atomic import atomic_extraction, atomic_file
from .errors import CorruptDatasetError, MissingDatasetError

CHUNK = 1 << 20


@dataclass(frozen=True)
class RemoteFile:
    """A file that can be fetched from ``url`` and must hash to ``sha256``."""

    filename: str
    url: str
    sha256: str
    size: int | None = None


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's contents."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def verify_file(path: Path, remote: RemoteFile) -> None:
    """Raise :class:`CorruptDatasetError` unless ``path`` has ``remote``'s size and sha256."""
    size = path.stat().st_size
    if remote.size is not None and size != remote.size:
        raise CorruptDatasetError(
            path,
            f"has {size} bytes but {remote.filename} has {remote.size} (truncated or a "
            f"different file); delete it and fetch it again from {remote.url}",
        )
    actual = sha256_file(path)
    if actual != remote.sha256:
        raise CorruptDatasetError(
            path,
            f"sha256 is {actual} but {remote.filename} must hash to {remote.sha256}; "
            f"delete it and fetch it again from {remote.url}",
        )


def download(remote: RemoteFile, dest: Path, timeout: float = 60.0) -> Path:
    """Download ``remote`` to ``dest`` atomically, verifying size and sha256 first."""
    with atomic_file(dest) as tmp:
        try:
            with urllib.request.urlopen(remote.url, timeout=timeout) as response:  # noqa: S310
                with open(tmp, "wb") as out:
                    shutil.copyfileobj(response, out, CHUNK)
        except (urllib.error.URLError, OSError) as exc:
            raise MissingDatasetError(
                dest,
                f"could not download {remote.url} ({exc}). Without network access, fetch "
                f"{remote.filename} elsewhere and place it at {dest}",
            ) from exc
        try:
            verify_file(tmp, remote)
        except CorruptDatasetError as exc:
            raise CorruptDatasetError(dest, f"downloaded file rejected: {exc}") from exc
    return dest


def ensure_file(remote: RemoteFile, folder: Path, download_missing: bool) -> Path:
    """Return ``folder/remote.filename`` verified, downloading it if allowed and absent."""
    path = folder / remote.filename
    if path.is_file():
        verify_file(path, remote)
        return path
    if not download_missing:
        raise MissingDatasetError(
            path,
            f"not found. Place {remote.filename} (from {remote.url}, sha256 "
            f"{remote.sha256}) at {path}, or pass download=True",
        )
    return download(remote, path)


def check_zip(path: Path) -> zipfile.ZipFile:
    """Open a zip archive and test every member's CRC; raise a clear error if corrupt."""
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise CorruptDatasetError(path, f"is not a readable zip archive ({exc})") from exc
    try:
        bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        archive.close()
        raise CorruptDatasetError(path, f"zip archive is truncated or corrupt ({exc})") from exc
    if bad is not None:
        archive.close()
        raise CorruptDatasetError(path, f"zip member {bad!r} fails its CRC check")
    return archive


def extract_zip(archive_path: Path, dest: Path) -> Path:
    """Extract ``archive_path`` so that its single top folder becomes ``dest``, atomically.

    The archive must hold exactly one top-level folder named ``dest.name`` (the layout of
    the official Omniglot archives; macOS ``__MACOSX/`` metadata is skipped). It is
    unpacked into a temporary folder next to ``dest`` and renamed into place; nothing is
    left behind if extraction fails.
    """
    with check_zip(archive_path) as archive:
        names = [n for n in archive.namelist() if n.strip("/") and not n.startswith("__MACOSX/")]
        tops = {name.split("/", 1)[0] for name in names}
        if tops != {dest.name}:
            raise CorruptDatasetError(
                archive_path,
                f"expected one top-level folder {dest.name!r}, found {sorted(tops)[:5]}",
            )
        unsafe = [name for name in names if name.startswith("/") or ".." in name.split("/")]
        if unsafe:
            raise CorruptDatasetError(archive_path, f"unsafe member path {unsafe[0]!r}")
        with atomic_extraction(dest) as tmp:
            archive.extractall(tmp, members=names)
    return dest
