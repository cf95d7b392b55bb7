"""Logging for the worker: loguru to stderr, every line carrying the worker id and the task id ("-" between
tasks). `--log-json` writes one JSON object per line (loguru's serialize format: `record.extra.task_id` ...).

Libraries that log through the standard `logging` module (huggingface_hub, diffusers, httpx) and Python warnings are
routed into the same sink, at WARNING and above, so no raw line escapes the format; httpx's own INFO line, which
prints every request URL query string and all, is never shown.
"""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING

from loguru import logger

if TYPE_CHECKING:
    from loguru import Record

NO_TASK = "-"
_HUMAN_FORMAT = (
    "<green>{time:YYYY-MM-DD HH:mm:ss.SSS}</green> | <level>{level: <7}</level> | "
    "<cyan>{extra[worker_id]}</cyan> | task {extra[task_id]} | <level>{message}</level>"
)


def _write_above_progress_bar(message: str) -> None:
    from tqdm import tqdm  # only on a terminal, where a progress bar may be showing

    tqdm.write(message, end="", file=sys.stderr)


MAX_MESSAGE_CHARS = 4000  # a 10 MB value echoed by some library must not become a 10 MB log line


def _bounded(record: Record) -> None:
    message = record["message"]
    if len(message) > MAX_MESSAGE_CHARS:
        record["message"] = f"{message[:MAX_MESSAGE_CHARS]}... ({len(message) - MAX_MESSAGE_CHARS} more characters)"


class _IntoLoguru(logging.Handler):
    """A standard-library log record, re-emitted through loguru (keeping its level and logger name)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level: str | int = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        logger.opt(exception=record.exc_info).log(level, "{}: {}", record.name, record.getMessage())


def _route_standard_logging() -> None:
    logging.basicConfig(handlers=[_IntoLoguru()], level=logging.WARNING, force=True)
    logging.captureWarnings(True)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    # huggingface_hub gives its logger a stderr handler of its own at import: its lines would print twice, once raw.
    # (transformers and diffusers do the same; the engine factory sends theirs up here when it imports them.)
    hub = logging.getLogger("huggingface_hub")
    for handler in list(hub.handlers):
        hub.removeHandler(handler)
    hub.propagate = True


def configure_logging(*, level: str, json_lines: bool, worker_id: str) -> None:
    """Replaces loguru's sinks (called once at start-up by the worker entry point)."""
    logger.remove()
    logger.configure(extra={"task_id": NO_TASK, "worker_id": worker_id}, patcher=_bounded)
    _route_standard_logging()
    if json_lines:
        logger.add(sys.stderr, level=level.upper(), serialize=True, backtrace=False, diagnose=False)
        return
    on_terminal = sys.stderr.isatty()
    logger.add(
        _write_above_progress_bar if on_terminal else sys.stderr,
        level=level.upper(),
        format=_HUMAN_FORMAT,
        colorize=on_terminal,
        backtrace=False,
        diagnose=False,  # diagnose would print local variables, params and secrets included
    )
