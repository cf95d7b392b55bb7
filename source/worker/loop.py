"""The claim -> run -> finish loop.

One task at a time, run in the main thread. One supervisor thread, alive as long as the worker, renews the running
task's lease and the worker's heartbeat every `heartbeat_seconds` (the heartbeat also while idle), and asks the
handler to stop (`cancel_event`) when the lease is lost (the task was cancelled or reclaimed) or the shutdown grace
period is over. The loop knows nothing of task types: handlers come from the registry.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from loguru import logger
from tenacity import retry, retry_if_exception_type, stop_after_delay, wait_exponential

from source.queue import (
    QueueError,
    QueueUnavailable,
    TaskNotOwned,
    TaskQueue,
    TaskRecord,
    TaskStatus,
    WorkerIdInUse,
    open_queue,
    open_reigh_edge,
)
from source.tasks.context import (
    FatalWorkerError,
    TaskCancelled,
    TaskContext,
    TaskInputError,
    TaskOutcome,
    TransientTaskError,
    WorkerServices,
    make_work_dir,
    remove_stale_work_dirs,
)
from source.tasks.registry import TaskRegistry
from source.worker.logs import configure_logging
from source.worker.settings import WorkerSettings
from source.worker.shutdown import ShutdownController

READINESS_REFRESH_SECONDS = 300.0  # re-check waiting tasks' dependencies (queue.refresh_readiness) this often
EXIT_OK = 0
EXIT_FATAL = 1
EXIT_STARTUP_FAILED = 2
MAX_RETRY_DELAY_SECONDS = 300.0
FINISH_RETRY_SECONDS = 60.0  # how long to keep trying to record a task's end while the database is unreachable


def run(
    settings: WorkerSettings,
    *,
    registry: TaskRegistry,
    services: WorkerServices | None = None,
    install_signal_handlers: bool = True,
    shutdown: ShutdownController | None = None,
) -> int:
    """Runs the worker until stopped (or, with `settings.once`, until nothing is ready). Returns the exit code."""
    configure_logging(level=settings.log_level, json_lines=settings.log_json, worker_id=settings.worker_id)
    shutdown = shutdown or ShutdownController(settings.grace_seconds)
    services = services or WorkerServices()
    unhandled = sorted(set(settings.task_types or ()) - set(registry.known_types()))
    if unhandled:
        logger.error(
            "cannot start: --task-types names {} that this worker has no handler for (it handles: {})",
            ", ".join(unhandled),
            ", ".join(registry.known_types()),
        )
        return EXIT_STARTUP_FAILED
    try:
        queue = open_worker_queue(settings)
    except QueueError as error:
        logger.error("cannot start: {}", error)
        return EXIT_STARTUP_FAILED
    try:
        schema_version = queue.migrate()
    except QueueError as error:
        logger.error("cannot start: {}", error)
        queue.close()
        return EXIT_STARTUP_FAILED
    if install_signal_handlers:
        shutdown.install_signal_handlers()
    worker = Worker(settings, queue=queue, registry=registry, services=services, shutdown=shutdown)
    try:
        return worker.run(schema_version=schema_version)
    finally:
        if install_signal_handlers:
            shutdown.uninstall_signal_handlers()
        services.close()
        queue.close()


def open_worker_queue(settings: WorkerSettings) -> TaskQueue:
    """The database at --db, or, with no database URL, Reigh's edge functions."""
    if settings.db_url is None:
        assert settings.supabase_url and settings.supabase_access_token  # WorkerSettings checks the pair
        return open_reigh_edge(
            settings.supabase_url, settings.supabase_access_token, timeout=settings.edge_timeout_seconds
        )
    return open_queue(settings.db_url)


def row_says_cancelled(queue: TaskQueue, task_id: str) -> bool:
    """Whether the task's row now says Cancelled: a lease lost to a cancel is routine (INFO), to a reclaim a fault."""
    try:
        return queue.get(task_id).status is TaskStatus.CANCELLED
    except QueueError:
        return False


@dataclass
class _Finish:
    """How a task run ended, decided in the main thread and then written to the queue."""

    kind: Literal["complete", "await_children", "fail", "release", "drop"]
    outcome: TaskOutcome | None = None
    error_message: str = ""
    retryable: bool = False
    fatal: bool = False


