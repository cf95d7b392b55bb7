"""What travels along the task graph when a task finishes: the orchestrator's completion hook (its last child
completes it) and the cascade (a failed or cancelled task fails or cancels its dependents, its orchestrator and that
orchestrator's other children, transitively)."""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from loguru import logger

from source.queue.base import QueueBase, Transaction
from source.queue.models import TaskRecord, TaskStatus
from source.queue.rows import clean_message


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


class DagMixin(QueueBase):
    """Runs inside the caller's write transaction, which already holds the locks (orchestrator first)."""

    def _fail_if_dependency_already_failed(self, tx: Transaction, task_id: str) -> None:
        """A task enqueued after its dependency failed would otherwise wait forever: it fails (or is cancelled)
        at once, with the usual cascade."""
        task = self._get_locked(tx, task_id)
        for dependency_id in task.depends_on:
            dependency = self._get_locked(tx, dependency_id)
            if dependency.status in (TaskStatus.FAILED, TaskStatus.CANCELLED):
                verb = _verb(dependency.status)
                reason = dependency.error_message or verb
                message = f"dependency {dependency_id} {verb}: {reason}"
                self._terminate_and_cascade(tx, task, dependency.status, message, cause=(dependency_id, reason))
                return

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


def _verb(status: TaskStatus) -> str:
    return "failed" if status is TaskStatus.FAILED else "cancelled"
