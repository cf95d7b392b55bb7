"""The worker: claims tasks from the queue and runs their handlers, one at a time (`python worker.py`).

    exit_code = run(settings, registry=default_registry(), services=WorkerServices(engine_factory=...))

Exit codes: 0 stopped normally (signal, --once, --max-tasks), 1 a fatal worker error (GPU broken) or a queue that
failed mid-run, 2 could not start (bad URL, database unreachable).
"""

from __future__ import annotations

from source.tasks.context import WorkerServices
from source.worker.loop import EXIT_FATAL, EXIT_OK, EXIT_STARTUP_FAILED, Supervisor, Worker, run
from source.worker.settings import SettingsError, WorkerSettings, default_worker_id, settings_from_values
from source.worker.shutdown import ShutdownController

__all__ = [
    "EXIT_FATAL",
    "EXIT_OK",
    "EXIT_STARTUP_FAILED",
    "SettingsError",
    "ShutdownController",
    "Supervisor",
    "Worker",
    "WorkerServices",
    "WorkerSettings",
    "default_worker_id",
    "run",
    "settings_from_values",
]
