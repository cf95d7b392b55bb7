"""The queue's contract, on a real SQLite file and a real PostgreSQL schema: claim order, dependencies, leases,
retries, cascades, the orchestrator completion hook, idempotent children."""

from __future__ import annotations

import re
import threading
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from source.queue import (
    ChildSpec,
    TaskNotFound,
    TaskNotOwned,
    TaskQueue,
    TaskStateError,
    TaskStatus,
    WorkerIdInUse,
    WorkerRecord,
    open_queue,
    redact_url,
)
from source.queue.testing import ManualClock


def claim(queue: TaskQueue, worker: str = "w1", lease: float = 30.0):
    return queue.claim(worker, lease_seconds=lease)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def timed_queue(queue_url: str, clock: ManualClock) -> Iterator[TaskQueue]:
    """The queue on a clock the test moves: leases expire and back-offs pass without sleeping."""
    opened = open_queue(queue_url, clock=clock)
    opened.migrate()
    yield opened
    opened.close()


def test_the_injected_clock_decides_expiry_and_the_database_clock_is_the_default(queue_url: str) -> None:
    long_ago = datetime(2001, 1, 1, tzinfo=UTC)
    timed = open_queue(queue_url, clock=ManualClock(long_ago))
    real = open_queue(queue_url)
    try:
        timed.migrate()
        task_id = timed.enqueue("t", {})
        task = timed.claim("w1", lease_seconds=60)
        assert task is not None
        assert (task.generation_started_at, task.lease_expires_at) == (long_ago, long_ago + timedelta(seconds=60))
        assert timed.reclaim_expired() == 0, "a minute has not passed on the injected clock"
        assert real.reclaim_expired() == 1, "on the database's clock that lease ended in 2001"
        assert real.get(task_id).status is TaskStatus.QUEUED
    finally:
        timed.close()
        real.close()
    naive = open_queue(queue_url, clock=lambda: datetime(2001, 1, 1))
    try:
        with pytest.raises(ValueError, match="clock: expected a timezone-aware datetime"):
            naive.count_ready()
    finally:
        naive.close()


def test_claim_takes_highest_priority_then_oldest_and_sets_lease(queue: TaskQueue) -> None:
    first = queue.enqueue("t", {"n": 1})
    second = queue.enqueue("t", {"n": 2})
    urgent = queue.enqueue("t", {"n": 3}, priority=5)

    order = []
    for _ in range(3):
        task = claim(queue)
        assert task is not None
        assert task.status is TaskStatus.IN_PROGRESS
        assert task.worker_id == "w1"
        assert task.lease_expires_at is not None and task.generation_started_at is not None
        assert task.lease_expires_at > task.generation_started_at
        order.append(task.id)
    assert order == [urgent, first, second]
    assert claim(queue) is None


def test_claim_filters_by_task_type(queue: TaskQueue) -> None:
    queue.enqueue("render", {})
    wanted = queue.enqueue("stitch", {})
    task = queue.claim("w1", lease_seconds=30, task_types=["stitch"])
    assert task is not None and task.id == wanted
    assert queue.claim("w1", lease_seconds=30, task_types=["stitch"]) is None


def test_task_waits_for_every_dependency(queue: TaskQueue) -> None:
    a = queue.enqueue("seg", {})
    b = queue.enqueue("seg", {})
    stitch = queue.enqueue("stitch", {}, depends_on=[a, b])
    assert queue.get(stitch).dependant_on == a  # Reigh's single column holds the first dependency
    assert queue.get(stitch).depends_on == (a, b)

    first = claim(queue)
    assert first is not None and first.id == a
    queue.complete(a, "w1", output_location="a.mp4")
    second = claim(queue)
    assert second is not None and second.id == b
    assert claim(queue) is None, "the stitch must wait for b as well"
    queue.complete(b, "w1", output_location="b.mp4")
    third = claim(queue)
    assert third is not None and third.id == stitch


def test_reigh_dependant_on_chain(queue: TaskQueue) -> None:
    a = queue.enqueue("seg", {})
    b = queue.enqueue("seg", {}, dependant_on=a)
    task = claim(queue)
    assert task is not None and task.id == a
    assert claim(queue) is None
    queue.complete(a, "w1", output_location="a.mp4", result={"frames": 81})
    done = queue.get(a)
    assert done.status is TaskStatus.COMPLETE and done.output_location == "a.mp4" and done.result == {"frames": 81}
    assert done.generation_processed_at is not None
    task = claim(queue)
    assert task is not None and task.id == b


def test_enqueue_rejects_unknown_dependency_naming_the_field(queue: TaskQueue) -> None:
    a = queue.enqueue("seg", {})
    with pytest.raises(TaskNotFound, match=r"depends_on\[1\].*no-such-task"):
        queue.enqueue("stitch", {}, depends_on=[a, "no-such-task"])
    with pytest.raises(ValueError, match="params: expected a JSON object"):
        queue.enqueue("stitch", ["not", "a", "dict"])  # type: ignore[arg-type]
    assert [task.id for task in queue.list_tasks()] == [a]


def test_lease_renewal_belongs_to_the_holder(queue: TaskQueue) -> None:
    task_id = queue.enqueue("t", {})
    task = claim(queue, "w1", lease=30)
    assert task is not None
    assert queue.renew_lease(task_id, "w1", 60) is True
    assert queue.get(task_id).lease_expires_at > task.lease_expires_at
    assert queue.renew_lease(task_id, "intruder", 60) is False


def test_leases_and_worker_heartbeats_count_from_the_injected_clock(timed_queue: TaskQueue, clock: ManualClock) -> None:
    queue = timed_queue
    task_id = queue.enqueue("t", {})
    assert claim(queue, "w1", lease=30) is not None
    assert queue.get(task_id).lease_expires_at == clock.now + timedelta(seconds=30)
    clock.advance(20)
    assert queue.renew_lease(task_id, "w1", 30) is True
    assert queue.get(task_id).lease_expires_at == clock.now + timedelta(seconds=30)
    clock.advance(29)
    assert queue.reclaim_expired() == 0, "renewed 29 s ago for 30 s"
    clock.advance(2)
    assert queue.reclaim_expired() == 1

    queue.register_worker("pod-1", session_id="first", metadata={}, stale_seconds=30)
    clock.advance(20)
    assert queue.beat_worker("pod-1", session_id="first", status="idle", current_task_id=None, metadata={})
    assert [worker.last_heartbeat for worker in queue.list_workers()] == [clock.now]
    clock.advance(20)
    with pytest.raises(WorkerIdInUse):
        queue.register_worker("pod-1", session_id="second", metadata={}, stale_seconds=30)
    clock.advance(11)
    queue.register_worker("pod-1", session_id="second", metadata={}, stale_seconds=30)


