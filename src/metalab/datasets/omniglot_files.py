"""The official Omniglot files: archives, their checksums, and reading drawings from them.

Layout (Lake et al., https://github.com/brendenlake/omniglot, python/ folder)::

    images_background/<Alphabet>/<characterNN>/<drawer>.png   (30 alphabets, 964 characters)
    images_evaluation/...                                      (20 alphabets, 659 characters)
    images_background_small1/...                               (5 alphabets, 136 characters)
    images_background_small2/...                               (5 alphabets, 156 characters)

Each source may be present in ``root`` as the extracted folder or as the official zip
archive; a zip is read in place (no extraction needed, so a read-only ``root`` works) after
its sha256 is verified. ``download=True`` fetches a missing archive and extracts it
atomically next to it.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .download import RemoteFile, check_zip, ensure_file, extract_zip
from .errors import CorruptDatasetError, MissingDatasetError

URL_BASE = "https://github.com/brendenlake/omniglot/raw/master/python/"

# sha256 and sizes: the small archives' hashes match /shared/data/omniglot/SHA256SUMS; all four
# agree with TensorFlow Datasets' url_checksums/omniglot.txt for the same URLs.
ARCHIVES: dict[str, RemoteFile] = {
    "background": RemoteFile(
        "images_background.zip",
        URL_BASE + "images_background.zip",
        "ad41ab679c8b5d90b271ef46be6987cc81211774a695c29dcc5367b2b26ee640",
        9464212,
    ),
    "evaluation": RemoteFile(
        "images_evaluation.zip",
        URL_BASE + "images_evaluation.zip",
        "1f61a8f3366785b057fc117d9228e78a16e3d976c8953b2a10fcc74cf0609cee",
        6462886,
    ),
    "small1": RemoteFile(
        "images_background_small1.zip",
        URL_BASE + "images_background_small1.zip",
        "f38eb80f801274ac2b4dff5b24289016bfaba4a7d5bb50deebf27104ad6cb8a4",
        1319022,
    ),
    "small2": RemoteFile(
        "images_background_small2.zip",
        URL_BASE + "images_background_small2.zip",
        "3ccaa407515a8778e5d0861875af38b17e418f301ad5bb3b5a6b65d901a41c7f",
        1580917,
    ),
}

SOURCE_NAMES = tuple(ARCHIVES)


def folder_name(source: str) -> str:
    """Name of the extracted folder of a source (the archive name without ``.zip``)."""
    return archive_for(source).filename.removesuffix(".zip")


def archive_for(source: str) -> RemoteFile:
    """The :class:`RemoteFile` of a source name, with a clear error for unknown names."""
    if source not in ARCHIVES:
        raise ValueError(
            f"unknown Omniglot source {source!r}; expected one of {list(SOURCE_NAMES)}"
        )
    return ARCHIVES[source]


@dataclass
class OmniglotSource:
    """One Omniglot source, readable from a folder or a zip archive.

    ``characters`` maps ``(alphabet, character)`` to the sorted drawing paths (relative
    folder paths, or zip member names).
    """

    name: str
    path: Path
    characters: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    _archive: zipfile.ZipFile | None = field(default=None, repr=False)

    def close(self) -> None:
        """Close the zip archive if one is open."""
        if self._archive is not None:
            self._archive.close()
            self._archive = None

    @property
    def is_zip(self) -> bool:
        return self.path.suffix == ".zip"

    def read_drawings(self, key: tuple[str, str]) -> Iterator[tuple[str, bytes]]:
        """Yield ``(location, png_bytes)`` of every drawing of one character."""
        if self.is_zip:
            if self._archive is None:
                self._archive = zipfile.ZipFile(self.path)
            for member in self.characters[key]:
                yield f"{self.path}:{member}", self._archive.read(member)
        else:
            for member in self.characters[key]:
                file = self.path / member
                yield str(file), file.read_bytes()

    def alphabets(self) -> list[str]:
        """Sorted alphabet names of this source."""
        return sorted({alphabet for alphabet, _ in self.characters})


def locate_source(root: Path, source: str, download: bool) -> Path:
    """Path of a source's folder or verified archive in ``root`` (fetching it if allowed)."""
    remote = archive_for(source)
    folder = root / folder_name(source)
    if folder.is_dir():
        return folder
    archive = root / remote.filename
    if archive.is_file():
        return ensure_file(remote, root, download_missing=False)
    if not download:
        raise MissingDatasetError(
            folder,
            f"Omniglot source {source!r} not found. Place {remote.filename} (from "
            f"{remote.url}) at {archive}, or its extracted folder at {folder}, or pass "
            "download=True",
        )
    ensure_file(remote, root, download_missing=True)
    return extract_zip(archive, folder)


def source_paths(root: Path, sources: Sequence[str]) -> list[Path]:
    """Existing folder or archive paths for ``sources`` without verifying or fetching.

    Used to fingerprint caches cheaply; a source with neither yields its folder path.
    """
    paths = []
    for source in sources:
        folder = root / folder_name(source)
        archive = root / archive_for(source).filename
        paths.append(archive if not folder.is_dir() and archive.is_file() else folder)
    return paths


def open_source(root: Path, source: str, download: bool = False) -> OmniglotSource:
    """Locate, verify and index one source."""
    path = locate_source(root, source, download)
    if path.suffix == ".zip":
        characters = _index_zip(path, folder_name(source))
    else:
        characters = _index_folder(path)
    if not characters:
        raise CorruptDatasetError(path, "holds no <Alphabet>/<character>/*.png drawings")
    return OmniglotSource(source, path, characters)


def _index_folder(folder: Path) -> dict[tuple[str, str], list[str]]:
    characters: dict[tuple[str, str], list[str]] = {}
    for alphabet in sorted(p for p in folder.iterdir() if p.is_dir()):
        for character in sorted(p for p in alphabet.iterdir() if p.is_dir()):
            drawings = sorted(p.name for p in character.iterdir() if p.suffix == ".png")
            if not drawings:
                raise CorruptDatasetError(character, "character folder holds no .png drawings")
            rel = f"{alphabet.name}/{character.name}"
            characters[(alphabet.name, character.name)] = [f"{rel}/{d}" for d in drawings]
    return characters


def _index_zip(path: Path, top: str) -> dict[tuple[str, str], list[str]]:
    with check_zip(path) as archive:
        names = archive.namelist()
    characters: dict[tuple[str, str], list[str]] = {}
    for name in names:
        parts = name.rstrip("/").split("/")
        if len(parts) < 3 or parts[0] != top:
            continue
        key = (parts[1], parts[2])
        drawings = characters.setdefault(key, [])
        if len(parts) == 4 and parts[3].endswith(".png"):
            drawings.append(name)
    for key, drawings in characters.items():
        if not drawings:
            raise CorruptDatasetError(
                path, f"character folder {top}/{key[0]}/{key[1]} holds no .png drawings"
            )
        drawings.sort()
    return dict(sorted(characters.items()))


def png_from_bytes(data: bytes, location: str):
    """Decode PNG bytes with PIL; a truncated or corrupt file raises an error naming it."""
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise CorruptDatasetError(location, f"is not a readable PNG image ({exc})") from exc
    return image
