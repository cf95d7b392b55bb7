"""Real `python worker.py` processes against real databases: a fleet draining hundreds of tasks, SIGKILL, SIGTERM,
fatal errors, an orchestrator crash between enqueuing its children and waiting for them, failure cascades."""

from __future__ import annotations

import signal
import time
from collections import Counter

import pytest
from loop_helpers import wait_until

from source.queue import TaskQueue, TaskStatus
from source.tasks.diagnostic import HARD_EXIT_CODE

FLEET_SIZE = 4
FLEET_TASKS = 240
FLEET_ORCHESTRATORS = 6


def _step(queue: TaskQueue, task_id: str) -> int:
    progress = queue.get(task_id).progress or {}
    step = progress.get("step", 0)
    return step if isinstance(step, int) else 0


def test_worker_processes_drain_hundreds_of_tasks_each_claimed_exactly_once(
    queue: TaskQueue, queue_url: str, spawn_worker
) -> None:
    orchestrators = [queue.enqueue("debug_orchestrator", {"segments": 3}) for _ in range(FLEET_ORCHESTRATORS)]
    plain = [queue.enqueue("debug_sleep", {"seconds": 0.01, "steps": 1}) for _ in range(FLEET_TASKS)]
    workers = [spawn_worker(queue_url, "--once", worker_id=f"fleet-{n}") for n in range(FLEET_SIZE)]
    exit_codes = [worker.wait(timeout=120) for worker in workers]
    assert exit_codes == [0] * FLEET_SIZE, [worker.log_text()[-2000:] for worker in workers]

    tasks = {task.id: task for task in queue.list_tasks(limit=10_000)}
    assert len(tasks) == FLEET_TASKS + FLEET_ORCHESTRATORS * 5, "each orchestrator made exactly 4 children"
    claims = Counter(task_id for worker in workers for task_id in worker.claimed())
    assert claims == Counter(list(tasks)), "every task claimed exactly once across the fleet"
    claimer = {task_id: worker.worker_id for worker in workers for task_id in worker.claimed()}
    assert len(set(claimer.values())) >= 2, "the workers really ran side by side"

    for task_id in plain:
        task = tasks[task_id]
        assert (task.status, task.attempts, task.worker_id) == (TaskStatus.COMPLETE, 1, claimer[task_id])
        assert task.result is not None and task.result["worker_id"] == claimer[task_id] and task.result["attempt"] == 1
    for parent_id in orchestrators:
        parent = tasks[parent_id]
        (stitch,) = [task for task in tasks.values() if task.parent_id == parent_id and task.role == "stitch"]
        assert parent.status is TaskStatus.COMPLETE and parent.output_location == stitch.output_location
    assert {worker.status for worker in queue.list_workers()} == {"stopped"}


def test_a_sigkilled_workers_task_is_finished_by_another_once_its_lease_expires(
    queue: TaskQueue, queue_url: str, spawn_worker
) -> None:
    task_id = queue.enqueue("debug_sleep", {"seconds": 2.0, "steps": 4})
    victim = spawn_worker(queue_url, "--lease-seconds", "2", "--heartbeat-seconds", "0.5", worker_id="victim")
    wait_until(lambda: _step(queue, task_id) >= 1, timeout=30, what="the victim to start the task")
    victim.signal(signal.SIGKILL)
    victim.wait(timeout=10)
    orphan = queue.get(task_id)
    assert (orphan.status, orphan.worker_id) == (TaskStatus.IN_PROGRESS, "victim")
    assert orphan.lease_expires_at is not None

    rescuer = spawn_worker(
        queue_url, "--max-tasks", "1", "--lease-seconds", "5", "--heartbeat-seconds", "1", worker_id="rescuer"
    )
    assert rescuer.wait(timeout=60) == 0, rescuer.log_text()[-2000:]
    task = queue.get(task_id)
    # Two attempts: the one whose worker was killed, and the rescuer's.
    assert (task.status, task.worker_id, task.attempts) == (TaskStatus.COMPLETE, "rescuer", 2)
    assert task.result is not None and task.result["worker_id"] == "rescuer"
    assert task.generation_started_at is not None and task.generation_started_at >= orphan.lease_expires_at, (
        "the rescuer must not take the task before the victim's lease expired"
    )
    assert any(r["message"].startswith(f"reclaimed task {task_id}") for r in rescuer.records())


