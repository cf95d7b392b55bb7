"""What a poll and a claim cost with 100k tasks in the queue, on the local PostgreSQL (and SQLite for comparison).

    .venv/bin/python bench/queue_poll.py                      # PostgreSQL from $TEST_DATABASE_URL (or the default)
    .venv/bin/python bench/queue_poll.py --backend sqlite --rows 100000
    .venv/bin/python bench/queue_poll.py --backend reigh     # Reigh's schema (tests/reigh_schema.sql) on PostgreSQL

Three phases, each on a fresh database:

1. idle: 100k Queued tasks, none ready. Half wait through Reigh's `dependant_on` column, half through the link table
   (`task_dependencies`), all on one task that another worker is running (In Progress, leased for a day). Timed: one idle poll as the worker loop makes it
   (`reclaim_expired()` then `claim()`, which finds nothing), `--polls` times.
2. claims: 100k Queued tasks, half ready (no dependency), half waiting as above; the ready ones are the newest, so
   in claim order every waiting row comes first (the case that made each claim test 50k rows' dependencies before).
   Timed: `claim()` then `complete()`, `--claims` times, each claim taking one ready task.
3. unblock: the one task all 100k wait for (In Progress on another worker) completes; timed: that `complete()`, which
   makes every dependent claimable, and the next `claim()`.

The rows are inserted with one INSERT ... SELECT generate_series (not 100k enqueue() calls) with `blocked` set as
`enqueue()` sets it, then VACUUM ANALYZE (what autovacuum does to a settled table). The idle phase is run a second
time with rows written as another app would (`blocked` NULL): the first poll classifies them all, and the polls after
it are timed before any vacuum.
Times are wall-clock seconds on the client, network round trips included (loopback): an upper bound on database time.

On Reigh's schema (`--backend reigh`) the waiting rows all wait through `dependant_on` (uuid[]), ids are uuids, and
there is no readiness cache to classify: the claim checks dependencies itself, as Reigh's own claim does, so the
second idle phase does not apply.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from source.queue import TaskQueue, open_queue
from source.queue.testing import temporary_database

DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
REIGH_SCHEMA_SQL = Path(__file__).resolve().parents[1] / "tests" / "reigh_schema.sql"
BLOCKER = {"postgres": "blocker", "sqlite": "blocker", "reigh": "00000000-0000-4000-8000-000000000001"}


def _populate_postgres(url: str, rows: int, ready_fraction: float, classified: bool) -> None:
    import psycopg

    waits, ready_flag = ("true", "false") if classified else ("NULL", "NULL")

    waiting = rows - int(rows * ready_fraction)
    ready = rows - waiting
    via_column = waiting // 2
    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute(
            "INSERT INTO tasks (id, task_type, params, status, worker_id, lease_expires_at, created_at) "
            "VALUES ('blocker', 'debug_sleep', '{}', 'In Progress', 'elsewhere', now() + interval '1 day', now())"
        )
        connection.execute(
            "INSERT INTO tasks (id, task_type, params, status, dependant_on, blocked, created_at) "
            f"SELECT 'col-' || g, 'debug_sleep', '{{\"seconds\": 0}}', 'Queued', 'blocker', {waits}, now() "
            "FROM generate_series(1, %s) g",
            (via_column,),
        )
        connection.execute(
            "INSERT INTO tasks (id, task_type, params, status, blocked, created_at) "
            f"SELECT 'link-' || g, 'debug_sleep', '{{\"seconds\": 0}}', 'Queued', {waits}, now() "
            "FROM generate_series(1, %s) g",
            (waiting - via_column,),
        )
        connection.execute(
            "INSERT INTO task_dependencies (task_id, depends_on_id, position) "
            "SELECT 'link-' || g, 'blocker', 0 FROM generate_series(1, %s) g",
            (waiting - via_column,),
        )
        connection.execute(
            "INSERT INTO tasks (id, task_type, params, status, blocked, created_at) "
            f"SELECT 'ready-' || g, 'debug_sleep', '{{\"seconds\": 0}}', 'Queued', {ready_flag}, "
            "now() + interval '1 minute' FROM generate_series(1, %s) g",
            (ready,),
        )
        connection.execute("VACUUM ANALYZE tasks")
        connection.execute("VACUUM ANALYZE task_dependencies")


def _populate_reigh(url: str, rows: int, ready_fraction: float) -> None:
    """Reigh's schema with one user and project; the rows as Reigh's app writes them (no state row of ours)."""
    import psycopg

    waiting = rows - int(rows * ready_fraction)
    ready = rows - waiting
    project = "00000000-0000-4000-8000-0000000000aa"
    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute(REIGH_SCHEMA_SQL.read_text())
        connection.execute("INSERT INTO users (id, name, credits) VALUES (%s, 'bench', 1)", (project,))
        connection.execute("INSERT INTO projects (id, name, user_id) VALUES (%s, 'bench', %s)", (project, project))
        connection.execute("INSERT INTO workers (id, instance_type) VALUES ('elsewhere', 'server')")
        connection.execute(
            "INSERT INTO tasks (id, task_type, params, status, worker_id, project_id) "
            "VALUES (%s, 'travel_segment', '{}', 'In Progress', 'elsewhere', %s)",
            (BLOCKER["reigh"], project),
        )
        connection.execute(
            "INSERT INTO tasks (task_type, params, status, dependant_on, project_id) "
            "SELECT 'travel_segment', '{}', 'Queued', ARRAY[%s::uuid], %s FROM generate_series(1, %s)",
            (BLOCKER["reigh"], project, waiting),
        )
        connection.execute(
            "INSERT INTO tasks (task_type, params, status, project_id, created_at) "
            "SELECT 'travel_segment', '{\"ready\": true}', 'Queued', %s, now() + interval '1 minute' "
            "FROM generate_series(1, %s)",
            (project, ready),
        )
        connection.execute("VACUUM ANALYZE tasks")


def _populate_sqlite(path: Path, rows: int, ready_fraction: float, classified: bool) -> None:
    import sqlite3

    waits, ready_flag = ("1", "0") if classified else ("NULL", "NULL")

    waiting = rows - int(rows * ready_fraction)
    ready = rows - waiting
    via_column = waiting // 2
    now = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')"
    with sqlite3.connect(path) as connection:
        connection.execute(
            "INSERT INTO tasks (id, task_type, params, status, worker_id, lease_expires_at, created_at) "
            "VALUES ('blocker', 'debug_sleep', '{}', 'In Progress', 'elsewhere', '2999-01-01T00:00:00.000000Z', "
            f"{now})"
        )
        # 1..? (nothing for 0: the anchor row is only there when ? >= 1)
        series = "WITH RECURSIVE g(n) AS (SELECT 1 WHERE ?1 >= 1 UNION ALL SELECT n + 1 FROM g WHERE n < ?1) "
        connection.execute(
            series + "INSERT INTO tasks (id, task_type, params, status, dependant_on, blocked, created_at) "
            f"SELECT 'col-' || n, 'debug_sleep', '{{}}', 'Queued', 'blocker', {waits}, {now} FROM g",
            (via_column,),
        )
        connection.execute(
            series + "INSERT INTO tasks (id, task_type, params, status, blocked, created_at) "
            f"SELECT 'link-' || n, 'debug_sleep', '{{}}', 'Queued', {waits}, {now} FROM g",
            (waiting - via_column,),
        )
        connection.execute(
            series + "INSERT INTO task_dependencies (task_id, depends_on_id, position) "
            "SELECT 'link-' || n, 'blocker', 0 FROM g",
            (waiting - via_column,),
        )
        connection.execute(
            series + "INSERT INTO tasks (id, task_type, params, status, blocked, created_at) "
            f"SELECT 'ready-' || n, 'debug_sleep', '{{}}', 'Queued', {ready_flag}, '2999-01-01T00:00:00.000000Z' "
            "FROM g",
            (ready,),
        )
        connection.execute("ANALYZE")


@contextmanager
def _fresh_queue(backend: str, rows: int, ready_fraction: float, *, classified: bool = True) -> Iterator[TaskQueue]:
    """A queue holding `rows` Queued tasks. `classified`: as `enqueue()` writes them (the `blocked` flag set); else as
    another app writing the table directly would (NULL: the next poll classifies them)."""
    if backend == "reigh":
        admin = os.environ.get("TEST_DATABASE_URL") or DEFAULT_ADMIN_URL
        with temporary_database(admin, prefix="hw_bench") as url:
            _populate_reigh(url, rows, ready_fraction)
            queue = open_queue(url)
            try:
                queue.migrate()
                queue.register_worker("bench", session_id="bench", metadata={}, stale_seconds=60)
                yield queue
            finally:
                queue.close()
        return
    if backend == "postgres":
        admin = os.environ.get("TEST_DATABASE_URL") or DEFAULT_ADMIN_URL
        with temporary_database(admin, prefix="hw_bench") as url:
            queue = open_queue(url)
            try:
                queue.migrate()
                _populate_postgres(url, rows, ready_fraction, classified)
                yield queue
            finally:
                queue.close()
        return
    with tempfile.TemporaryDirectory(prefix="hw_bench") as folder:
        path = Path(folder) / "tasks.db"
        queue = open_queue(f"sqlite:///{path}")
        try:
            queue.migrate()
            _populate_sqlite(path, rows, ready_fraction, classified)
            yield queue
        finally:
            queue.close()


def _timed(action: Callable[[], object]) -> tuple[float, object]:
    started = time.perf_counter()
    value = action()
    return time.perf_counter() - started, value


def _summary(seconds: list[float]) -> dict[str, float]:
    ordered = sorted(seconds)
    p99 = ordered[min(len(ordered) - 1, int(round(0.99 * (len(ordered) - 1))))]
    return {
        "n": len(ordered),
        "median_ms": round(1000 * statistics.median(ordered), 3),
        "p99_ms": round(1000 * p99, 3),
        "max_ms": round(1000 * ordered[-1], 3),
    }


def _poll(queue: TaskQueue) -> object:
    """One idle poll, as the worker loop makes it."""
    queue.reclaim_expired()
    return queue.claim("bench", lease_seconds=60)


def _idle_polls(queue: TaskQueue, polls: int) -> dict[str, float]:
    times = []
    for _ in range(polls):
        seconds, claimed = _timed(lambda: _poll(queue))
        assert claimed is None, "nothing is ready: the poll must claim nothing"
        times.append(seconds)
    return _summary(times)


def _idle(backend: str, rows: int, polls: int) -> dict[str, object]:
    with _fresh_queue(backend, rows, ready_fraction=0.0) as queue:
        steady = _idle_polls(queue, polls)
        refresh, _ = _timed(queue.refresh_readiness)
    if backend == "reigh":  # no readiness cache, nothing to classify
        return {"idle_poll": steady}
    with _fresh_queue(backend, rows, ready_fraction=0.0, classified=False) as queue:
        first, _ = _timed(lambda: _poll(queue))
        after_backlog = _idle_polls(queue, polls)
    return {
        "idle_poll": steady,
        "refresh_readiness_s": round(refresh, 3),
        "foreign_rows_first_poll_classifies_all_s": round(first, 3),
        "idle_poll_after_classifying_before_vacuum": after_backlog,
    }


def _claims(backend: str, rows: int, claims: int) -> dict[str, object]:
    with _fresh_queue(backend, rows, ready_fraction=0.5) as queue:
        claim_times, complete_times = [], []
        for _ in range(claims):
            seconds, task = _timed(lambda: queue.claim("bench", lease_seconds=60))
            assert task is not None and (task.id.startswith("ready-") or task.params.get("ready")), task
            claim_times.append(seconds)
            seconds, _ = _timed(lambda task=task: queue.complete(task.id, "bench", output_location=None))
            complete_times.append(seconds)
        return {"claim": _summary(claim_times), "complete": _summary(complete_times)}


def _unblock(backend: str, rows: int) -> dict[str, object]:
    """The worst case of a completion: the one task all 100k wait for completes, and all become claimable."""
    with _fresh_queue(backend, rows, ready_fraction=0.0) as queue:
        assert queue.claim("bench", lease_seconds=60) is None
        blocker = BLOCKER[backend]
        complete_seconds, _ = _timed(lambda: queue.complete(blocker, "elsewhere", output_location=None))
        claim_seconds, task = _timed(lambda: queue.claim("bench", lease_seconds=60))
        assert task is not None, "the blocker completed: its dependents must be claimable"
        return {
            "complete_the_blocker_of_all_s": round(complete_seconds, 3),
            "next_claim_ms": round(1000 * claim_seconds, 3),
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=("postgres", "sqlite", "reigh"), default="postgres")
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--polls", type=int, default=200)
    parser.add_argument("--claims", type=int, default=1000)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    from loguru import logger

    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    results = {
        "backend": args.backend,
        "rows": args.rows,
        "idle": _idle(args.backend, args.rows, args.polls),
        "claims": _claims(args.backend, args.rows, args.claims),
        "unblock": _unblock(args.backend, args.rows),
    }
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
