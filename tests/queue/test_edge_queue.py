"""The queue behind Reigh's edge functions, in-process, against a scripted server: what each call sends, how each
answer (a task, an empty 204, a 404 from a deployment that lacks a function, a refused token, a 503) becomes a return
value or a clear error, and what the worker's own bookkeeping (foreign rows given back, failures counted, progress
lines carried by the next heartbeat) makes of them. tests/worker/test_reigh_edge.py runs the real worker end to end
against `tests/reigh_edge.py`, which speaks the same API over Reigh's schema; here each answer is chosen by the test,
so the faults a real deployment produces rarely (a relay error, a 429, a function missing) are all exercised."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
from local_http import LocalServer, Reply, Request

from source.queue import (
    ChildSpec,
    QueueError,
    QueueRefused,
    QueueUnavailable,
    TaskNotFound,
    TaskNotOwned,
    TaskStatus,
    open_reigh_edge,
)
from source.queue.edge import EdgeCallFailed, ReighEdgeQueue

TOKEN = "sb-secret-token-0123456789"
PARENT = "11111111-1111-1111-1111-111111111111"
TASK = "22222222-2222-2222-2222-222222222222"
OTHER = "33333333-3333-3333-3333-333333333333"


def ok(answer: Any, status: int = 200) -> Reply:
    return LocalServer.reply(json.dumps(answer).encode(), status, **{"Content-Type": "application/json"})


def error(status: int, message: str) -> Reply:
    """Reigh's error envelope: the supabase client reads its `error` field."""
    return ok({"error": message}, status)


TASK_NOT_FOUND = error(404, "Task not found")
EMPTY = LocalServer.reply(b"", 204)


class ScriptedEdge:
    """Reigh's edge API as a script: each function answers what the test set, in turn, the last answer repeating. A
    function the test did not set answers as Supabase's gateway does for one that is not deployed (404). The start-up
    token check (get-predecessor-output of the zero uuid) finds no task, as on Reigh. Every request is kept."""

    def __init__(self) -> None:
        self.http = LocalServer()
        self.http.fallback = self._dispatch
        self.url = self.http.url
        self.answers: dict[str, list[Reply]] = {"get-predecessor-output": [TASK_NOT_FOUND]}
        self.calls: list[tuple[str, Any]] = []  # (function, or "rpc" / "upload", the JSON body or upload details)

    def answer(self, function: str, *replies: Reply) -> None:
        self.answers[function] = list(replies)

    def bodies(self, function: str) -> list[Any]:
        return [body for name, body in self.calls if name == function]

    def _next(self, name: str, default: Reply) -> Reply:
        replies = self.answers.get(name)
        if not replies:
            return default
        return replies.pop(0) if len(replies) > 1 else replies[0]

    def _dispatch(self, request: Request) -> Reply:
        path = urlsplit(request.path).path
        if path.startswith("/functions/v1/"):
            name = path.removeprefix("/functions/v1/")
            self.calls.append((name, json.loads(request.body or b"null")))
            assert request.headers.get("authorization") == f"Bearer {TOKEN}"
            return self._next(name, error(404, "Requested function was not found"))
        if path == "/rest/v1/rpc/func_worker_heartbeat_with_logs":
            self.calls.append(("rpc", json.loads(request.body or b"null")))
            return self._next("rpc", ok({"success": True}))
        prefix = "/storage/v1/object/upload/sign/image_uploads/"
        if path.startswith(prefix):
            token = parse_qs(urlsplit(request.path).query).get("token", [""])[0]
            upload = {"path": unquote(path.removeprefix(prefix)), "token": token, "body": request.body}
            self.calls.append(("upload", upload))
            return self._next("upload", ok({"Key": f"image_uploads/{upload['path']}"}))
        return LocalServer.reply(b"not found", 404)


@pytest.fixture
def edge() -> Iterator[ScriptedEdge]:
    server = ScriptedEdge()
    yield server
    server.http.stop()


@pytest.fixture(autouse=True)
def naps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The back-off waits between retries, recorded instead of slept. In every test: a bug that retries a call it
    should not (a 404, a refused token) must fail the test at once, not sleep through every back-off first."""
    waits: list[float] = []

    def nap(seconds: float) -> None:
        waits.append(seconds)
        if len(waits) > 100:  # a retry loop that never stops: fail now rather than spin until a timeout
            raise RuntimeError(f"slept {len(waits)} times")

    monkeypatch.setattr(time, "sleep", nap)
    return waits


def open_edge(edge: ScriptedEdge, **options: Any) -> ReighEdgeQueue:
    return ReighEdgeQueue(edge.url, TOKEN, **{"timeout": 5.0, **options})


@pytest.fixture
def queue(edge: ScriptedEdge) -> Iterator[ReighEdgeQueue]:
    opened = open_edge(edge)
    yield opened
    opened.close()


def claimed(queue: ReighEdgeQueue, edge: ScriptedEdge, task_id: str = TASK, **answer: Any) -> Any:
    """`queue` holds `task_id` (claim-next-task's answer: `answer` over a plain travel segment)."""
    edge.answer(
        "claim-next-task",
        ok({"task_id": task_id, "task_type": "travel_segment", "project_id": "proj", "params": {}, **answer}),
    )
    edge.answer("get-predecessor-output", ok({"predecessors": []}))
    task = queue.claim("w", lease_seconds=30)
    assert task is not None and task.id == task_id
    return task


# ---------------------------------------------------------------------------------------------- opening


@pytest.mark.parametrize(("url", "token"), [("", TOKEN), ("http://127.0.0.1:9", "")])
def test_a_missing_url_or_token_is_refused_naming_both_options(url: str, token: str) -> None:
    with pytest.raises(QueueRefused, match="^Reigh's edge API needs --supabase-url and --supabase-access-token$"):
        ReighEdgeQueue(url, token)


@pytest.mark.parametrize("path", ["", "/base", "/baseX"])
def test_only_trailing_slashes_are_dropped_from_the_url(edge: ScriptedEdge, path: str) -> None:
    # A self-hosted Supabase behind a path: the path stays whole, whatever it ends with.
    queue = ReighEdgeQueue(f"{edge.url}{path}//", TOKEN, timeout=5)
    try:
        assert queue.url == f"{edge.url}{path}"
    finally:
        queue.close()


def test_a_malformed_url_is_refused_and_the_message_never_shows_the_token() -> None:
    with pytest.raises(QueueRefused) as caught:
        ReighEdgeQueue("not a url", TOKEN)
    assert str(caught.value) == "reigh-edge:not a url (token ***): Invalid URL"


def test_the_token_is_tried_at_start_with_the_zero_uuid(edge: ScriptedEdge) -> None:
    queue = open_reigh_edge(edge.url + "/", TOKEN, timeout=5)
    try:
        assert edge.calls == [("get-predecessor-output", {"task_id": "00000000-0000-0000-0000-000000000000"})]
        assert queue.url == edge.url  # the trailing slash is dropped
        assert queue.redacted_url == f"reigh-edge:{edge.url} (token ***)"
        assert repr(queue) == f"ReighEdgeQueue('reigh-edge:{edge.url} (token ***)')"
    finally:
        queue.close()


@pytest.mark.parametrize(
    ("status", "message"),
    [
        (401, "Missing or invalid Authorization header"),
        (403, "forbidden"),
        (403, " Forbidden "),
        (403, "authentication_failed"),
        (403, "service_role_required"),
        (403, "Invalid or expired Token"),
    ],
)
def test_a_refused_token_stops_the_start_with_the_option_to_fix(edge: ScriptedEdge, status: int, message: str) -> None:
    edge.answer("get-predecessor-output", error(status, message))
    with pytest.raises(QueueRefused) as caught:
        open_edge(edge)
    assert str(caught.value) == (
        f"get-predecessor-output refused the access token ({status}: {message}): check "
        "--supabase-access-token / SUPABASE_ACCESS_TOKEN"
    )


@pytest.mark.parametrize(("status", "message"), [(403, "project_forbidden"), (400, "bad request"), (409, "token?")])
def test_other_refusals_at_start_are_edge_call_failures(edge: ScriptedEdge, status: int, message: str) -> None:
    edge.answer("get-predecessor-output", error(status, message))
    with pytest.raises(EdgeCallFailed) as caught:
        open_edge(edge)
    assert (caught.value.function, caught.value.status) == ("get-predecessor-output", status)
    assert str(caught.value) == f"get-predecessor-output answered {status}: {message}"


def test_the_timeout_given_to_open_reigh_edge_is_the_calls_timeout(edge: ScriptedEdge, naps: list[float]) -> None:
    queue = open_reigh_edge(edge.url, TOKEN, timeout=1)
    edge.answer("claim-next-task", LocalServer.reply(hang=True), EMPTY)
    started = time.monotonic()
    assert queue.claim("w", lease_seconds=30) is None  # the hung call timed out after 1 s and was tried again
    assert time.monotonic() - started < 5 and naps == [0.5]


def test_nothing_listening_is_unavailable_after_the_attempts(naps: list[float]) -> None:
    with pytest.raises(QueueUnavailable) as caught:
        ReighEdgeQueue("http://127.0.0.1:9", TOKEN, timeout=5, attempts=2)
    assert str(caught.value).startswith(
        "Reigh's edge API at http://127.0.0.1:9: get-predecessor-output: ConnectError: "
    )
    assert naps == [0.5]


# ---------------------------------------------------------------------------------------------- faults


def test_503_and_429_are_retried_with_a_growing_wait(edge: ScriptedEdge, queue: ReighEdgeQueue, naps) -> None:
    edge.answer("claim-next-task", error(503, "busy"), error(429, "slow down"), EMPTY)
    assert queue.claim("w", lease_seconds=30) is None
    assert len(edge.bodies("claim-next-task")) == 3
    assert naps == [0.5, 1.0]


def test_the_wait_doubles_up_to_eight_seconds_then_the_call_is_unavailable(edge: ScriptedEdge, naps) -> None:
    queue = open_edge(edge, attempts=6)
    edge.answer("claim-next-task", error(500, "down"))
    with pytest.raises(QueueUnavailable) as caught:
        queue.claim("w", lease_seconds=30)
    assert str(caught.value) == f"Reigh's edge API at {edge.url}: claim-next-task answered 500: down"
    assert naps == [0.5, 1.0, 2.0, 4.0, 8.0]
    assert len(edge.bodies("claim-next-task")) == 6


def test_the_wait_stays_at_eight_seconds_once_it_reaches_them(edge: ScriptedEdge, naps) -> None:
    queue = open_edge(edge, attempts=8)
    edge.answer("claim-next-task", error(503, "down"))
    with pytest.raises(QueueUnavailable):
        queue.claim("w", lease_seconds=30)
    assert naps == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0]


