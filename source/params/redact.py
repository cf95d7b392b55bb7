"""Secret redaction for anything that echoes task params: logs, CLI output, error messages, stored outputs.

A key is secret when its name says so: it contains `password`, `passwd`, `secret`, `token`, `apikey`/`api_key`,
`credential`, `bearer`, `authorization`, `cookie` or `private_key`, or it is `key`/`auth`/`jwt`/`signature`/`sig`,
or ends in `_key`/`-key` (case-insensitive; `keyframe` is not a key). Values under such keys become "***" at any
depth, inside lists too. Some values are secrets whatever their key: `Bearer …` / `Basic …` strings and JSON web
tokens become "***", and URLs lose their user:password and the query parameters that carry signatures or tokens.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

REDACTED = "***"

_SECRET_WORDS = (
    "password",
    "passwd",
    "secret",
    "token",
    "apikey",
    "api_key",
    "credential",
    "bearer",
    "authorization",
    "cookie",
    "private_key",
)
_SECRET_NAMES = frozenset({"key", "auth", "jwt", "signature", "sig", "pwd"})
_AUTH_VALUE = re.compile(r"^\s*(bearer|basic|token)\s+\S+", re.IGNORECASE)
_JWT_VALUE = re.compile(r"^eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*$")
_URL_VALUE = re.compile(r"^[a-z][a-z0-9+.-]*://", re.IGNORECASE)
# A URL inside free text (an exception message, a log line): up to the first space or quote.
URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")


def is_secret_key(key: object) -> bool:
    if not isinstance(key, str):
        return False
    name = key.strip().lower().replace("-", "_")
    return name in _SECRET_NAMES or name.endswith("_key") or any(word in name for word in _SECRET_WORDS)


def redact_text(text: str) -> str:
    """A single string as it may be shown: "***" if it is a credential itself, a URL without its secrets."""
    if _AUTH_VALUE.match(text) or _JWT_VALUE.match(text.strip()):
        return REDACTED
    if _URL_VALUE.match(text):
        return _redact_url_secrets(text)
    return text


def _redact_url_secrets(url: str) -> str:
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if "@" in netloc:
            netloc = f"{REDACTED}@{netloc.rsplit('@', 1)[1]}"
        query = "&".join(
            f"{pair.partition('=')[0]}={REDACTED}" if _is_secret_query_key(unquote(pair.partition("=")[0])) else pair
            for pair in parts.query.split("&")
        )
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    except ValueError:  # not a URL after all (a bad port, brackets): show nothing of it
        return REDACTED


def _is_secret_query_key(key: str) -> bool:
    # Signed URLs (Supabase `token`, S3 `X-Amz-Signature`/`X-Amz-Credential`, GCS `Signature`) carry them here.
    name = key.lower()
    return is_secret_key(name) or name.startswith("x-amz-") or name in {"expires", "policy", "key-pair-id"}


def redact(obj: Any) -> Any:
    """A deep copy of `obj` with the values of secret keys replaced by "***" (and secret-looking strings scrubbed).
    The input is not modified. Iterative, so a hostile payload nested thousands deep cannot exhaust the stack."""
    root: list[Any] = [None]
    stack: list[tuple[Any, Any, Any]] = [(obj, root, 0)]  # (value, container to fill, index or key)
    while stack:
        value, container, slot = stack.pop()
        if isinstance(value, Mapping):
            copy: dict[Any, Any] = {}
            container[slot] = copy
            for key, item in value.items():
                if is_secret_key(key) and item is not None:
                    copy[key] = REDACTED
                else:
                    copy[key] = None
                    stack.append((item, copy, key))
        elif isinstance(value, list | tuple):
            items: list[Any] = [None] * len(value)
            container[slot] = items
            stack.extend((item, items, index) for index, item in enumerate(value))
        elif isinstance(value, str):
            container[slot] = redact_text(value)
        else:
            container[slot] = value
    return root[0]
