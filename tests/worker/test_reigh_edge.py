"""The worker as a Reigh pod runs it: no database URL, only a Supabase URL and a token, every claim, status change,
upload and child through Reigh's edge functions. Reigh's functions cannot run here: `tests/reigh_edge.py` is a local
server of ours that speaks their API (written from reigh-app's supabase/functions sources) over a real PostgreSQL
holding Reigh's schema, and the real worker (`python worker.py`, the supabase client, httpx) talks to it."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from local_http import LocalServer
from loop_helpers import wait_until
from reigh_app import TINY_TRAVEL_FRAMES, ReighDatabase, insert_as_app, task_row, tiny_travel_params
from reigh_edge import ReighEdgeServer

SERVICE_KEY = "sb-service-role-key-for-tests-0123456789abcdef"


# The functions the upstream worker calls are all a deployment is sure to have; Reigh's other worker look-ups
# (get-task-output, get-task-status, get-orchestrator-children) are used when present.
UPSTREAM_ONLY = ("get-task-output", "get-task-status", "get-orchestrator-children")


@pytest.fixture
def edge(reigh_db: ReighDatabase, request: pytest.FixtureRequest) -> Iterator[ReighEdgeServer]:
    server = ReighEdgeServer(reigh_db.url, service_key=SERVICE_KEY, without=getattr(request, "param", ()))
    yield server
    server.stop()


def _edge_args(edge: ReighEdgeServer, *more: str, token: str = SERVICE_KEY) -> tuple[str, ...]:
    return ("--supabase-url", edge.url, "--supabase-access-token", token, "--once", *more)


def _register_debug_sleep(reigh_db: ReighDatabase) -> None:
    with psycopg.connect(reigh_db.url, autocommit=True) as connection:
        # An operator registers the diagnostic type in Reigh's task_types (its foreign key allows no other).
        connection.execute(
            "INSERT INTO task_types (name, category, display_name, base_cost_per_second) "
            "VALUES ('debug_sleep', 'utility', 'Sleep', 0)"
        )


def _all_rows_text(url: str) -> str:
    with psycopg.connect(url) as connection:
        rows = connection.execute("SELECT t::text FROM tasks t UNION ALL SELECT w::text FROM workers w").fetchall()
    return "\n".join(row[0] for row in rows)


@contextmanager
def claimed_orchestrator(reigh_db: ReighDatabase, edge: ReighEdgeServer) -> Iterator[tuple[Any, str]]:
    """The edge queue in-process, holding an app-inserted travel_orchestrator row as worker 'w'."""
    from source.queue import open_reigh_edge

    parent_id = insert_as_app(reigh_db.url, reigh_db.project_id, "travel_orchestrator", {"orchestrator_details": {}})
    with psycopg.connect(reigh_db.url, autocommit=True) as connection:
        connection.execute("INSERT INTO workers (id, instance_type) VALUES ('w', 'external')")
    queue = open_reigh_edge(edge.url, SERVICE_KEY, timeout=10)
    try:
        assert queue.claim("w", lease_seconds=30, task_types=["travel_orchestrator"]).id == parent_id
        yield queue, parent_id
    finally:
        queue.close()


@pytest.mark.slow
@pytest.mark.parametrize("edge", [(), UPSTREAM_ONLY], ids=["all-functions", "upstream-functions-only"], indirect=True)
def test_a_travel_run_through_reighs_edge_api_ends_in_an_uploaded_stitched_video(
    reigh_db: ReighDatabase, edge: ReighEdgeServer, spawn_worker, http_server, model_cache: Path, ffprobe, tmp_path
) -> None:
    foreign_id = insert_as_app(reigh_db.url, reigh_db.project_id, "single_image", {"prompt": "not ours"})
    foreign_before = task_row(reigh_db.url, foreign_id)
    params = tiny_travel_params(http_server)
    orchestrator_id = insert_as_app(reigh_db.url, reigh_db.project_id, "travel_orchestrator", params)

    worker = spawn_worker(
        None,
        *_edge_args(edge, "--device", "cpu", "--model-cache-dir", str(model_cache), "--allow-private-urls"),
        worker_id="reigh-pod-1",
    )
    assert worker.wait(timeout=400) == 0, worker.log_text()[-3000:]

    orchestrator = task_row(reigh_db.url, orchestrator_id)
    assert orchestrator["status"] == "Complete", orchestrator["error_message"]
    with psycopg.connect(reigh_db.url) as connection:
        children = connection.execute(
            "SELECT id::text, task_type, status::text, output_location, worker_id, dependant_on::text[] FROM tasks "
            "WHERE params->>'orchestrator_task_id_ref' = %s ORDER BY created_at",
            [orchestrator_id],
        ).fetchall()
    assert [child[1] for child in children] == ["travel_segment", "travel_segment", "travel_stitch"]
    assert {child[2] for child in children} == {"Complete"} and {child[4] for child in children} == {"reigh-pod-1"}
    stitch = children[2]
    assert sorted(stitch[5]) == sorted(child[0] for child in children[:2])  # the stitch waited for both
    # The final mp4 went up through a signed URL and is served at the row's output_location.
    assert stitch[3].startswith(f"{edge.url}/storage/v1/object/public/image_uploads/")
    final = tmp_path / "final.mp4"
    final.write_bytes(httpx.get(stitch[3]).content)
    probe = ffprobe(str(final))
    assert (int(probe["nb_read_frames"]), probe["width"], probe["height"]) == (TINY_TRAVEL_FRAMES, 64, 48)

    # claim-next-task has no task-type filter: the older foreign row comes first on every poll and is given back.
    assert edge.called("claim-next-task").count(200) >= 4 + 4  # orchestrator, 2 segments, stitch, each behind it
    assert "a type this worker does not run: given back" in worker.log_text()
    assert edge.called("complete_task").count(200) >= 3 and edge.called("create-task") == [200, 200, 200]
    assert task_row(reigh_db.url, foreign_id) | {"updated_at": None} == foreign_before | {"updated_at": None}
    assert any(line["message"].startswith("step ") for line in edge.worker_logs)  # progress reached Reigh's logs
    with psycopg.connect(reigh_db.url) as connection:  # update-worker-model: for Reigh's model-affinity claim
        assert connection.execute("SELECT current_model FROM workers WHERE id = 'reigh-pod-1'").fetchone() == (
            "wan_tiny_i2v_2_2",
        )
    assert SERVICE_KEY not in worker.log_text() and SERVICE_KEY not in _all_rows_text(reigh_db.url)


def test_a_wrong_token_stops_the_worker_at_start_with_one_clear_line(
    reigh_db: ReighDatabase, edge: ReighEdgeServer, spawn_worker
) -> None:
    wrong = "not-the-key-4b1d6f0e9a"
    started = time.monotonic()
    worker = spawn_worker(None, *_edge_args(edge, token=wrong))
    assert worker.wait(timeout=60) == 2
    assert time.monotonic() - started < 15
    errors = [record["message"] for record in worker.records() if record["level"]["name"] == "ERROR"]
    assert len(errors) == 1 and "refused the access token (403" in errors[0], errors
    assert "Traceback" not in worker.log_text() and wrong not in worker.log_text()
    assert edge.called("claim-next-task") == []


def test_503_twice_then_200_is_retried_and_the_task_runs(
    reigh_db: ReighDatabase, edge: ReighEdgeServer, spawn_worker
) -> None:
    _register_debug_sleep(reigh_db)
    task_id = insert_as_app(reigh_db.url, reigh_db.project_id, "debug_sleep", {"seconds": 0, "steps": 2})
    busy = LocalServer.reply(b"upstream busy", 503)
    edge.fail_next("claim-next-task", busy, busy)
    worker = spawn_worker(None, *_edge_args(edge), worker_id="reigh-pod-2")
    assert worker.wait(timeout=60) == 0, worker.log_text()[-2000:]
    assert edge.called("claim-next-task")[:3] == [503, 503, 200]
    row = task_row(reigh_db.url, task_id)
    assert (row["status"], row["worker_id"]) == ("Complete", "reigh-pod-2")
    assert row["output_location"].startswith(f"{edge.url}/storage/v1/object/public/image_uploads/")
    assert row["generation_started_at"] is not None and row["generation_processed_at"] is not None


def test_a_server_that_hangs_past_the_timeout_is_a_bounded_failure(
    reigh_db: ReighDatabase, edge: ReighEdgeServer, spawn_worker
) -> None:
    _register_debug_sleep(reigh_db)
    task_id = insert_as_app(reigh_db.url, reigh_db.project_id, "debug_sleep", {"seconds": 0})
    edge.fail_next("claim-next-task", *[LocalServer.reply(hang=True)] * 4)
    started = time.monotonic()
    worker = spawn_worker(None, *_edge_args(edge, "--edge-timeout", "1"))
    assert worker.wait(timeout=60) == 1  # --once: an unreachable queue ends the run
    assert time.monotonic() - started < 30
    assert "claim-next-task did not answer within 1 s" in worker.log_text()
    assert task_row(reigh_db.url, task_id)["status"] == "Queued"
    assert SERVICE_KEY not in worker.log_text()


def test_a_failing_segment_fails_through_update_task_status_and_reigh_cascades(
    reigh_db: ReighDatabase, edge: ReighEdgeServer, spawn_worker
) -> None:
    _register_debug_sleep(reigh_db)
    bad = insert_as_app(reigh_db.url, reigh_db.project_id, "debug_sleep", {"seconds": 0, "fail": "input"})
    flaky = insert_as_app(
        reigh_db.url,
        reigh_db.project_id,
        "debug_sleep",
        {"seconds": 0, "fail": "transient", "misbehave_attempts": 1},
    )
    worker = spawn_worker(None, *_edge_args(edge), worker_id="reigh-pod-3")
    assert worker.wait(timeout=60) == 0, worker.log_text()[-2000:]
    failed = task_row(reigh_db.url, bad)
    assert failed["status"] == "Failed" and failed["error_message"] and failed["attempts"] == 1
    retried = task_row(reigh_db.url, flaky)
    assert (retried["status"], retried["attempts"]) == ("Complete", 1)  # given back once, then done


def test_plain_generation_uploads_its_video_and_thumbnail(
    reigh_db: ReighDatabase, edge: ReighEdgeServer, spawn_worker, model_cache: Path, ffprobe, tmp_path
) -> None:
    with psycopg.connect(reigh_db.url, autocommit=True) as connection:
        connection.execute(
            "INSERT INTO task_types (name, category, display_name, base_cost_per_second) "
            "VALUES ('t2v', 'generation', 'Text to video', 0.01)"
        )
    params = {"model": "wan_tiny_t2v", "prompt": "a red cat", "video_length": 13, "seed": 3}
    task_id = insert_as_app(reigh_db.url, reigh_db.project_id, "t2v", params)
    worker = spawn_worker(None, *_edge_args(edge, "--device", "cpu", "--model-cache-dir", str(model_cache)))
    assert worker.wait(timeout=300) == 0, worker.log_text()[-2000:]
    row = task_row(reigh_db.url, task_id)
    assert row["status"] == "Complete", row["error_message"]
    video = tmp_path / "t2v.mp4"
    video.write_bytes(httpx.get(row["output_location"]).content)
    probe = ffprobe(str(video))
    assert (int(probe["nb_read_frames"]), probe["width"], probe["height"]) == (13, 64, 64)
    thumbnails = [path for path in edge.objects if f"/tasks/{task_id}/thumbnails/" in path]
    assert len(thumbnails) == 1 and edge.objects[thumbnails[0]][:3] == b"\xff\xd8\xff"  # a JPEG went up too


def test_sigterm_gives_the_task_back_through_update_task_status(
    reigh_db: ReighDatabase, edge: ReighEdgeServer, spawn_worker
) -> None:
    _register_debug_sleep(reigh_db)
    task_id = insert_as_app(reigh_db.url, reigh_db.project_id, "debug_sleep", {"seconds": 60, "steps": 120})
    worker = spawn_worker(
        None, "--supabase-url", edge.url, "--supabase-access-token", SERVICE_KEY, "--grace-seconds", "0.5"
    )
    wait_until(lambda: task_row(reigh_db.url, task_id)["status"] == "In Progress", timeout=30, what="the claim")
    worker.signal(signal.SIGTERM)
    assert worker.wait(timeout=20) == 0, worker.log_text()[-2000:]
    row = task_row(reigh_db.url, task_id)
    assert (row["status"], row["worker_id"], row["generation_started_at"]) == ("Queued", None, None)


def test_a_task_the_app_cancels_stops_on_the_next_heartbeat(
    reigh_db: ReighDatabase, edge: ReighEdgeServer, spawn_worker
) -> None:
    _register_debug_sleep(reigh_db)
    task_id = insert_as_app(reigh_db.url, reigh_db.project_id, "debug_sleep", {"seconds": 60, "steps": 120})
    worker = spawn_worker(None, *_edge_args(edge, "--heartbeat-seconds", "0.3"))
    wait_until(lambda: task_row(reigh_db.url, task_id)["status"] == "In Progress", timeout=30, what="the claim")
    started = time.monotonic()
    with psycopg.connect(reigh_db.url, autocommit=True) as connection:  # the app's cancel (update-task-status)
        connection.execute("UPDATE tasks SET status = 'Cancelled' WHERE id = %s", [task_id])
    assert worker.wait(timeout=30) == 0, worker.log_text()[-2000:]
    assert time.monotonic() - started < 15  # not the 60 s the task would have slept
    assert task_row(reigh_db.url, task_id)["status"] == "Cancelled"
    assert "was cancelled while it ran" in worker.log_text()


def test_enqueuing_an_orchestrators_children_twice_creates_them_once(
    reigh_db: ReighDatabase, edge: ReighEdgeServer
) -> None:
    from source.queue import ChildSpec

    with claimed_orchestrator(reigh_db, edge) as (queue, parent_id):
        children = [
            ChildSpec("travel_segment", {"segment_index": 0}, role="segment", segment_index=0),
            ChildSpec("travel_stitch", {}, role="stitch", depends_on=("segment:0",), completes_parent=True),
        ]
        first = queue.enqueue_children(parent_id, children)
        assert queue.enqueue_children(parent_id, children) == first  # a re-run orchestrator finds its children
        assert edge.called("create-task") == [200, 200]
        found = {child.id: child for child in queue.children(parent_id)}
        assert set(found) == set(first)
        assert (found[first[1]].role, found[first[1]].completes_parent, found[first[1]].depends_on) == (
            "stitch",
            True,
            (first[0],),
        )
        assert task_row(reigh_db.url, first[1])["project_id"] == task_row(reigh_db.url, parent_id)["project_id"]


def test_a_completion_retried_after_the_api_was_down_still_completes_the_orchestrator(
    reigh_db: ReighDatabase, edge: ReighEdgeServer, tmp_path
) -> None:
    from source.queue import ChildSpec, QueueUnavailable

    with claimed_orchestrator(reigh_db, edge) as (queue, parent_id):
        (stitch_id,) = queue.enqueue_children(
            parent_id, [ChildSpec("travel_stitch", {"orchestrator_run_id": "r1"}, role="stitch", completes_parent=True)]
        )
        queue.await_children(parent_id, "w", "waiting")
        assert queue.claim("w", lease_seconds=30, task_types=["travel_stitch"]).id == stitch_id
        video = tmp_path / "final.mp4"
        video.write_bytes(b"\x00\x00\x00\x18ftypmp42")
        down = LocalServer.reply(b"unavailable", 503)
        edge.fail_next("complete_task", down, down, down, down)  # every try of the first call
        with pytest.raises(QueueUnavailable):
            queue.complete(stitch_id, "w", output_location=str(video))
        queue.complete(stitch_id, "w", output_location=str(video))  # what the worker loop does next
    stitch, parent = task_row(reigh_db.url, stitch_id), task_row(reigh_db.url, parent_id)
    assert stitch["status"] == parent["status"] == "Complete"
    assert parent["output_location"] == stitch["output_location"]  # the stitched video is the orchestrator's too


@pytest.mark.parametrize("edge", [(), ("update-shot-pair-prompts",)], ids=["deployed", "not deployed"], indirect=True)
def test_written_prompts_reach_the_shot_through_update_shot_pair_prompts(
    reigh_db: ReighDatabase, edge: ReighEdgeServer
) -> None:
    from source.queue import open_reigh_edge

    queue = open_reigh_edge(edge.url, SERVICE_KEY, timeout=10)
    try:
        deployed = not edge.without
        assert queue.share_prompts("task-1", "shot-1", ["the camera glides", ""]) is deployed
        if deployed:
            assert edge.pair_prompts == [
                {"shot_id": "shot-1", "task_id": "task-1", "enhanced_prompts": ["the camera glides", ""]}
            ]
            # A failing function never fails the run: the prompts are in the segment rows already.
            edge.fail_next("update-shot-pair-prompts", *[LocalServer.reply(b"boom", 500)] * 4)
            assert queue.share_prompts("task-1", "shot-1", ["again", ""]) is False
            edge.fail_next("update-shot-pair-prompts", LocalServer.reply(b'{"error": "Forbidden"}', 403))
            assert queue.share_prompts("task-1", "shot-1", ["again", ""]) is False
        else:
            assert edge.called("update-shot-pair-prompts") == [404]
    finally:
        queue.close()
