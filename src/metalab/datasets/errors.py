"""Errors raised for missing, corrupt or inconsistent dataset files.

Every error names the path it is about, so that a person can find the file and fix it.
"""

from __future__ import annotations

from pathlib import Path


class DatasetFileError(Exception):
    """A dataset file or folder cannot be used; ``path`` names it."""

    def __init__(self, path: str | Path, message: str) -> None:
        self.path = Path(path)
        super().__init__(f"{self.path}: {message}")


class MissingDatasetError(DatasetFileError, FileNotFoundError):
    """A dataset file or folder that is needed does not exist (and could not be fetched)."""


class CorruptDatasetError(DatasetFileError, ValueError):
    """A dataset file exists but is corrupt, truncated, fails its checksum or is empty."""
