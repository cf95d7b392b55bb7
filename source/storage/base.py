"""What every output store promises, and the small facts they share."""

from __future__ import annotations

import mimetypes
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from source.storage.paths import safe_component, safe_file_name

VIDEO_SUFFIXES = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v"})

_CONTENT_TYPES = {
    ".mp4": "video/mp4",
    ".m4v": "video/mp4",
    ".mov": "video/quicktime",
    ".webm": "video/webm",
    ".mkv": "video/x-matroska",
    ".avi": "video/x-msvideo",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".png": "image/png",
    ".webp": "image/webp",
    ".gif": "image/gif",
    ".json": "application/json",
}


class StorageError(RuntimeError):
    """An output could not be stored; the message never contains a credential."""


@dataclass(frozen=True)
class StoredOutput:
    """Where a finished output now lives: a local path or a public URL, and its thumbnail (videos only)."""

    location: str
    thumbnail: str | None


class OutputStorage(Protocol):
    def store(self, local_path: Path, *, task_type: str, task_id: str) -> StoredOutput: ...


def is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_SUFFIXES


def content_type_for(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in _CONTENT_TYPES:
        return _CONTENT_TYPES[suffix]
    guessed, _encoding = mimetypes.guess_type(path.name)
    return guessed or "application/octet-stream"


def output_name(local_path: Path, task_id: str) -> str:
    """`<task_id>_<file name>`, unless the file name already starts with the task id."""
    task_part = safe_component(task_id)
    name = safe_file_name(local_path.name)
    return name if name.startswith(f"{task_part}_") else f"{task_part}_{name}"