def test_expired_lease_is_reclaimed_with_one_attempt_used_then_fails_past_the_cap(
    timed_queue: TaskQueue, clock: ManualClock
) -> None:
    queue = timed_queue
    task_id = queue.enqueue("t", {}, max_attempts=2)
    dependent = queue.enqueue("t", {}, depends_on=[task_id])
    assert claim(queue, "crashed-1", lease=0.2) is not None
    assert queue.reclaim_expired() == 0, "the lease has not expired yet"
    clock.advance(0.35)
    assert queue.reclaim_expired() == 1
    task = queue.get(task_id)
    assert (task.status, task.attempts, task.worker_id) == (TaskStatus.QUEUED, 1, None)
    assert "lease expired on worker crashed-1 (attempt 1 of 2)" in (task.error_message or "")
    assert queue.get(dependent).status is TaskStatus.QUEUED, "a task that will be retried does not fail its dependents"

    assert claim(queue, "crashed-2", lease=0.2) is not None
    clock.advance(0.35)
    assert queue.reclaim_expired() == 1
    task = queue.get(task_id)
    assert (task.status, task.attempts) == (TaskStatus.FAILED, 2)
    assert "gave up after 2 attempts" in (task.error_message or "")
    assert queue.get(dependent).status is TaskStatus.FAILED
    assert queue.get(dependent).error_message == f"dependency {task_id} failed: {task.error_message}"


def test_the_old_holder_cannot_finish_a_reclaimed_task(timed_queue: TaskQueue, clock: ManualClock) -> None:
    queue = timed_queue
    task_id = queue.enqueue("t", {})
    assert claim(queue, "slow", lease=0.2) is not None
    clock.advance(0.3)
    queue.reclaim_expired()
    assert claim(queue, "fresh", lease=30) is not None
    with pytest.raises(TaskNotOwned, match="worker slow no longer holds it"):
        queue.complete(task_id, "slow", output_location="late.mp4")
    assert queue.renew_lease(task_id, "slow", 30) is False
    queue.complete(task_id, "fresh", output_location="ok.mp4")
    assert queue.get(task_id).output_location == "ok.mp4"


def test_finishing_calls_name_the_action_the_task_and_who_holds_it(queue: TaskQueue) -> None:
    held = queue.enqueue("t", {})
    assert claim(queue, "w1").id == held
    for action, call in [
        ("complete", lambda worker: queue.complete(held, worker, output_location="x.mp4")),
        ("fail", lambda worker: queue.fail(held, worker, "boom")),
        ("mark as awaiting children", lambda worker: queue.await_children(held, worker, "waiting")),
    ]:
        expected = f"^cannot {action} task {held}: worker w2 no longer holds it \\(it is In Progress, held by w1\\)$"
        with pytest.raises(TaskNotOwned, match=expected):
            call("w2")
    waiting = queue.enqueue("t", {}, dependant_on=held)
    with pytest.raises(
        TaskNotOwned, match=f"^cannot fail task {waiting}: worker w1 no longer holds it \\(it is Queued\\)$"
    ):
        queue.fail(waiting, "w1", "boom")
    # Without a worker id (an admin or the worker's own bookkeeping) a Queued or In Progress task may be finished ...
    queue.fail(waiting, None, "given up")
    assert queue.get(waiting).status is TaskStatus.FAILED
    # ... but not one that already ended
    with pytest.raises(TaskStateError, match=f"^cannot fail task {waiting}: it is Failed$"):
        queue.fail(waiting, None, "again")
    with pytest.raises(TaskStateError, match=f"^cannot complete task {waiting}: it is Failed$"):
        queue.complete(waiting, None, output_location=None)


def test_restarted_worker_id_gets_its_tasks_back_at_once(queue: TaskQueue) -> None:
    task_id = queue.enqueue("t", {})
    assert claim(queue, "pod-7", lease=300) is not None
    assert queue.reclaim_expired(of_worker="pod-7") == 1
    task = queue.get(task_id)
    assert (task.status, task.attempts) == (TaskStatus.QUEUED, 1)


def test_retryable_failure_requeues_until_the_cap(queue: TaskQueue) -> None:
    task_id = queue.enqueue("t", {}, max_attempts=3)
    for attempt in (1, 2):
        assert claim(queue) is not None
        assert queue.fail(task_id, "w1", "CUDA out of memory", retryable=True) is TaskStatus.QUEUED
        task = queue.get(task_id)
        assert (task.status, task.attempts, task.error_message) == (TaskStatus.QUEUED, attempt, "CUDA out of memory")
    assert claim(queue) is not None
    assert queue.fail(task_id, "w1", "CUDA out of memory", retryable=True) is TaskStatus.FAILED
    task = queue.get(task_id)
    assert (task.status, task.attempts) == (TaskStatus.FAILED, 3)
    assert task.error_message == "CUDA out of memory (gave up after 3 attempts)"


def test_the_attempt_that_succeeds_is_counted_and_the_progress_says_how_it_ended(queue: TaskQueue) -> None:
    # The worker logs "attempt N of M" when it claims; the row must say N once that attempt has ended, either way.
    first_try = queue.enqueue("t", {}, max_attempts=3)
    assert claim(queue) is not None
    queue.report_progress(first_try, "w1", step=4, total=4, message="phase 1")
    queue.complete(first_try, "w1", output_location="out.mp4")
    done = queue.get(first_try)
    assert done.attempts == 1
    # A finished task's progress says how it ended, keeping its last step and total.
    assert (done.progress["message"], done.progress["step"], done.progress["total"]) == ("Complete", 4, 4)
    second_try = queue.enqueue("t", {}, max_attempts=3)
    assert claim(queue) is not None
    queue.fail(second_try, "w1", "CUDA out of memory", retryable=True)
    assert claim(queue) is not None
    queue.complete(second_try, "w1", output_location="out.mp4")
    assert queue.get(second_try).attempts == 2
    failed = queue.enqueue("t", {}, max_attempts=1)
    assert claim(queue) is not None
    queue.fail(failed, "w1", "bad input")
    assert (queue.get(failed).attempts, queue.get(failed).progress["message"]) == (1, "Failed")


def test_retry_back_off_delays_the_next_claim(timed_queue: TaskQueue, clock: ManualClock) -> None:
    queue = timed_queue
    task_id = queue.enqueue("t", {})
    assert claim(queue) is not None
    queue.fail(task_id, "w1", "flaky network", retryable=True, retry_delay_seconds=0.4)
    assert claim(queue) is None, "not claimable during the back-off"
    clock.advance(0.5)
    task = claim(queue)
    assert task is not None and task.id == task_id


def test_failure_cascades_to_every_dependent_transitively(queue: TaskQueue) -> None:
    root = queue.enqueue("seg", {})
    other = queue.enqueue("seg", {})
    child = queue.enqueue("seg", {}, dependant_on=root)
    grandchild = queue.enqueue("stitch", {}, depends_on=[other, child])
    unrelated = queue.enqueue("seg", {})

    task = claim(queue)
    assert task is not None and task.id == root
    assert queue.fail(root, "w1", "bad prompt") is TaskStatus.FAILED

    assert queue.get(root).error_message == "bad prompt"
    for task_id in (child, grandchild):
        task = queue.get(task_id)
        assert task.status is TaskStatus.FAILED
        assert task.error_message == f"dependency {root} failed: bad prompt"
    assert queue.get(other).status is TaskStatus.QUEUED
    assert queue.get(unrelated).status is TaskStatus.QUEUED


def test_enqueue_after_the_dependency_failed_fails_at_once(queue: TaskQueue) -> None:
    root = queue.enqueue("seg", {})
    assert claim(queue) is not None
    queue.fail(root, "w1", "broken")
    late = queue.enqueue("stitch", {}, depends_on=[root])
    task = queue.get(late)
    assert task.status is TaskStatus.FAILED
    assert task.error_message == f"dependency {root} failed: broken"


