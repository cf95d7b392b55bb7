"""The fleet backend: PostgreSQL (or a Supabase project, through its Postgres connection string), psycopg 3 with a
connection pool. Claims use `FOR UPDATE SKIP LOCKED`; every time comes from the server's clock (unless the queue was
given a clock: then the statements that decide time use it, see base.QueueBase).

Which statements run depends on what the database holds (`detect_dialect`): our own schema (or nothing yet, which
becomes ours) uses `sql/postgres/`; Reigh's schema (its `tasks` table with the `task_status` enum and `uuid[]`
dependencies) uses `sql/reigh/`, which never alters Reigh's tables and keeps what else the queue needs in a schema of
its own, `headless`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal
from uuid import UUID

import psycopg
from psycopg import errors as pg_errors
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb, set_json_loads
from psycopg_pool import ConnectionPool, PoolTimeout
from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_exponential

from source.queue.base import Clock, RetryableConflict, Transaction
from source.queue.core import SqlTaskQueue
from source.queue.models import IncompatibleSchema, QueueRefused, QueueUnavailable, RowRefused
from source.queue.sqlfiles import Statement
from source.queue.urls import redact_url

APPLICATION_NAME = "headless-wan2gp"  # what pg_stat_activity shows for our connections
Dialect = Literal["postgres", "reigh"]

# Server answers that a retry can cure; any other answer from the server (no such database or role, a wrong
# password, no pg_hba entry) and any malformed URL is reported at once (QueueRefused).
_TRANSIENT_SERVER_ANSWERS = (
    "too many clients",
    "remaining connection slots",
    "the database system is starting up",
    "the database system is shutting down",
    "the database system is in recovery mode",
    "the database system is not yet accepting connections",
)


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


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


def _is_permanent(error: psycopg.Error) -> bool:
    """Whether a failed connection attempt can only fail again: a malformed URL, or the server's own refusal."""
    if isinstance(error, psycopg.ProgrammingError):  # a URL libpq cannot parse
        return True
    text = str(error)
    if "connection is bad: invalid" in text:  # an invalid option value (sslmode=..., port=...)
        return True
    if "FATAL:" not in text:  # refused, timed out, unresolvable host, reset: the network, worth another try
        return False
    return not any(answer in text for answer in _TRANSIENT_SERVER_ANSWERS)


def _connect_kwargs(url: str) -> dict[str, Any]:
    """Our application_name unless the URL names its own (Reigh's trigger reads it; it is set per statement)."""
    try:
        named = "application_name" in conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        named = False  # the connection attempt reports the malformed URL
    return {} if named else {"application_name": APPLICATION_NAME}


def probe_connection(url: str, *, timeout: float) -> Dialect:
    """One connection, retried only while the failure is the network's, for at most `timeout` seconds; then which
    dialect the database needs. Raises QueueRefused at once for a refusal, QueueUnavailable once time is up."""
    shown = redact_url(url)
    deadline = time.monotonic() + timeout

    def connect() -> psycopg.Connection[Any]:
        remaining = max(1, int(deadline - time.monotonic()))
        try:
            return psycopg.connect(url, connect_timeout=remaining, **_connect_kwargs(url))
        except psycopg.Error as error:
            if _is_permanent(error):
                raise QueueRefused(f"{shown}: {_one_line(error)}") from None
            raise QueueUnavailable(f"cannot connect to {shown}: {_one_line(error)}") from None

    retrying = Retrying(
        retry=retry_if_exception_type(QueueUnavailable),
        wait=wait_exponential(multiplier=0.25, max=2.0),
        stop=stop_after_delay(timeout),
        reraise=True,
    )
    connection = retrying(connect)
    with connection:
        return detect_dialect(connection)


def detect_dialect(connection: psycopg.Connection[Any]) -> Dialect:
    """Reigh's schema is its `tasks` table with the `task_status` enum; anything else (or no table) is ours. A Reigh
    table from before `20260121000000_support_multiple_dependencies.sql` (one uuid in dependant_on) is refused: the
    worker does not migrate other people's tables."""
    rows = connection.execute(
        "SELECT column_name, udt_name FROM information_schema.columns WHERE table_schema = current_schema() "
        "AND table_name = 'tasks' AND column_name IN ('status', 'dependant_on')"
    ).fetchall()
    types = {name: udt for name, udt in rows}
    if types.get("status") != "task_status":
        return "postgres"
    if types.get("dependant_on") != "_uuid":
        raise IncompatibleSchema(
            f"this is Reigh's tasks table, but dependant_on is {types.get('dependant_on') or 'missing'}, not uuid[]: "
            "apply Reigh's migrations up to 20260121000000_support_multiple_dependencies.sql first"
        )
    return "reigh"


class _PostgresTransaction(Transaction):
    def __init__(self, connection: psycopg.Connection[dict[str, Any]], queries: Mapping[str, Statement]) -> None:
        self._connection = connection
        self._queries = queries

    def rows(self, name: str, params: Mapping[str, Any]) -> list[dict[str, Any]]:
        statement = self._queries[name]
        if statement.application_name:  # only this statement runs under it (Reigh's timing trigger reads it)
            self._connection.execute("SELECT set_config('application_name', %s, true)", [statement.application_name])
        cursor = self._connection.execute(
            statement.sql,  # type: ignore[arg-type]  # the SQL files are trusted, not user input
            {key: _encode(value) for key, value in params.items()},
        )
        rows = [] if cursor.description is None else cursor.fetchall()
        if statement.application_name:
            self._connection.execute("SET LOCAL application_name TO DEFAULT")
        # Reigh's table holds ids as uuid; the queue speaks str everywhere.
        return [{key: str(value) if isinstance(value, UUID) else value for key, value in row.items()} for row in rows]

    def execute_script_statement(self, sql: str) -> None:
        self._connection.execute(sql)  # type: ignore[arg-type]


class PostgresTaskQueue(SqlTaskQueue):
    backend = "postgres"

    def __init__(
        self, url: str, *, pool_size: int = 4, connect_timeout: float = 15.0, clock: Clock | None = None
    ) -> None:
        if pool_size < 1:
            raise ValueError(f"pool_size: expected an integer >= 1; got {pool_size!r}")
        dialect = probe_connection(url, timeout=connect_timeout)
        super().__init__(url, dialect, clock=clock)
        self.task_ids_are_uuids = dialect == "reigh"
        self.connect_timeout = connect_timeout
        self._pool: ConnectionPool[psycopg.Connection[dict[str, Any]]] = ConnectionPool(
            url,
            min_size=1,
            max_size=pool_size,
            # each connection attempt bounded too: a server that stops answering would hold a pool thread forever
            kwargs={"row_factory": dict_row, "connect_timeout": max(2, round(connect_timeout)), **_connect_kwargs(url)},
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
        except pg_errors.IntegrityError as error:
            where = error.diag.column_name or error.diag.constraint_name or "row"
            # "Key (task_type)=(x) is not present ..." names the value; other details quote the whole row (params,
            # which may hold secrets), so they are left out.
            detail = error.diag.message_detail or ""
            detail = f" ({detail})" if detail.startswith("Key (") else ""
            raise RowRefused(f"{where}: the database refused it: {error.diag.message_primary}{detail}") from None
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
