"""Putting tasks in: plain tasks with their dependencies, and an orchestrator's children, keyed by (role, segment
index) so that a re-run orchestrator finds the children it made before instead of duplicating them."""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from source.queue.base import TASK_ID, Transaction, unique
from source.queue.dag import DagMixin
from source.queue.models import ChildSpec, TaskNotFound, child_key
from source.queue.rows import MAX_JSON_BYTES, RowDecodeError, check_json_value


class EnqueueMixin(DagMixin):
    """Enqueueing; a task whose dependency has already failed is terminated at once through the cascade (dag.py)."""

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
        dependencies = unique([dependant_on, *depends_on] if dependant_on else list(depends_on))
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
                dependencies = unique(
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


def _check_task_type(task_type: Any, where: str) -> None:
    if not isinstance(task_type, str) or not task_type.strip():
        raise ValueError(f"{where}: expected a non-empty string; got {task_type!r}")


def _check_task_id(task_id: Any, where: str) -> None:
    # Ids name folders and objects downstream; the worker confines them anyway, but an id like "../../x" is never
    # what anyone meant.
    if not isinstance(task_id, str) or not TASK_ID.fullmatch(task_id):
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
