"""The worker: claims tasks from the queue and runs their handlers, one at a time (`python worker.py`).

    exit_code = run(settings, registry=default_registry(), services=WorkerServices(engine_factory=...))

Exit codes: 0 stopped normally (signal, --once, --max-tasks), 1 a fatal worker error (GPU broken) or a queue that
failed mid-run, 2 could not start (bad URL, database unreachable).
"""

from __future__ import annotations

from source.tasks.context import WorkerServices
from source.tasks.registry import default_registry
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
    "main",
    "run",
    "settings_from_values",
]


def main(settings: WorkerSettings) -> int:
    """Runs a worker with the default registry and no engine or storage services (diagnostic tasks only, unless
    `source.tasks.builtin_handlers` registers more)."""
    return run(settings, registry=default_registry(), services=WorkerServices())