def test_at_least_one_attempt_is_made(edge: ScriptedEdge, naps: list[float]) -> None:
    queue = open_edge(edge, attempts=0)
    edge.answer("claim-next-task", error(502, "bad gateway"))
    with pytest.raises(QueueUnavailable):
        queue.claim("w", lease_seconds=30)
    assert len(edge.bodies("claim-next-task")) == 1 and naps == []


def test_a_relay_error_is_retried(edge: ScriptedEdge, queue: ReighEdgeQueue, naps: list[float]) -> None:
    relay = LocalServer.reply(b"relay down", 500, **{"x-relay-error": "true"})
    edge.answer("claim-next-task", relay, EMPTY)
    assert queue.claim("w", lease_seconds=30) is None
    edge.answer("claim-next-task", relay)
    with pytest.raises(QueueUnavailable, match="claim-next-task: relay error 500$"):
        queue.claim("w", lease_seconds=30)


def test_a_function_that_does_not_answer_in_time_is_unavailable(edge: ScriptedEdge, naps) -> None:
    queue = open_edge(edge, timeout=1.0, attempts=1)
    edge.answer("claim-next-task", LocalServer.reply(hang=True))
    started = time.monotonic()
    with pytest.raises(QueueUnavailable, match="claim-next-task did not answer within 1 s$"):
        queue.claim("w", lease_seconds=30)
    assert time.monotonic() - started < 4


def test_an_answer_that_is_not_json_is_unavailable(edge: ScriptedEdge, queue: ReighEdgeQueue) -> None:
    edge.answer("claim-next-task", LocalServer.reply(b"<html>gateway</html>", 200))
    with pytest.raises(QueueUnavailable, match="^claim-next-task answered something that is not JSON$"):
        queue.claim("w", lease_seconds=30)


def test_a_4xx_message_is_cut_to_300_characters_and_the_token_scrubbed(edge: ScriptedEdge, queue) -> None:
    edge.answer("claim-next-task", error(422, f"bad {TOKEN} " + "x" * 400))
    with pytest.raises(EdgeCallFailed) as caught:
        queue.claim("w", lease_seconds=30)
    assert str(caught.value) == "claim-next-task answered 422: " + ("bad *** " + "x" * 400)[:300]


# ---------------------------------------------------------------------------------------------- claim


def test_a_claim_sends_the_worker_and_reads_the_row_and_its_dependencies(edge: ScriptedEdge, queue) -> None:
    params = {
        "prompt": "p",
        "orchestrator_task_id_ref": PARENT,
        "headless_child": {"role": "segment", "segment_index": 2, "completes_parent": True},
    }
    edge.answer(
        "claim-next-task", ok({"task_id": TASK, "task_type": "travel_segment", "project_id": "proj", "params": params})
    )
    predecessors = [
        {"predecessor_id": OTHER, "status": "Complete", "output_location": "https://x/a.mp4"},
        {"predecessor_id": "", "status": "Complete"},
    ]
    edge.answer("get-predecessor-output", ok({"predecessors": predecessors}))
    task = queue.claim("w7", lease_seconds=30)
    assert edge.bodies("claim-next-task") == [{"worker_id": "w7", "run_type": "gpu"}]
    assert edge.bodies("get-predecessor-output")[-1] == {"task_id": TASK}
    assert task is not None
    assert (task.id, task.task_type, task.status, task.project_id, task.worker_id) == (
        TASK,
        "travel_segment",
        TaskStatus.IN_PROGRESS,
        "proj",
        "w7",
    )
    assert task.params == params
    assert (task.depends_on, task.dependant_on) == ((OTHER,), OTHER)
    assert (task.parent_id, task.role, task.segment_index, task.completes_parent) == (PARENT, "segment", 2, True)
    assert (task.attempts, task.max_attempts, task.priority, task.output_location) == (0, 3, 0, None)
    # What get-predecessor-output said of the dependency is what get() answers without get-task-output.
    dependency = queue.get(OTHER)
    assert (dependency.status, dependency.output_location) == (TaskStatus.COMPLETE, "https://x/a.mp4")


def test_a_claimed_row_without_identity_or_project_reads_as_plain(edge: ScriptedEdge, queue) -> None:
    edge.answer(
        "claim-next-task",
        ok({"task_id": TASK, "project_id": "", "params": {"headless_child": "junk", "segment_index": 4}}),
    )
    edge.answer("get-predecessor-output", ok({}))
    task = queue.claim("w", lease_seconds=30)
    assert task is not None
    assert (task.task_type, task.project_id, task.parent_id, task.role, task.segment_index) == (
        "",
        None,
        None,
        None,
        None,
    )
    assert (task.depends_on, task.dependant_on, task.completes_parent) == ((), None, False)