def test_enqueue_after_a_later_dependency_was_cancelled_is_cancelled_at_once(queue: TaskQueue) -> None:
    # Every dependency is looked at, not only the first (Reigh's dependant_on column holds just that one).
    done = queue.enqueue("seg", {})
    queued = queue.enqueue("seg", {})
    cancelled = queue.enqueue("seg", {})
    assert claim(queue) is not None
    queue.complete(done, "w1", output_location="a.mp4")
    queue.cancel(cancelled)
    stitch = queue.enqueue("stitch", {}, depends_on=[done, queued, cancelled])
    task = queue.get(stitch)
    assert task.status is TaskStatus.CANCELLED
    assert task.error_message == f"dependency {cancelled} cancelled: cancelled by admin"
    assert queue.get(queued).status is TaskStatus.QUEUED  # a dependency is not touched by its dependent's cascade


def test_cancel_cascades_and_is_idempotent(queue: TaskQueue) -> None:
    root = queue.enqueue("seg", {})
    child = queue.enqueue("seg", {}, dependant_on=root)
    grandchild = queue.enqueue("seg", {}, dependant_on=child)
    done = queue.enqueue("seg", {})
    assert claim(queue) is not None  # root is In Progress: cancelling a running task works too

    touched = queue.cancel(root)
    assert touched == [root, child, grandchild]
    assert queue.get(root).error_message == "cancelled by admin"
    assert queue.get(grandchild).status is TaskStatus.CANCELLED
    assert queue.get(grandchild).error_message == f"dependency {root} cancelled: cancelled by admin"
    assert queue.renew_lease(root, "w1", 30) is False, "the worker learns at its next heartbeat"
    assert queue.cancel(root) == []

    assert claim(queue) is not None
    queue.complete(done, "w1", output_location="x")
    with pytest.raises(TaskStateError, match="already Complete"):
        queue.cancel(done)


def test_retry_resets_the_task_and_what_failed_with_it(queue: TaskQueue) -> None:
    root = queue.enqueue("seg", {}, max_attempts=1)
    child = queue.enqueue("seg", {}, dependant_on=root)
    assert claim(queue) is not None
    queue.fail(root, "w1", "oom", retryable=True)
    assert queue.get(child).status is TaskStatus.FAILED

    reset = queue.retry(root)
    assert set(reset) == {root, child}
    for task_id in (root, child):
        task = queue.get(task_id)
        assert (task.status, task.attempts, task.error_message, task.worker_id) == (TaskStatus.QUEUED, 0, None, None)
    with pytest.raises(TaskStateError, match="only Failed or Cancelled"):
        queue.retry(root)
    task = claim(queue)
    assert task is not None and task.id == root


def test_retry_of_a_dependent_refuses_while_its_dependency_stays_failed(queue: TaskQueue) -> None:
    root = queue.enqueue("seg", {})
    child = queue.enqueue("seg", {}, dependant_on=root)
    assert claim(queue) is not None
    queue.fail(root, "w1", "bad prompt")
    assert queue.get(child).status is TaskStatus.FAILED

    # Resetting only the child would leave it Queued behind a Failed dependency, never claimable.
    with pytest.raises(TaskStateError, match=f"depends on {root}, which is Failed; retry {root}"):
        queue.retry(child)
    assert queue.get(child).status is TaskStatus.FAILED
    assert set(queue.retry(root)) == {root, child}


def test_release_puts_the_task_back_without_an_attempt_penalty(queue: TaskQueue) -> None:
    task_id = queue.enqueue("t", {})
    assert claim(queue, "w1") is not None
    queue.report_progress(task_id, "w1", step=3, total=10, message="denoising")
    progress = queue.get(task_id).progress
    assert progress == {"step": 3, "total": 10, "percent": 30.0, "message": "denoising"}
    queue.release(task_id, "w1")
    task = queue.get(task_id)
    assert (task.status, task.attempts, task.worker_id, task.lease_expires_at) == (TaskStatus.QUEUED, 0, None, None)
    with pytest.raises(TaskNotOwned):
        queue.release(task_id, "w1")


def _travel_children(stitch: bool = True) -> list[ChildSpec]:
    children = [
        ChildSpec("travel_segment", {"i": 0}, role="segment", segment_index=0),
        ChildSpec("travel_segment", {"i": 1}, role="segment", segment_index=1),
    ]
    if stitch:
        children.append(
            ChildSpec("travel_stitch", {}, role="stitch", depends_on=("segment:0", "segment:1"), completes_parent=True)
        )
    return children


def test_orchestrator_completes_through_the_hook_when_its_last_child_completes(queue: TaskQueue) -> None:
    parent_id = queue.enqueue("travel_orchestrator", {}, project_id="proj-1", priority=2)
    assert claim(queue, "orch") is not None
    ids = queue.enqueue_children(parent_id, _travel_children())
    queue.await_children(parent_id, "orch", "waiting for 3 children")
    parent = queue.get(parent_id)
    assert (parent.status, parent.awaiting_children, parent.lease_expires_at) == (TaskStatus.IN_PROGRESS, True, None)
    assert parent.progress == {"message": "waiting for 3 children"}

    children = queue.children(parent_id)
    assert [child.id for child in children] == ids
    assert all(child.project_id == "proj-1" and child.parent_id == parent_id for child in children)
    assert children[2].depends_on == (ids[0], ids[1]) and children[2].completes_parent

    for expected in ids:
        assert queue.get(parent_id).status is TaskStatus.IN_PROGRESS
        task = claim(queue, "gpu")
        assert task is not None and task.id == expected
        report = {"frames": 97} if task.role == "stitch" else None
        queue.complete(task.id, "gpu", output_location=f"{task.role}{task.segment_index}.mp4", result=report)

    parent = queue.get(parent_id)
    assert parent.status is TaskStatus.COMPLETE
    assert parent.output_location == "stitchNone.mp4"
    assert parent.result == {
        "children": {
            ids[0]: {
                "role": "segment",
                "segment_index": 0,
                "task_type": "travel_segment",
                "output_location": "segment0.mp4",
            },
            ids[1]: {
                "role": "segment",
                "segment_index": 1,
                "task_type": "travel_segment",
                "output_location": "segment1.mp4",
            },
            ids[2]: {
                "role": "stitch",
                "segment_index": None,
                "task_type": "travel_stitch",
                "output_location": "stitchNone.mp4",
            },
        },
        "output_from": ids[2],
        "output": {"frames": 97},  # what the final child reported, carried up
    }
    assert queue.reclaim_expired() == 0, "an awaiting orchestrator has no lease to expire"


@pytest.mark.parametrize(
    ("children", "message"),
    [
        ([ChildSpec("", {}, role="segment")], "children[0].task_type: expected a non-empty string; got ''"),
        (
            [ChildSpec("seg", {}, role="segment"), ChildSpec("seg", "x", role="segment", segment_index=1)],  # type: ignore[arg-type]
            "children[1].params: expected a JSON object (dict); got str",
        ),
        ([ChildSpec("seg", {}, role="")], "children[0].role: expected a non-empty string; got ''"),
        (
            [ChildSpec("a", {}, role="a", completes_parent=True), ChildSpec("b", {}, role="b", completes_parent=True)],
            "children: at most one child may have completes_parent=True",
        ),
    ],
)
def test_bad_children_are_refused_naming_the_child_and_nothing_is_enqueued(
    queue: TaskQueue, children: list[ChildSpec], message: str
) -> None:
    parent_id = queue.enqueue("travel_orchestrator", {})
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        queue.enqueue_children(parent_id, children)
    assert queue.children(parent_id) == []


