"""What people and the dashboard do with the queue: read and list tasks, resolve a typed id, count, cancel, retry."""

from __future__ import annotations

from collections import deque
from typing import Any

from source.queue.base import TASK_ID, Transaction, unique
from source.queue.dag import DagMixin
from source.queue.models import TaskNotFound, TaskRecord, TaskStateError, TaskStatus
from source.queue.rows import clean_message

MIN_ID_PREFIX = 4  # the shortest id prefix the CLI resolves (list shows 8 characters)


class AdminMixin(DagMixin):
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
        if len(text) < MIN_ID_PREFIX or not TASK_ID.fullmatch(text):
            raise TaskNotFound(text)
        matches = [str(row["id"]) for row in self._read(lambda tx: tx.all("ids_with_prefix", prefix=text))]
        if not matches:
            raise TaskNotFound(text)
        if len(matches) > 1:
            shown = ", ".join(matches[:2]) + (", ..." if len(matches) > 2 else "")
            raise TaskStateError(f"task id {text!r} is ambiguous: it starts {shown}; give more of it")
        return matches[0]

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
        now = self._now()

        def gather(tx: Transaction) -> dict[str, Any]:
            by_status = {status.value: 0 for status in TaskStatus}
            by_type: dict[str, dict[str, int]] = {}
            for row in tx.all("count_by_type_and_status"):
                count = int(row["n"])
                by_status[row["status"]] = by_status.get(row["status"], 0) + count
                by_type.setdefault(row["task_type"], {})[row["status"]] = count
            ready = int((tx.one("count_ready", task_types=None, now=now) or {"n": 0})["n"])
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
                for dependency_id in unique([task.dependant_on, *task.depends_on]):
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