def test_sigterm_puts_the_running_task_back_without_an_attempt_penalty(
    queue: TaskQueue, queue_url: str, spawn_worker
) -> None:
    task_id = queue.enqueue("debug_sleep", {"seconds": 60, "steps": 120})
    worker = spawn_worker(queue_url, "--grace-seconds", "0.5", worker_id="terminated")
    wait_until(lambda: _step(queue, task_id) >= 1, timeout=30, what="the task to start")
    signalled = time.monotonic()
    worker.signal(signal.SIGTERM)
    assert worker.wait(timeout=20) == 0, worker.log_text()[-2000:]
    assert time.monotonic() - signalled < 10
    task = queue.get(task_id)
    assert (task.status, task.attempts, task.worker_id, task.lease_expires_at) == (TaskStatus.QUEUED, 0, None, None)
    (row,) = queue.list_workers()
    assert (row.id, row.status, row.current_task_id) == ("terminated", "stopped", None)
    assert any("put back to Queued" in r["message"] for r in worker.records())


@pytest.mark.parametrize("queue_url", ["sqlite"], indirect=True)
def test_sigterm_lets_a_task_finish_within_the_grace_period_and_claims_nothing_more(
    queue: TaskQueue, queue_url: str, spawn_worker
) -> None:
    first = queue.enqueue("debug_sleep", {"seconds": 1.0, "steps": 4})
    second = queue.enqueue("debug_sleep", {"seconds": 0, "steps": 1})
    worker = spawn_worker(queue_url, "--grace-seconds", "30", worker_id="graceful")
    wait_until(lambda: _step(queue, first) >= 1, timeout=30, what="the task to start")
    worker.signal(signal.SIGINT)
    assert worker.wait(timeout=20) == 0
    assert queue.get(first).status is TaskStatus.COMPLETE
    assert queue.get(second).status is TaskStatus.QUEUED


@pytest.mark.parametrize("queue_url", ["sqlite"], indirect=True)
def test_a_handler_that_ignores_the_stop_request_is_walked_away_from(
    queue: TaskQueue, queue_url: str, spawn_worker
) -> None:
    task_id = queue.enqueue("debug_sleep", {"seconds": 60, "steps": 30, "ignore_cancel": True})
    worker = spawn_worker(queue_url, "--grace-seconds", "0.2", "--cancel-window", "0.5", worker_id="stuck")
    wait_until(lambda: queue.get(task_id).status is TaskStatus.IN_PROGRESS, timeout=30, what="the claim")
    time.sleep(0.3)
    worker.signal(signal.SIGTERM)
    assert worker.wait(timeout=20) == 0
    task = queue.get(task_id)
    assert (task.status, task.attempts) == (TaskStatus.QUEUED, 0)
    assert queue.list_workers()[0].status == "stopped"


@pytest.mark.parametrize("queue_url", ["sqlite"], indirect=True)
def test_a_fatal_worker_error_releases_the_task_and_exits_non_zero(
    queue: TaskQueue, queue_url: str, spawn_worker
) -> None:
    task_id = queue.enqueue("debug_sleep", {"seconds": 0, "steps": 1, "fail": "fatal"})
    worker = spawn_worker(queue_url, "--once", worker_id="broken-gpu")
    assert worker.wait(timeout=30) == 1
    task = queue.get(task_id)
    assert (task.status, task.attempts, task.worker_id) == (TaskStatus.QUEUED, 0, None)
    assert queue.list_workers()[0].status == "error"


def test_orchestrator_crash_after_enqueuing_children_is_rerun_without_duplicates(
    queue: TaskQueue, queue_url: str, spawn_worker
) -> None:
    parent_id = queue.enqueue("debug_orchestrator", {"segments": 2, "exit_hard_after_enqueue": True})
    crashing = spawn_worker(
        queue_url, "--once", "--lease-seconds", "1", "--heartbeat-seconds", "0.3", worker_id="crashing"
    )
    assert crashing.wait(timeout=30) == HARD_EXIT_CODE
    children = queue.children(parent_id)
    assert [(child.role, child.segment_index) for child in children] == [
        ("segment", 0),
        ("segment", 1),
        ("stitch", None),
    ]
    parent = queue.get(parent_id)
    assert parent.status is TaskStatus.IN_PROGRESS and not parent.awaiting_children

    # The orchestrator (reclaimed once its lease expires) and its three children: four tasks.
    rescuer = spawn_worker(queue_url, "--max-tasks", "4", worker_id="rescuer")
    assert rescuer.wait(timeout=60) == 0, rescuer.log_text()[-2000:]
    assert Counter(rescuer.claimed()) == Counter([parent_id, *(child.id for child in children)])
    assert [child.id for child in queue.children(parent_id)] == [child.id for child in children], "no duplicates"
    parent = queue.get(parent_id)
    stitch = queue.get(children[2].id)
    assert (parent.status, parent.attempts) == (TaskStatus.COMPLETE, 2)  # the crashed run and the re-run
    assert parent.output_location == stitch.output_location is not None