def test_children_of_a_parent_that_does_not_exist_name_parent_id(queue: TaskQueue) -> None:
    ghost = "11111111-1111-1111-1111-111111111111"
    with pytest.raises(TaskNotFound, match=f"^parent_id: no task with id '{ghost}'$"):
        queue.enqueue_children(ghost, [ChildSpec("seg", {}, role="segment")])


def test_nested_orchestrators_complete_bottom_up_and_release_their_dependents(queue: TaskQueue) -> None:
    outer = queue.enqueue("join_orchestrator", {})
    assert claim(queue, "orch").id == outer
    (inner,) = queue.enqueue_children(outer, [ChildSpec("travel_orchestrator", {}, role="travel")])
    after_outer = queue.enqueue("notify", {}, dependant_on=outer)
    queue.await_children(outer, "orch", "waiting for the travel run")
    assert claim(queue, "orch").id == inner
    (segment,) = queue.enqueue_children(inner, [ChildSpec("travel_segment", {}, role="segment", segment_index=0)])
    queue.await_children(inner, "orch", "waiting for 1 child")
    assert claim(queue, "gpu").id == segment
    assert claim(queue) is None, "the dependent of the outer orchestrator waits"

    queue.complete(segment, "gpu", output_location="seg.mp4")
    assert (queue.get(inner).status, queue.get(inner).output_location) == (TaskStatus.COMPLETE, "seg.mp4")
    assert (queue.get(outer).status, queue.get(outer).output_location) == (TaskStatus.COMPLETE, "seg.mp4")
    assert queue.get(outer).result["output_from"] == inner
    assert claim(queue).id == after_outer, "completing an orchestrator releases what depends on it"


def test_orchestrator_without_stitch_takes_the_last_childs_output(queue: TaskQueue) -> None:
    parent_id = queue.enqueue("travel_orchestrator", {})
    assert claim(queue, "orch") is not None
    queue.enqueue_children(parent_id, _travel_children(stitch=False))
    queue.await_children(parent_id, "orch", "waiting")
    for _ in range(2):
        task = claim(queue)
        assert task is not None
        queue.complete(task.id, "w1", output_location=f"seg{task.segment_index}.mp4")
    assert queue.get(parent_id).output_location == "seg1.mp4"


def test_crash_between_children_enqueued_and_orchestrator_marked_reruns_without_duplicates(
    timed_queue: TaskQueue, clock: ManualClock
) -> None:
    queue = timed_queue
    parent_id = queue.enqueue("travel_orchestrator", {})
    assert claim(queue, "doomed", lease=0.2) is not None
    first_ids = queue.enqueue_children(parent_id, _travel_children())
    # ... the worker dies here, before await_children. Meanwhile other workers finish every child.
    for _ in range(3):
        task = queue.claim("gpu", lease_seconds=30, task_types=["travel_segment", "travel_stitch"])
        assert task is not None
        queue.complete(task.id, "gpu", output_location=f"{task.role}.mp4")
    assert queue.get(parent_id).status is TaskStatus.IN_PROGRESS, "not awaiting yet: the hook must not fire"
    clock.advance(0.3)
    assert queue.reclaim_expired() == 1

    rerun = claim(queue, "rescuer")
    assert rerun is not None and rerun.id == parent_id and rerun.attempts == 1
    assert queue.enqueue_children(parent_id, _travel_children()) == first_ids
    assert len(queue.children(parent_id)) == 3
    queue.await_children(parent_id, "rescuer", "waiting")  # all children already Complete: completes at once
    parent = queue.get(parent_id)
    assert (parent.status, parent.output_location) == (TaskStatus.COMPLETE, "stitch.mp4")


def test_child_identity_is_unique_even_without_a_segment_index(queue: TaskQueue) -> None:
    parent_id = queue.enqueue("travel_orchestrator", {})
    first = queue.enqueue_children(parent_id, [ChildSpec("travel_stitch", {}, role="stitch")])
    again = queue.enqueue_children(
        parent_id, [ChildSpec("travel_stitch", {"changed": True}, role="stitch"), ChildSpec("x", {}, role="extra")]
    )
    assert again[0] == first[0]
    assert queue.get(first[0]).params == {}, "an existing child is returned as it is"
    assert len(queue.children(parent_id)) == 2
    with pytest.raises(ValueError, match="repeated"):
        queue.enqueue_children(parent_id, [ChildSpec("s", {}, "segment", 0), ChildSpec("s", {}, "segment", 0)])
    with pytest.raises(TaskNotFound, match=r"children\[0\].depends_on.*segment:5"):
        queue.enqueue_children(parent_id, [ChildSpec("s", {}, "late", 0, depends_on=("segment:5",))])


def test_child_failure_fails_the_orchestrator_and_stops_its_siblings(queue: TaskQueue) -> None:
    parent_id = queue.enqueue("travel_orchestrator", {})
    assert claim(queue, "orch") is not None
    seg0, seg1, stitch = queue.enqueue_children(parent_id, _travel_children())
    queue.await_children(parent_id, "orch", "waiting")
    assert claim(queue, "gpu") is not None  # segment 0 running
    queue.fail(seg0, "gpu", "NaN latents")

    parent = queue.get(parent_id)
    assert parent.status is TaskStatus.FAILED
    assert parent.error_message == f"child {seg0} (segment 0) failed: NaN latents"
    assert queue.get(stitch).status is TaskStatus.FAILED
    assert queue.get(stitch).error_message == f"dependency {seg0} failed: NaN latents"
    sibling = queue.get(seg1)
    assert sibling.status is TaskStatus.CANCELLED
    assert sibling.error_message.startswith(f"parent {parent_id} failed: child {seg0}")
    assert claim(queue) is None

    # retry of the failed child brings the whole run back: the orchestrator waits for its children again
    queue.retry(seg0)
    assert queue.get(parent_id).status is TaskStatus.IN_PROGRESS and queue.get(parent_id).awaiting_children
    for _ in range(3):
        task = claim(queue, "gpu")
        assert task is not None
        queue.complete(task.id, "gpu", output_location=f"{task.role}.mp4")
    assert queue.get(parent_id).status is TaskStatus.COMPLETE


def test_cancelling_the_orchestrator_cancels_its_children(queue: TaskQueue) -> None:
    parent_id = queue.enqueue("travel_orchestrator", {})
    assert claim(queue, "orch") is not None
    ids = queue.enqueue_children(parent_id, _travel_children())
    queue.await_children(parent_id, "orch", "waiting")
    touched = queue.cancel(parent_id)
    assert set(touched) == {parent_id, *ids}
    assert all(queue.get(task_id).status is TaskStatus.CANCELLED for task_id in ids)
    assert claim(queue) is None