class Worker:
    def __init__(
        self,
        settings: WorkerSettings,
        *,
        queue: TaskQueue,
        registry: TaskRegistry,
        services: WorkerServices,
        shutdown: ShutdownController,
    ) -> None:
        self.settings = settings
        self.queue = queue
        self.registry = registry
        self.services = services
        self.shutdown = shutdown
        self._metadata: dict[str, Any] = {}
        self._session_id = uuid.uuid4().hex  # this process's claim on the worker id (workers.session_id)
        # Only rows this worker can run are ever claimed: on a shared database (Reigh's) other types belong to other
        # workers and must stay untouched.
        self.claim_types: tuple[str, ...] = settings.task_types or tuple(registry.known_types())
        self.lost_worker_id = threading.Event()
        self.supervisor = Supervisor(
            queue=queue,
            settings=settings,
            shutdown=shutdown,
            beat=self._beat,
            on_abandon=self._abandon,
            worker_id_lost=self.lost_worker_id,
        )

    # ------------------------------------------------------------------------------------------ the loop

    def run(self, *, schema_version: int) -> int:
        settings = self.settings
        self._metadata = {
            "hostname": socket.gethostname(),
            "pid": os.getpid(),
            "handles": list(self.claim_types),
            "schema_version": schema_version,
            "python": sys.version.split()[0],
            # the GPU it runs on when it is one of `--gpus`' workers (source.worker.gpus)
            **(
                {"cuda_visible_devices": os.environ["CUDA_VISIBLE_DEVICES"]}
                if "CUDA_VISIBLE_DEVICES" in os.environ
                else {}
            ),
        }
        logger.info(
            "worker {} started on {} (schema v{}); handles: {}",
            settings.worker_id,
            self.queue.redacted_url,
            schema_version,
            ", ".join(self._metadata["handles"]) or "nothing",
        )
        exit_code = EXIT_OK
        final_status = "stopped"
        try:
            if not self._take_worker_id():
                return EXIT_STARTUP_FAILED
        except QueueError as error:
            logger.error("cannot start: {}", error)
            return EXIT_STARTUP_FAILED
        try:
            recovered = self.queue.reclaim_expired(of_worker=settings.worker_id)
            if recovered:
                logger.warning(
                    "put back {} task(s) a previous run of worker id {} left In Progress", recovered, settings.worker_id
                )
            self.queue.refresh_readiness()
            remove_stale_work_dirs(settings.work_root)
            self.supervisor.start()
            try:
                exit_code = self._loop()
            finally:
                self.supervisor.stop()
            if exit_code != EXIT_OK:
                final_status = "error"
        except QueueError as error:
            logger.error("stopping: the queue failed: {}", error)
            exit_code, final_status = EXIT_FATAL, "error"
        finally:
            self._beat(final_status, None)
            logger.info("worker {} {} (exit code {})", settings.worker_id, final_status, exit_code)
        return exit_code

    def _loop(self) -> int:
        settings = self.settings
        processed = 0
        next_refresh = time.monotonic() + READINESS_REFRESH_SECONDS
        while not self.shutdown.requested:
            if settings.max_tasks is not None and processed >= settings.max_tasks:
                logger.info("processed {} task(s) (--max-tasks): stopping", processed)
                break
            try:
                self.queue.reclaim_expired()
                if time.monotonic() >= next_refresh:
                    self.queue.refresh_readiness()
                    next_refresh = time.monotonic() + READINESS_REFRESH_SECONDS
                task = self.queue.claim(
                    settings.worker_id, lease_seconds=settings.lease_seconds, task_types=self.claim_types
                )
            except QueueUnavailable as error:
                if settings.once:
                    logger.error("the queue is unavailable: {}", error)
                    return EXIT_FATAL
                logger.warning("the queue is unavailable ({}); trying again in {:.0f} s", error, settings.poll_interval)
                self.shutdown.wait(settings.poll_interval)
                continue
            if task is None:
                if settings.once:
                    logger.info("nothing ready (--once): stopping after {} task(s)", processed)
                    break
                self.shutdown.wait(settings.poll_interval)
                continue
            processed += 1
            if self._process(task) is _Outcome.FATAL:
                return EXIT_FATAL
        return EXIT_OK

    # ------------------------------------------------------------------------------------------ one task

    def _process(self, task: TaskRecord) -> _Outcome:
        with logger.contextualize(task_id=task.id):
            logger.info(
                "claimed task {} ({}), attempt {} of {}", task.id, task.task_type, task.attempts + 1, task.max_attempts
            )
            self._beat("busy", task.id)
            work_dir: Path | None = None
            try:
                finish = self._reject(task)
                if finish is None:
                    work_dir = make_work_dir(self.settings.work_root, task.id)
                    finish = self._run(task, work_dir)
            except Exception as error:  # the worker's own plumbing failed around this task: the task fails, not us
                logger.error("could not run task {}: {}", task.id, _traceback_summary(error))
                finish = _Finish("fail", error_message=f"worker error: {type(error).__name__}: {error}", retryable=True)
            finally:
                if work_dir is not None:
                    shutil.rmtree(work_dir, ignore_errors=True)  # downloads and partial outputs, whatever the end
            self._finish(task, finish)
            self._beat("idle", None)
            return _Outcome.FATAL if finish.fatal else _Outcome.DONE

    def _reject(self, task: TaskRecord) -> _Finish | None:
        """Rows that fail before any handler runs: an undecodable row (the claim only takes handled task types)."""
        if task.decode_error is not None:
            return _Finish("fail", error_message=f"the task row cannot be read: {task.decode_error}")
        return None

    def _run(self, task: TaskRecord, work_dir: Path) -> _Finish:
        handler = self.registry.get(task.task_type)
        context = TaskContext(
            task=task,
            queue=self.queue,
            worker_id=self.settings.worker_id,
            output_dir=self.settings.output_dir,
            work_dir=work_dir,
            settings=self.settings.for_tasks(),
            services=self.services,
        )
        watch = self.supervisor.watch(task, context.cancel_event)
        started = time.monotonic()
        try:
            finish = self._run_handler(handler, context, watch)
        finally:
            self.supervisor.unwatch()
            context.close_progress()
        logger.info("handler finished in {:.1f} s: {}", time.monotonic() - started, finish.kind)
        return finish

    def _run_handler(
        self, handler: Callable[[TaskContext], TaskOutcome], context: TaskContext, watch: _Watch
    ) -> _Finish:
        try:
            outcome = handler(context)
        except TaskInputError as error:
            logger.error("bad input: {}", error)
            return _Finish("fail", error_message=str(error) or type(error).__name__, retryable=False)
        except TaskCancelled as error:
            if watch.lease_lost.is_set():
                return _Finish("drop", error_message=str(error))
            if self.shutdown.requested:
                return _Finish("release", error_message="worker shutting down")
            return _Finish("fail", error_message=f"the handler stopped itself: {error}", retryable=False)
        except FatalWorkerError as error:
            logger.critical("fatal worker error: {}", error)
            return _Finish("release", error_message=str(error), fatal=True)
        except TransientTaskError as error:
            logger.warning("transient failure: {}", error)
            return _Finish("fail", error_message=str(error) or type(error).__name__, retryable=True)
        except Exception as error:  # a handler bug or an unexpected library error: retried up to the cap
            logger.error("handler raised {}:\n{}", type(error).__name__, _traceback_summary(error))
            return _Finish("fail", error_message=f"{type(error).__name__}: {error}", retryable=True)
        finally:
            self.supervisor.unwatch()  # from here on the supervisor must not walk away from this task
        if not isinstance(outcome, TaskOutcome):
            message = f"the handler returned {type(outcome).__name__}, expected a TaskOutcome"
            return _Finish("fail", error_message=message, retryable=False)
        return _Finish("await_children" if outcome.awaiting_children else "complete", outcome=outcome)

    def _finish(self, task: TaskRecord, finish: _Finish) -> None:
        worker_id = self.settings.worker_id
        if finish.kind == "drop":
            if row_says_cancelled(self.queue, task.id):  # a person's routine request, not a fault
                logger.info("task {} was cancelled while it ran; leaving it as it is", task.id)
            else:
                logger.warning("task {} was reclaimed while it ran; leaving it as it is", task.id)
            return

        @retry(
            retry=retry_if_exception_type(QueueUnavailable),
            wait=wait_exponential(multiplier=0.5, max=10),
            stop=stop_after_delay(FINISH_RETRY_SECONDS),
            reraise=True,
        )
        def write() -> None:
            if finish.kind == "complete":
                assert finish.outcome is not None
                self.queue.complete(
                    task.id, worker_id, output_location=finish.outcome.output_location, result=finish.outcome.result
                )
                logger.info("task {} complete: {}", task.id, finish.outcome.output_location)
            elif finish.kind == "await_children":
                assert finish.outcome is not None
                message = finish.outcome.message or "waiting for its children"
                self.queue.await_children(task.id, worker_id, message)
                logger.info("task {} is waiting for its children: {}", task.id, message)
            elif finish.kind == "release":
                self.queue.release(task.id, worker_id)
                logger.warning("task {} put back to Queued ({})", task.id, finish.error_message)
            else:
                delay = min(MAX_RETRY_DELAY_SECONDS, self.settings.retry_delay_seconds * 2**task.attempts)
                status = self.queue.fail(
                    task.id, worker_id, finish.error_message, retryable=finish.retryable, retry_delay_seconds=delay
                )
                if status is TaskStatus.QUEUED:
                    logger.warning(
                        "attempt {} of {} failed; task {} will be retried in {:.0f} s: {}",
                        task.attempts + 1,
                        task.max_attempts,
                        task.id,
                        delay,
                        finish.error_message,
                    )
                else:
                    logger.error("task {} failed: {}", task.id, finish.error_message)

        try:
            write()
        except TaskNotOwned as error:
            logger.warning("{}; its result is dropped", error)
        except QueueError as error:
            # The lease will expire and another worker will run the task again.
            logger.error("could not record the end of task {}: {}", task.id, error)

    # ------------------------------------------------------------------------------------------ heartbeats

    def _take_worker_id(self) -> bool:
        """Registers this process under its worker id. A live holder of the id (another process started with the
        same --worker-id) keeps it: wait until its heartbeat goes stale (a crashed holder), else give up."""
        settings = self.settings
        give_up_at = time.monotonic() + settings.lease_seconds + settings.heartbeat_seconds
        waiting_said = False
        while True:
            try:
                self.queue.register_worker(
                    settings.worker_id,
                    session_id=self._session_id,
                    metadata=self._metadata,
                    stale_seconds=settings.lease_seconds,
                )
                return True
            except WorkerIdInUse as error:
                if time.monotonic() >= give_up_at or self.shutdown.requested:
                    logger.error("cannot start: {}", error)
                    return False
                if not waiting_said:
                    logger.warning("{}; waiting up to {:.0f} s for it to go stale", error, settings.lease_seconds)
                    waiting_said = True
                self.shutdown.wait(min(settings.heartbeat_seconds, 2.0))

    def _beat(self, status: str, task_id: str | None) -> bool:
        """A heartbeat. False when it could not be written; once another process has taken this worker id (this one
        was stopped long enough to look dead), the worker stops at once: its tasks may be running elsewhere now."""
        metadata = dict(self._metadata)
        model = self.services.loaded_model()
        if model:
            metadata["current_model"] = model
        try:
            held = self.queue.beat_worker(
                self.settings.worker_id,
                session_id=self._session_id,
                status=status,
                current_task_id=task_id,
                metadata=metadata,
            )
        except QueueError as error:
            logger.warning("could not update the workers row: {}", error)
            return False
        if not held and not self.lost_worker_id.is_set():
            logger.error(
                "worker id {} was taken over by another process while this one looked dead; stopping",
                self.settings.worker_id,
            )
            self.lost_worker_id.set()
            self.shutdown.request("worker id taken over", immediate=True)
        return held

    def _abandon(self, task: TaskRecord) -> None:
        """Called by the supervisor when a stop was requested and the handler ignored its cancel_event: put the task
        back (no attempt penalty), mark the worker stopped, and end the process without waiting for the handler."""
        logger.error(
            "the handler did not stop within {:.0f} s of being asked; putting task {} back and exiting",
            self.settings.cancel_window_seconds,
            task.id,
        )
        try:
            self.queue.release(task.id, self.settings.worker_id)
        except QueueError as error:
            logger.error("could not put task {} back ({}); its lease will expire instead", task.id, error)
        self._beat("stopped", None)
        sys.stderr.flush()
        os._exit(EXIT_OK)


