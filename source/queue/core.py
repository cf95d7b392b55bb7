"""`SqlTaskQueue`: the queue's logic, written once over named SQL statements, composed from one part per concern:

- base.py: transactions, backend hooks, the clock, row decoding, shared id and lock helpers
- schema.py: migrations and the schema version
- enqueue.py: tasks and an orchestrator's keyed children
- dag.py: the orchestrator's completion hook and the failure/cancel cascade
- admin.py: get, list, resolve an id, stats, cancel, retry
- workers.py: worker ids, heartbeats and the worker list
- here: a task's life on a worker: claim, lease, progress, complete, fail, release, wait for children.

`sqlite.py` and `postgres.py` supply the connections.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from loguru import logger

from source.queue.admin import AdminMixin
from source.queue.base import Transaction, check_positive
from source.queue.dag import DagMixin
from source.queue.enqueue import EnqueueMixin
from source.queue.models import TaskNotOwned, TaskRecord, TaskStateError, TaskStatus
from source.queue.rows import clean_message
from source.queue.schema import SchemaMixin
from source.queue.workers import WorkersMixin

CLASSIFY_BATCH = 1000  # the LIMIT of the classify_unclassified statement
_CLAIM_RETRIES = 3  # a claim that finds nothing while tasks are ready lost a race: try again, not more than this


class SqlTaskQueue(SchemaMixin, EnqueueMixin, AdminMixin, WorkersMixin, DagMixin):
    """The TaskQueue protocol over SQL (base.QueueBase says what a backend supplies)."""

    # ---------------------------------------------------------------------------------------------- claim & lease

    def claim(
        self, worker_id: str, *, lease_seconds: float, task_types: Sequence[str] | None = None
    ) -> TaskRecord | None:
        check_positive(lease_seconds, "lease_seconds")
        types = list(task_types) if task_types else None
        now = self._now()

        def take(tx: Transaction) -> TaskRecord | None:
            # Rows another app inserted since the last poll (a full batch means there may be more).
            while len(tx.all("classify_unclassified")) >= CLASSIFY_BATCH:
                pass
            row = tx.one(
                "claim_next", worker_id=worker_id, lease_seconds=float(lease_seconds), task_types=types, now=now
            )
            if row is None:
                return None
            found = tx.one("lock_task", task_id=row["id"])
            if found is None:
                # Only an id that does not survive the round trip (invalid UTF-8 in SQLite) gets here: leave the row
                # to its lease, whose expiry fails it after max_attempts, rather than stop the worker.
                logger.error("claimed a task whose id cannot be read back ({!r}); leaving it to its lease", row["id"])
                return None
            return self._task_from_row(found)

        for _ in range(_CLAIM_RETRIES):
            task = self._write(take)
            if task is not None:
                return task
            if self._read(lambda tx: tx.one("any_ready", task_types=types, now=now)) is None:
                return None  # idle, not a lost race
        return None

    def refresh_readiness(self) -> None:
        """Re-checks every waiting task's dependencies (the `blocked` flag the claim reads). Only needed when
        something other than this queue completes tasks in the same table; the worker runs it at start-up and every
        few minutes. It reads every waiting row (0.04 s for 100k of them on the local PostgreSQL, bench/queue_poll.py)."""
        self._write(lambda tx: tx.run("classify_blocked"))

    def count_ready(self, *, task_types: Sequence[str] | None = None) -> int:
        types = list(task_types) if task_types else None
        now = self._now()
        return self._read(lambda tx: int((tx.one("count_ready", task_types=types, now=now) or {"n": 0})["n"]))

    def renew_lease(self, task_id: str, worker_id: str, lease_seconds: float) -> bool:
        check_positive(lease_seconds, "lease_seconds")
        now = self._now()
        return self._write(
            lambda tx: (
                tx.one("renew_lease", task_id=task_id, worker_id=worker_id, lease_seconds=float(lease_seconds), now=now)
                is not None
            )
        )

    def share_prompts(self, task_id: str, shot_id: str, prompts: Sequence[str]) -> bool:
        """The prompts the VLM wrote for a shot's pairs. A database queue has no app to tell: they are in the segment
        rows already. False."""
        return False

    def report_progress(self, task_id: str, worker_id: str, *, step: int, total: int, message: str = "") -> None:
        percent = round(100.0 * step / total, 1) if total > 0 else 0.0
        progress = {"step": step, "total": total, "percent": percent, "message": clean_message(message, 200)}
        self._write(lambda tx: tx.run("set_progress", task_id=task_id, worker_id=worker_id, progress=progress))

    def reclaim_expired(self, *, of_worker: str | None = None) -> int:
        """Expired leases go back to Queued with one more attempt used, or to Failed past the cap (with the usual
        cascade). `of_worker` instead reclaims every task still held by that worker id (it restarted)."""
        now = self._now()

        def reclaim(tx: Transaction) -> int:
            rows = tx.all("reclaim_expired", of_worker=of_worker, now=now)
            for row in rows:
                logger.warning("reclaimed task {}: {}", row["id"], row["error_message"])
                found = tx.one("lock_task", task_id=row["id"]) if row["status"] == TaskStatus.FAILED.value else None
                if found is not None:
                    task = self._task_from_row(found)
                    self._cascade_from(tx, task, TaskStatus.FAILED, task.error_message or "lease expired")
            return len(rows)

        return self._write(reclaim)

    # ---------------------------------------------------------------------------------------------- finishing

    @staticmethod
    def _check_owner(task: TaskRecord, worker_id: str | None, action: str) -> None:
        if worker_id is None:
            if task.status not in (TaskStatus.QUEUED, TaskStatus.IN_PROGRESS):
                raise TaskStateError(f"cannot {action} task {task.id}: it is {task.status.value}")
            return
        if task.status is not TaskStatus.IN_PROGRESS or task.worker_id != worker_id or task.awaiting_children:
            holder = f", held by {task.worker_id}" if task.worker_id else ""
            raise TaskNotOwned(
                f"cannot {action} task {task.id}: worker {worker_id} no longer holds it "
                f"(it is {task.status.value}{holder})"
            )

    def complete(
        self,
        task_id: str,
        worker_id: str | None,
        *,
        output_location: str | None,
        result: dict[str, Any] | None = None,
    ) -> None:
        def finish(tx: Transaction) -> None:
            task = self._lock_parent_then_task(tx, task_id)
            self._check_owner(task, worker_id, "complete")
            tx.run("mark_complete", task_id=task_id, output_location=output_location, result=result)
            tx.run("classify_dependents_of", task_id=task_id)
            if task.parent_id:
                self._complete_parent_if_done(tx, task.parent_id)

        self._write(finish)

    def fail(
        self,
        task_id: str,
        worker_id: str | None,
        error_message: str,
        *,
        retryable: bool = False,
        retry_delay_seconds: float = 0.0,
    ) -> TaskStatus:
        """retryable and attempts left -> Queued again (not claimable for `retry_delay_seconds`); otherwise Failed,
        and everything that depends on it (and its orchestrator) fails too. Returns the task's new status."""
        error_message = clean_message(error_message)
        now = self._now()

        def finish(tx: Transaction) -> TaskStatus:
            task = self._lock_parent_then_task(tx, task_id)
            self._check_owner(task, worker_id, "fail")
            attempt = task.attempts + 1
            if retryable and task.status is TaskStatus.IN_PROGRESS and attempt < task.max_attempts:
                tx.run(
                    "requeue_after_failure",
                    task_id=task_id,
                    error_message=error_message,
                    delay_seconds=max(0.0, float(retry_delay_seconds)),
                    now=now,
                )
                return TaskStatus.QUEUED
            message = f"{error_message} (gave up after {attempt} attempts)" if retryable else error_message
            tx.run("mark_failed", task_id=task_id, error_message=message)
            self._cascade_from(tx, task, TaskStatus.FAILED, message)
            return TaskStatus.FAILED

        return self._write(finish)

    def release(self, task_id: str, worker_id: str) -> None:
        def give_back(tx: Transaction) -> None:
            task = self._get_locked(tx, task_id)
            self._check_owner(task, worker_id, "release")
            tx.run("release_task", task_id=task_id, worker_id=worker_id)

        self._write(give_back)

    def await_children(self, task_id: str, worker_id: str, message: str) -> None:
        def wait(tx: Transaction) -> None:
            task = self._get_locked(tx, task_id)
            self._check_owner(task, worker_id, "mark as awaiting children")
            progress = {"message": clean_message(message)}
            tx.run("mark_awaiting_children", task_id=task_id, worker_id=worker_id, progress=progress)
            # The children may all have finished already (a re-run after a crash): complete now.
            self._complete_parent_if_done(tx, task_id)

        self._write(wait)