def test_threads_claiming_at_once_never_share_a_task(queue: TaskQueue) -> None:
    ids = {queue.enqueue("t", {"n": n}) for n in range(60)}
    claimed: list[str] = []
    lock = threading.Lock()

    def drain(worker: str) -> None:
        while (task := queue.claim(worker, lease_seconds=30)) is not None:
            queue.complete(task.id, worker, output_location=worker)
            with lock:
                claimed.append(task.id)

    threads = [threading.Thread(target=drain, args=(f"w{n}",)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert Counter(claimed) == Counter(ids)


def test_workers_table_and_stats(queue: TaskQueue) -> None:
    queue.register_worker("gpu-1", session_id="one", metadata={"gpu": "H100"}, stale_seconds=30)
    first_start = queue.list_workers()[0].started_at
    assert queue.beat_worker("gpu-1", session_id="one", status="busy", current_task_id="abc", metadata={"gpu": "H100"})
    (worker,) = queue.list_workers()
    assert (worker.id, worker.status, worker.current_task_id, worker.metadata) == (
        "gpu-1",
        "busy",
        "abc",
        {"gpu": "H100"},
    )
    assert worker.started_at == first_start and worker.last_heartbeat >= first_start

    a = queue.enqueue("seg", {})
    queue.enqueue("seg", {}, dependant_on=a)
    queue.enqueue("stitch", {})
    stats = queue.stats()
    assert stats["total"] == 3
    assert stats["by_status"]["Queued"] == 3
    assert stats["by_type"] == {"seg": {"Queued": 2}, "stitch": {"Queued": 1}}
    assert stats["ready"] == 2
    assert stats["workers"] == {"busy": 1}
    assert queue.list_tasks(status="queued", task_type="seg", limit=1)[0].task_type == "seg"


def _foreign_sql(queue_url: str, statements: list[tuple[str, tuple[object, ...]]]) -> None:
    """Writes as another app would, straight into the tables (`?` placeholders on both backends)."""
    if queue_url.startswith("sqlite"):
        import sqlite3

        with sqlite3.connect(queue_url.removeprefix("sqlite:///")) as connection:
            for sql, args in statements:
                connection.execute(sql.replace("now()", "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')"), args)
        return
    import psycopg

    with psycopg.connect(queue_url, autocommit=True) as connection:
        for sql, args in statements:
            connection.execute(sql.replace("?", "%s"), args)


def test_rows_written_by_another_app_wait_for_their_dependencies(queue: TaskQueue, queue_url: str) -> None:
    dependency = queue.enqueue("t", {})
    insert = "INSERT INTO tasks (id, task_type, params, status, dependant_on, created_at) VALUES (?, 't', '{}', 'Queued', ?, now())"
    _foreign_sql(
        queue_url,
        [
            (insert, ("via-column", dependency)),
            (insert, ("via-link", None)),
            (
                "INSERT INTO task_dependencies (task_id, depends_on_id, position) VALUES (?, ?, 0)",
                ("via-link", dependency),
            ),
            (insert, ("free", None)),
            (insert, ("on-a-ghost", "no-such-task")),
            (insert, ("linked-to-a-ghost", None)),
            (
                "INSERT INTO task_dependencies (task_id, depends_on_id, position) VALUES (?, ?, 0)",
                ("linked-to-a-ghost", "no-such-task"),
            ),
        ],
    )
    assert {claim(queue).id, claim(queue).id} == {dependency, "free"}
    assert claim(queue) is None, "the other four wait"
    queue.complete(dependency, "w1", output_location=None)
    assert {claim(queue).id, claim(queue).id} == {"via-column", "via-link"}
    assert claim(queue) is None, "a dependency that does not exist keeps its task waiting, in either column"


def test_every_readiness_check_reads_both_dependency_columns(queue: TaskQueue, queue_url: str) -> None:
    # Rows written by another app may hold a dependency in Reigh's dependant_on column alone, in task_dependencies
    # alone, or one in each; completion (of a dependency, or behind the queue's back) must read both, every time.
    a, b, c = (queue.enqueue("t", {}) for _ in range(3))
    insert = "INSERT INTO tasks (id, task_type, params, status, dependant_on, created_at) VALUES (?, 't', '{}', 'Queued', ?, now())"
    link = "INSERT INTO task_dependencies (task_id, depends_on_id, position) VALUES (?, ?, ?)"
    _foreign_sql(
        queue_url,
        [
            (insert, ("column-b-link-a", b)),
            (link, ("column-b-link-a", a, 0)),
            (insert, ("links-a-and-ghost", None)),
            (link, ("links-a-and-ghost", a, 0)),
            (link, ("links-a-and-ghost", "no-such-task", 1)),
            (insert, ("column-c-link-a", c)),
            (link, ("column-c-link-a", a, 0)),
        ],
    )
    assert claim(queue).id == a
    queue.complete(a, "w1", output_location=None)  # rechecks a's dependents
    assert [claim(queue).id, claim(queue).id] == [b, c]
    assert claim(queue) is None, "each foreign row still waits for b, a task that does not exist, or c"

    _foreign_sql(queue_url, [("UPDATE tasks SET status = 'Complete' WHERE id = ?", (b,))])
    queue.refresh_readiness()  # the safety net
    assert claim(queue).id == "column-b-link-a"
    assert claim(queue) is None, "the ghost and c still hold the other two"


def test_a_dependency_completed_behind_the_queues_back_is_noticed_by_refresh(queue: TaskQueue, queue_url: str) -> None:
    dependency = queue.enqueue("t", {})
    waiting = queue.enqueue("t", {}, dependant_on=dependency)
    assert claim(queue).id == dependency
    _foreign_sql(queue_url, [("UPDATE tasks SET status = 'Complete' WHERE id = ?", (dependency,))])
    assert claim(queue) is None, "the cached flag still says waiting"
    queue.refresh_readiness()
    assert claim(queue).id == waiting


def test_a_retried_task_waits_again_for_a_dependency_that_is_not_complete(queue: TaskQueue) -> None:
    first = queue.enqueue("t", {})
    second = queue.enqueue("t", {}, dependant_on=first)
    assert claim(queue).id == first
    queue.fail(first, "w1", "boom")
    assert queue.get(second).status is TaskStatus.FAILED
    assert set(queue.retry(first)) == {first, second}
    assert claim(queue).id == first
    assert claim(queue) is None, "the retried dependent waits for its retried dependency"
    queue.complete(first, "w1", output_location=None)
    assert claim(queue).id == second


def test_enqueue_refuses_params_no_worker_could_read_back(queue: TaskQueue) -> None:
    with pytest.raises(ValueError, match=r"params.guidance: NaN is not a JSON number"):
        queue.enqueue("t", {"guidance": float("nan")})
    nested: object = 1
    for _ in range(70):
        nested = [nested]
    with pytest.raises(ValueError, match="params: JSON nested deeper than 64 levels"):
        queue.enqueue("t", {"a": nested})
    with pytest.raises(ValueError, match=r"params.prompt: text contains a lone surrogate"):
        queue.enqueue("t", {"prompt": "\ud800"})
    with pytest.raises(ValueError, match=r"params: \d+ bytes of JSON; at most 2097152"):
        queue.enqueue("t", {"prompt": "x" * (3 * 1024 * 1024)})
    assert queue.list_tasks() == []


# ---------------------------------------------------------------------------------------------- ids, lists, stats


def test_a_whole_id_wins_over_the_longer_ids_it_starts(queue: TaskQueue) -> None:
    short = queue.enqueue("t", {}, task_id="task-1")
    queue.enqueue("t", {}, task_id="task-10")
    assert queue.resolve_id(short) == "task-1"  # also the start of task-10: the whole id wins


def test_an_id_prefix_needs_four_characters_and_a_single_match(queue: TaskQueue) -> None:
    for task_id in ("abcd-1", "abcd-2", "abcx-3", "zyxw-1"):
        queue.enqueue("t", {}, task_id=task_id)
    assert queue.resolve_id("zyxw") == "zyxw-1"
    with pytest.raises(TaskNotFound, match="^task id: no task with id 'zyx'$"):
        queue.resolve_id("zyx")
    with pytest.raises(TaskNotFound, match="^task id: no task with id 'nope'$"):
        queue.resolve_id("nope")
    with pytest.raises(
        TaskStateError, match=r"^task id 'abcd' is ambiguous: it starts abcd-1, abcd-2; give more of it$"
    ):
        queue.resolve_id("abcd")
    with pytest.raises(TaskNotFound):  # three characters are too few, even when they start several ids
        queue.resolve_id("abc")


def test_an_ambiguous_prefix_shows_two_matches_and_says_there_are_more(queue: TaskQueue) -> None:
    for task_id in ("run-a", "run-b", "run-c"):
        queue.enqueue("t", {}, task_id=task_id)
    with pytest.raises(
        TaskStateError, match=r"^task id 'run-' is ambiguous: it starts run-a, run-b, \.\.\.; give more"
    ):
        queue.resolve_id("run-")


def test_list_tasks_filters_by_status_and_shows_200_by_default(queue: TaskQueue) -> None:
    done = queue.enqueue("t", {})
    for _ in range(200):
        queue.enqueue("t", {})
    assert claim(queue).id == done
    queue.complete(done, "w1", output_location=None)
    assert [task.id for task in queue.list_tasks(status="complete")] == [done]
    assert [task.id for task in queue.list_tasks(status=TaskStatus.COMPLETE)] == [done]
    assert len(queue.list_tasks()) == 200
    assert len(queue.list_tasks(status="Queued", limit=300)) == 200


def test_stats_count_every_status_worker_and_the_oldest_waiting_task(queue: TaskQueue, queue_url: str) -> None:
    assert queue.stats()["oldest_queued_at"] is None
    first = queue.enqueue("t", {})
    queue.enqueue("t", {})
    _foreign_sql(
        queue_url,
        [
            (
                "INSERT INTO tasks (id, task_type, params, status, created_at) VALUES (?, 't', '{}', ?, now())",
                ("x", "Done"),
            )
        ]
        if queue_url.startswith("sqlite")
        else [],
    )
    for worker in ("w1", "w2", "w3"):
        queue.register_worker(worker, session_id=worker, metadata={}, stale_seconds=30)
    queue.beat_worker("w3", session_id="w3", status="busy", current_task_id=None, metadata={})
    stats = queue.stats()
    assert stats["oldest_queued_at"] == queue.get(first).created_at.isoformat()
    assert stats["workers"] == {"starting": 2, "busy": 1}
    if queue_url.startswith("sqlite"):  # a status another app wrote is counted under its own spelling
        assert stats["by_status"]["Done"] == 1 and stats["total"] == 3


def test_stats_count_ready_tasks_on_the_queues_clock(timed_queue: TaskQueue, clock: ManualClock) -> None:
    task_id = timed_queue.enqueue("t", {})
    assert claim(timed_queue) is not None
    timed_queue.fail(task_id, "w1", "flaky", retryable=True, retry_delay_seconds=60)
    assert timed_queue.stats()["ready"] == 0
    clock.advance(120)
    assert timed_queue.stats()["ready"] == 1


# ---------------------------------------------------------------------------------------------- a worker's calls


def test_lease_seconds_must_be_positive_to_renew(queue: TaskQueue) -> None:
    task_id = queue.enqueue("t", {})
    claim(queue)
    with pytest.raises(ValueError, match="^lease_seconds: expected a positive number of seconds; got 0$"):
        queue.renew_lease(task_id, "w1", 0)


def test_progress_is_stored_with_its_percentage_and_a_short_message(queue: TaskQueue) -> None:
    task_id = queue.enqueue("t", {})
    claim(queue)
    queue.report_progress(task_id, "w1", step=1, total=3)
    assert queue.get(task_id).progress == {"step": 1, "total": 3, "percent": 33.3, "message": ""}
    queue.report_progress(task_id, "w1", step=1, total=1, message="m" * 300)
    progress = queue.get(task_id).progress
    assert progress["percent"] == 100.0
    assert progress["message"] == "m" * 160 + "... (140 more characters)"  # cut to 200
    queue.report_progress(task_id, "w1", step=0, total=0, message="starting")
    assert queue.get(task_id).progress["percent"] == 0.0


def test_only_the_holder_releases_a_task(queue: TaskQueue) -> None:
    task_id = queue.enqueue("t", {})
    claim(queue)
    with pytest.raises(TaskNotOwned, match=f"^cannot release task {task_id}: worker w2 no longer holds it"):
        queue.release(task_id, "w2")


def test_a_database_queue_has_no_app_to_share_prompts_with(queue: TaskQueue) -> None:
    assert queue.share_prompts("t", "shot", ["a"]) is False


def test_a_queue_shows_its_backend_and_url_without_the_password(queue: TaskQueue, queue_url: str) -> None:
    kind = "SqliteTaskQueue" if queue_url.startswith("sqlite") else "PostgresTaskQueue"
    assert repr(queue) == f"{kind}({redact_url(queue_url)!r})"


def test_task_ids_must_be_plain_names(queue: TaskQueue) -> None:
    expected = (
        "^task_id: expected 1 to 128 characters of letters, digits and . _ : - starting with a letter or digit; got "
    )
    with pytest.raises(ValueError, match=expected + r"'\.\./x'$"):
        queue.enqueue("t", {}, task_id="../x")
    with pytest.raises(ValueError, match=expected + "'5'$"):
        queue.enqueue("t", {}, task_id=5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=expected + f"'{'a' * 60}'$"):
        queue.enqueue("t", {}, task_id="a" * 129)


def test_records_are_json_ready(queue: TaskQueue) -> None:
    first = queue.enqueue("t", {})
    second = queue.enqueue("t", {}, depends_on=[first])
    row = queue.get(second).to_dict()
    assert row["depends_on"] == [first] and row["status"] == "Queued" and isinstance(row["created_at"], str)
    queue.register_worker("gpu-1", session_id="s", metadata={"gpu": "H100"}, stale_seconds=30)
    worker = queue.list_workers()[0]
    assert worker.to_dict() == {
        "id": "gpu-1",
        "status": "starting",
        "last_heartbeat": worker.last_heartbeat.isoformat(),
        "current_task_id": None,
        "metadata": {"gpu": "H100"},
        "started_at": worker.started_at.isoformat(),
    }
    assert WorkerRecord("w", "stopped", None, None).to_dict()["last_heartbeat"] is None
    assert WorkerRecord("w", "stopped", None, None).to_dict()["started_at"] is None


def test_a_worker_id_in_use_says_who_holds_it(queue: TaskQueue) -> None:
    queue.register_worker("gpu-1", session_id="one", metadata={"hostname": "box", "pid": 42}, stale_seconds=30)
    with pytest.raises(WorkerIdInUse) as caught:
        queue.register_worker("gpu-1", session_id="two", metadata={}, stale_seconds=30)
    holder = caught.value.holder
    assert holder.id == "gpu-1"
    assert str(caught.value) == (
        f"worker id 'gpu-1' is held by a live worker (host box, pid 42, status starting, last heartbeat "
        f"{holder.last_heartbeat.isoformat()}); give this worker another --worker-id, or stop the other one"
    )
    unknown = WorkerIdInUse(WorkerRecord("w", "busy", None, None))
    assert "(host ?, pid ?, status busy, last heartbeat never)" in str(unknown)


def test_a_schema_table_without_migrations_is_version_0(queue_url: str) -> None:
    opened = open_queue(queue_url)
    try:
        assert opened.migrate(target_version=0) == 0
        assert opened.schema_version() == 0
        assert opened.migrate(target_version=1) == opened.schema_version() == 1
    finally:
        opened.close()


def test_cancelling_a_child_cancels_its_orchestrator_naming_the_child(queue: TaskQueue) -> None:
    parent_id = queue.enqueue("travel_orchestrator", {})
    assert claim(queue, "orch") is not None
    seg0, seg1, stitch = queue.enqueue_children(parent_id, _travel_children())
    queue.await_children(parent_id, "orch", "waiting")
    assert set(queue.cancel(seg1, "not wanted")) == {seg1, parent_id, seg0, stitch}
    parent = queue.get(parent_id)
    assert (parent.status, parent.error_message) == (
        TaskStatus.CANCELLED,
        f"child {seg1} (segment 1) cancelled: not wanted",
    )
    assert queue.get(stitch).error_message == f"dependency {seg1} cancelled: not wanted"


def test_count_ready_counts_claimable_tasks_of_the_given_types(timed_queue: TaskQueue, clock: ManualClock) -> None:
    queue = timed_queue
    first = queue.enqueue("seg", {})
    queue.enqueue("seg", {}, dependant_on=first)
    queue.enqueue("stitch", {})
    assert queue.count_ready() == 2
    assert queue.count_ready(task_types=["seg"]) == 1
    assert queue.count_ready(task_types=["stitch", "seg"]) == 2
    assert queue.count_ready(task_types=[]) == 2  # no filter
    assert claim(queue).id == first
    queue.fail(first, "w1", "flaky", retryable=True, retry_delay_seconds=60)
    assert queue.count_ready(task_types=["seg"]) == 0, "backing off"
    clock.advance(120)  # on the queue's clock, not the database's
    assert queue.count_ready(task_types=["seg"]) == 1


def test_retry_refuses_while_another_dependency_stays_cancelled(queue: TaskQueue) -> None:
    first, second = queue.enqueue("t", {}), queue.enqueue("t", {})
    both = queue.enqueue("t", {}, depends_on=[first, second])
    queue.cancel(first)
    queue.cancel(second)
    assert queue.get(both).status is TaskStatus.CANCELLED
    with pytest.raises(TaskStateError, match=f"task {both} depends on {second}, which is Cancelled; retry {second}"):
        queue.retry(first)  # resets first and both, but second stays Cancelled
    with pytest.raises(TaskStateError, match=f"depends on {first}, which is Cancelled"):
        queue.retry(both)
    assert queue.get(first).status is TaskStatus.CANCELLED, "nothing was reset"


def test_retry_of_a_row_whose_dependency_does_not_exist(queue: TaskQueue, queue_url: str) -> None:
    insert = "INSERT INTO tasks (id, task_type, params, status, dependant_on, created_at) VALUES (?, 't', '{}', 'Failed', ?, now())"
    link = "INSERT INTO task_dependencies (task_id, depends_on_id, position) VALUES (?, ?, 0)"
    _foreign_sql(
        queue_url,
        [(insert, ("orphan", "ghost")), (insert, ("linked-orphan", None)), (link, ("linked-orphan", "ghost"))],
    )
    assert queue.retry("orphan") == ["orphan"]
    assert queue.retry("linked-orphan") == ["linked-orphan"]
    assert queue.get("orphan").status is TaskStatus.QUEUED
    assert claim(queue) is None, "both wait for a dependency that does not exist, in either column"


def test_an_unreadable_worker_metadata_is_shown_as_its_reason(queue: TaskQueue, queue_url: str) -> None:
    queue.register_worker("w", session_id="s", metadata={"gpu": "x"}, stale_seconds=30)
    if queue_url.startswith("sqlite"):
        _foreign_sql(queue_url, [("UPDATE workers SET metadata = ? WHERE id = 'w'", ("{not json",))])
        reason = "metadata: not valid JSON at character 1"
    else:
        deep = '{"a": ' + "[" * 70 + "]" * 70 + "}"
        _foreign_sql(queue_url, [("UPDATE workers SET metadata = ?::jsonb WHERE id = 'w'", (deep,))])
        reason = "metadata: JSON nested deeper than 64 levels"
    assert queue.list_workers()[0].metadata == {"decode_error": reason}


# ---------------------------------------------------------------------------------------------- edges of the contract


@pytest.mark.parametrize("bad", [0, -1, True, "30"])
def test_a_claims_lease_must_be_a_positive_number_of_seconds(queue: TaskQueue, bad: object) -> None:
    queue.enqueue("t", {})
    with pytest.raises(
        ValueError, match=f"^lease_seconds: expected a positive number of seconds; got {re.escape(repr(bad))}$"
    ):
        queue.claim("w1", lease_seconds=bad)  # type: ignore[arg-type]
    assert queue.count_ready() == 1, "nothing was claimed"


def test_a_claim_classifies_every_foreign_row_before_choosing(queue: TaskQueue, queue_url: str) -> None:
    # Another app inserted more rows than one classification batch (1000); the most urgent is the newest, so it is in
    # the second batch: the claim must still see it.
    insert = "INSERT INTO tasks (id, task_type, params, status, created_at) VALUES (?, 't', '{}', 'Queued', now())"
    urgent = (
        "INSERT INTO tasks (id, task_type, params, status, priority, created_at) "
        "VALUES ('urgent', 't', '{}', 'Queued', 5, ?)"
    )
    _foreign_sql(
        queue_url, [(insert, (f"bulk-{n:04d}",)) for n in range(1000)] + [(urgent, ("2100-01-01T00:00:00.000000Z",))]
    )
    task = claim(queue)
    assert task is not None and task.id == "urgent"
    assert queue.count_ready() == 1000


def test_a_retry_back_off_counts_from_the_queues_clock(queue_url: str) -> None:
    long_ago = datetime(2001, 1, 1, tzinfo=UTC)
    queue = open_queue(queue_url, clock=ManualClock(long_ago))
    try:
        queue.migrate()
        task_id = queue.enqueue("t", {})
        assert claim(queue) is not None
        queue.fail(task_id, "w1", "flaky", retryable=True, retry_delay_seconds=60)
        # not the database's clock: on it, 2001 + 60 s is long past and the task would be claimable at once
        assert queue.get(task_id).available_at == long_ago + timedelta(seconds=60)
        assert claim(queue) is None
    finally:
        queue.close()


def test_a_plain_task_gets_the_documented_defaults(queue: TaskQueue) -> None:
    task = queue.get(queue.enqueue("t", {}))
    assert (task.priority, task.max_attempts, task.attempts) == (0, 3, 0)
    assert (task.completes_parent, task.parent_id, task.role, task.segment_index) == (False, None, None, None)
    assert (task.dependant_on, task.depends_on) == (None, ())


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"task_type": ""}, "task_type: expected a non-empty string; got ''"),
        ({"task_type": "   "}, "task_type: expected a non-empty string; got '   '"),
        ({"max_attempts": 0}, "max_attempts: expected an integer >= 1; got 0"),
        ({"max_attempts": True}, "max_attempts: expected an integer >= 1; got True"),
        ({"max_attempts": "3"}, "max_attempts: expected an integer >= 1; got '3'"),
    ],
)
def test_enqueue_refuses_a_bad_type_or_attempt_cap_naming_the_argument(
    queue: TaskQueue, arguments: dict, message: str
) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        queue.enqueue(**{"task_type": "t", "params": {}, **arguments})
    assert queue.list_tasks() == []


