"""The embedded backend: one SQLite file in WAL mode, safe across threads and processes.

Each thread (and each process, after a fork) opens its own connection. Writes run inside BEGIN IMMEDIATE, which
takes the database's single write lock up front, so a claim is atomic across processes; readers never block in WAL
mode. `busy_timeout` makes a writer wait for the lock instead of failing.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from source.queue.base import Clock, Transaction
from source.queue.core import SqlTaskQueue
from source.queue.models import QueueUnavailable
from source.queue.rows import sqlite_text
from source.queue.sqlfiles import Statement

BUSY_TIMEOUT_MS = 30_000
_ADD_COLUMN = re.compile(r"^\s*ALTER\s+TABLE\s+(?P<table>\w+)\s+ADD\s+COLUMN\s+(?P<column>\w+)", re.IGNORECASE)
_UNAVAILABLE_MARKERS = ("locked", "busy", "disk i/o", "unable to open", "readonly", "read-only")


def utc_timestamp(moment: datetime) -> str:
    """Fixed-width ISO-8601 UTC with microseconds: text order equals time order."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _utc_now(now: str | None = None) -> str:
    """`utc_now()`, or `utc_now(:now)`: the queue's injected instant (already utc_timestamp text), else the clock."""
    return utc_timestamp(datetime.now(UTC)) if now is None else now


def _utc_after(seconds: float | None, now: str | None = None) -> str:
    """`utc_after(seconds)`, or `utc_after(seconds, :now)`: counted from the injected instant when there is one."""
    start = datetime.now(UTC) if now is None else datetime.fromisoformat(now)
    return utc_timestamp(start + timedelta(seconds=float(seconds or 0.0)))


def _encode(value: Any) -> Any:
    if isinstance(value, dict | list | tuple):
        return json.dumps(value, separators=(",", ":"), default=str)
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, datetime):
        return utc_timestamp(value)
    return value


class _SqliteTransaction(Transaction):
    def __init__(self, connection: sqlite3.Connection, queries: Mapping[str, Statement]) -> None:
        self._connection = connection
        self._queries = queries

    def rows(self, name: str, params: Mapping[str, Any]) -> list[dict[str, Any]]:
        cursor = self._connection.execute(
            self._queries[name].sql, {key: _encode(value) for key, value in params.items()}
        )
        return [dict(row) for row in cursor.fetchall()]

    def execute_script_statement(self, sql: str) -> None:
        self._connection.execute(sql)


class SqliteTaskQueue(SqlTaskQueue):
    backend = "sqlite"

    def __init__(self, url: str, path: Path, *, clock: Clock | None = None) -> None:
        super().__init__(url, "sqlite", clock=clock)
        self.path = path.resolve()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._open_connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()

    def _connection(self) -> sqlite3.Connection:
        connection: sqlite3.Connection | None = getattr(self._local, "connection", None)
        if connection is not None and self._local.pid == os.getpid():
            return connection
        try:
            # isolation_level=None: the module's implicit transactions are off; we issue BEGIN ourselves.
            connection = sqlite3.connect(
                self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False
            )
            connection.row_factory = sqlite3.Row
            # Invalid UTF-8 in any text column would otherwise make the row unreadable for everyone (rows.py).
            connection.text_factory = sqlite_text
            connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            connection.execute("PRAGMA journal_mode = WAL")
            connection.execute("PRAGMA synchronous = NORMAL")
        except sqlite3.Error as error:
            raise QueueUnavailable(f"cannot open SQLite database {self.path}: {error}") from error
        for arguments in (0, 1):  # utc_now() and utc_now(:now)
            connection.create_function("utc_now", arguments, _utc_now)
        for arguments in (1, 2):  # utc_after(seconds) and utc_after(seconds, :now)
            connection.create_function("utc_after", arguments, _utc_after)
        self._local.connection = connection
        self._local.pid = os.getpid()
        with self._connections_lock:
            self._open_connections.append(connection)
        return connection

    @contextmanager
    def _transaction(self, *, write: bool) -> Iterator[Transaction]:
        connection = self._connection()
        try:
            connection.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        except sqlite3.OperationalError as error:
            raise QueueUnavailable(f"SQLite database {self.path} is unavailable: {error}") from error
        try:
            yield _SqliteTransaction(connection, self._queries)
        except BaseException as error:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            if isinstance(error, sqlite3.OperationalError) and any(
                marker in str(error).lower() for marker in _UNAVAILABLE_MARKERS
            ):
                raise QueueUnavailable(f"SQLite database {self.path} is unavailable: {error}") from error
            raise
        else:
            connection.execute("COMMIT")

    def _migration_statement_applies(self, tx: Transaction, sql: str) -> bool:
        # SQLite has no ADD COLUMN IF NOT EXISTS; a table an older worker made may already have the column.
        match = _ADD_COLUMN.match(sql)
        if not match:
            return True
        existing = {row["name"] for row in tx.all("table_columns", table_name=match.group("table"))}
        return match.group("column") not in existing

    def _json_text(self, value: Any) -> str | bytes | None:
        return value

    def _decode_time(self, value: Any) -> datetime | None:
        if value is None or value == "":
            return None
        if isinstance(value, datetime):
            moment = value
        else:
            moment = datetime.fromisoformat(str(value).replace(" ", "T"))
        return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)

    def _decode_list(self, value: Any) -> list[str]:
        if value is None:
            return []
        return [item for item in json.loads(value) if item is not None]

    def close(self) -> None:
        with self._connections_lock:
            connections, self._open_connections = self._open_connections, []
        for connection in connections:
            try:
                connection.close()
            except sqlite3.Error:
                pass
        self._local = threading.local()