def test_a_non_integer_segment_index_and_non_object_params_are_dropped(edge: ScriptedEdge, queue) -> None:
    edge.answer("claim-next-task", ok({"task_id": TASK, "task_type": "t", "params": ["not", "an", "object"]}))
    edge.answer("get-predecessor-output", ok({}))
    assert queue.claim("w", lease_seconds=30).params == {}
    edge.answer(
        "claim-next-task",
        ok({"task_id": OTHER, "task_type": "t", "params": {"headless_child": {"role": "r", "segment_index": "1"}}}),
    )
    assert queue.claim("w", lease_seconds=30).segment_index is None


def test_an_empty_claim_is_none(edge: ScriptedEdge, queue: ReighEdgeQueue) -> None:
    edge.answer("claim-next-task", EMPTY)
    assert queue.claim("w", lease_seconds=30) is None
    edge.answer("claim-next-task", ok({}))
    assert queue.claim("w", lease_seconds=30) is None
    assert edge.bodies("update-task-status") == []


def test_rows_of_other_types_are_given_back_untouched_and_the_next_is_claimed(edge: ScriptedEdge, queue) -> None:
    edge.answer(
        "claim-next-task",
        ok({"task_id": OTHER, "task_type": "image_upscale"}),
        ok({"task_id": PARENT}),
        ok({"task_id": TASK, "task_type": "travel_segment"}),
    )
    edge.answer("get-predecessor-output", ok({}))
    edge.answer("update-task-status", ok({"success": True}))
    task = queue.claim("w", lease_seconds=30, task_types=["travel_segment", "debug_sleep"])
    assert task is not None and task.id == TASK
    assert edge.bodies("update-task-status") == [
        {"task_id": OTHER, "status": "Queued", "clear_worker": True},
        {"task_id": PARENT, "status": "Queued", "clear_worker": True},
    ]
    assert edge.bodies("get-predecessor-output")[1:] == [{"task_id": TASK}]  # foreign rows are not looked into


def test_one_poll_steps_over_at_most_eight_foreign_rows(edge: ScriptedEdge, queue: ReighEdgeQueue) -> None:
    edge.answer("claim-next-task", ok({"task_id": OTHER, "task_type": "image_upscale"}))
    edge.answer("update-task-status", ok({"success": True}))
    assert queue.claim("w", lease_seconds=30, task_types=["travel_segment"]) is None
    assert len(edge.bodies("claim-next-task")) == 8
    assert len(edge.bodies("update-task-status")) == 8


def test_a_foreign_row_is_given_back_when_the_queue_then_runs_dry(edge: ScriptedEdge, queue) -> None:
    edge.answer("claim-next-task", ok({"task_id": OTHER, "task_type": "image_upscale"}), EMPTY)
    edge.answer("update-task-status", ok({"success": True}))
    assert queue.claim("w", lease_seconds=30, task_types=["travel_segment"]) is None
    assert edge.bodies("update-task-status") == [{"task_id": OTHER, "status": "Queued", "clear_worker": True}]


# ---------------------------------------------------------------------------------------------- rows


def test_get_reads_get_task_output_and_keeps_what_the_claim_knew(edge: ScriptedEdge, queue) -> None:
    claimed(queue, edge, task_type="travel_stitch")
    edge.answer(
        "get-task-output",
        ok(
            {
                "status": "Complete",
                "output_location": "https://x/o.mp4",
                "params": {"task_type": "x"},
                "dependant_on": [OTHER, None],
            }
        ),
    )
    task = queue.get(TASK)
    assert edge.bodies("get-task-output") == [{"task_id": TASK}]
    assert (task.task_type, task.project_id, task.status, task.output_location) == (
        "travel_stitch",
        "proj",
        TaskStatus.COMPLETE,
        "https://x/o.mp4",
    )
    assert (task.id, task.params, task.depends_on) == (TASK, {"task_type": "x"}, (OTHER,))
    other = queue.get(OTHER)  # not claimed here: the type comes from its params, no project is known
    assert (other.task_type, other.project_id) == ("x", None)


def test_get_of_an_unknown_status_reads_as_failed(edge: ScriptedEdge, queue: ReighEdgeQueue) -> None:
    edge.answer("get-task-output", ok({"status": "Exploded", "params": None}))
    task = queue.get(TASK)
    assert (task.status, task.task_type, task.params) == (TaskStatus.FAILED, "", {})


@pytest.mark.parametrize("status", [400, 404])
def test_get_of_a_task_reigh_does_not_know_is_not_found(edge: ScriptedEdge, queue, status: int) -> None:
    edge.answer("get-task-output", error(status, "Task not found"))
    with pytest.raises(TaskNotFound, match=f"^task id: no task with id '{TASK}'$"):
        queue.get(TASK)


def test_get_passes_on_other_refusals(edge: ScriptedEdge, queue: ReighEdgeQueue) -> None:
    edge.answer("get-task-output", error(409, "conflict"))
    with pytest.raises(EdgeCallFailed, match="get-task-output answered 409"):
        queue.get(TASK)


def test_get_without_get_task_output_knows_only_a_claimed_tasks_dependencies(edge: ScriptedEdge, queue) -> None:
    with pytest.raises(TaskNotFound) as caught:
        queue.get(TASK)
    assert str(caught.value) == (
        f"task id (get-task-output is not deployed and no claimed task names it): no task with id '{TASK}'"
    )
    assert caught.value.task_id == TASK


def test_children_come_from_get_orchestrator_children_without_the_orchestrator(edge: ScriptedEdge, queue) -> None:
    rows = [
        {"id": PARENT, "task_type": "travel_orchestrator", "status": "In Progress", "params": {}},
        {
            "id": TASK,
            "task_type": "travel_segment",
            "status": "Complete",
            "params": {"headless_child": {"role": "segment", "segment_index": 0}, "dependant_on": [OTHER]},
            "output_location": "https://x/s0.mp4",
        },
        {"id": OTHER, "status": "Queued", "params": None},
    ]
    edge.answer("get-orchestrator-children", ok({"tasks": rows}))
    children = queue.children(PARENT)
    assert edge.bodies("get-orchestrator-children") == [{"orchestrator_task_id": PARENT}]
    assert [child.id for child in children] == [TASK, OTHER]
    first, second = children
    assert (first.task_type, first.status, first.role, first.segment_index) == (
        "travel_segment",
        TaskStatus.COMPLETE,
        "segment",
        0,
    )
    assert (first.output_location, first.depends_on) == ("https://x/s0.mp4", (OTHER,))
    assert (second.task_type, second.status, second.params) == ("", TaskStatus.QUEUED, {})


def test_children_without_that_function_are_the_runs_completed_segments(edge: ScriptedEdge, queue) -> None:
    assert queue.children(PARENT) == []  # no claimed child names the orchestrator: nothing to ask for
    assert edge.bodies("get-completed-segments") == []
    claimed(queue, edge, params={"orchestrator_task_id_ref": PARENT, "orchestrator_run_id": "run-9"})
    segments = [
        {"segment_index": 1, "output_location": "https://x/s1.mp4"},
        {"segment_index": "2", "output_location": "https://x/s2.mp4"},
    ]
    edge.answer("get-completed-segments", ok(segments))
    children = queue.children(PARENT)
    assert edge.bodies("get-completed-segments") == [{"run_id": "run-9", "project_id": "proj"}]
    assert len(children) == 1
    child = children[0]
    assert (child.id, child.task_type, child.status, child.output_location) == (
        f"{PARENT}:segment:1",
        "travel_segment",
        TaskStatus.COMPLETE,
        "https://x/s1.mp4",
    )
    assert (child.role, child.segment_index) == ("segment", 1)
    assert len(edge.bodies("get-orchestrator-children")) == 1, "a missing function is asked once"
    edge.answer("get-completed-segments", EMPTY)
    assert queue.children(PARENT) == []