def test_a_missing_dependency_is_named_by_the_argument_that_gave_it(queue: TaskQueue) -> None:
    present = queue.enqueue("t", {})
    with pytest.raises(TaskNotFound, match="^dependant_on: no task with id 'ghost'$"):
        queue.enqueue("t", {}, dependant_on="ghost", depends_on=[present])
    with pytest.raises(TaskNotFound, match=r"^depends_on\[1\]: no task with id 'ghost'$"):
        queue.enqueue("t", {}, dependant_on=present, depends_on=["ghost"])
    with pytest.raises(TaskNotFound, match=r"^depends_on\[1\]: no task with id 'ghost'$"):
        queue.enqueue("t", {}, depends_on=[present, "ghost"])
    assert [task.id for task in queue.list_tasks()] == [present]


def test_params_at_the_size_cap_are_accepted_and_one_byte_more_refused(queue: TaskQueue) -> None:
    from source.queue.rows import MAX_JSON_BYTES

    padding = MAX_JSON_BYTES - len('{"x": ""}')
    task_id = queue.enqueue("t", {"x": "a" * padding})
    assert len(queue.get(task_id).params["x"]) == padding
    with pytest.raises(ValueError, match=f"^params: {MAX_JSON_BYTES + 1} bytes of JSON; at most {MAX_JSON_BYTES}"):
        queue.enqueue("t", {"x": "a" * (padding + 1)})


