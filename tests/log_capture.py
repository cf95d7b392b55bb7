"""The worker's loguru records, captured for tests that assert what was logged."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from loguru import logger


@contextmanager
def captured_warnings() -> Iterator[list[str]]:
    """The loguru WARNING (and worse) messages logged inside the block."""
    with captured_messages("WARNING") as messages:
        yield messages


@contextmanager
def captured_messages(level: str) -> Iterator[list[str]]:
    """The loguru messages at `level` and worse logged inside the block."""
    messages: list[str] = []
    handler_id = logger.add(lambda message: messages.append(message.record["message"]), level=level)
    try:
        yield messages
    finally:
        logger.remove(handler_id)