def test_a_claimed_child_without_a_run_id_gives_no_segments(edge: ScriptedEdge, queue: ReighEdgeQueue) -> None:
    claimed(queue, edge, params={"orchestrator_task_id_ref": PARENT})
    assert queue.children(PARENT) == []
    assert queue.children(OTHER) == []
    assert edge.bodies("get-completed-segments") == []


# ---------------------------------------------------------------------------------------------- lease, prompts


def test_the_lease_holds_while_the_row_is_in_progress(edge: ScriptedEdge, queue: ReighEdgeQueue) -> None:
    edge.answer("get-task-status", ok({"status": "In Progress"}), ok({"status": "Cancelled"}), TASK_NOT_FOUND)
    assert queue.renew_lease(TASK, "w", 30) is True
    assert edge.bodies("get-task-status") == [{"task_id": TASK}]
    assert queue.renew_lease(TASK, "w", 30) is False
    assert queue.renew_lease(TASK, "w", 30) is False  # deleted under us
    edge.answer("get-task-status", error(400, "bad"))
    with pytest.raises(EdgeCallFailed):
        queue.renew_lease(TASK, "w", 30)


def test_without_get_task_status_the_task_stays_ours_and_the_function_is_asked_once(edge: ScriptedEdge, queue) -> None:
    assert queue.renew_lease(TASK, "w", 30) is True
    assert queue.renew_lease(TASK, "w", 30) is True
    assert len(edge.bodies("get-task-status")) == 1


def test_written_prompts_are_shared_and_a_failure_never_raises(edge: ScriptedEdge, naps: list[float]) -> None:
    queue = open_edge(edge, attempts=1)
    edge.answer("update-shot-pair-prompts", ok({"success": True}))
    assert queue.share_prompts(TASK, "shot-1", ("a", "")) is True
    assert edge.bodies("update-shot-pair-prompts") == [
        {"shot_id": "shot-1", "task_id": TASK, "enhanced_prompts": ["a", ""]}
    ]
    edge.answer("update-shot-pair-prompts", error(400, "no such shot"))
    assert queue.share_prompts(TASK, "shot-1", ["a"]) is False
    edge.answer("update-shot-pair-prompts", error(503, "down"))
    assert queue.share_prompts(TASK, "shot-1", ["a"]) is False
    edge.answer("update-shot-pair-prompts")  # not deployed
    assert queue.share_prompts(TASK, "shot-1", ["a"]) is False


# ---------------------------------------------------------------------------------------------- heartbeat, progress


def test_progress_lines_ride_on_the_next_heartbeat_once(edge: ScriptedEdge, queue: ReighEdgeQueue) -> None:
    queue.report_progress(TASK, "w", step=3, total=4, message="denoising")
    queue.report_progress(TASK, "w", step=0, total=0)
    assert queue.beat_worker("w", session_id="s", status="busy", current_task_id=TASK, metadata={}) is True
    beat = edge.bodies("rpc")[0]
    assert (beat["worker_id_param"], beat["current_task_id_param"], beat["status_param"]) == ("w", TASK, "active")
    first, second = beat["logs_param"]
    assert (first["level"], first["task_id"], first["message"]) == ("INFO", TASK, "step 3/4 (75.0%) denoising")
    assert first["metadata"] == {"step": 3, "total": 4, "percent": 75.0}
    assert first["timestamp"].endswith("+00:00")
    assert (second["message"], second["metadata"]["percent"]) == ("step 0/0 (0.0%)", 0.0)
    queue.beat_worker("w", session_id="s", status="idle", current_task_id=None, metadata={})
    assert edge.bodies("rpc")[1]["logs_param"] == []


def test_only_the_latest_fifty_progress_lines_are_kept_each_cut_to_300(edge: ScriptedEdge, queue) -> None:
    for step in range(60):
        queue.report_progress(TASK, "w", step=step, total=60, message="m" * 400)
    queue.register_worker("w", session_id="s", metadata={}, stale_seconds=30)
    logs = edge.bodies("rpc")[0]["logs_param"]
    assert [line["metadata"]["step"] for line in logs] == list(range(10, 60))
    head = "step 59/60 (98.3%) "
    assert logs[-1]["message"] == head + "m" * (260 - len(head)) + f"... ({len(head) + 400 - 260} more characters)"


def test_progress_percentages_have_one_decimal(edge: ScriptedEdge, queue: ReighEdgeQueue) -> None:
    queue.report_progress(TASK, "w", step=1, total=3)
    queue.report_progress(TASK, "w", step=1, total=1)
    queue.register_worker("w", session_id="s", metadata={}, stale_seconds=30)
    assert [line["message"] for line in edge.bodies("rpc")[0]["logs_param"]] == [
        "step 1/3 (33.3%)",
        "step 1/1 (100.0%)",
    ]


@pytest.mark.parametrize(("status", "sent"), [("stopped", "inactive"), ("error", "inactive"), ("idle", "active")])
def test_the_workers_status_maps_onto_reighs(edge: ScriptedEdge, queue, status: str, sent: str) -> None:
    queue.beat_worker("w", session_id="s", status=status, current_task_id=None, metadata={})
    assert edge.bodies("rpc")[-1]["status_param"] == sent


def test_registering_sends_a_starting_heartbeat(edge: ScriptedEdge, queue: ReighEdgeQueue) -> None:
    queue.register_worker("w", session_id="s", metadata={"pid": 1}, stale_seconds=30)
    assert edge.bodies("rpc") == [
        {"worker_id_param": "w", "logs_param": [], "current_task_id_param": None, "status_param": "active"}
    ]


def beat_within(queue: ReighEdgeQueue, *, seconds: float) -> None:
    """One heartbeat, which must return within `seconds`: one that waits on a stalled server without a timeout fails
    the test then, not after the HTTP client's default of minutes."""
    beat = threading.Thread(
        target=queue.beat_worker,
        args=("w",),
        kwargs={"session_id": "s", "status": "idle", "current_task_id": None, "metadata": {}},
        daemon=True,
    )
    beat.start()
    beat.join(timeout=seconds)
    assert not beat.is_alive(), f"the heartbeat did not return within {seconds} s"


def test_a_refused_heartbeat_stops_heartbeats_and_an_unanswered_one_does_not(edge: ScriptedEdge) -> None:
    queue = open_edge(edge, timeout=1.0)
    edge.answer("rpc", LocalServer.reply(hang=True), ok({"success": True}))
    beat_within(queue, seconds=5)  # times out
    queue.beat_worker("w", session_id="s", status="idle", current_task_id=None, metadata={})
    assert len(edge.bodies("rpc")) == 2
    edge.answer("rpc", ok({"code": "42501", "message": "permission denied for function"}, 401))
    assert queue.beat_worker("w", session_id="s", status="idle", current_task_id=None, metadata={}) is True
    queue.beat_worker("w", session_id="s", status="idle", current_task_id=None, metadata={})
    assert len(edge.bodies("rpc")) == 3


def test_a_call_and_a_heartbeat_give_up_after_the_timeout_not_later(edge: ScriptedEdge) -> None:
    queue = open_edge(edge, timeout=1.0, attempts=1)
    edge.answer("claim-next-task", LocalServer.reply(hang=True))
    edge.answer("rpc", LocalServer.reply(hang=True))
    started = time.monotonic()
    with pytest.raises(QueueUnavailable):
        queue.claim("w", lease_seconds=30)
    assert 0.9 < time.monotonic() - started < 1.7
    started = time.monotonic()
    beat_within(queue, seconds=5)
    assert 0.9 < time.monotonic() - started < 1.7


