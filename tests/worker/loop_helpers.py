"""Helpers for the worker tests: settings for running the loop in-process (fast polls and heartbeats, --once, no retry
delay), the arguments and environment of a `python worker.py` process, and waiting for a condition with a deadline."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from source.worker import WorkerSettings


def in_process_settings(url: str, tmp_path: Path, **overrides: Any) -> WorkerSettings:
    values: dict[str, Any] = dict(
        db_url=url,
        worker_id="in-process",
        poll_interval=0.05,
        output_dir=tmp_path / "outputs",
        once=True,
        lease_seconds=5.0,
        heartbeat_seconds=0.1,
        retry_delay_seconds=0.0,
    )
    values.update(overrides)
    return WorkerSettings(**values)


def wait_until(condition: Callable[[], bool], *, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def worker_process_arguments(output_dir: Path) -> list[str]:
    """What every test's `python worker.py` gets besides its queue and id: JSON logs, fast polls, no retry delay."""
    return ["--log-json", "--output-dir", str(output_dir), "--poll-interval", "0.2", "--retry-delay", "0"]


def worker_process_environment() -> dict[str, str]:
    """This environment without the worker's own settings (HW_*, Supabase, a database URL) the machine may have."""
    return {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("HW_", "SUPABASE_", "REIGH_")) and key != "DATABASE_URL"
    }