def test_a_failing_child_fails_its_orchestrator_and_cascades(queue: TaskQueue, queue_url: str, spawn_worker) -> None:
    parent_id = queue.enqueue("debug_orchestrator", {"segments": 3, "fail_segment": 1})
    worker = spawn_worker(queue_url, "--once")
    assert worker.wait(timeout=60) == 0
    seg0, seg1, seg2, stitch = queue.children(parent_id)
    assert seg0.status is TaskStatus.COMPLETE
    assert seg1.status is TaskStatus.FAILED and seg1.error_message.startswith("params.fail:")
    assert seg1.attempts == 1, "an input error is never retried"
    assert stitch.status is TaskStatus.FAILED
    assert stitch.error_message == f"dependency {seg1.id} failed: {seg1.error_message}"
    assert seg2.status is TaskStatus.CANCELLED
    parent = queue.get(parent_id)
    assert parent.status is TaskStatus.FAILED
    assert parent.error_message == f"child {seg1.id} (segment 1) failed: {seg1.error_message}"


@pytest.mark.parametrize("queue_url", ["sqlite"], indirect=True)
def test_foreign_types_stay_untouched_and_every_log_line_names_its_task(
    queue: TaskQueue, queue_url: str, spawn_worker
) -> None:
    # On a shared database another worker handles `no_such_type`: this one never claims, fails or touches it.
    foreign = queue.enqueue("no_such_type", {})
    known = queue.enqueue("debug_sleep", {"seconds": 0, "steps": 2})
    secret = queue.enqueue("debug_sleep", {"seconds": 0, "replicate_api_key": "sk-never-logged"})
    flaky = queue.enqueue("debug_sleep", {"seconds": 0, "steps": 1, "fail": "transient", "misbehave_attempts": 1})
    before = queue.get(foreign)
    worker = spawn_worker(queue_url, "--once")
    assert worker.wait(timeout=30) == 0
    assert queue.get(foreign) == before and before.status is TaskStatus.QUEUED
    assert queue.get(known).status is TaskStatus.COMPLETE
    rejected = queue.get(secret)
    assert rejected.status is TaskStatus.FAILED
    assert rejected.error_message == "params.replicate_api_key: unknown field: this payload does not take it"
    retried = queue.get(flaky)
    assert (retried.status, retried.attempts) == (TaskStatus.COMPLETE, 2)  # the failed attempt and the one that worked

    records = worker.records()
    assert records and all("task_id" in record["extra"] for record in records)
    step_lines = [r for r in records if r["message"].startswith("step ")]
    assert {r["extra"]["task_id"] for r in step_lines} == {known, flaky}
    assert any(r["message"] == "step 1/2 (50%)" for r in step_lines)
    assert "sk-never-logged" not in worker.log_text()


@pytest.mark.parametrize("queue_url", ["sqlite"], indirect=True)
def test_task_types_only_narrow_what_the_worker_handles(queue: TaskQueue, queue_url: str, spawn_worker) -> None:
    sleeper = queue.enqueue("debug_sleep", {"seconds": 0})
    worker = spawn_worker(queue_url, "--once", "--task-types", "debug_sleep,no_such_type")
    assert worker.wait(timeout=30) == 2
    assert "--task-types names no_such_type that this worker has no handler for" in worker.log_text()
    assert queue.get(sleeper).status is TaskStatus.QUEUED
    narrowed = spawn_worker(queue_url, "--once", "--task-types", "debug_orchestrator")
    assert narrowed.wait(timeout=30) == 0
    assert queue.get(sleeper).status is TaskStatus.QUEUED  # not among the narrowed types


@pytest.mark.postgres
def test_a_database_url_the_server_refuses_stops_the_worker_at_once_with_one_line(
    postgres_database_url: str, spawn_worker
) -> None:
    from source.queue.testing import with_credentials, with_database

    url = with_credentials(with_database(postgres_database_url, "hw_no_such_database"), "postgres", "topsecret")
    started = time.monotonic()
    worker = spawn_worker(url, "--once")
    assert worker.wait(timeout=30) == 2
    assert time.monotonic() - started < 10  # the interpreter's start-up, not 16 s of retries
    errors = [record for record in worker.records() if record["level"]["name"] == "ERROR"]
    assert len(errors) == 1 and 'database "hw_no_such_database" does not exist' in errors[0]["message"]
    assert "topsecret" not in worker.log_text()