def test_the_loaded_model_is_reported_when_it_changes(edge: ScriptedEdge, queue: ReighEdgeQueue) -> None:
    edge.answer("update-worker-model", ok({"success": True}))
    for model in ("wan_a", "wan_a", None, "wan_b"):
        queue.beat_worker("w", session_id="s", status="idle", current_task_id=None, metadata={"current_model": model})
    assert edge.bodies("update-worker-model") == [
        {"worker_id": "w", "current_model": "wan_a", "model": "wan_a"},
        {"worker_id": "w", "current_model": "wan_b", "model": "wan_b"},
    ]


@pytest.mark.parametrize("refusal", [error(403, "service_role_required"), error(400, "no such worker")])
def test_a_refused_model_report_is_not_sent_again(edge: ScriptedEdge, queue, refusal: Reply) -> None:
    edge.answer("update-worker-model", refusal)
    for model in ("wan_a", "wan_b"):
        queue.beat_worker("w", session_id="s", status="idle", current_task_id=None, metadata={"current_model": model})
    assert len(edge.bodies("update-worker-model")) == 1


# ---------------------------------------------------------------------------------------------- finishing


def test_completing_without_an_output_sets_the_status(edge: ScriptedEdge, queue: ReighEdgeQueue) -> None:
    claimed(queue, edge)
    edge.answer("update-task-status", ok({"success": True}))
    queue.complete(TASK, "w", output_location=None)
    assert edge.bodies("update-task-status") == [{"task_id": TASK, "status": "Complete"}]
    assert edge.bodies("complete_task") == []


@pytest.mark.parametrize("status", [404, 409])
def test_completing_a_row_someone_else_ended_is_not_owned(edge: ScriptedEdge, queue, status: int) -> None:
    edge.answer("update-task-status", error(status, "Invalid status transition"))
    with pytest.raises(TaskNotOwned, match=f"^cannot complete task {TASK}: update-task-status answered {status}"):
        queue.complete(TASK, "w", output_location="")
    with pytest.raises(TaskNotOwned, match=f"^cannot release task {TASK}: "):
        queue.release(TASK, "w")


def test_other_status_refusals_pass_through(edge: ScriptedEdge, queue: ReighEdgeQueue) -> None:
    edge.answer("update-task-status", error(400, "Missing required fields"))
    with pytest.raises(EdgeCallFailed, match="update-task-status answered 400"):
        queue.complete(TASK, "w", output_location=None)


def _upload_urls(edge: ScriptedEdge, *, thumbnail: bool = True) -> None:
    answer = {"storage_path": f"user/tasks/{TASK}/out.mp4", "token": "tok-video"}
    if thumbnail:
        answer |= {"thumbnail_storage_path": f"user/tasks/{TASK}/thumb.jpg", "thumbnail_token": "tok-thumb"}
    edge.answer("generate-upload-url", ok(answer))
    edge.answer("complete_task", ok({"success": True}))


def test_a_local_output_is_uploaded_then_completed(edge: ScriptedEdge, queue, tmp_path: Path) -> None:
    claimed(queue, edge)
    video = tmp_path / "out.mp4"
    video.write_bytes(b"video bytes")
    _upload_urls(edge)
    queue.complete(TASK, "w", output_location=str(video))
    assert edge.bodies("generate-upload-url") == [
        {"task_id": TASK, "filename": "out.mp4", "content_type": "video/mp4", "generate_thumbnail_url": False}
    ]
    [upload] = edge.bodies("upload")
    assert (upload["path"], upload["token"]) == (f"user/tasks/{TASK}/out.mp4", "tok-video")
    assert b"video bytes" in upload["body"] and b"video/mp4" in upload["body"]
    assert edge.bodies("complete_task") == [{"task_id": TASK, "storage_path": f"user/tasks/{TASK}/out.mp4"}]


def test_a_thumbnail_is_uploaded_with_the_output(edge: ScriptedEdge, queue, tmp_path: Path) -> None:
    video, thumb = tmp_path / "clip.bin", tmp_path / "thumb.jpg"
    video.write_bytes(b"v")
    thumb.write_bytes(b"jpeg")
    _upload_urls(edge)
    queue.complete(TASK, "w", output_location=str(video), result={"thumbnail": str(thumb)})
    assert edge.bodies("generate-upload-url")[0]["generate_thumbnail_url"] is True
    assert edge.bodies("generate-upload-url")[0]["content_type"] == "application/octet-stream"
    uploads = edge.bodies("upload")
    assert [(upload["path"], upload["token"]) for upload in uploads] == [
        (f"user/tasks/{TASK}/out.mp4", "tok-video"),
        (f"user/tasks/{TASK}/thumb.jpg", "tok-thumb"),
    ]
    assert b"image/jpeg" in uploads[1]["body"]
    assert edge.bodies("complete_task") == [
        {
            "task_id": TASK,
            "storage_path": f"user/tasks/{TASK}/out.mp4",
            "thumbnail_storage_path": f"user/tasks/{TASK}/thumb.jpg",
        }
    ]


@pytest.mark.parametrize("thumbnail", [None, "missing.jpg", 7])
def test_no_usable_thumbnail_means_none_is_asked_for(edge: ScriptedEdge, queue, tmp_path: Path, thumbnail) -> None:
    video = tmp_path / "out.mp4"
    video.write_bytes(b"v")
    _upload_urls(edge)
    queue.complete(TASK, "w", output_location=str(video), result={"thumbnail": thumbnail})
    assert edge.bodies("generate-upload-url")[0]["generate_thumbnail_url"] is False
    assert len(edge.bodies("upload")) == 1
    assert "thumbnail_storage_path" not in edge.bodies("complete_task")[0]


def test_a_thumbnail_reigh_gave_no_url_for_is_left_out(edge: ScriptedEdge, queue, tmp_path: Path) -> None:
    video, thumb = tmp_path / "out.mp4", tmp_path / "thumb.jpg"
    video.write_bytes(b"v")
    thumb.write_bytes(b"jpeg")
    _upload_urls(edge, thumbnail=False)
    queue.complete(TASK, "w", output_location=str(video), result={"thumbnail": str(thumb)})
    assert len(edge.bodies("upload")) == 1
    assert edge.bodies("complete_task") == [{"task_id": TASK, "storage_path": f"user/tasks/{TASK}/out.mp4"}]


def test_an_output_already_in_the_bucket_is_completed_by_its_path(edge: ScriptedEdge, queue) -> None:
    edge.answer("complete_task", ok({"success": True}))
    queue.complete(TASK, "w", output_location=f"{edge.url}/storage/v1/object/public/image_uploads/u/tasks/x.mp4")
    assert edge.bodies("complete_task") == [{"task_id": TASK, "storage_path": "u/tasks/x.mp4"}]
    assert edge.bodies("generate-upload-url") == []


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        (
            "https://elsewhere.example/storage/v1/object/public/image_uploads/x.mp4",
            "is not in this project's image_uploads bucket",
        ),
        ("/no/such/file.mp4", "is not a file this worker can upload"),
    ],
)
def test_an_output_that_cannot_be_uploaded_is_a_queue_error(edge: ScriptedEdge, queue, output, expected) -> None:
    with pytest.raises(QueueError, match=f"^complete: .*{expected}"):
        queue.complete(TASK, "w", output_location=output)
    assert edge.bodies("complete_task") == []


