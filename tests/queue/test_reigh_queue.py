"""The queue on Reigh's own schema (tests/reigh_schema.sql, a real PostgreSQL database per test): detected on
connect, Reigh's semantics (uuid ids, the task_status enum, uuid[] dependencies that must all be Complete, projects,
task_types, its workers table and its timing trigger), and our extra state only in the `headless` schema."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest
from reigh_app import ReighDatabase, insert_as_app, task_row

from source.queue import (
    ChildSpec,
    RowRefused,
    TaskNotFound,
    TaskQueue,
    TaskStatus,
    WorkerIdInUse,
    open_queue,
)
from source.queue.testing import ManualClock

pytestmark = pytest.mark.postgres


def _open_reigh_queue(reigh_db: ReighDatabase, clock: ManualClock | None = None) -> TaskQueue:
    queue = open_queue(reigh_db.url, clock=clock)
    queue.migrate()
    queue.register_worker("w1", session_id="s1", metadata={}, stale_seconds=30)
    return queue


@pytest.fixture
def reigh_queue(reigh_db: ReighDatabase) -> Iterator[TaskQueue]:
    queue = _open_reigh_queue(reigh_db)
    yield queue
    queue.close()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def timed_reigh_queue(reigh_db: ReighDatabase, clock: ManualClock) -> Iterator[TaskQueue]:
    """On a clock the test moves: leases expire without sleeping."""
    queue = _open_reigh_queue(reigh_db, clock)
    yield queue
    queue.close()


def test_reighs_schema_is_detected_and_only_the_headless_schema_is_created(reigh_db: ReighDatabase) -> None:
    queue = open_queue(reigh_db.url)
    try:
        assert queue.dialect == "reigh" and queue.schema_version() == 0
        assert queue.migrate() == queue.latest_version == queue.migrate()  # idempotent
        assert queue.schema_version() == queue.latest_version
    finally:
        queue.close()
    with psycopg.connect(reigh_db.url) as connection:
        ours = connection.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'headless' ORDER BY 1"
        ).fetchall()
    assert ours == [("schema_version",), ("task_state",), ("worker_sessions",)]


def test_the_fixture_trigger_is_reighs_rule(reigh_db: ReighDatabase) -> None:
    # Guards the guard: without the application_name Reigh's system functions use, a timing change is refused.
    task_id = insert_as_app(reigh_db.url, reigh_db.project_id, "travel_segment", {})
    with psycopg.connect(reigh_db.url) as connection:
        with pytest.raises(psycopg.errors.RaiseException, match="Timing fields can only be modified"):
            connection.execute("UPDATE tasks SET generation_started_at = now() WHERE id = %s", [task_id])


def test_claim_waits_for_every_dependency_in_the_uuid_array(reigh_queue: TaskQueue, reigh_db: ReighDatabase) -> None:
    project = reigh_db.project_id
    first = reigh_queue.enqueue("travel_segment", {}, project_id=project)
    second = reigh_queue.enqueue("travel_segment", {}, project_id=project)
    stitch = reigh_queue.enqueue("travel_stitch", {}, depends_on=[first, second], project_id=project)
    assert [str(value) for value in task_row(reigh_db.url, stitch)["dependant_on"]] == [first, second]
    assert reigh_queue.get(stitch).depends_on == (first, second)
    assert [reigh_queue.claim("w1", lease_seconds=30).id for _ in range(2)] == [first, second]
    for segment in (first, second):
        assert reigh_queue.claim("w1", lease_seconds=30) is None  # the stitch waits for both
        reigh_queue.complete(segment, "w1", output_location=f"/{segment}.mp4", result={"frames": 9})
    claimed = reigh_queue.claim("w1", lease_seconds=30)
    assert claimed is not None and claimed.id == stitch


def test_a_dependency_that_does_not_exist_keeps_a_reigh_task_waiting(
    reigh_queue: TaskQueue, reigh_db: ReighDatabase
) -> None:
    # As Reigh's all_dependencies_complete: an id in dependant_on that names no task is not Complete.
    done = reigh_queue.enqueue("travel_segment", {}, project_id=reigh_db.project_id)
    waiting = insert_as_app(reigh_db.url, reigh_db.project_id, "travel_stitch", {})
    with psycopg.connect(reigh_db.url, autocommit=True) as connection:
        connection.execute(
            "UPDATE tasks SET dependant_on = ARRAY[%s::uuid, %s::uuid] WHERE id = %s",
            [done, str(uuid.uuid4()), waiting],
        )
    assert reigh_queue.claim("w1", lease_seconds=30).id == done
    reigh_queue.complete(done, "w1", output_location="/done.mp4")
    assert reigh_queue.count_ready() == 0
    assert reigh_queue.claim("w1", lease_seconds=30) is None


def test_claim_takes_the_highest_priority_then_the_oldest(reigh_queue: TaskQueue, reigh_db: ReighDatabase) -> None:
    # Reigh's table has no priority column: ours lives in the headless state row, and the app's rows count as 0.
    project = reigh_db.project_id
    app_row = insert_as_app(reigh_db.url, project, "travel_segment", {})
    low = reigh_queue.enqueue("travel_segment", {}, project_id=project, priority=-1)
    high = reigh_queue.enqueue("travel_segment", {}, project_id=project, priority=5)
    later_high = reigh_queue.enqueue("travel_segment", {}, project_id=project, priority=5)
    claimed = [reigh_queue.claim("w1", lease_seconds=30).id for _ in range(4)]
    assert claimed == [high, later_high, app_row, low]


def test_timing_columns_are_set_through_the_trigger_and_attempts_counted(
    reigh_queue: TaskQueue, reigh_db: ReighDatabase
) -> None:
    app_row = insert_as_app(reigh_db.url, reigh_db.project_id, "travel_segment", {"a": 1})
    claimed = reigh_queue.claim("w1", lease_seconds=30)
    assert claimed is not None and claimed.id == app_row and claimed.max_attempts == 3  # no state row yet: defaults
    row = task_row(reigh_db.url, app_row)
    assert (row["status"], row["worker_id"]) == ("In Progress", "w1") and row["generation_started_at"] is not None
    assert reigh_queue.fail(app_row, "w1", "out of memory", retryable=True) is TaskStatus.QUEUED
    row = task_row(reigh_db.url, app_row)
    assert (row["status"], row["attempts"], row["generation_started_at"], row["worker_id"]) == ("Queued", 1, None, None)
    assert reigh_queue.claim("w1", lease_seconds=30) is not None
    reigh_queue.complete(app_row, "w1", output_location="https://x/out.mp4", result={"frames": 9})
    row = task_row(reigh_db.url, app_row)
    assert row["status"] == "Complete" and row["generation_processed_at"] >= row["generation_started_at"]
    assert row["result_data"] == {"frames": 9} and row["output_location"] == "https://x/out.mp4"


def test_result_data_keeps_reighs_own_keys(reigh_queue: TaskQueue, reigh_db: ReighDatabase) -> None:
    app_row = insert_as_app(reigh_db.url, reigh_db.project_id, "travel_segment", {})
    with psycopg.connect(reigh_db.url, autocommit=True) as connection:
        connection.execute('UPDATE tasks SET result_data = \'{"billing_outcome": "ok"}\' WHERE id = %s', [app_row])
    assert reigh_queue.claim("w1", lease_seconds=30) is not None
    reigh_queue.complete(app_row, "w1", output_location="/o.mp4", result={"frames": 5})
    assert task_row(reigh_db.url, app_row)["result_data"] == {"billing_outcome": "ok", "frames": 5}


def test_children_copy_the_project_and_fail_or_cancel_with_their_orchestrator(
    reigh_queue: TaskQueue, reigh_db: ReighDatabase
) -> None:
    parent = insert_as_app(reigh_db.url, reigh_db.project_id, "travel_orchestrator", {})
    assert reigh_queue.claim("w1", lease_seconds=30) is not None
    segment, stitch = reigh_queue.enqueue_children(
        parent,
        [
            ChildSpec("travel_segment", {}, role="segment", segment_index=0),
            ChildSpec("travel_stitch", {}, role="stitch", depends_on=("segment:0",), completes_parent=True),
        ],
    )
    assert reigh_queue.enqueue_children(parent, [ChildSpec("travel_segment", {}, role="segment", segment_index=0)]) == [
        segment
    ]  # keyed: a re-run orchestrator finds its children
    assert [child.id for child in reigh_queue.children(parent)] == [segment, stitch]
    assert reigh_queue.children("not-a-uuid") == []  # no task, and no uuid cast error
    reigh_queue.await_children(parent, "w1", "waiting")
    assert {task_row(reigh_db.url, child)["project_id"] for child in (segment, stitch)} == {
        uuid.UUID(reigh_db.project_id)
    }
    assert reigh_queue.claim("w1", lease_seconds=30).id == segment
    reigh_queue.fail(segment, "w1", "bad keyframe")
    assert task_row(reigh_db.url, stitch)["status"] == "Failed"
    assert task_row(reigh_db.url, parent)["status"] == "Failed"
    assert reigh_queue.get(parent).error_message == f"child {segment} (segment 0) failed: bad keyframe"
    assert sorted(reigh_queue.retry(segment)) == sorted([segment, stitch, parent])
    assert reigh_queue.get(parent).status is TaskStatus.IN_PROGRESS  # back to waiting for its children
    assert set(reigh_queue.cancel(parent)) == {parent, segment, stitch}
    assert {task_row(reigh_db.url, task)["status"] for task in (parent, segment, stitch)} == {"Cancelled"}


def test_expired_leases_use_attempts_and_give_up_at_the_cap(
    timed_reigh_queue: TaskQueue, reigh_db: ReighDatabase, clock: ManualClock
) -> None:
    reigh_queue = timed_reigh_queue
    task_id = reigh_queue.enqueue("travel_segment", {}, project_id=reigh_db.project_id, max_attempts=2)
    for attempt in (1, 2):
        assert reigh_queue.claim("w1", lease_seconds=0.05) is not None
        clock.advance(0.2)
        assert reigh_queue.reclaim_expired() == 1
        row = task_row(reigh_db.url, task_id)
        assert row["attempts"] == attempt
    assert row["status"] == "Failed" and row["error_message"] == "lease expired on worker w1; gave up after 2 attempts"


def test_rows_reigh_refuses_name_the_field_and_never_echo_params(
    reigh_queue: TaskQueue, reigh_db: ReighDatabase
) -> None:
    with pytest.raises(RowRefused, match=r"tasks_task_type_fkey.*Key \(task_type\)=\(no_such_type\)"):
        reigh_queue.enqueue("no_such_type", {}, project_id=reigh_db.project_id)
    with pytest.raises(RowRefused, match="project_id") as missing_project:
        reigh_queue.enqueue("travel_segment", {"api_key": "sk-never-echoed"})
    assert "sk-never-echoed" not in str(missing_project.value)
    with pytest.raises(ValueError, match="task_id: this tasks table keys rows by UUID"):
        reigh_queue.enqueue("travel_segment", {}, task_id="not-a-uuid", project_id=reigh_db.project_id)
    with pytest.raises(TaskNotFound):
        reigh_queue.get("not-a-uuid")
    with pytest.raises(TaskNotFound, match="depends_on"):
        reigh_queue.enqueue("travel_stitch", {}, depends_on=["x"], project_id=reigh_db.project_id)


def test_worker_rows_stay_within_reighs_constraint_and_a_live_reigh_worker_keeps_its_id(
    reigh_queue: TaskQueue, reigh_db: ReighDatabase
) -> None:
    def reigh_worker(worker_id: str) -> tuple:
        with psycopg.connect(reigh_db.url) as connection:
            return connection.execute(
                "SELECT instance_type, status, last_heartbeat IS NOT NULL FROM workers WHERE id = %s", [worker_id]
            ).fetchone()

    assert reigh_worker("w1") == ("external", "active", True)
    assert reigh_queue.beat_worker("w1", session_id="s1", status="busy", current_task_id=None, metadata={"gpu": "x"})
    assert reigh_worker("w1") == ("external", "active", True)
    assert reigh_queue.list_workers()[0].status == "busy"
    assert reigh_queue.beat_worker("w1", session_id="s1", status="stopped", current_task_id=None, metadata={})
    assert reigh_worker("w1") == ("external", "inactive", True)
    with psycopg.connect(reigh_db.url, autocommit=True) as connection:  # one of Reigh's own pods
        connection.execute(
            "INSERT INTO workers (id, instance_type, status, last_heartbeat) VALUES ('gpu-pod-7', 'server', 'active', now())"
        )
    with pytest.raises(WorkerIdInUse, match="gpu-pod-7"):
        reigh_queue.register_worker("gpu-pod-7", session_id="s2", metadata={}, stale_seconds=30)
    assert reigh_worker("gpu-pod-7") == ("server", "active", True)


def test_an_id_prefix_resolves_on_reighs_uuid_keys(reigh_queue: TaskQueue, reigh_db: ReighDatabase) -> None:
    task_id = reigh_queue.enqueue("travel_segment", {}, project_id=reigh_db.project_id)
    assert reigh_queue.resolve_id(task_id) == task_id
    assert reigh_queue.resolve_id(task_id[:8]) == task_id
    with pytest.raises(TaskNotFound):
        reigh_queue.resolve_id("zzzzzzzz")  # not a uuid prefix: no cast error, just no task


def test_ids_that_cannot_be_uuids_are_refused_naming_the_argument(
    reigh_queue: TaskQueue, reigh_db: ReighDatabase
) -> None:
    # On Reigh's uuid keys such an id names no task; it must be refused before it reaches a uuid cast, and the error
    # must say which argument held it.
    project = reigh_db.project_id
    given = str(uuid.uuid4())  # a uuid given by the caller is kept
    assert reigh_queue.enqueue("travel_segment", {}, task_id=given, project_id=project) == given
    assert reigh_queue.get(given).id == given
    long_id = "x" * 100
    with pytest.raises(ValueError, match=f"^task_id: this tasks table keys rows by UUID; got '{'x' * 60}'$"):
        reigh_queue.enqueue("travel_segment", {}, task_id=long_id, project_id=project)
    with pytest.raises(TaskNotFound, match="^dependant_on: no task with id 'not-a-uuid'$"):
        reigh_queue.enqueue("travel_stitch", {}, dependant_on="not-a-uuid", project_id=project)
    with pytest.raises(TaskNotFound, match="^parent_id: no task with id 'not-a-uuid'$"):
        reigh_queue.enqueue_children("not-a-uuid", [ChildSpec("travel_segment", {}, role="segment")])
    for action in (lambda: reigh_queue.get("not-a-uuid"), lambda: reigh_queue.cancel("not-a-uuid")):
        with pytest.raises(TaskNotFound, match="^task id: no task with id 'not-a-uuid'$"):
            action()


def test_a_child_may_depend_on_an_existing_reigh_task_by_its_uuid(
    reigh_queue: TaskQueue, reigh_db: ReighDatabase
) -> None:
    first = reigh_queue.enqueue("travel_segment", {}, project_id=reigh_db.project_id)
    second = reigh_queue.enqueue("travel_segment", {}, project_id=reigh_db.project_id)
    parent = insert_as_app(reigh_db.url, reigh_db.project_id, "travel_orchestrator", {})
    (stitch,) = reigh_queue.enqueue_children(
        parent, [ChildSpec("travel_stitch", {}, role="stitch", depends_on=(first, second))]
    )
    assert reigh_queue.get(stitch).depends_on == (first, second)
    # Reigh's own column holds every dependency (its claim reads that one)
    assert [str(item) for item in task_row(reigh_db.url, stitch)["dependant_on"]] == [first, second]


def test_a_write_that_meets_a_serialization_conflict_is_run_again_up_to_five_times(
    reigh_queue: TaskQueue, reigh_db: ReighDatabase
) -> None:
    # Many workers write to Reigh's table at once; PostgreSQL answers a lost race with SQLSTATE 40001 and the whole
    # transaction is run again. Here a trigger makes the first inserts lose (a sequence counts tries: it is not
    # rolled back with them).
    from source.queue.base import RetryableConflict

    with psycopg.connect(reigh_db.url, autocommit=True) as connection:
        connection.execute("CREATE SEQUENCE insert_tries")
        connection.execute("CREATE TABLE losing_tries (n int NOT NULL)")
        connection.execute(
            """CREATE FUNCTION lose_a_race() RETURNS trigger LANGUAGE plpgsql AS $$
               BEGIN
                   IF nextval('insert_tries') <= (SELECT n FROM losing_tries) THEN
                       RAISE EXCEPTION 'could not serialize access' USING ERRCODE = '40001';
                   END IF;
                   RETURN NEW;
               END $$"""
        )
        connection.execute(
            "CREATE TRIGGER lose_a_race BEFORE INSERT ON tasks FOR EACH ROW EXECUTE FUNCTION lose_a_race()"
        )

    def tries_when_losing(losing: int) -> int:
        with psycopg.connect(reigh_db.url, autocommit=True) as connection:
            connection.execute("DELETE FROM losing_tries")
            connection.execute("INSERT INTO losing_tries VALUES (%s)", [losing])
            connection.execute("ALTER SEQUENCE insert_tries RESTART")
        try:
            reigh_queue.enqueue("travel_segment", {}, project_id=reigh_db.project_id)
        finally:
            with psycopg.connect(reigh_db.url) as connection:
                tries = connection.execute("SELECT last_value FROM insert_tries").fetchone()[0]
        return tries

    assert tries_when_losing(4) == 5, "the fifth try wins"
    assert len(reigh_queue.list_tasks()) == 1
    with pytest.raises(RetryableConflict):
        tries_when_losing(5)
    with psycopg.connect(reigh_db.url) as connection:
        assert connection.execute("SELECT last_value FROM insert_tries").fetchone()[0] == 5, "and no sixth"
    assert len(reigh_queue.list_tasks()) == 1
