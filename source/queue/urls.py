"""Database URLs: which backend, which file, the default, and a form that is safe to log."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from source.queue.models import InvalidQueueUrl

DEFAULT_DB_URL = "sqlite:///tasks.db"
DB_URL_ENV_VARS = ("HW_DB_URL", "DATABASE_URL")
_SQLITE_SUFFIXES = (".db", ".sqlite", ".sqlite3")
_ACCEPTED = (
    "sqlite:///relative/path.db, sqlite:////absolute/path.db, postgresql://user:password@host:5432/dbname "
    "(postgres:// also works), or a bare path ending in .db/.sqlite/.sqlite3"
)


@dataclass(frozen=True)
class ParsedUrl:
    backend: Literal["sqlite", "postgres"]
    url: str
    sqlite_path: Path | None = None


def resolve_db_url(explicit: str | None = None, environ: Mapping[str, str] | None = None) -> str:
    """The URL to use: the one given, else $HW_DB_URL, else $DATABASE_URL, else sqlite:///tasks.db."""
    if explicit:
        return explicit
    env = os.environ if environ is None else environ
    for name in DB_URL_ENV_VARS:
        value = env.get(name, "").strip()
        if value:
            return value
    return DEFAULT_DB_URL


def parse_db_url(url: str) -> ParsedUrl:
    text = url.strip()
    if not text:
        raise InvalidQueueUrl(f"database URL: expected {_ACCEPTED}; got an empty string")
    lowered = text.lower()
    if lowered.startswith(("postgresql://", "postgres://")):
        if lowered.startswith("postgres://"):  # libpq accepts both; keep what was given
            text = "postgresql://" + text[len("postgres://") :]
        return ParsedUrl("postgres", text)
    if lowered.startswith("sqlite:"):
        rest = text[len("sqlite:") :]
        # SQLAlchemy's convention: three slashes then a relative path, four for an absolute one.
        path_text = rest[3:] if rest.startswith("///") else rest[2:] if rest.startswith("//") else rest
        if not path_text or path_text == ":memory:":
            raise InvalidQueueUrl(
                f"database URL {url!r}: an in-memory SQLite database cannot be shared by the worker's threads and "
                f"processes; give a file, e.g. sqlite:///tasks.db"
            )
        return ParsedUrl("sqlite", text, Path(path_text).expanduser())
    if "://" not in text and text.lower().endswith(_SQLITE_SUFFIXES):
        return ParsedUrl("sqlite", f"sqlite:///{text}", Path(text).expanduser())
    raise InvalidQueueUrl(f"database URL {redact_url(url)!r}: expected {_ACCEPTED}")


_PASSWORD_IN_NETLOC = re.compile(r"^(?P<scheme>[a-z]+://[^:/@]*):(?P<password>[^@]*)@", re.IGNORECASE)
_PASSWORD_IN_QUERY = re.compile(r"(?P<key>[?&]password=)[^&]*", re.IGNORECASE)


def redact_url(url: str) -> str:
    """The URL with any password replaced by ***, for logs and error messages."""
    redacted = _PASSWORD_IN_NETLOC.sub(lambda match: f"{match.group('scheme')}:***@", url)
    return _PASSWORD_IN_QUERY.sub(lambda match: f"{match.group('key')}***", redacted)