def test_a_refused_upload_names_the_path_and_a_storage_5xx_is_retried(edge, queue, tmp_path: Path, naps) -> None:
    video = tmp_path / "out.mp4"
    video.write_bytes(b"v")
    _upload_urls(edge, thumbnail=False)
    edge.answer("upload", ok({"statusCode": "503", "error": "busy", "message": "busy"}, 503), ok({"Key": "k"}))
    queue.complete(TASK, "w", output_location=str(video))
    assert len(edge.bodies("upload")) == 2 and naps == [0.5]
    edge.answer("upload", ok({"statusCode": "403", "error": "Unauthorized", "message": f"bad {TOKEN}"}, 400))
    with pytest.raises(QueueError, match=f"^upload of user/tasks/{TASK}/out.mp4 refused: ") as caught:
        queue.complete(TASK, "w", output_location=str(video))
    assert TOKEN not in str(caught.value)


def test_the_final_child_completes_its_orchestrator_with_its_output(edge: ScriptedEdge, queue, tmp_path: Path) -> None:
    params = {"orchestrator_task_id_ref": PARENT, "headless_child": {"role": "stitch", "completes_parent": True}}
    claimed(queue, edge, params=params)
    video = tmp_path / "out.mp4"
    video.write_bytes(b"v")
    _upload_urls(edge, thumbnail=False)
    queue.complete(TASK, "w", output_location=str(video))
    assert edge.bodies("complete_task") == [
        {"task_id": TASK, "storage_path": f"user/tasks/{TASK}/out.mp4"},
        {"task_id": PARENT, "storage_path": f"user/tasks/{TASK}/out.mp4"},
    ]
    # The task is forgotten once complete: completing it again does not touch the orchestrator.
    queue.complete(TASK, "w", output_location=str(video))
    assert len(edge.bodies("complete_task")) == 3


def test_the_orchestrator_gets_the_final_childs_thumbnail_too(edge: ScriptedEdge, queue, tmp_path: Path) -> None:
    params = {"orchestrator_task_id_ref": PARENT, "headless_child": {"role": "stitch", "completes_parent": True}}
    claimed(queue, edge, params=params)
    video, thumb = tmp_path / "out.mp4", tmp_path / "thumb.jpg"
    video.write_bytes(b"v")
    thumb.write_bytes(b"jpeg")
    _upload_urls(edge)
    queue.complete(TASK, "w", output_location=str(video), result={"thumbnail": str(thumb)})
    assert edge.bodies("complete_task")[-1] == {
        "task_id": PARENT,
        "storage_path": f"user/tasks/{TASK}/out.mp4",
        "thumbnail_storage_path": f"user/tasks/{TASK}/thumb.jpg",
    }


def test_an_orchestrator_reigh_already_completed_does_not_fail_the_child(edge: ScriptedEdge, queue, tmp_path) -> None:
    params = {"orchestrator_task_id_ref": PARENT, "headless_child": {"role": "stitch", "completes_parent": True}}
    claimed(queue, edge, params=params)
    video = tmp_path / "out.mp4"
    video.write_bytes(b"v")
    _upload_urls(edge, thumbnail=False)
    edge.answer("complete_task", ok({"success": True}), error(409, "already complete"))
    queue.complete(TASK, "w", output_location=str(video))
    assert len(edge.bodies("complete_task")) == 2


@pytest.mark.parametrize(
    "params", [{"orchestrator_task_id_ref": PARENT}, {"headless_child": {"completes_parent": True}}]
)
def test_only_a_final_child_with_an_orchestrator_completes_one(edge: ScriptedEdge, queue, tmp_path, params) -> None:
    claimed(queue, edge, params=params)
    video = tmp_path / "out.mp4"
    video.write_bytes(b"v")
    _upload_urls(edge, thumbnail=False)
    queue.complete(TASK, "w", output_location=str(video))
    assert [body["task_id"] for body in edge.bodies("complete_task")] == [TASK]


def test_a_completion_retried_after_an_outage_still_completes_the_orchestrator(edge, queue, tmp_path, naps) -> None:
    params = {"orchestrator_task_id_ref": PARENT, "headless_child": {"role": "stitch", "completes_parent": True}}
    claimed(queue, edge, params=params)
    video = tmp_path / "out.mp4"
    video.write_bytes(b"v")
    _upload_urls(edge, thumbnail=False)
    edge.answer("complete_task", *[error(503, "down")] * 4, ok({"success": True}))
    with pytest.raises(QueueUnavailable):
        queue.complete(TASK, "w", output_location=str(video))
    queue.complete(TASK, "w", output_location=str(video))
    assert [body["task_id"] for body in edge.bodies("complete_task")][-2:] == [TASK, PARENT]


def test_a_retryable_failure_requeues_until_the_third_attempt(edge: ScriptedEdge, queue) -> None:
    edge.answer("update-task-status", ok({"success": True}))
    statuses = [queue.fail(TASK, "w", "CUDA out of memory", retryable=True) for _ in range(3)]
    assert statuses == [TaskStatus.QUEUED, TaskStatus.QUEUED, TaskStatus.FAILED]
    assert edge.bodies("update-task-status") == [
        {
            "task_id": TASK,
            "status": "Queued",
            "clear_worker": True,
            "attempts": 1,
            "error_details": "CUDA out of memory",
        },
        {
            "task_id": TASK,
            "status": "Queued",
            "clear_worker": True,
            "attempts": 2,
            "error_details": "CUDA out of memory",
        },
        {
            "task_id": TASK,
            "status": "Failed",
            "attempts": 3,
            "error_details": "CUDA out of memory (gave up after 3 attempts)",
        },
    ]
    # the count starts again for the next run of that task
    assert queue.fail(TASK, "w", "again", retryable=True) is TaskStatus.QUEUED


def test_a_requeued_task_claimed_again_shows_its_attempts(edge: ScriptedEdge, queue: ReighEdgeQueue) -> None:
    claimed(queue, edge)
    edge.answer("update-task-status", ok({"success": True}))
    queue.fail(TASK, "w", "transient", retryable=True)
    assert claimed(queue, edge).attempts == 1
    edge.answer("complete_task", ok({"success": True}))
    queue.complete(TASK, "w", output_location=f"{edge.url}/storage/v1/object/public/image_uploads/p.mp4")
    assert claimed(queue, edge).attempts == 0  # a completed task's failures are forgotten


def test_a_final_failure_is_failed_with_its_message_cleaned(edge: ScriptedEdge, queue: ReighEdgeQueue) -> None:
    edge.answer("update-task-status", ok({"success": True}))
    message = "boom at https://user:pw@host.example/x?token=abc\x00"
    assert queue.fail(TASK, "w", message) is TaskStatus.FAILED
    [body] = edge.bodies("update-task-status")
    assert (body["status"], body["attempts"]) == ("Failed", 1)
    assert "pw" not in body["error_details"] and "abc" not in body["error_details"]
    assert "\x00" not in body["error_details"] and body["error_details"].startswith("boom at https://")
    edge.answer("update-task-status", error(409, "Invalid status transition"))
    with pytest.raises(TaskNotOwned, match=f"^cannot fail task {TASK}"):
        queue.fail(TASK, "w", "late")
    with pytest.raises(TaskNotOwned, match=f"^cannot requeue task {TASK}"):
        queue.fail(TASK, "w", "late", retryable=True)


def test_release_gives_the_row_back_and_forgets_it(edge: ScriptedEdge, queue: ReighEdgeQueue) -> None:
    claimed(queue, edge, params={"orchestrator_task_id_ref": PARENT, "orchestrator_run_id": "r"})
    edge.answer("update-task-status", ok({"success": True}))
    queue.release(TASK, "w")
    assert edge.bodies("update-task-status") == [{"task_id": TASK, "status": "Queued", "clear_worker": True}]
    assert queue.children(PARENT) == []  # the released child no longer names its run
    with pytest.raises(QueueError, match="the project of"):
        queue.enqueue_children(TASK, [ChildSpec("t", {}, role="r")])


