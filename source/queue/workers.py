"""The workers table: a worker id held by one live process at a time, its heartbeats, and the list of workers."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from source.queue.base import QueueBase, Transaction, check_positive, dict_or_none
from source.queue.models import WorkerIdInUse, WorkerRecord
from source.queue.rows import RowDecodeError, decode_json


class WorkersMixin(QueueBase):
    def register_worker(
        self, worker_id: str, *, session_id: str, metadata: dict[str, Any], stale_seconds: float
    ) -> None:
        """Takes `worker_id` for this process. Raises WorkerIdInUse while another process holds it and its heartbeat
        is younger than `stale_seconds`."""
        check_positive(stale_seconds, "stale_seconds")
        now = self._now()

        def take(tx: Transaction) -> WorkerRecord | None:
            taken = tx.one(
                "register_worker",
                worker_id=worker_id,
                session_id=session_id,
                metadata=metadata,
                stale_seconds=float(stale_seconds),
                now=now,
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
        now = self._now()
        row = self._write(
            lambda tx: tx.one(
                "beat_worker",
                worker_id=worker_id,
                session_id=session_id,
                status=status,
                current_task_id=current_task_id,
                metadata=metadata,
                now=now,
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
            return dict_or_none(decode_json(self._json_text(value), "metadata")) or {}
        except RowDecodeError as error:
            return {"decode_error": str(error)}

    def list_workers(self) -> list[WorkerRecord]:
        rows = self._read(lambda tx: tx.all("list_workers"))
        return [self._worker_from_row(row) for row in rows]
