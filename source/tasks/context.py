"""The contract between the worker loop and a task handler.

A handler is `Callable[[TaskContext], TaskOutcome]`. It reads `ctx.task` (the claimed row), does its work, reports
progress, and returns an outcome, or raises one of the three failure kinds:

- `TaskInputError`: the payload is wrong; the task fails at once and is never retried. Name the field.
- `TransientTaskError` (or any other exception): network, database, CUDA OOM; retried up to the attempt cap.
- `FatalWorkerError`: the GPU or driver is broken; the task is released untouched and the worker exits non-zero.

`TaskCancelled` is raised (by `ctx.raise_if_cancelled()` / `ctx.sleep()`) once the worker asks the handler to stop:
at shutdown after the grace period, or when the task was cancelled or reclaimed meanwhile.
"""

from __future__ import annotations

import math
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from loguru import logger
from pydantic import BaseModel

from source.params.base import PayloadModel
from source.params.errors import PayloadError, parse_model
from source.queue import ChildSpec, QueueError, TaskQueue, TaskRecord
from source.storage.paths import safe_component
from Wan2GP.catalog import Catalog, load_catalog

ModelT = TypeVar("ModelT", bound=BaseModel)


class TaskInputError(Exception):
    """Bad input: the task fails at once and is never retried. The message names the field."""


class TransientTaskError(Exception):
    """A failure that may pass (network, database, out of memory): retried up to the task's attempt cap."""


class FatalWorkerError(Exception):
    """This worker cannot go on (GPU/driver broken): the task is released and the worker exits non-zero."""


class TaskCancelled(Exception):
    """The worker asked the handler to stop (shutdown, cancellation, lost lease)."""


class ServiceNotConfigured(RuntimeError):
    """A handler asked for a service (engine, storage) that this worker was started without."""


@dataclass(frozen=True)
class TaskOutcome:
    """What a handler returns. `awaiting_children=True`: the task enqueued children and stays In Progress (without
    a lease) until the last child completes; its output then becomes the completing child's output."""

    output_location: str | None = None
    result: dict[str, Any] = field(default_factory=dict)
    awaiting_children: bool = False
    message: str = ""


@dataclass(frozen=True)
class TaskSettings:
    """What a handler may read of the worker's settings, and nothing else: where its own outputs and LoRAs live, what
    inputs it may fetch (roots, addresses, sizes, time), and what enhance_prompt does without its model. The worker
    builds it from its own settings (WorkerSettings.for_tasks): handlers never see the worker's."""

    output_dir: Path
    lora_dir: Path
    input_roots: tuple[Path, ...]
    allow_private_urls: bool
    supabase_url: str | None  # our own bucket's host is a trusted download host
    max_image_mb: float
    max_video_mb: float
    max_lora_mb: float
    download_seconds: float
    stall_seconds: float
    prompt_fallback: bool