def test_finishing_a_task_forgets_what_its_claim_said_of_its_dependencies(edge: ScriptedEdge, queue) -> None:
    edge.answer("claim-next-task", ok({"task_id": TASK, "task_type": "t", "project_id": "p"}))
    edge.answer("get-predecessor-output", ok({"predecessors": [{"predecessor_id": OTHER, "status": "Complete"}]}))
    queue.claim("w", lease_seconds=30)
    assert queue.get(OTHER).status is TaskStatus.COMPLETE
    edge.answer("update-task-status", ok({"success": True}))
    queue.fail(TASK, "w", "x")
    with pytest.raises(TaskNotFound):
        queue.get(OTHER)


# ---------------------------------------------------------------------------------------------- orchestrators


def _child_row(task_id: str, status: str, index: int | None, output: str | None, *, final: bool = False) -> dict:
    identity = {"role": "segment" if index is not None else "stitch", "segment_index": index, "completes_parent": final}
    return {
        "id": task_id,
        "task_type": "t",
        "status": status,
        "params": {"headless_child": identity},
        "output_location": output,
    }


def test_an_orchestrator_whose_children_are_all_complete_completes_with_the_final_output(edge, queue) -> None:
    bucket = f"{edge.url}/storage/v1/object/public/image_uploads/"
    rows = [
        _child_row(TASK, "Complete", None, bucket + "u/stitched.mp4", final=True),
        _child_row(OTHER, "Complete", 0, bucket + "u/s0.mp4"),
    ]
    edge.answer("get-orchestrator-children", ok({"tasks": rows}))
    edge.answer("complete_task", ok({"success": True}))
    queue.await_children(PARENT, "w", "waiting")
    assert edge.bodies("get-orchestrator-children") == [{"orchestrator_task_id": PARENT}]
    assert edge.bodies("complete_task") == [{"task_id": PARENT, "storage_path": "u/stitched.mp4"}]
    # Without a final child, the last one's output is the orchestrator's.
    edge.answer(
        "get-orchestrator-children",
        ok(
            {
                "tasks": [
                    _child_row(TASK, "Complete", 0, bucket + "u/s0.mp4"),
                    _child_row(OTHER, "Complete", 1, bucket + "u/s1.mp4"),
                ]
            }
        ),
    )
    queue.await_children(PARENT, "w", "waiting")
    assert edge.bodies("complete_task")[-1] == {"task_id": PARENT, "storage_path": "u/s1.mp4"}


@pytest.mark.parametrize(
    "rows",
    [
        [],
        [_child_row(TASK, "Complete", 0, "https://u/s0.mp4"), _child_row(OTHER, "In Progress", 1, None)],
        [_child_row(TASK, "Complete", 0, "https://elsewhere.example/s0.mp4")],
        [_child_row(TASK, "Complete", 0, None)],
    ],
    ids=["no children", "one still running", "output outside the bucket", "no output"],
)
def test_an_orchestrator_still_waiting_or_without_an_uploaded_output_stays_in_progress(edge, queue, rows) -> None:
    edge.answer("get-orchestrator-children", ok({"tasks": rows}))
    queue.await_children(PARENT, "w", "waiting")
    assert edge.bodies("complete_task") == []


def test_a_waiting_orchestrator_is_forgotten_with_what_its_claim_said(edge: ScriptedEdge, queue) -> None:
    edge.answer("claim-next-task", ok({"task_id": PARENT, "task_type": "travel_orchestrator", "project_id": "p"}))
    edge.answer("get-predecessor-output", ok({"predecessors": [{"predecessor_id": OTHER, "status": "Complete"}]}))
    queue.claim("w", lease_seconds=30)
    edge.answer("get-orchestrator-children", ok({"tasks": []}))
    queue.await_children(PARENT, "w", "waiting")
    with pytest.raises(TaskNotFound):
        queue.get(OTHER)
    with pytest.raises(QueueError, match="the project of"):
        queue.enqueue_children(PARENT, [ChildSpec("t", {}, role="r")])


def test_enqueue_needs_a_project_and_sends_reighs_and_the_upstream_body(edge: ScriptedEdge, queue) -> None:
    with pytest.raises(ValueError, match="^project_id: Reigh's create-task needs the project"):
        queue.enqueue("t", {})
    edge.answer("create-task", ok({"task_id": "from-reigh"}), EMPTY)
    params = {"prompt": "p", "task_id": "stale", "dependant_on": "stale"}
    assert queue.enqueue("t", params, dependant_on=OTHER, depends_on=[PARENT, OTHER], project_id="proj") == "from-reigh"
    payload = {"prompt": "p", "task_id": TASK, "dependant_on": [OTHER, PARENT]}
    body = edge.bodies("create-task")[0]
    assert body["input"]["dependant_on"] == [OTHER, PARENT]
    assert body["family"] == "t" and body["project_id"] == "proj" and "idempotency_key" not in body
    assert (body["task_type"], body["dependant_on"]) == ("t", [OTHER, PARENT])
    assert (
        body["input"]["prompt"] == "p"
        and body["params"] == body["input"]
        and body["task_id"] == body["input"]["task_id"]
    )
    assert str(uuid.UUID(body["input"]["task_id"])) == body["input"]["task_id"]  # a fresh id, not the stale one
    # a given id is used; no dependencies: none are sent
    assert queue.enqueue("t", {"prompt": "p", "dependant_on": OTHER}, task_id=TASK, project_id="proj") == TASK
    body = edge.bodies("create-task")[1]
    assert body["input"] == {"prompt": "p", "task_id": TASK} and body["dependant_on"] is None
    assert payload["task_id"] == body["task_id"]


def test_children_are_created_once_keyed_by_role_and_index(edge: ScriptedEdge, queue: ReighEdgeQueue) -> None:
    with pytest.raises(QueueError, match=f"^enqueue_children: the project of {PARENT} is unknown"):
        queue.enqueue_children(PARENT, [ChildSpec("t", {}, role="segment", segment_index=0)])
    claimed(queue, edge, task_id=PARENT)
    edge.answer("get-orchestrator-children", ok({"tasks": [_child_row(OTHER, "Complete", 0, None)]}))
    edge.answer("create-task", ok({"task_id": "new-1"}), ok({"task_id": "new-2"}))
    specs = [
        ChildSpec("travel_segment", {"prompt": "a"}, role="segment", segment_index=0),
        ChildSpec("travel_segment", {"prompt": "b"}, role="segment", segment_index=1, depends_on=("segment:0",)),
        ChildSpec("travel_stitch", {}, role="stitch", depends_on=("segment:1", "segment:0"), completes_parent=True),
    ]
    assert queue.enqueue_children(PARENT, specs) == [OTHER, "new-1", "new-2"]
    assert edge.bodies("get-orchestrator-children") == [{"orchestrator_task_id": PARENT}]
    first, second = edge.bodies("create-task")
    assert all(str(uuid.UUID(body["task_id"])) == body["input"]["task_id"] for body in (first, second))
    assert first["idempotency_key"] == f"{PARENT}:segment:1"
    assert first["project_id"] == "proj" and first["family"] == "travel_segment"
    assert first["input"]["dependant_on"] == [OTHER]
    assert first["input"]["prompt"] == "b" and first["input"]["orchestrator_task_id_ref"] == PARENT
    assert first["input"]["headless_child"] == {"role": "segment", "segment_index": 1, "completes_parent": False}
    assert second["idempotency_key"] == f"{PARENT}:stitch"
    assert second["input"]["dependant_on"] == ["new-1", OTHER]
    assert second["input"]["headless_child"] == {"role": "stitch", "segment_index": None, "completes_parent": True}


