"""The queue's logic, written once over named SQL statements; `sqlite.py` and `postgres.py` supply the connections.

Every public operation is one transaction. Write transactions take the database's write lock on SQLite
(BEGIN IMMEDIATE) and row locks on PostgreSQL; where an operation touches an orchestrator and its children it locks
the orchestrator row first, so two children finishing at once (or a child failing while another completes) see each
other's writes instead of both missing the moment the last child completes.
"""

from __future__ import annotations

import json
import re
import uuid
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar, TypeVar

from loguru import logger

from source.queue.models import (
    ChildSpec,
    TaskNotFound,
    TaskNotOwned,
    TaskRecord,
    TaskStateError,
    TaskStatus,
    WorkerIdInUse,
    WorkerRecord,
    child_key,
)
from source.queue.rows import (
    MAX_JSON_BYTES,
    RowDecodeError,
    UndecodableText,
    check_json_value,
    clean_message,
    decode_json,
)
from source.queue.sqlfiles import load_migrations, load_queries

T = TypeVar("T")

_TASK_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
CLASSIFY_BATCH = 1000  # the LIMIT of the classify_unclassified statement
MIN_ID_PREFIX = 4  # the shortest id prefix the CLI resolves (list shows 8 characters)
_CLAIM_RETRIES = 3  # a claim that finds nothing while tasks are ready lost a race: try again, not more than this
_WRITE_RETRIES = 5  # PostgreSQL deadlock / serialization conflicts are retried as a whole transaction


class RetryableConflict(Exception):
    """Raised by a backend when the database aborted a transaction that can simply be run again."""


class Transaction(ABC):
    """Runs the backend's named statements inside one open transaction."""

    @abstractmethod
    def rows(self, name: str, params: Mapping[str, Any]) -> list[dict[str, Any]]: ...

    @abstractmethod
    def execute_script_statement(self, sql: str) -> None:
        """Runs one migration statement (no parameters)."""

    def one(self, name: str, **params: Any) -> dict[str, Any] | None:
        found = self.rows(name, params)
        return found[0] if found else None

    def all(self, name: str, **params: Any) -> list[dict[str, Any]]:
        return self.rows(name, params)

    def run(self, name: str, **params: Any) -> None:
        self.rows(name, params)


@dataclass(frozen=True)
class _CascadeNode:
    """A task the cascade has just terminated, and what its dependents are told."""

    task_id: str
    status: TaskStatus
    message: str  # this task's own error message
    parent_id: str | None
    role: str | None
    segment_index: int | None
    cause_id: str  # the task whose failure its dependents name ("dependency <cause_id> failed: ...")
    cause_reason: str


