"""Fixtures for the task-handler tests: a fresh SQLite queue per test and the real worker loop over it, with the
tiny models built once per session."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from source.demo import KEYFRAMES_DIR
from source.queue import TaskRecord, open_queue
from source.tasks import default_registry
from source.tasks.context import TaskContext, WorkerServices
from source.worker import WorkerSettings, run, settings_from_values
from source.worker.services import build_services


@pytest.fixture
def worker_env(tmp_path, model_cache):
    """A fresh SQLite queue and output folder; `drain()` runs the real worker loop until nothing is ready."""
    db_url = f"sqlite:///{tmp_path / 'tasks.db'}"
    queue = open_queue(db_url)
    queue.migrate()
    settings = settings_from_values(
        {
            "db": db_url,
            "output_dir": str(tmp_path / "outputs"),
            "once": True,
            "worker_id": "e2e-worker",
            "lora_dir": str(tmp_path / "loras"),
            "model_cache_dir": str(model_cache),
            "device": "cpu",
            "retry_delay": 0.0,
            # Payloads here name local files: the bundled keyframes and files a test writes (README: Hostile input).
            "input_roots": [str(KEYFRAMES_DIR), str(tmp_path)],
        },
        environ={},
    )

    class Env:
        def drain(self) -> int:
            """Runs the loop as worker.py does, on this env's settings (a test may replace them)."""
            services = build_services(self.settings)
            return run(self.settings, registry=default_registry(services.catalog), services=services)

        def context(
            self,
            task: TaskRecord,
            *,
            worker_id: str = "w",
            settings: WorkerSettings = settings,
            services: WorkerServices | None = None,
            output_dir: Path | None = None,
        ) -> TaskContext:
            """What the worker hands a handler, for running one in this process on a fresh work folder."""
            return TaskContext(
                task=task,
                queue=queue,
                worker_id=worker_id,
                output_dir=output_dir or tmp_path,
                work_dir=Path(tempfile.mkdtemp(prefix="work", dir=tmp_path)),
                settings=settings.for_tasks(),
                services=services or build_services(settings),
            )

    env = Env()
    env.queue, env.settings, env.tmp = queue, settings, tmp_path
    yield env
    queue.close()
