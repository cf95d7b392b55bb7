"""The one place that keeps paths named by payloads inside the folders they may use.

A payload is written by someone else's app: a task id, a file name from a URL or a path in a request must never
reach outside its folder (`../`, absolute parts, symlinks) nor collide with another one's file.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from pathlib import Path

_SAFE_COMPONENT = re.compile(r"[A-Za-z0-9._-]+")
_UNSAFE_RUN = re.compile(r"[^A-Za-z0-9._-]+")
_DIGEST_LENGTH = 10
# An altered component ends with "-" + the digest; an unaltered one never does, so the two can never meet.
_DIGEST_SUFFIX = re.compile(rf"-[0-9a-f]{{{_DIGEST_LENGTH}}}$")
_EXTENSION = re.compile(r"[A-Za-z0-9]{1,12}")


class PathOutsideRoot(ValueError):
    """A path named by a payload would leave the folder it is confined to."""


def _shown(parts: Sequence[str | Path]) -> str:
    return "/".join(str(part) for part in parts)


def confine(root: Path, *parts: str | Path) -> Path:
    """`root / parts`, with symlinks followed, if it stays inside `root` (also resolved); else PathOutsideRoot.

    The error names only the parts as given, never what they resolved to: that would tell a payload's author
    about this machine's files.
    """
    base = Path(root).resolve()
    try:
        candidate = base.joinpath(*parts).resolve()
    except (OSError, ValueError):  # a NUL byte, for one
        raise PathOutsideRoot(f"{_shown(parts)!r} is not a usable path") from None
    if not candidate.is_relative_to(base):
        raise PathOutsideRoot(f"{_shown(parts)!r} points outside its folder")
    return candidate


def within_roots(path: Path, roots: Sequence[Path]) -> Path | None:
    """`path` resolved (symlinks followed) if it lies inside one of `roots`, else None.

    A relative `path` is never inside: what it means would depend on the process's working folder.
    """
    path = Path(path)
    if not path.is_absolute():
        return None
    try:
        resolved = path.resolve()
    except (OSError, ValueError):
        return None
    for root in roots:
        if resolved.is_relative_to(Path(root).resolve()):
            return resolved
    return None


def safe_component(text: str, *, max_length: int = 80) -> str:
    """`text` as one file-name component of [A-Za-z0-9._-], at most `max_length` long, never hidden or special.

    Text that is already such a component is kept as it is. Otherwise it is cleaned and shortened, and "-" + the
    first 10 hex digits of its sha256 is appended, so two different texts never share a component (the suffix
    form is never produced unaltered). A leading "-" is altered too: tools read such names as options.
    """
    if max_length < 2 * (_DIGEST_LENGTH + 1):
        raise ValueError(f"max_length must be at least {2 * (_DIGEST_LENGTH + 1)}, not {max_length}")
    if (
        len(text) <= max_length
        and _SAFE_COMPONENT.fullmatch(text)
        and not text.startswith((".", "-"))
        and not _DIGEST_SUFFIX.search(text)
    ):
        return text
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:_DIGEST_LENGTH]
    stem = _UNSAFE_RUN.sub("_", text).lstrip(".-")[: max_length - _DIGEST_LENGTH - 1] or "_"
    return f"{stem}-{digest}"


def safe_file_name(name: str, *, default_stem: str = "download", max_length: int = 80) -> str:
    """A file name for `name` (e.g. a URL's last segment) that keeps a short extension, so tools and readers still
    see what kind of file it is: `safe_component` of the stem (or `default_stem` when there is none) + extension."""
    stem, dot, extension = name.rpartition(".")
    if not (dot and _EXTENSION.fullmatch(extension)):
        stem, extension = name, ""
    if not stem.strip():
        stem = default_stem
    suffix = f".{extension}" if extension else ""
    return safe_component(stem, max_length=max_length - len(suffix)) + suffix
