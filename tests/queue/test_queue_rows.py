"""The row-decoding boundary: a column other people's apps wrote either decodes or becomes a reason naming the
column (never an exception that stops the worker or `cli list`), and every message the queue writes is bounded,
valid UTF-8 and free of credentials."""

from __future__ import annotations

import json
import sqlite3
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from source.queue import TaskQueue, TaskStatus, open_queue
from source.queue.rows import (
    MAX_JSON_BYTES,
    RowDecodeError,
    UndecodableText,
    check_json_value,
    clean_message,
    decode_json,
    sqlite_text,
)
from source.queue.testing import ManualClock


def decode_error(text: str | bytes) -> str:
    with pytest.raises(RowDecodeError) as caught:
        decode_json(text, "params")
    return str(caught.value)


def nested(depth: int) -> str:
    return "[" * (depth - 1) + "1" + "]" * (depth - 1)


def test_json_values_decode() -> None:
    assert decode_json(None, "params") is None
    assert decode_json('{"a": [1, "x", null]}', "params") == {"a": [1, "x", None]}
    assert decode_json(b' {"a": 1} ', "params") == {"a": 1}
    assert decode_json(nested(64), "params") is not None


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (UndecodableText("{}"), "params: not valid UTF-8 text"),
        (b'"\xff"', "params: not valid UTF-8 text"),
        ("", "params: empty text, expected a JSON value"),
        (b" \n", "params: empty text, expected a JSON value"),
        ("{not json", "params: not valid JSON at character 1"),
        ('{"a": NaN}', "params.a: NaN is not a JSON number"),
        ("[1, [NaN]]", "params[1][0]: NaN is not a JSON number"),
        (nested(65), "params: JSON nested deeper than 64 levels"),
        ('{"a": ' * 64 + "1" + "}" * 64, "params: JSON nested deeper than 64 levels"),
        ("[" * 100_000 + "]" * 100_000, "params: JSON nested deeper than 64 levels"),
        ('{"a": "\\u0000"}', "params.a: text contains a NUL character"),
        ('{"a": ["\\ud800"]}', "params.a[0]: text contains a lone surrogate (not valid Unicode)"),
        ('{"\\ud800": 1}', "params: text contains a lone surrogate (not valid Unicode)"),
        ('{"' + "k" * 50 + '": NaN}', "params." + "k" * 37 + "...: NaN is not a JSON number"),
        ('{"' + "k" * 40 + '": NaN}', "params." + "k" * 40 + ": NaN is not a JSON number"),
    ],
)
def test_what_cannot_be_decoded_names_the_column_and_the_reason(text: str | bytes, reason: str) -> None:
    assert decode_error(text) == reason


def test_json_over_2_mb_is_refused_counting_utf8_bytes() -> None:
    at_cap = json.dumps("a" * (MAX_JSON_BYTES - 2))
    assert len(decode_json(at_cap, "params")) == MAX_JSON_BYTES - 2
    assert decode_error(json.dumps("a" * (MAX_JSON_BYTES - 1))) == (
        f"params: {MAX_JSON_BYTES + 1} bytes of JSON; at most {MAX_JSON_BYTES} are accepted"
    )
    wide = '"' + "é" * 1_100_000 + '"'  # 1.1 M characters, 2.2 MB of UTF-8
    assert decode_error(wide) == f"params: 2200002 bytes of JSON; at most {MAX_JSON_BYTES} are accepted"
    assert decode_error(wide.encode()) == f"params: 2200002 bytes of JSON; at most {MAX_JSON_BYTES} are accepted"


def test_values_are_checked_without_recursion() -> None:
    value: object = "ok"
    for _ in range(63):
        value = {"k": value}
    check_json_value(value, "result")
    with pytest.raises(RowDecodeError, match="^result: JSON nested deeper than 64 levels$"):
        check_json_value({"k": value}, "result")