class _Outcome:
    DONE = "done"
    FATAL = "fatal"


@dataclass
class _Watch:
    """The task the supervisor is looking after."""

    task: TaskRecord
    cancel_event: threading.Event
    lease_lost: threading.Event = field(default_factory=threading.Event)
    next_renewal: float = 0.0
    abandon_at: float | None = None


class Supervisor:
    """The worker's background thread: every `heartbeat_seconds` it renews the running task's lease (and beats the
    workers row, idle or busy); it sets the task's cancel_event when the lease is lost or the shutdown grace period
    is over, and walks away from a handler that ignores it (see Worker._abandon). One thread for the worker's life,
    so a thread-bound SQLite connection is opened once, not once per task."""

    TICK_SECONDS = 0.2

    def __init__(
        self,
        *,
        queue: TaskQueue,
        settings: WorkerSettings,
        shutdown: ShutdownController,
        beat: Callable[..., bool],
        on_abandon: Callable[[TaskRecord], None],
        worker_id_lost: threading.Event,
    ) -> None:
        self.worker_id_lost = worker_id_lost
        self.queue = queue
        self.settings = settings
        self.shutdown = shutdown
        self.beat = beat
        self.on_abandon = on_abandon
        self._lock = threading.Lock()  # guards _watch: unwatch() and walking away must not interleave
        self._watch: _Watch | None = None
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="worker-supervisor", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(timeout=10)

    def watch(self, task: TaskRecord, cancel_event: threading.Event) -> _Watch:
        watch = _Watch(task, cancel_event, next_renewal=time.monotonic() + self.settings.heartbeat_seconds)
        with self._lock:
            self._watch = watch
        return watch

    def unwatch(self) -> None:
        with self._lock:
            self._watch = None

    def _run(self) -> None:
        next_idle_beat = time.monotonic() + self.settings.heartbeat_seconds
        while not self._stopped.wait(self.TICK_SECONDS):
            with self._lock:
                watch = self._watch
            now = time.monotonic()
            if watch is None:
                if now >= next_idle_beat:
                    self.beat("idle", None)
                    next_idle_beat = now + self.settings.heartbeat_seconds
                continue
            with logger.contextualize(task_id=watch.task.id):
                self._look_after(watch, now)

    def _look_after(self, watch: _Watch, now: float) -> None:
        if now >= watch.next_renewal:
            watch.next_renewal = now + self.settings.heartbeat_seconds
            self._renew(watch)
        deadline = self.shutdown.cancel_deadline()
        if deadline is not None and now >= deadline and watch.abandon_at is None:
            logger.warning("shutdown grace period over: asking the handler to stop")
            watch.cancel_event.set()
            watch.abandon_at = now + self.settings.cancel_window_seconds
        if watch.abandon_at is not None and now >= watch.abandon_at:
            with self._lock:
                if self._watch is watch:  # the handler has not returned: it ignores the stop request
                    self.on_abandon(watch.task)  # does not return

    def _renew(self, watch: _Watch) -> None:
        settings = self.settings
        self.beat("busy", watch.task.id)
        if self.worker_id_lost.is_set():  # another process holds our id now: never renew a lease under it
            if not watch.lease_lost.is_set():
                watch.lease_lost.set()
                watch.cancel_event.set()
            return
        try:
            still_ours = self.queue.renew_lease(watch.task.id, settings.worker_id, settings.lease_seconds)
        except QueueError as error:
            logger.warning("could not renew the lease: {}", error)
            return
        if not still_ours and not watch.lease_lost.is_set():
            if row_says_cancelled(self.queue, watch.task.id):
                logger.info("the task was cancelled: asking the handler to stop")
            else:
                logger.warning("lost the lease (the task was reclaimed): asking the handler to stop")
            watch.lease_lost.set()
            watch.cancel_event.set()


def _traceback_summary(error: BaseException, limit: int = 8) -> str:
    return "".join(traceback.format_exception(type(error), error, error.__traceback__, limit=-limit)).rstrip()
