"""Fixtures for the worker tests: real databases (as in tests/queue) and real `python worker.py` processes."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from loguru import logger
from loop_helpers import worker_process_arguments, worker_process_environment

from source.queue import TaskQueue, open_queue

REPO_ROOT = Path(__file__).resolve().parents[2]
WORKER_SCRIPT = REPO_ROOT / "worker.py"


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'tasks.db'}"


@pytest.fixture
def sqlite_queue(sqlite_url: str) -> Iterator[TaskQueue]:
    queue = open_queue(sqlite_url)
    queue.migrate()
    yield queue
    queue.close()


@pytest.fixture
def restore_loguru() -> Iterator[None]:
    """In-process worker runs reconfigure loguru; put a plain stderr sink back afterwards."""
    yield
    logger.remove()
    logger.configure(extra={})
    logger.add(sys.__stderr__, level="INFO")


@dataclass
class WorkerProcess:
    worker_id: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def wait(self, timeout: float) -> int:
        return self.process.wait(timeout=timeout)

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def records(self) -> list[dict[str, Any]]:
        """The worker's --log-json lines (loguru's serialize format), as their `record` objects."""
        records = []
        for line in self.log_path.read_text(encoding="utf-8").splitlines():
            if line.startswith("{"):
                records.append(json.loads(line)["record"])
        return records

    def claimed(self) -> list[str]:
        return [r["extra"]["task_id"] for r in self.records() if r["message"].startswith("claimed task ")]

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8")


@pytest.fixture
def spawn_worker(tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """Starts `python worker.py --db URL --log-json ...` with its own log file; kills leftovers at teardown."""
    started: list[WorkerProcess] = []
    env = worker_process_environment()

    def spawn(db_url: str | None, *args: str, worker_id: str | None = None) -> WorkerProcess:
        """`db_url` None: no --db at all (Reigh's edge API, given through `args`)."""
        worker_id = worker_id or f"test-worker-{len(started)}"
        log_path = tmp_path / f"{worker_id}.log"
        command = [
            sys.executable,
            str(WORKER_SCRIPT),
            *(("--db", db_url) if db_url else ()),
            "--worker-id",
            worker_id,
            *worker_process_arguments(tmp_path / "outputs"),
            *args,
        ]
        with log_path.open("wb") as log_file:
            process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=log_file, stderr=subprocess.STDOUT)
        worker = WorkerProcess(worker_id, process, log_path)
        started.append(worker)
        return worker

    yield spawn
    for worker in started:
        if worker.process.poll() is None:
            worker.process.send_signal(signal.SIGKILL)
            worker.process.wait(timeout=10)
