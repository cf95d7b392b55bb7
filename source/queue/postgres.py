"""The fleet backend: PostgreSQL (or a Supabase project, through its Postgres connection string), psycopg 3 with a
connection pool. Claims use `FOR UPDATE SKIP LOCKED`; every time comes from the server's clock."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import psycopg
from psycopg import errors as pg_errors
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb, set_json_loads
from psycopg_pool import ConnectionPool, PoolTimeout

from source.queue.core import RetryableConflict, SqlTaskQueue, Transaction
from source.queue.models import QueueUnavailable
from source.queue.urls import redact_url


def _json_dumps(value: Any) -> str:
    return json.dumps(value, default=str)  # as the SQLite backend: paths and the like become strings


def _encode(value: Any) -> Any:
    if isinstance(value, dict):
        return Jsonb(value, dumps=_json_dumps)
    if isinstance(value, tuple):
        return list(value)
    return value


@dataclass(frozen=True)
class _RawJson:
    """A json/jsonb value as the server sent it. Decoded by source.queue.rows, where a hostile value (nested 2000
    deep, megabytes long) becomes a decode error of that row instead of a RecursionError inside psycopg."""

    text: str | bytes


def _configure(connection: psycopg.Connection[Any]) -> None:
    """Every pooled connection: JSON stays text until rows.py decodes it, and no JIT compilation (it costs ~250 ms
    per statement whenever stale statistics make a queue statement look expensive, and never pays back on
    statements that touch a handful of rows)."""
    set_json_loads(_RawJson, connection)
    connection.execute("SET jit = off")
    connection.commit()


class _PostgresTransaction(Transaction):
    def __init__(self, connection: psycopg.Connection[dict[str, Any]], queries: Mapping[str, str]) -> None:
        self._connection = connection
        self._queries = queries

    def rows(self, name: str, params: Mapping[str, Any]) -> list[dict[str, Any]]:
        cursor = self._connection.execute(
            self._queries[name],  # type: ignore[arg-type]  # the SQL files are trusted, not user input
            {key: _encode(value) for key, value in params.items()},
        )
        if cursor.description is None:
            return []
        # A Reigh table may hold ids as uuid; the queue speaks str everywhere.
        return [
            {key: str(value) if isinstance(value, UUID) else value for key, value in row.items()}
            for row in cursor.fetchall()
        ]

    def execute_script_statement(self, sql: str) -> None:
        self._connection.execute(sql)  # type: ignore[arg-type]


class PostgresTaskQueue(SqlTaskQueue):
    backend = "postgres"

    def __init__(self, url: str, *, pool_size: int = 4, connect_timeout: float = 15.0) -> None:
        super().__init__(url)
        self.connect_timeout = connect_timeout
        if pool_size < 1:
            raise ValueError(f"pool_size: expected an integer >= 1; got {pool_size!r}")
        self._pool: ConnectionPool[psycopg.Connection[dict[str, Any]]] = ConnectionPool(
            url,
            min_size=1,
            max_size=pool_size,
            kwargs={"row_factory": dict_row},
            configure=_configure,
            open=False,
            name="hw-queue",
        )
        try:
            self._pool.open(wait=True, timeout=connect_timeout)
        except PoolTimeout as error:
            self._pool.close()
            raise QueueUnavailable(
                f"cannot connect to {self.redacted_url} within {connect_timeout:.0f} s "
                f"(is the server up and the database created?)"
            ) from error

    @property
    def redacted_url(self) -> str:
        return redact_url(self.url)

    @contextmanager
    def _transaction(self, *, write: bool) -> Iterator[Transaction]:
        try:
            # The pool's context commits on a clean exit and rolls back on an exception.
            with self._pool.connection(timeout=self.connect_timeout) as connection:
                yield _PostgresTransaction(connection, self._queries)
        except (pg_errors.DeadlockDetected, pg_errors.SerializationFailure) as error:
            raise RetryableConflict(type(error).__name__) from error
        except (psycopg.OperationalError, PoolTimeout) as error:
            raise QueueUnavailable(f"PostgreSQL {self.redacted_url} is unavailable: {error}") from error

    def _json_text(self, value: Any) -> str | bytes | None:
        return value.text if isinstance(value, _RawJson) else value

    def _decode_time(self, value: Any) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, str):
            value = datetime.fromisoformat(value)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)

    def _decode_list(self, value: Any) -> list[str]:
        return [item for item in (value or []) if item is not None]

    def close(self) -> None:
        self._pool.close()