def test_a_child_depending_on_an_unknown_sibling_is_refused(edge: ScriptedEdge, queue: ReighEdgeQueue) -> None:
    claimed(queue, edge, task_id=PARENT)
    edge.answer("get-orchestrator-children", ok({"tasks": []}))
    edge.answer("create-task", ok({"task_id": "new-1"}))
    specs = [
        ChildSpec("t", {}, role="segment", segment_index=0),
        ChildSpec("t", {}, role="stitch", depends_on=("segment:5",)),
    ]
    with pytest.raises(
        TaskNotFound, match=r"^children\[1\]\.depends_on \(not a sibling given earlier\): no task with id 'segment:5'"
    ):
        queue.enqueue_children(PARENT, specs)


# ---------------------------------------------------------------------------------------------- not for workers


def test_what_a_worker_does_not_need_is_a_clear_refusal(edge: ScriptedEdge, queue: ReighEdgeQueue) -> None:
    for call, what in [
        (queue.list_tasks, "listing tasks"),
        (lambda: queue.cancel(TASK), "cancelling"),
        (lambda: queue.retry(TASK), "retrying"),
        (queue.stats, "queue statistics"),
        (queue.list_workers, "listing workers"),
    ]:
        with pytest.raises(QueueError) as caught:
            call()
        assert (
            str(caught.value) == f"{what} is not part of Reigh's edge API for workers: use the Reigh app, or --db URL"
        )
    with pytest.raises(QueueError, match="^counting ready tasks is not part of Reigh's edge API for workers$"):
        queue.count_ready()
    assert (queue.migrate(), queue.schema_version(), queue.latest_version, queue.reclaim_expired()) == (0, 0, 0, 0)
    assert queue.resolve_id("abc") == "abc" and queue.dialect == "reigh-edge"
    assert queue.refresh_readiness() is None
    assert [name for name, _ in edge.calls] == ["get-predecessor-output"]


def test_a_closed_queue_makes_no_more_calls(edge: ScriptedEdge) -> None:
    queue = open_edge(edge)
    queue.close()
    with pytest.raises(RuntimeError):
        queue.claim("w", lease_seconds=30)
    with pytest.raises(RuntimeError):
        queue.beat_worker("w", session_id="s", status="idle", current_task_id=None, metadata={})


# ---------------------------------------------------------------------------------------------- uploads and failures


def _video(tmp_path: Path, name: str = "out.mp4") -> Path:
    video = tmp_path / name
    video.write_bytes(b"v")
    return video


def test_a_storage_429_is_retried_and_an_upload_that_keeps_failing_is_unavailable_naming_it(
    edge: ScriptedEdge, queue, tmp_path: Path, naps
) -> None:
    video = _video(tmp_path)
    _upload_urls(edge, thumbnail=False)
    edge.answer(
        "upload", ok({"statusCode": "429", "error": "slow down", "message": "slow down"}, 429), ok({"Key": "k"})
    )
    queue.complete(TASK, "w", output_location=str(video))
    assert len(edge.bodies("upload")) == 2 and naps == [0.5]

    path = f"user/tasks/{TASK}/out.mp4"
    for reply, reason in [
        (ok({"statusCode": "503", "error": "busy", "message": "busy"}, 503), "Storage answered 503"),
        (LocalServer.streamed(lambda: [], raw=True), "RemoteProtocolError"),  # the connection dropped, no answer
    ]:
        edge.answer("upload", reply)
        with pytest.raises(QueueUnavailable) as caught:
            queue.complete(TASK, "w", output_location=str(video))
        assert str(caught.value) == f"Reigh's edge API at {edge.url}: upload of {path}: {reason}"


def test_a_refused_upload_shows_storages_answer_cut_to_300_characters(edge: ScriptedEdge, queue, tmp_path) -> None:
    video = _video(tmp_path)
    _upload_urls(edge, thumbnail=False)
    edge.answer("upload", ok({"statusCode": "400", "error": "InvalidKey", "message": "m" * 400}, 400))
    with pytest.raises(QueueError) as caught:
        queue.complete(TASK, "w", output_location=str(video))
    prefix = f"upload of user/tasks/{TASK}/out.mp4 refused: "
    assert str(caught.value).startswith(prefix)
    shown = str(caught.value).removeprefix(prefix)
    assert len(shown) == 300 and "mmmm" in shown


def test_an_output_url_outside_the_bucket_is_named_by_its_first_200_characters(edge: ScriptedEdge, queue) -> None:
    url = "https://elsewhere.example/" + "p" * 300 + ".mp4"
    with pytest.raises(QueueError) as caught:
        queue.complete(TASK, "w", output_location=url)
    assert str(caught.value) == f"complete: {url[:200]} is not in this project's image_uploads bucket"


def test_a_file_of_no_known_type_is_uploaded_as_octet_stream(edge: ScriptedEdge, queue, tmp_path: Path) -> None:
    video = _video(tmp_path, "out.zqx")
    _upload_urls(edge, thumbnail=False)
    queue.complete(TASK, "w", output_location=str(video))
    assert edge.bodies("generate-upload-url")[0]["content_type"] == "application/octet-stream"
    assert b"application/octet-stream" in edge.bodies("upload")[0]["body"]


def test_a_failure_that_is_not_retryable_is_sent_with_its_message_alone(edge: ScriptedEdge, queue) -> None:
    edge.answer("update-task-status", ok({"success": True}))
    assert queue.fail(TASK, "w", "bad input image") is TaskStatus.FAILED
    assert edge.bodies("update-task-status") == [
        {"task_id": TASK, "status": "Failed", "attempts": 1, "error_details": "bad input image"}
    ]


def test_an_upload_answered_with_something_that_is_not_json_is_refused_naming_the_path(
    edge: ScriptedEdge, queue, tmp_path: Path
) -> None:
    # A proxy's page instead of Storage's answer: the error has no HTTP status of Storage's to read.
    video = _video(tmp_path)
    _upload_urls(edge, thumbnail=False)
    edge.answer("upload", LocalServer.reply(b"<html>ok</html>", 200))
    with pytest.raises(QueueError, match=f"^upload of user/tasks/{TASK}/out.mp4 refused: Expecting value"):
        queue.complete(TASK, "w", output_location=str(video))
    assert edge.bodies("complete_task") == []


def test_two_claimed_tasks_with_the_same_dependency_both_finish(edge: ScriptedEdge, queue) -> None:
    # Two rows this process holds read the same predecessor; finishing the first must not trip the second.
    edge.answer("get-predecessor-output", ok({"predecessors": [{"predecessor_id": OTHER, "status": "Complete"}]}))
    for task_id in (TASK, PARENT):
        edge.answer("claim-next-task", ok({"task_id": task_id, "task_type": "t", "project_id": "p"}))
        assert queue.claim("w", lease_seconds=30).depends_on == (OTHER,)
    edge.answer("update-task-status", ok({"success": True}))
    queue.fail(TASK, "w", "x")
    queue.release(PARENT, "w")
    assert [body["task_id"] for body in edge.bodies("update-task-status")] == [TASK, PARENT]


def test_an_answer_that_is_not_utf8_is_unavailable_like_any_other_that_is_not_json(edge: ScriptedEdge, queue) -> None:
    edge.answer("claim-next-task", LocalServer.reply(b"\xff\xfe{", 200))
    with pytest.raises(QueueUnavailable, match="^claim-next-task answered something that is not JSON$"):
        queue.claim("w", lease_seconds=30)


def test_a_network_failure_keeps_its_reason(edge: ScriptedEdge) -> None:
    with pytest.raises(QueueUnavailable) as caught:
        ReighEdgeQueue("http://127.0.0.1:9", TOKEN, timeout=5, attempts=1)
    assert str(caught.value) == (
        "Reigh's edge API at http://127.0.0.1:9: get-predecessor-output: ConnectError: [Errno 111] Connection refused"
    )