def test_sqlite_text_keeps_bad_bytes_readable() -> None:
    assert sqlite_text("héllo".encode()) == "héllo" and type(sqlite_text(b"ok")) is str
    bad = sqlite_text(b"ab\xffc")
    assert isinstance(bad, UndecodableText) and bad == "ab\ufffdc"


def test_messages_are_bounded_valid_and_without_credentials() -> None:
    assert clean_message("x" * 100, 100) == "x" * 100
    assert clean_message("x" * 101, 100) == "x" * 60 + "... (41 more characters)"
    assert clean_message("b" * 1000, 100) == "b" * 60 + "... (940 more characters)"
    assert clean_message("y" * 2001) == "y" * 1960 + "... (41 more characters)"
    assert clean_message("a\x00b\ud800c") == "ab?c"
    assert (
        clean_message(ValueError("at https://user:pw@host.example/x?token=abc"))
        == "at https://***@host.example/x?token=***"
    )
    assert clean_message(12) == "12"


# ---------------------------------------------------------------------------------------------- rows in a queue


@pytest.fixture
def sqlite_queue(tmp_path: Path) -> TaskQueue:
    queue = open_queue(f"sqlite:///{tmp_path / 'tasks.db'}")
    queue.migrate()
    yield queue
    queue.close()


def _insert(queue: TaskQueue, **columns: object) -> None:
    row = {"id": "r", "task_type": "t", "params": "{}", "status": "Queued", "created_at": "2024-01-01T00:00:00Z"}
    row.update(columns)
    with sqlite3.connect(queue.path) as connection:  # type: ignore[attr-defined]
        names = ", ".join(row)
        # bytes are stored as TEXT holding them, as an app writing invalid UTF-8 does
        values = ", ".join("CAST(? AS TEXT)" if isinstance(value, bytes) else "?" for value in row.values())
        connection.execute(f"INSERT INTO tasks ({names}) VALUES ({values})", list(row.values()))


def test_a_row_that_decodes_reads_as_written(sqlite_queue: TaskQueue) -> None:
    _insert(
        sqlite_queue,
        params='{"prompt": "p"}',
        status="in_progress",
        attempts=2,
        max_attempts=5,
        priority=7,
        segment_index=3,
        progress='{"step": 1}',
        result='{"frames": 9}',
        awaiting_children=1,
        completes_parent=1,
        created_at="2024-01-01 10:00:00",
        available_at="2024-01-01T10:00:00+02:00",
    )
    task = sqlite_queue.get("r")
    assert task.decode_error is None
    assert (task.params, task.status, task.attempts, task.max_attempts, task.priority, task.segment_index) == (
        {"prompt": "p"},
        TaskStatus.IN_PROGRESS,
        2,
        5,
        7,
        3,
    )
    assert (task.progress, task.result, task.awaiting_children, task.completes_parent) == (
        {"step": 1},
        {"frames": 9},
        True,
        True,
    )
    assert task.created_at.isoformat() == "2024-01-01T10:00:00+00:00"
    assert task.available_at.isoformat() == "2024-01-01T08:00:00+00:00"
    assert task.updated_at is None and task.lease_expires_at is None


def test_a_row_that_does_not_decode_names_every_column_and_still_lists(sqlite_queue: TaskQueue) -> None:
    _insert(
        sqlite_queue,
        params="[1, 2]",
        status="Exploded",
        attempts="many",
        segment_index="second",
        progress="[1]",
        result='"done"',
        created_at="yesterday",
    )
    (task,) = sqlite_queue.list_tasks()
    assert task.decode_error == (
        "status: 'Exploded' is not a known status; params: expected a JSON object, got a JSON list; "
        "attempts: expected an integer; segment_index: expected an integer; created_at: expected a timestamp"
    )
    assert (task.status, task.params, task.attempts, task.segment_index) == (TaskStatus.FAILED, {}, 0, 0)
    assert (task.progress, task.result, task.created_at, task.max_attempts, task.priority) == (None, None, None, 3, 0)