@dataclass
class WorkerServices:
    """Heavy services, created on first use by factories given at start-up (so the worker loop never imports
    torch), then reused by every task this worker runs."""

    engine_factory: Callable[[], Any] | None = None
    storage_factory: Callable[[], Any] | None = None
    # The model definitions handlers look models up in: the bundled ones plus the worker's --defaults-dir folders,
    # loaded (and validated) once at start-up; the engine gets the same catalog.
    catalog: Catalog = field(default_factory=load_catalog)
    _engine: Any = field(default=None, init=False, repr=False)
    _storage: Any = field(default=None, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def engine(self) -> Any:
        with self._lock:
            if self._engine is None:
                if self.engine_factory is None:
                    raise ServiceNotConfigured("this worker has no engine: it was started without an engine factory")
                logger.info("creating the engine (first task that needs it)")
                self._engine = self.engine_factory()
            return self._engine

    def loaded_model(self) -> str | None:
        """The model the engine holds now, if an engine exists (never creates one): Reigh's claim prefers tasks for
        the model a worker already has, so the heartbeat reports it."""
        engine = self._engine
        loaded = getattr(engine, "loaded_model", None) if engine is not None else None
        return loaded() if callable(loaded) else None

    def storage(self) -> Any:
        with self._lock:
            if self._storage is None:
                if self.storage_factory is None:
                    raise ServiceNotConfigured("this worker has no storage: it was started without a storage factory")
                self._storage = self.storage_factory()
            return self._storage

    def close(self) -> None:
        with self._lock:
            for service in (self._engine, self._storage):
                close = getattr(service, "close", None)
                if callable(close):
                    try:
                        close()
                    except Exception:  # closing is best effort at shutdown
                        logger.exception("closing {} failed", type(service).__name__)
            self._engine = self._storage = None


@dataclass
class TaskContext:
    """Everything a handler gets. `work_dir` is a fresh scratch folder for this task (removed after success)."""

    task: TaskRecord
    queue: TaskQueue
    worker_id: str
    output_dir: Path
    work_dir: Path
    settings: TaskSettings
    services: WorkerServices
    cancel_event: threading.Event = field(default_factory=threading.Event)
    progress_write_interval_seconds: float = 1.0
    _last_progress_write: float = field(default=-math.inf, init=False, repr=False)
    _progress_bar: Any = field(default=None, init=False, repr=False)
    _last_step_and_total: tuple[int, int] = field(default=(0, 0), init=False, repr=False)

    @property
    def params(self) -> dict[str, Any]:
        return self.task.params

    def report_progress(self, step: int, total: int, message: str = "") -> None:
        """Logs "step i/n (p%)", moves the terminal's progress bar, and writes the row's progress column (at most
        once per `progress_write_interval_seconds`, but always the first and the last step)."""
        self._last_step_and_total = (step, total)
        percent = 100.0 * step / total if total > 0 else 0.0
        suffix = f": {message}" if message else ""
        logger.info("step {}/{} ({:.0f}%){}", step, total, percent, suffix)
        self._update_bar(step, total, message)
        now = time.monotonic()
        is_edge = step <= 1 or step >= total
        if not is_edge and now - self._last_progress_write < self.progress_write_interval_seconds:
            return
        self._last_progress_write = now
        try:
            self.queue.report_progress(self.task.id, self.worker_id, step=step, total=total, message=message)
        except QueueError as error:  # progress is informative; never fail a task because it could not be written
            logger.warning("could not write progress: {}", error)

    def report_stage(self, message: str) -> None:
        """A stage without steps of its own (fetching an input, storing the output): logged, and written to the row
        on the task's current step and total (0 of 0 before any step is known), so the row is never silent."""
        logger.info(message)
        step, total = self._last_step_and_total
        try:
            self.queue.report_progress(self.task.id, self.worker_id, step=step, total=total, message=message)
        except QueueError as error:
            logger.warning("could not write progress: {}", error)

    def store_output(self, path: Path) -> Any:
        """Store the task's output (local folder or bucket, the worker's storage) under its task type and id."""
        self.report_stage("storing the output")
        return self.services.storage().store(path, task_type=self.task.task_type, task_id=self.task.id)

    def _update_bar(self, step: int, total: int, message: str) -> None:
        """On a terminal, one bar for the task in hand: its type, step/total, ETA, and the stage (phase, expert)."""
        if not sys.stderr.isatty():
            return
        from tqdm import tqdm  # only on a terminal

        if self._progress_bar is None or self._progress_bar.total != total:
            self.close_progress()
            self._progress_bar = tqdm(total=total, desc=self.task.task_type, unit="step", leave=False, file=sys.stderr)
        self._progress_bar.n = step
        self._progress_bar.set_postfix_str(message, refresh=False)
        self._progress_bar.refresh()

    def close_progress(self) -> None:
        if self._progress_bar is not None:
            self._progress_bar.close()
            self._progress_bar = None

    def raise_if_cancelled(self) -> None:
        if self.cancel_event.is_set():
            raise TaskCancelled(f"task {self.task.id} was asked to stop")

    def sleep(self, seconds: float) -> None:
        """Sleeps, but wakes up and raises TaskCancelled as soon as the worker asks the handler to stop."""
        if self.cancel_event.wait(max(0.0, seconds)):
            raise TaskCancelled(f"task {self.task.id} was asked to stop")

    def enqueue_children(self, children: Sequence[ChildSpec]) -> list[str]:
        """Idempotent: a re-run of this task gets the ids of the children it created before."""
        return self.queue.enqueue_children(self.task.id, children)


STALE_WORK_DIR_SECONDS = 24 * 3600  # no task runs this long; a folder this old was left by a killed worker


def make_work_dir(work_root: Path, task_id: str) -> Path:
    """A new, empty scratch folder for one run of a task, inside `work_root` whatever the task id holds (ids come
    from rows other apps write: "../../x" must not name a folder outside). Unique per run, so two workers on one
    host never share one, even for the same task."""
    work_root.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"{safe_component(task_id, max_length=60)}-", dir=work_root))


def remove_stale_work_dirs(work_root: Path, *, older_than_seconds: float = STALE_WORK_DIR_SECONDS) -> int:
    """Removes scratch folders left by killed workers (every other end of a task removes its own)."""
    if not work_root.is_dir():
        return 0
    cutoff = time.time() - older_than_seconds
    removed = 0
    for entry in work_root.iterdir():
        try:
            if entry.is_dir() and not entry.is_symlink() and entry.stat().st_mtime < cutoff:
                shutil.rmtree(entry, ignore_errors=True)
                removed += 1
        except OSError:
            continue
    if removed:
        logger.info(
            "removed {} scratch folder(s) older than {:.0f} h from {}", removed, older_than_seconds / 3600, work_root
        )
    return removed


def parse_params(model: type[ModelT], params: Any, *, prefix: str = "params") -> ModelT:
    """Validates a payload into `model`; a bad one raises TaskInputError naming the wrong field and what was
    expected, e.g. "params.seconds: expected a number >= 0, got -1" (source.params.errors formats it)."""
    try:
        parsed = parse_model(model, params, root=prefix)
    except PayloadError as error:
        raise TaskInputError(str(error)) from None
    if isinstance(parsed, PayloadModel):
        report_unused_keys(parsed, prefix)
    return parsed


def report_unused_keys(payload: PayloadModel, prefix: str = "") -> None:
    """One INFO line naming every key the payload gave that this worker will not use, and why, so nothing a sender
    asked for disappears without a trace (docs/reigh_payloads.md lists the reasons)."""
    unused = payload.unused_keys(prefix)
    if unused:
        listed = "; ".join(f"{path} ({reason})" for path, reason in unused)
        logger.info(f"{len(unused)} payload key(s) not used: {listed}")
