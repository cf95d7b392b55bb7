"""The row-decoding boundary: what a backend hands back becomes Python values here, or a reason it cannot.

Rows are written by other people's apps. A params column nested 100 000 deep, `{not json`, invalid UTF-8, a lone
surrogate or 10 MB of text must fail THAT task with a clear reason, never the worker that claimed it (nor `cli list`).
So nothing here raises on bad data: `decode_json` raises RowDecodeError, which the queue turns into
`TaskRecord.decode_error`; the worker fails such a task at once, without running a handler.

The other direction: every message the queue writes into a row (error_message, progress) goes through
`clean_message`, which bounds its length, keeps it valid UTF-8 and strips credentials from any URL in it.
"""

from __future__ import annotations

import json
import re
from typing import Any

from source.params.redact import URL_IN_TEXT, redact_text

MAX_JSON_BYTES = 2 * 1024 * 1024  # a Reigh travel payload with 50 signed image URLs is ~50 KB
MAX_JSON_DEPTH = 64  # payloads nest 4-5 deep (orchestrator_details.phase_config.phases[i].loras[j])
MAX_MESSAGE_CHARS = 2000  # error_message and progress text: enough for a field path and a reason
_BAD_CHARACTER = re.compile("[\x00\ud800-\udfff]")


class RowDecodeError(ValueError):
    """A column that cannot be decoded; the message names the column and what is wrong with it."""


class UndecodableText(str):
    """A text column whose bytes are not valid UTF-8 (SQLite stores what it is given). Holds the text with the bad
    bytes replaced, so the row can still be listed; the queue reports the column as undecodable."""


def sqlite_text(data: bytes) -> str:
    """SQLite's text_factory: strict UTF-8, else an UndecodableText instead of an exception that would make the whole
    row (and every statement that reads it) unreadable."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return UndecodableText(data.decode("utf-8", "replace"))


def decode_json(text: str | bytes | None, column: str) -> Any:
    """JSON text from a row -> a value whose every string is valid Unicode, at most MAX_JSON_DEPTH deep."""
    if text is None:
        return None
    if isinstance(text, UndecodableText):
        raise RowDecodeError(f"{column}: not valid UTF-8 text")
    size = len(text)
    if isinstance(text, str) and size > MAX_JSON_BYTES // 4:  # only then can the UTF-8 form exceed the cap
        size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_JSON_BYTES:
        raise RowDecodeError(f"{column}: {size} bytes of JSON; at most {MAX_JSON_BYTES} are accepted")
    if not (text.strip() if isinstance(text, str) else text.strip()):
        raise RowDecodeError(f"{column}: empty text, expected a JSON value")
    try:
        value = json.loads(text)
    except RecursionError:
        raise RowDecodeError(f"{column}: JSON nested deeper than {MAX_JSON_DEPTH} levels") from None
    except UnicodeDecodeError:
        raise RowDecodeError(f"{column}: not valid UTF-8 text") from None
    except ValueError as error:  # JSONDecodeError: say where, not what (the text may hold secrets)
        position = getattr(error, "pos", None)
        where = f" at character {position}" if position is not None else ""
        raise RowDecodeError(f"{column}: not valid JSON{where}") from None
    check_json_value(value, column)
    return value


def check_json_value(value: Any, column: str) -> None:
    """Depth and text checks, iteratively (a hostile value must not exhaust the stack)."""
    stack: list[tuple[Any, str, int]] = [(value, column, 1)]
    while stack:
        item, path, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise RowDecodeError(f"{column}: JSON nested deeper than {MAX_JSON_DEPTH} levels")
        if isinstance(item, str):
            _check_text(item, path)
        elif isinstance(item, dict):
            for key, child in item.items():
                _check_text(key, path)
                stack.append((child, f"{path}.{_short(key)}", depth + 1))
        elif isinstance(item, list):
            stack.extend((child, f"{path}[{index}]", depth + 1) for index, child in enumerate(item))
        elif isinstance(item, float) and item != item:
            raise RowDecodeError(f"{path}: NaN is not a JSON number")


def _check_text(text: str, path: str) -> None:
    # JSON may spell a lone surrogate (\ud800) or NUL (\u0000): Python accepts both, PostgreSQL's jsonb and every
    # UTF-8 writer downstream do not, so a task carrying one would fail later, half-done.
    bad = _BAD_CHARACTER.search(text)
    if bad is not None:
        kind = "a NUL character" if bad.group(0) == "\x00" else "a lone surrogate (not valid Unicode)"
        raise RowDecodeError(f"{path}: text contains {kind}")


def _short(key: str) -> str:
    return key if len(key) <= 40 else key[:37] + "..."


def clean_message(text: object, limit: int = MAX_MESSAGE_CHARS) -> str:
    """A message as it may be written to a row or a log: valid UTF-8, no NUL, URLs without credentials or signed
    query parameters, at most `limit` characters."""
    message = str(text)
    if len(message) > limit * 4:
        message = message[: limit * 4]  # never run the URL scrubber over megabytes
    message = message.encode("utf-8", "replace").decode("utf-8").replace("\x00", "")
    message = URL_IN_TEXT.sub(lambda match: redact_text(match.group(0)), message)
    if len(message) > limit:
        message = f"{message[: limit - 40]}... ({len(str(text)) - limit + 40} more characters)"
    return message