def test_bad_json_and_bad_bytes_are_named(sqlite_queue: TaskQueue) -> None:
    _insert(sqlite_queue, params="{not json", progress="", task_type=b"t\xff")
    task = sqlite_queue.get("r")
    assert task.decode_error == (
        "params: not valid JSON at character 1; task_type: not valid UTF-8 text; progress: empty text, expected a "
        "JSON value"
    )
    assert task.task_type == "t\ufffd"


def test_timestamps_read_as_utc_whatever_the_machines_zone(sqlite_queue: TaskQueue, monkeypatch) -> None:
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    try:
        _insert(sqlite_queue, created_at="2024-01-01T10:00:00+02:00", updated_at="", available_at="2024-01-01 10:00:00")
        task = sqlite_queue.get("r")
    finally:
        monkeypatch.undo()
        time.tzset()
    assert task.decode_error is None
    assert task.created_at.isoformat() == "2024-01-01T08:00:00+00:00"
    assert task.available_at.isoformat() == "2024-01-01T10:00:00+00:00"
    assert task.updated_at is None  # empty text: not set


def test_both_backends_hand_out_utc_timestamps_whatever_the_machines_zone(queue: TaskQueue, monkeypatch) -> None:
    task_id = queue.enqueue("t", {})
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    try:
        created = queue.get(task_id).created_at
    finally:
        monkeypatch.undo()
        time.tzset()
    assert created.isoformat().endswith("+00:00")


def test_an_error_path_shows_keys_of_up_to_40_characters_whole_and_cuts_longer_ones() -> None:
    forty, forty_one = "k" * 40, "q" * 41
    assert decode_error(json.dumps({forty: "bad\u0000"})) == f"params.{forty}: text contains a NUL character"
    assert decode_error(json.dumps({forty_one: "bad\u0000"})) == f"params.{'q' * 37}...: text contains a NUL character"


def test_every_timestamp_column_is_read_and_a_long_unknown_status_is_cut_to_40_characters(
    sqlite_queue: TaskQueue,
) -> None:
    _insert(
        sqlite_queue,
        status="s" * 50,
        updated_at="2024-01-02 03:04:05",
        heartbeat_at="2024-01-02T03:04:06Z",
        generation_started_at="2024-01-02T03:00:00Z",
        generation_processed_at="2024-01-02T03:10:00Z",
        lease_expires_at="2024-01-02T03:05:00Z",
    )
    task = sqlite_queue.get("r")
    moments = (
        task.updated_at,
        task.heartbeat_at,
        task.generation_started_at,
        task.generation_processed_at,
        task.lease_expires_at,
    )
    assert [moment.isoformat() for moment in moments] == [
        "2024-01-02T03:04:05+00:00",
        "2024-01-02T03:04:06+00:00",
        "2024-01-02T03:00:00+00:00",
        "2024-01-02T03:10:00+00:00",
        "2024-01-02T03:05:00+00:00",
    ]
    assert task.decode_error == f"status: {'s' * 40!r} is not a known status"


def test_timestamps_read_as_utc_whatever_the_database_sessions_zone(queue_url: str, monkeypatch) -> None:
    # PGTZ sets the PostgreSQL session's zone: the server then sends +09:00 times, which must be converted, not
    # relabelled as UTC.
    monkeypatch.setenv("PGTZ", "Asia/Tokyo")
    start = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
    queue = open_queue(queue_url, clock=ManualClock(start))
    try:
        queue.migrate()
        task_id = queue.enqueue("t", {})
        task = queue.claim("w1", lease_seconds=60)
        assert task is not None and task.id == task_id
        assert (task.generation_started_at, task.lease_expires_at) == (start, start + timedelta(seconds=60))
        assert task.generation_started_at.utcoffset() == timedelta(0)
    finally:
        queue.close()