class _Unprintable:
    def __str__(self) -> str:
        raise ValueError("no text for this")


def test_params_that_cannot_become_json_are_refused_as_such(queue: TaskQueue) -> None:
    with pytest.raises(ValueError, match="^params: not JSON-serialisable$"):
        queue.enqueue("t", {"value": _Unprintable()})


def test_params_values_json_has_no_type_for_are_stored_as_their_text(queue: TaskQueue) -> None:
    from pathlib import PurePosixPath

    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    task_id = queue.enqueue("t", {"path": PurePosixPath("/data/in.png"), "when": when, "pair": (1, 2)})
    assert queue.get(task_id).params == {"path": "/data/in.png", "when": str(when), "pair": [1, 2]}


def test_a_task_enqueued_after_its_dependency_completed_is_claimable_at_once(queue: TaskQueue) -> None:
    first = queue.enqueue("t", {})
    assert claim(queue).id == first
    queue.complete(first, "w1", output_location="a.mp4")
    later = queue.enqueue("t", {}, dependant_on=first)
    task = claim(queue)
    assert task is not None and task.id == later


def test_a_child_may_depend_on_an_existing_task_by_id_and_unknown_refs_list_the_siblings(queue: TaskQueue) -> None:
    outside = queue.enqueue("prepare", {})
    parent_id = queue.enqueue("travel_orchestrator", {})
    (child,) = queue.enqueue_children(parent_id, [ChildSpec("seg", {}, role="segment", depends_on=(outside,))])
    assert queue.get(child).depends_on == (outside,)
    with pytest.raises(TaskNotFound) as caught:
        queue.enqueue_children(
            parent_id,
            [
                ChildSpec("seg", {}, role="segment", segment_index=1),
                ChildSpec("seg", {}, role="segment", segment_index=2),
                ChildSpec("stitch", {}, role="stitch", depends_on=("segment:9",)),
            ],
        )
    assert str(caught.value) == (
        "children[2].depends_on: neither a sibling given earlier (segment, segment:1, segment:2) nor a task id;: "
        "no task with id 'segment:9'"
    )
    with pytest.raises(TaskNotFound, match=r"^children\[0\]\.depends_on: neither a sibling given earlier \(none yet\)"):
        queue.enqueue_children(queue.enqueue("o", {}), [ChildSpec("s", {}, role="stitch", depends_on=("segment:0",))])