class SqlTaskQueue(ABC):
    """The TaskQueue protocol over SQL; subclasses provide transactions and value decoding. `dialect` names the
    statement files: "sqlite", "postgres" (our own schema) or "reigh" (Reigh's tables, untouched, plus ours in the
    `headless` schema)."""

    backend: ClassVar[str]
    # Reigh's tasks table keys rows by uuid: any other id names no task there (and must not reach a uuid cast).
    task_ids_are_uuids: bool = False

    def __init__(self, url: str, dialect: str) -> None:
        self.url = url
        self.dialect = dialect
        self._queries = load_queries(dialect)
        self._migrations = load_migrations(dialect)

    # ---------------------------------------------------------------------------------------------- backend hooks

    @abstractmethod
    def _transaction(self, *, write: bool) -> AbstractContextManager[Transaction]: ...

    @abstractmethod
    def _json_text(self, value: Any) -> str | bytes | None:
        """A JSON column as the backend returned it -> its text (decoded by rows.decode_json, never here)."""

    @abstractmethod
    def _decode_time(self, value: Any) -> datetime | None: ...

    @abstractmethod
    def _decode_list(self, value: Any) -> list[str]: ...

    def _migration_statement_applies(self, tx: Transaction, sql: str) -> bool:
        """Whether a migration statement still has work to do (SQLite skips ADD COLUMN for existing columns)."""
        return True

    @abstractmethod
    def close(self) -> None: ...

    @property
    def redacted_url(self) -> str:
        return self.url

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.redacted_url!r})"

    # ---------------------------------------------------------------------------------------------- plumbing

    def _read(self, operation: Callable[[Transaction], T]) -> T:
        with self._transaction(write=False) as tx:
            return operation(tx)

    def _write(self, operation: Callable[[Transaction], T]) -> T:
        for attempt in range(1, _WRITE_RETRIES + 1):
            try:
                with self._transaction(write=True) as tx:
                    return operation(tx)
            except RetryableConflict as conflict:
                if attempt == _WRITE_RETRIES:
                    raise
                logger.debug("transaction conflict ({}); running it again (attempt {})", conflict, attempt + 1)
        raise AssertionError("unreachable")

    def _task_from_row(self, row: Mapping[str, Any]) -> TaskRecord:
        """The row as a TaskRecord. Never raises on bad data (rows.py): what cannot be decoded is named in
        `decode_error`, and defaults stand in for it so the row can still be listed, shown, cancelled or failed."""
        problems: list[str] = []

        def text(name: str) -> Any:
            value = row.get(name)
            if isinstance(value, UndecodableText):
                problems.append(f"{name}: not valid UTF-8 text")
            return value

        def json_column(name: str) -> Any:
            try:
                return decode_json(self._json_text(row.get(name)), name)
            except RowDecodeError as error:
                problems.append(str(error))
                return None

        def number(name: str, default: int) -> int:
            value = row.get(name)
            if value is None:
                return default
            try:
                return int(value)
            except (TypeError, ValueError):
                problems.append(f"{name}: expected an integer")
                return default

        def moment(name: str) -> datetime | None:
            try:
                return self._decode_time(row.get(name))
            except (TypeError, ValueError):
                problems.append(f"{name}: expected a timestamp")
                return None

        status_text = text("status")
        try:
            status = TaskStatus.parse(status_text)
        except ValueError:
            if str(status_text).strip().lower() != "error":  # legacy upstream spelling of a failure
                problems.append(f"status: {str(status_text)[:40]!r} is not a known status")
            status = TaskStatus.FAILED
        params = json_column("params")
        if params is not None and not isinstance(params, dict):
            problems.append(f"params: expected a JSON object, got a JSON {type(params).__name__}")
            params = None
        try:
            depends_on = tuple(self._decode_list(row.get("depends_on_list")))
        except (TypeError, ValueError):
            problems.append("dependencies: cannot be read")
            depends_on = ()
        segment_index = row.get("segment_index")
        return TaskRecord(
            id=str(text("id")),
            task_type=str(text("task_type")),
            params=params or {},
            status=status,
            dependant_on=text("dependant_on"),
            depends_on=depends_on,
            output_location=text("output_location"),
            project_id=text("project_id"),
            worker_id=text("worker_id"),
            attempts=number("attempts", 0),
            max_attempts=number("max_attempts", 3),
            priority=number("priority", 0),
            error_message=text("error_message"),
            progress=_dict_or_none(json_column("progress")),
            result=_dict_or_none(json_column("result")),
            parent_id=text("parent_id"),
            role=text("role"),
            segment_index=None if segment_index is None else number("segment_index", 0),
            created_at=moment("created_at"),
            updated_at=moment("updated_at"),
            generation_started_at=moment("generation_started_at"),
            generation_processed_at=moment("generation_processed_at"),
            lease_expires_at=moment("lease_expires_at"),
            heartbeat_at=moment("heartbeat_at"),
            awaiting_children=bool(row.get("awaiting_children")),
            completes_parent=bool(row.get("completes_parent")),
            available_at=moment("available_at"),
            decode_error="; ".join(problems) or None,
        )

    def _get_locked(self, tx: Transaction, task_id: str, *, where: str = "task id") -> TaskRecord:
        row = tx.one("lock_task", task_id=task_id)
        if row is None:
            raise TaskNotFound(task_id, where)
        return self._task_from_row(row)

    # ---------------------------------------------------------------------------------------------- schema

    def migrate(self, *, target_version: int | None = None) -> int:
        """Applies the missing migrations (all, or up to `target_version`) and returns the schema version."""
        wanted = self._migrations if target_version is None else self._migrations[:target_version]

        def apply(tx: Transaction) -> int:
            tx.run("lock_for_migration")
            tx.run("create_schema_version")
            applied = {int(row["version"]) for row in tx.all("applied_versions")}
            for migration in wanted:
                if migration.version in applied:
                    continue
                for statement in migration.statements:
                    if self._migration_statement_applies(tx, statement.sql):
                        tx.execute_script_statement(statement.sql)
                tx.run("record_migration", version=migration.version, title=migration.title)
                applied.add(migration.version)
                logger.info("queue schema migrated to version {} ({})", migration.version, migration.title)
            version = max(applied, default=0)
            if version > self.latest_version:
                logger.warning(
                    "the database schema is version {}, newer than this code knows ({}); upgrade this worker",
                    version,
                    self.latest_version,
                )
            return version

        return self._write(apply)

    @property
    def latest_version(self) -> int:
        return len(self._migrations)

    def schema_version(self) -> int:
        """The applied schema version, 0 for none; reads only (read-only commands check it instead of migrating)."""

        def read(tx: Transaction) -> int:
            if tx.one("schema_version_exists") is None:
                return 0
            return max((int(row["version"]) for row in tx.all("applied_versions")), default=0)

        return self._read(read)

    def _id_is_possible(self, task_id: str) -> bool:
        """Whether `task_id` can name a row at all: on a uuid-keyed table anything else is no task (and must not
        reach a uuid cast)."""
        return not self.task_ids_are_uuids or _is_uuid(task_id)

    def _known_id(self, task_id: str, where: str = "task id") -> str:
        """An id given from outside, checked before it reaches SQL."""
        if not self._id_is_possible(task_id):
            raise TaskNotFound(task_id, where)
        return task_id

    # ---------------------------------------------------------------------------------------------- enqueue

    def enqueue(
        self,
        task_type: str,
        params: dict[str, Any],
        *,
        task_id: str | None = None,
        dependant_on: str | None = None,
        depends_on: Sequence[str] = (),
        project_id: str | None = None,
        priority: int = 0,
        max_attempts: int = 3,
    ) -> str:
        _check_task_type(task_type, "task_type")
        _check_params(params, "params")
        _check_max_attempts(max_attempts)
        if task_id is not None:
            _check_task_id(task_id, "task_id")
            if not self._id_is_possible(task_id):
                raise ValueError(f"task_id: this tasks table keys rows by UUID; got {task_id[:60]!r}")
        dependencies = _unique([dependant_on, *depends_on] if dependant_on else list(depends_on))
        new_id = task_id or str(uuid.uuid4())

        def insert(tx: Transaction) -> str:
            for position, dependency in enumerate(dependencies):
                where = "dependant_on" if dependency == dependant_on else f"depends_on[{position}]"
                if tx.one("get_task", task_id=self._known_id(dependency, where)) is None:
                    raise TaskNotFound(dependency, where)
            self._insert_task(
                tx,
                task_id=new_id,
                task_type=task_type,
                params=params,
                dependencies=dependencies,
                project_id=project_id,
                priority=priority,
                max_attempts=max_attempts,
            )
            self._fail_if_dependency_already_failed(tx, new_id)
            return new_id

        return self._write(insert)

    def _insert_task(
        self,
        tx: Transaction,
        *,
        task_id: str,
        task_type: str,
        params: dict[str, Any],
        dependencies: Sequence[str],
        project_id: str | None,
        priority: int,
        max_attempts: int,
        parent_id: str | None = None,
        role: str | None = None,
        segment_index: int | None = None,
        completes_parent: bool = False,
    ) -> None:
        tx.run(
            "insert_task",
            task_id=task_id,
            task_type=task_type,
            params=params,
            # Our schema's single column holds the first dependency (the link table holds them all); Reigh's uuid[]
            # column holds them all.
            dependant_on=dependencies[0] if dependencies else None,
            dependencies=list(dependencies),
            project_id=project_id,
            priority=priority,
            max_attempts=max_attempts,
            parent_id=parent_id,
            role=role,
            segment_index=segment_index,
            completes_parent=completes_parent,
            blocked=bool(dependencies),
        )
        for position, dependency in enumerate(dependencies):
            tx.run("insert_dependency", task_id=task_id, depends_on_id=dependency, position=position)
        if dependencies:
            tx.run("unblock_task", task_id=task_id)

    def _fail_if_dependency_already_failed(self, tx: Transaction, task_id: str) -> None:
        """A task enqueued after its dependency failed would otherwise wait forever: it fails (or is cancelled)
        at once, with the usual cascade."""
        task = self._get_locked(tx, task_id)
        for dependency_id in task.depends_on:
            dependency = self._get_locked(tx, dependency_id)
            if dependency.status in (TaskStatus.FAILED, TaskStatus.CANCELLED):
                verb = "failed" if dependency.status is TaskStatus.FAILED else "cancelled"
                reason = dependency.error_message or verb
                message = f"dependency {dependency_id} {verb}: {reason}"
                self._terminate_and_cascade(tx, task, dependency.status, message, cause=(dependency_id, reason))
                return

    def enqueue_children(self, parent_id: str, children: Sequence[ChildSpec]) -> list[str]:
        specs = list(children)
        for index, spec in enumerate(specs):
            _check_task_type(spec.task_type, f"children[{index}].task_type")
            _check_params(spec.params, f"children[{index}].params")
            if not spec.role or not isinstance(spec.role, str):
                raise ValueError(f"children[{index}].role: expected a non-empty string; got {spec.role!r}")
        keys = [spec.key for spec in specs]
        duplicates = sorted({key for key in keys if keys.count(key) > 1})
        if duplicates:
            raise ValueError(f"children: (role, segment_index) must be unique within a call; repeated: {duplicates}")
        if sum(spec.completes_parent for spec in specs) > 1:
            raise ValueError("children: at most one child may have completes_parent=True")

        def insert(tx: Transaction) -> list[str]:
            parent = self._get_locked(tx, self._known_id(parent_id, "parent_id"), where="parent_id")
            existing = {
                child_key(child.role or "", child.segment_index): child.id for child in self._children(tx, parent_id)
            }
            known: dict[str, str] = dict(existing)  # sibling key -> id, growing as this call inserts
            ids: list[str] = []
            created: list[str] = []
            for index, spec in enumerate(specs):
                if spec.key in existing:
                    ids.append(existing[spec.key])
                    continue
                dependencies = _unique(
                    [
                        self._resolve_dependency(tx, ref, known, f"children[{index}].depends_on")
                        for ref in spec.depends_on
                    ]
                )
                child_id = str(uuid.uuid4())
                self._insert_task(
                    tx,
                    task_id=child_id,
                    task_type=spec.task_type,
                    params=spec.params,
                    dependencies=dependencies,
                    project_id=parent.project_id,
                    priority=parent.priority,
                    max_attempts=parent.max_attempts,
                    parent_id=parent_id,
                    role=spec.role,
                    segment_index=spec.segment_index,
                    completes_parent=spec.completes_parent,
                )
                known[spec.key] = child_id
                ids.append(child_id)
                created.append(child_id)
            for child_id in created:
                self._fail_if_dependency_already_failed(tx, child_id)
            return ids

        return self._write(insert)

    def _resolve_dependency(self, tx: Transaction, ref: str, siblings: Mapping[str, str], where: str) -> str:
        if ref in siblings:
            return siblings[ref]
        if self._id_is_possible(ref) and tx.one("get_task", task_id=ref) is not None:
            return ref
        raise TaskNotFound(
            ref,
            f"{where}: neither a sibling given earlier ({', '.join(sorted(siblings)) or 'none yet'}) nor a task id;",
        )

    # ---------------------------------------------------------------------------------------------- claim & lease

    def claim(
        self, worker_id: str, *, lease_seconds: float, task_types: Sequence[str] | None = None
    ) -> TaskRecord | None:
        _check_positive(lease_seconds, "lease_seconds")
        types = list(task_types) if task_types else None

        def take(tx: Transaction) -> TaskRecord | None:
            # Rows another app inserted since the last poll (a full batch means there may be more).
            while len(tx.all("classify_unclassified")) >= CLASSIFY_BATCH:
                pass
            row = tx.one("claim_next", worker_id=worker_id, lease_seconds=float(lease_seconds), task_types=types)
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
            if self._read(lambda tx: tx.one("any_ready", task_types=types)) is None:
                return None  # idle, not a lost race
        return None

    def refresh_readiness(self) -> None:
        """Re-checks every waiting task's dependencies (the `blocked` flag the claim reads). Only needed when
        something other than this queue completes tasks in the same table; the worker runs it at start-up and every
        few minutes. It reads every waiting row (0.04 s for 100k of them on the local PostgreSQL, bench/queue_poll.py)."""
        self._write(lambda tx: tx.run("classify_blocked"))

    def count_ready(self, *, task_types: Sequence[str] | None = None) -> int:
        types = list(task_types) if task_types else None
        return self._read(lambda tx: int((tx.one("count_ready", task_types=types) or {"n": 0})["n"]))

    def renew_lease(self, task_id: str, worker_id: str, lease_seconds: float) -> bool:
        _check_positive(lease_seconds, "lease_seconds")
        return self._write(
            lambda tx: (
                tx.one("renew_lease", task_id=task_id, worker_id=worker_id, lease_seconds=float(lease_seconds))
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

        def reclaim(tx: Transaction) -> int:
            rows = tx.all("reclaim_expired", of_worker=of_worker)
            for row in rows:
                logger.warning("reclaimed task {}: {}", row["id"], row["error_message"])
                found = tx.one("lock_task", task_id=row["id"]) if row["status"] == TaskStatus.FAILED.value else None
                if found is not None:
                    task = self._task_from_row(found)
                    self._cascade_from(tx, task, TaskStatus.FAILED, task.error_message or "lease expired")
            return len(rows)

        return self._write(reclaim)

    # ---------------------------------------------------------------------------------------------- finishing

    def _lock_parent_then_task(self, tx: Transaction, task_id: str) -> TaskRecord:
        """Locks the orchestrator before its child (the order every write uses), then returns the child."""
        row = tx.one("get_task", task_id=task_id)
        if row is None:
            raise TaskNotFound(task_id)
        if row["parent_id"]:
            tx.one("lock_task", task_id=row["parent_id"])
        return self._get_locked(tx, task_id)

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

    def _complete_parent_if_done(self, tx: Transaction, parent_id: str) -> bool:
        """The completion hook. The caller holds the parent's row lock, so this read sees every child write that
        committed before it, and a child committing later will run this hook itself."""
        parent = self._get_locked(tx, parent_id)
        if parent.status is not TaskStatus.IN_PROGRESS or not parent.awaiting_children:
            return False
        children = self._children(tx, parent_id)
        if any(child.status is not TaskStatus.COMPLETE for child in children):
            return False
        final = next((child for child in children if child.completes_parent), children[-1] if children else None)
        result = {
            "children": {
                child.id: {
                    "role": child.role,
                    "segment_index": child.segment_index,
                    "task_type": child.task_type,
                    "output_location": child.output_location,
                }
                for child in children
            },
            "output_from": final.id if final else None,
            # What the final child reported about its output (a stitch: frames, size, fps), so the parent row says
            # what the run produced without another lookup.
            "output": final.result if final else None,
        }
        tx.run(
            "complete_parent",
            task_id=parent_id,
            output_location=final.output_location if final else None,
            result=result,
        )
        tx.run("classify_dependents_of", task_id=parent_id)
        logger.info("orchestrator {} complete: all {} children complete", parent_id, len(children))
        if parent.parent_id:  # orchestrators can nest
            self._complete_parent_if_done(tx, parent.parent_id)
        return True

    # ---------------------------------------------------------------------------------------------- cascade

    def _cascade_from(self, tx: Transaction, task: TaskRecord, status: TaskStatus, reason: str) -> list[str]:
        """`task` was just terminated with `reason`; terminate what depends on it, its orchestrator and children."""
        root = _CascadeNode(
            task.id,
            status,
            reason,
            task.parent_id,
            task.role,
            task.segment_index,
            cause_id=task.id,
            cause_reason=reason,
        )
        return self._walk_cascade(tx, root)

    def _terminate_and_cascade(
        self, tx: Transaction, task: TaskRecord, status: TaskStatus, message: str, *, cause: tuple[str, str]
    ) -> list[str]:
        message = clean_message(message)
        if tx.one("terminate_task", task_id=task.id, status=status.value, error_message=message) is None:
            return []
        node = _CascadeNode(
            task.id,
            status,
            message,
            task.parent_id,
            task.role,
            task.segment_index,
            cause_id=cause[0],
            cause_reason=cause[1],
        )
        return [task.id, *self._walk_cascade(tx, node)]

    def _walk_cascade(self, tx: Transaction, root: _CascadeNode) -> list[str]:
        touched: list[str] = []
        pending: deque[_CascadeNode] = deque([root])

        def terminate(row: Mapping[str, Any], status: TaskStatus, message: str, cause: tuple[str, str]) -> None:
            if row["status"] not in (TaskStatus.QUEUED.value, TaskStatus.IN_PROGRESS.value):
                return
            message = clean_message(message)
            if tx.one("terminate_task", task_id=row["id"], status=status.value, error_message=message) is None:
                return
            touched.append(row["id"])
            index = row["segment_index"]
            pending.append(
                _CascadeNode(
                    row["id"],
                    status,
                    message,
                    row["parent_id"],
                    row["role"],
                    None if index is None else int(index),
                    cause_id=cause[0],
                    cause_reason=cause[1],
                )
            )

        while pending:
            node = pending.popleft()
            verb = _verb(node.status)
            if node.parent_id:
                parent = tx.one("lock_task", task_id=node.parent_id)
                if parent is not None:
                    label = node.role if node.segment_index is None else f"{node.role} {node.segment_index}"
                    message = f"child {node.task_id} ({label}) {verb}: {node.message}"
                    terminate(parent, node.status, message, (node.parent_id, message))
            for dependent in tx.all("dependents_of", task_id=node.task_id):
                message = f"dependency {node.cause_id} {verb}: {node.cause_reason}"
                terminate(dependent, node.status, message, (node.cause_id, node.cause_reason))
            for child in tx.all("children_of", parent_id=node.task_id):
                message = f"parent {node.task_id} {verb}: {node.message}"
                terminate(child, TaskStatus.CANCELLED, message, (child["id"], message))
        if touched:
            logger.warning(
                "task {} {}: {} dependent task(s) terminated too", root.task_id, _verb(root.status), len(touched)
            )
        return touched

    # ---------------------------------------------------------------------------------------------- admin

    def cancel(self, task_id: str, reason: str = "cancelled by admin") -> list[str]:
        """Cancels a Queued or In Progress task and everything that depends on it; returns the ids it touched. A task
        that is already Cancelled is left alone (returns [])."""

        reason = clean_message(reason)

        def stop(tx: Transaction) -> list[str]:
            task = self._lock_parent_then_task(tx, self._known_id(task_id))
            if task.status is TaskStatus.CANCELLED:
                return []
            if task.status.is_terminal:
                raise TaskStateError(f"cannot cancel task {task_id}: it is already {task.status.value}")
            return self._terminate_and_cascade(tx, task, TaskStatus.CANCELLED, reason, cause=(task_id, reason))

        return self._write(stop)

    def retry(self, task_id: str) -> list[str]:
        """A Failed or Cancelled task goes back to Queued with its attempts reset, and so does everything the
        cascade terminated with it: its dependents, its orchestrator (back to waiting for its children) and that
        orchestrator's other children. Returns the ids reset."""

        def reset(tx: Transaction) -> list[str]:
            root = self._get_locked(tx, self._known_id(task_id))
            if root.status not in (TaskStatus.FAILED, TaskStatus.CANCELLED):
                raise TaskStateError(
                    f"cannot retry task {task_id}: it is {root.status.value} (only Failed or Cancelled tasks can be retried)"
                )
            seen: set[str] = set()
            order: list[TaskRecord] = []
            pending: deque[TaskRecord] = deque([root])
            while pending:
                task = pending.popleft()
                if task.id in seen or task.status not in (TaskStatus.FAILED, TaskStatus.CANCELLED):
                    continue
                seen.add(task.id)
                order.append(task)
                related = [self._get_locked(tx, row["id"]) for row in tx.all("dependents_of", task_id=task.id)]
                related += self._children(tx, task.id)
                if task.parent_id:
                    related.append(self._get_locked(tx, task.parent_id))
                pending.extend(related)
            # A reset task whose dependency stays Failed/Cancelled would wait forever: the dependency must be retried.
            resetting = {task.id for task in order}
            for task in order:
                for dependency_id in _unique([task.dependant_on, *task.depends_on]):
                    if dependency_id in resetting:
                        continue
                    dependency = tx.one("get_task", task_id=dependency_id)
                    if dependency is not None and dependency["status"] in ("Failed", "Cancelled"):
                        raise TaskStateError(
                            f"cannot retry task {task_id}: task {task.id} depends on {dependency_id}, which is "
                            f"{dependency['status']}; retry {dependency_id} instead (that resets its dependents too)"
                        )
            for task in order:
                # An orchestrator that had already enqueued its children goes back to waiting for them.
                status = TaskStatus.IN_PROGRESS if task.awaiting_children else TaskStatus.QUEUED
                tx.run("reset_task", task_id=task.id, status=status.value)
                tx.run("unblock_task", task_id=task.id)
            for task in order:
                if task.awaiting_children:
                    self._complete_parent_if_done(tx, task.id)
            return [task.id for task in order]

        return self._write(reset)

    # ---------------------------------------------------------------------------------------------- reading

    def get(self, task_id: str) -> TaskRecord:
        row = self._read(lambda tx: tx.one("get_task", task_id=self._known_id(task_id)))
        if row is None:
            raise TaskNotFound(task_id)
        return self._task_from_row(row)

    def resolve_id(self, text: str) -> str:
        """A task id as a person types it: the whole id, or a unique prefix of at least MIN_ID_PREFIX characters
        (what `list` shows). TaskNotFound when nothing matches; TaskStateError naming the matches when several do."""
        if self._read(lambda tx: tx.one("get_task", task_id=text) if self._id_is_possible(text) else None):
            return text
        if len(text) < MIN_ID_PREFIX or not _TASK_ID.fullmatch(text):
            raise TaskNotFound(text)
        matches = [str(row["id"]) for row in self._read(lambda tx: tx.all("ids_with_prefix", prefix=text))]
        if not matches:
            raise TaskNotFound(text)
        if len(matches) > 1:
            shown = ", ".join(matches[:2]) + (", ..." if len(matches) > 2 else "")
            raise TaskStateError(f"task id {text!r} is ambiguous: it starts {shown}; give more of it")
        return matches[0]

    def _children(self, tx: Transaction, parent_id: str) -> list[TaskRecord]:
        return [self._task_from_row(row) for row in tx.all("children_of", parent_id=parent_id)]

    def children(self, parent_id: str) -> list[TaskRecord]:
        if not self._id_is_possible(parent_id):
            return []
        return self._read(lambda tx: self._children(tx, parent_id))

    def list_tasks(
        self, *, status: TaskStatus | str | None = None, task_type: str | None = None, limit: int = 200
    ) -> list[TaskRecord]:
        status_value = None if status is None else TaskStatus.parse(str(status)).value
        rows = self._read(lambda tx: tx.all("list_tasks", status=status_value, task_type=task_type, limit=int(limit)))
        return [self._task_from_row(row) for row in rows]

    def stats(self) -> dict[str, Any]:
        def gather(tx: Transaction) -> dict[str, Any]:
            by_status = {status.value: 0 for status in TaskStatus}
            by_type: dict[str, dict[str, int]] = {}
            for row in tx.all("count_by_type_and_status"):
                count = int(row["n"])
                by_status[row["status"]] = by_status.get(row["status"], 0) + count
                by_type.setdefault(row["task_type"], {})[row["status"]] = count
            ready = int((tx.one("count_ready", task_types=None) or {"n": 0})["n"])
            oldest = self._decode_time((tx.one("oldest_queued") or {}).get("created_at"))
            workers: dict[str, int] = {}
            for row in tx.all("list_workers"):
                workers[row["status"]] = workers.get(row["status"], 0) + 1
            return {
                "total": sum(by_status.values()),
                "by_status": by_status,
                "by_type": by_type,
                "ready": ready,
                "oldest_queued_at": oldest.isoformat() if oldest else None,
                "workers": workers,
            }

        return self._read(gather)

    # ---------------------------------------------------------------------------------------------- workers

    def register_worker(
        self, worker_id: str, *, session_id: str, metadata: dict[str, Any], stale_seconds: float
    ) -> None:
        """Takes `worker_id` for this process. Raises WorkerIdInUse while another process holds it and its heartbeat
        is younger than `stale_seconds`."""
        _check_positive(stale_seconds, "stale_seconds")

        def take(tx: Transaction) -> WorkerRecord | None:
            taken = tx.one(
                "register_worker",
                worker_id=worker_id,
                session_id=session_id,
                metadata=metadata,
                stale_seconds=float(stale_seconds),
            )
            if taken is not None:
                return None
            row = tx.one("get_worker", worker_id=worker_id)
            return None if row is None else self._worker_from_row(row)

        holder = self._write(take)
        if holder is not None:
            raise WorkerIdInUse(holder)

    def beat_worker(
        self, worker_id: str, *, session_id: str, status: str, current_task_id: str | None, metadata: dict[str, Any]
    ) -> bool:
        """The worker's heartbeat; False once another process has taken the id (this one was stale)."""
        row = self._write(
            lambda tx: tx.one(
                "beat_worker",
                worker_id=worker_id,
                session_id=session_id,
                status=status,
                current_task_id=current_task_id,
                metadata=metadata,
            )
        )
        return row is not None

    def _worker_from_row(self, row: Mapping[str, Any]) -> WorkerRecord:
        return WorkerRecord(
            id=str(row["id"]),
            status=str(row["status"]),
            last_heartbeat=self._decode_time(row["last_heartbeat"]),
            current_task_id=row["current_task_id"],
            metadata=self._worker_metadata(row.get("metadata")),
            started_at=self._decode_time(row["started_at"]),
        )

    def _worker_metadata(self, value: Any) -> dict[str, Any]:
        try:
            return _dict_or_none(decode_json(self._json_text(value), "metadata")) or {}
        except RowDecodeError as error:
            return {"decode_error": str(error)}

    def list_workers(self) -> list[WorkerRecord]:
        rows = self._read(lambda tx: tx.all("list_workers"))
        return [self._worker_from_row(row) for row in rows]


def _dict_or_none(value: Any) -> dict[str, Any] | None:
    """Our own JSON columns (progress, result, metadata) hold objects; anything else reads as absent."""
    return value if isinstance(value, dict) else None


def _verb(status: TaskStatus) -> str:
    return "failed" if status is TaskStatus.FAILED else "cancelled"


def _unique(values: Sequence[str | None]) -> list[str]:
    seen: dict[str, None] = {}
    for value in values:
        if value:
            seen.setdefault(value, None)
    return list(seen)


def _check_task_type(task_type: Any, where: str) -> None:
    if not isinstance(task_type, str) or not task_type.strip():
        raise ValueError(f"{where}: expected a non-empty string; got {task_type!r}")


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except (ValueError, TypeError, AttributeError):
        return False
    return True


def _check_task_id(task_id: Any, where: str) -> None:
    # Ids name folders and objects downstream; the worker confines them anyway, but an id like "../../x" is never
    # what anyone meant.
    if not isinstance(task_id, str) or not _TASK_ID.fullmatch(task_id):
        raise ValueError(
            f"{where}: expected 1 to 128 characters of letters, digits and . _ : - starting with a letter or digit; "
            f"got {str(task_id)[:60]!r}"
        )


def _check_params(params: Any, where: str) -> None:
    if not isinstance(params, dict):
        raise ValueError(f"{where}: expected a JSON object (dict); got {type(params).__name__}")
    try:
        check_json_value(params, where)
        size = len(json.dumps(params, default=str))
    except (RowDecodeError, RecursionError, ValueError) as error:
        raise ValueError(
            str(error) if isinstance(error, RowDecodeError) else f"{where}: not JSON-serialisable"
        ) from None
    if size > MAX_JSON_BYTES:
        raise ValueError(f"{where}: {size} bytes of JSON; at most {MAX_JSON_BYTES} are accepted")


def _check_max_attempts(max_attempts: Any) -> None:
    if not isinstance(max_attempts, int) or isinstance(max_attempts, bool) or max_attempts < 1:
        raise ValueError(f"max_attempts: expected an integer >= 1; got {max_attempts!r}")


def _check_positive(value: Any, where: str) -> None:
    if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{where}: expected a positive number of seconds; got {value!r}")
