"""Settings for running the worker loop in-process in tests: fast polls and heartbeats, --once, no retry delay."""

from __future__ import annotations

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