def test_an_orchestrator_that_made_no_children_completes_when_it_waits(queue: TaskQueue) -> None:
    parent_id = queue.enqueue("travel_orchestrator", {})
    assert claim(queue, "orch") is not None
    queue.await_children(parent_id, "orch", "waiting")  # nothing to wait for: done
    parent = queue.get(parent_id)
    assert (parent.status, parent.output_location) == (TaskStatus.COMPLETE, None)
    assert parent.result == {"children": {}, "output_from": None, "output": None}


def test_a_cascade_into_another_orchestrators_child_fails_that_orchestrator_too(queue: TaskQueue) -> None:
    # The failed task is outside the run; the run's segment and stitch depend on it. The run's orchestrator must learn
    # which of its children failed, labelled by role and segment index.
    outside = queue.enqueue("prepare", {})
    assert claim(queue, "gpu").id == outside
    parent_id = queue.enqueue("travel_orchestrator", {})
    assert claim(queue, "orch").id == parent_id
    segment, stitch = queue.enqueue_children(
        parent_id,
        [
            ChildSpec("seg", {}, role="segment", segment_index=3, depends_on=(outside,)),
            ChildSpec("stitch", {}, role="stitch", depends_on=(outside,)),
        ],
    )
    queue.await_children(parent_id, "orch", "waiting")
    queue.fail(outside, "gpu", "disk full")
    parent = queue.get(parent_id)
    assert parent.status is TaskStatus.FAILED
    assert parent.error_message == f"child {segment} (segment 3) failed: dependency {outside} failed: disk full"

    other_parent = queue.enqueue("travel_orchestrator", {})
    assert claim(queue, "orch").id == other_parent
    again = queue.enqueue("prepare", {})
    assert claim(queue, "gpu").id == again
    (lone_stitch,) = queue.enqueue_children(other_parent, [ChildSpec("stitch", {}, role="stitch", depends_on=(again,))])
    queue.await_children(other_parent, "orch", "waiting")
    queue.fail(again, "gpu", "bad input")
    assert queue.get(other_parent).error_message == (
        f"child {lone_stitch} (stitch) failed: dependency {again} failed: bad input"
    )
    assert queue.get(stitch).status is TaskStatus.FAILED


def test_a_task_that_does_not_exist_is_named_whatever_is_asked_of_it(queue: TaskQueue) -> None:
    missing = "no-such-task"
    for action in (
        lambda: queue.get(missing),
        lambda: queue.complete(missing, "w1", output_location="x"),
        lambda: queue.fail(missing, "w1", "boom"),
        lambda: queue.release(missing, "w1"),
        lambda: queue.cancel(missing),
        lambda: queue.retry(missing),
    ):
        with pytest.raises(TaskNotFound, match=f"^task id: no task with id '{missing}'$"):
            action()


@pytest.mark.parametrize("bad", [0, True, "30"])
def test_a_workers_staleness_must_be_a_positive_number_of_seconds(queue: TaskQueue, bad: object) -> None:
    with pytest.raises(
        ValueError, match=f"^stale_seconds: expected a positive number of seconds; got {re.escape(repr(bad))}$"
    ):
        queue.register_worker("w", session_id="s", metadata={}, stale_seconds=bad)  # type: ignore[arg-type]
    assert queue.list_workers() == []


def test_a_fresh_database_reports_schema_version_0_without_creating_one(tmp_path) -> None:
    queue = open_queue(f"sqlite:///{tmp_path / 'fresh.db'}")
    try:
        assert (queue.dialect, queue.schema_version()) == ("sqlite", 0)
        assert queue.migrate() == queue.schema_version() == queue.latest_version
    finally:
        queue.close()
