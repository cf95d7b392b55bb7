"""Secret redaction for anything that echoes task params: logs, CLI output, error messages, stored outputs.

A key is secret when it is `password`, `secret`, `authorization`, `openai_api_key`, or ends in `_key` / `_token`
(case-insensitive). Values under such keys become "***" at any depth, inside lists too.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

REDACTED = "***"

_SECRET_NAMES = frozenset({"password", "passwd", "secret", "authorization", "openai_api_key", "api_key", "token"})
_SECRET_SUFFIXES = ("_key", "_token", "_secret", "_password")


def is_secret_key(key: object) -> bool:
    if not isinstance(key, str):
        return False
    name = key.strip().lower().replace("-", "_")
    return name in _SECRET_NAMES or name.endswith(_SECRET_SUFFIXES)


def redact(obj: Any) -> Any:
    """A deep copy of `obj` with the values of secret keys replaced by "***". The input is not modified."""
    if isinstance(obj, Mapping):
        return {
            key: REDACTED if is_secret_key(key) and value is not None else redact(value) for key, value in obj.items()
        }
    if isinstance(obj, list | tuple):
        return [redact(item) for item in obj]
    return obj
