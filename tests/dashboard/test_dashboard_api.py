"""The dashboard's HTTP API and pages through Starlette's test client, over a real SQLite file and a real PostgreSQL
queue: counts, the filtered list with progress and ETA, a run as a tree, redaction, the token on cancel and retry,
and files served only from inside the output folder."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from reigh_app import insert_as_app
from starlette.testclient import TestClient

from source.dashboard.app import create_app
from source.dashboard.views import media_url, throughput
from source.queue import ChildSpec, TaskQueue, TaskStatus, open_queue

TOKEN = "dashboard-admin-token-for-tests"


@pytest.fixture
def outputs(tmp_path: Path) -> Path:
    folder = tmp_path / "outputs"
    (folder / "travel_stitch").mkdir(parents=True)
    return folder


def client(queue: TaskQueue, outputs: Path, token: str | None = TOKEN) -> TestClient:
    return TestClient(create_app(queue, output_dir=outputs, admin_token=token))


def a_run(queue: TaskQueue) -> tuple[str, list[str]]:
    """An orchestrator with two segments and a stitch, as the travel orchestrator enqueues them."""
    parent = queue.enqueue(
        "travel_orchestrator",
        {"orchestrator_details": {"model_name": "wan_tiny_t2v", "openai_api_key": "sk-live-secret"}},
    )
    children = [
        ChildSpec("travel_segment", {"segment_index": i, "model_name": "wan_tiny_t2v"}, "segment", i) for i in (0, 1)
    ]
    children.append(ChildSpec("travel_stitch", {}, "stitch", None, ("segment:0", "segment:1"), completes_parent=True))
    return parent, queue.enqueue_children(parent, children)


def test_pages_are_served_with_their_scripts_from_here(queue: TaskQueue, outputs: Path) -> None:
    http = client(queue, outputs, token=None)
    for path in ("/", "/workers", "/tasks/anything"):
        page = http.get(path)
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        # no CDN: every script and stylesheet comes from this server
        assert re.findall(r'(?:src|href)="(https?:)?//', page.text) == []
        assert '<script src="/static/dashboard.js"' in page.text
    assert "read-only" in http.get("/").text
    assert http.get("/static/dashboard.js").status_code == 200
    assert "progress" in http.get("/static/dashboard.js").text


def test_counts_list_filters_progress_and_eta(queue: TaskQueue, outputs: Path) -> None:
    parent, (segment0, segment1, stitch) = a_run(queue)
    queue.enqueue("t2v", {"model": "wan_tiny_t2v", "prompt": "a cat"})
    claimed = queue.claim("w1", lease_seconds=60, task_types=["travel_segment"])
    assert claimed is not None and claimed.id == segment0
    queue.report_progress(segment0, "w1", step=2, total=8, message="denoise phase 1")
    http = client(queue, outputs)

    stats = http.get("/api/stats").json()
    assert stats["by_status"]["In Progress"] == 1 and stats["by_status"]["Queued"] == 4

    in_progress = http.get("/api/tasks", params={"status": "In Progress"}).json()
    assert [row["id"] for row in in_progress] == [segment0]
    row = in_progress[0]
    assert row["progress"] == {"step": 2, "total": 8, "message": "denoise phase 1", "percent": 25.0}
    assert row["eta_seconds"] is not None and row["eta_seconds"] >= 0  # 3x the time since the generation started
    assert (row["role"], row["segment_index"], row["model"]) == ("segment", 0, "wan_tiny_t2v")

    segments = http.get("/api/tasks", params={"task_type": "travel_segment"}).json()
    assert {row["id"] for row in segments} == {segment0, segment1}
    assert all(row["eta_seconds"] is None for row in http.get("/api/tasks").json() if row["status"] == "Queued")
    assert http.get("/api/tasks", params={"status": "Sleeping"}).status_code == 400
    assert http.get("/api/tasks", params={"limit": "0"}).status_code == 400


def test_a_task_shows_its_run_tree_redacted_params_and_full_error(queue: TaskQueue, outputs: Path) -> None:
    parent, (segment0, segment1, stitch) = a_run(queue)
    http = client(queue, outputs)
    detail = http.get(f"/api/tasks/{parent}").json()
    assert [(c["role"], c["segment_index"]) for c in detail["children"]] == [
        ("segment", 0),
        ("segment", 1),
        ("stitch", None),
    ]
    assert detail["row"]["params"]["orchestrator_details"]["openai_api_key"] == "***"
    assert "sk-live-secret" not in http.get(f"/api/tasks/{parent}").text
    assert http.get(f"/api/tasks/{parent[:8]}").json()["id"] == parent  # a unique prefix works, as in the CLI

    claimed = queue.claim("w1", lease_seconds=60, task_types=["travel_segment"])
    error = "segment 0: out of memory\nTraceback (most recent call last):\n  line 2"
    queue.fail(claimed.id, "w1", error)
    failed = http.get(f"/api/tasks/{claimed.id}").json()
    assert failed["error_full"] == error and failed["status"] == "Failed"
    assert http.get("/api/tasks/not-a-task-id-at-all").status_code == 404


def test_cancel_and_retry_need_the_token_and_cascade_like_the_cli(queue: TaskQueue, outputs: Path) -> None:
    parent, (segment0, segment1, stitch) = a_run(queue)
    read_only = client(queue, outputs, token=None)
    refused = read_only.post(f"/api/tasks/{parent}/cancel", headers={"Authorization": f"Bearer {TOKEN}"})
    assert refused.status_code == 403 and "read-only" in refused.json()["error"]

    http = client(queue, outputs)
    assert http.post(f"/api/tasks/{parent}/cancel").status_code == 401
    assert http.post(f"/api/tasks/{parent}/cancel", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert queue.get(parent).status is TaskStatus.QUEUED  # nothing happened

    cancelled = http.post(f"/api/tasks/{parent}/cancel", headers={"Authorization": f"Bearer {TOKEN}"})
    assert cancelled.status_code == 200
    assert set(cancelled.json()["touched"]) == {parent, segment0, segment1, stitch}
    assert all(queue.get(task).status is TaskStatus.CANCELLED for task in (parent, segment0, segment1, stitch))

    retried = http.post(f"/api/tasks/{parent}/retry", headers={"Authorization": f"Bearer {TOKEN}"})
    assert retried.status_code == 200 and queue.get(parent).status is TaskStatus.QUEUED
    single = queue.enqueue("t2v", {"model": "wan_tiny_t2v"})
    queued_retry = http.post(f"/api/tasks/{single}/retry", headers={"Authorization": f"Bearer {TOKEN}"})
    assert queued_retry.status_code == 409  # only failed or cancelled tasks are retried


def test_files_come_only_from_inside_the_output_folder(queue: TaskQueue, outputs: Path, tmp_path: Path) -> None:
    video = outputs / "travel_stitch" / "run_final.mp4"
    video.write_bytes(b"\x00\x00\x00\x18ftypmp42 not really a video")
    secret = tmp_path / "secret.txt"
    secret.write_text("not for the browser")
    (outputs / "link_out").symlink_to(secret)
    http = client(queue, outputs, token=None)

    assert http.get("/files/travel_stitch/run_final.mp4").content == video.read_bytes()
    assert http.get("/files/travel_stitch/absent.mp4").status_code == 404
    for sneaky in (
        "/files/%2E%2E/secret.txt",
        "/files/travel_stitch/%2E%2E/%2E%2E/secret.txt",
        "/files/link_out",
        "/files/travel_stitch/run%00final.mp4",
        f"/files/{secret}",
        f"/files//{secret}",
    ):
        answer = http.get(sneaky)
        assert answer.status_code in (403, 404), sneaky
        assert "not for the browser" not in answer.text

    assert media_url(str(video), outputs) == "/files/travel_stitch/run_final.mp4"
    assert media_url(str(secret), outputs) is None
    assert media_url("https://bucket.example/v.mp4?token=x", outputs) == "https://bucket.example/v.mp4?token=x"

    parent = queue.enqueue("t2v", {"model": "wan_tiny_t2v"})
    claimed = queue.claim("w1", lease_seconds=60)
    queue.complete(parent, "w1", output_location=str(video), result={"thumbnail": str(secret), "frames": 5})
    detail = http.get(f"/api/tasks/{claimed.id}").json()
    assert detail["output_url"] == "/files/travel_stitch/run_final.mp4"
    assert detail["thumbnail_url"] is None  # outside the folder: not linked either


def test_the_cli_command_serves_the_dashboard_on_loopback(tmp_path: Path) -> None:
    """What an operator types: `python -m source.cli dashboard`, as its own process."""
    db_url = f"sqlite:///{tmp_path / 'tasks.db'}"
    made = open_queue(db_url)
    made.migrate()
    task_id = made.enqueue("t2v", {"model": "wan_tiny_t2v"})
    made.close()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    repo = Path(__file__).resolve().parents[2]
    command = [sys.executable, "-m", "source.cli", "dashboard", "--db", db_url, "--port", str(port)]
    env = {**os.environ, "HW_DASHBOARD_TOKEN": TOKEN}
    process = subprocess.Popen(command, cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                listed = httpx.get(f"http://127.0.0.1:{port}/api/tasks", timeout=2).json()
                break
            except httpx.TransportError:
                assert process.poll() is None and time.monotonic() < deadline, process.stdout.read()
                time.sleep(0.2)
        assert [row["id"] for row in listed] == [task_id]
        refused = httpx.post(f"http://127.0.0.1:{port}/api/tasks/{task_id}/cancel", timeout=5)
        assert refused.status_code == 401  # the token came from HW_DASHBOARD_TOKEN: admin mode, but it must be sent
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=20)
    assert f"dashboard on http://127.0.0.1:{port}/" in output and "(admin)" in output
    assert TOKEN not in output


@pytest.mark.postgres
def test_the_dashboard_reads_reighs_own_tables(reigh_db, outputs: Path) -> None:
    """Over Reigh's schema (tests/reigh_schema.sql, rows inserted as the app inserts them): the same pages and API."""
    task_id = insert_as_app(
        reigh_db.url, reigh_db.project_id, "travel_orchestrator", {"orchestrator_details": {"model_name": "m1"}}
    )
    queue = open_queue(reigh_db.url)
    queue.migrate()
    try:
        assert queue.dialect == "reigh"
        http = client(queue, outputs)
        assert http.get("/api/stats").json()["by_status"]["Queued"] == 1
        listed = http.get("/api/tasks").json()
        assert [(row["id"], row["model"], row["status"]) for row in listed] == [(task_id, "m1", "Queued")]
        assert http.get(f"/api/tasks/{task_id}").json()["children"] == []
        assert http.get("/api/throughput").json() == [] and http.get("/api/workers").status_code == 200
        assert http.get(f"/tasks/{task_id}").status_code == 200
    finally:
        queue.close()


def test_throughput_counts_the_last_hours_completed_generations_per_model(queue: TaskQueue, outputs: Path) -> None:
    for model, outcome in (("wan_a", "complete"), ("wan_a", "complete"), ("wan_b", "complete"), ("wan_a", "fail")):
        queue.enqueue("t2v", {"model": model})
        task = queue.claim("w1", lease_seconds=60)
        if outcome == "complete":
            queue.complete(task.id, "w1", output_location=None, result={"model": model})
        else:
            queue.fail(task.id, "w1", "out of memory")
    queue.enqueue("t2v", {"model": "wan_c"})  # still queued: not throughput
    rows = client(queue, outputs).get("/api/throughput").json()
    assert [(row["model"], row["completed_last_hour"]) for row in rows] == [("wan_a", 2), ("wan_b", 1)]
    assert all(row["median_seconds"] is not None and row["median_seconds"] >= 0 for row in rows)
    # The same from every row the queue holds (failed and queued ones are not throughput), and nothing an hour later.
    now = datetime.now(UTC)
    assert throughput(queue.list_tasks(), now=now) == rows
    assert throughput(queue.list_tasks(), now=now + timedelta(hours=1, minutes=1)) == []


def test_the_cli_command_refuses_a_database_without_the_queue_schema(tmp_path: Path, capsys, monkeypatch) -> None:
    import sqlite3

    import uvicorn

    from source.cli.__main__ import main

    def serve(*args: object, **kwargs: object) -> None:  # a regression fails here instead of serving forever
        raise AssertionError("the dashboard was served over a database without the queue schema")

    monkeypatch.setattr(uvicorn, "run", serve)

    missing = tmp_path / "missing.db"
    assert main(["dashboard", "--db", f"sqlite:///{missing}"]) == 1
    assert "no queue database" in capsys.readouterr().err and not missing.exists()  # read, never created

    other = tmp_path / "other.db"
    with sqlite3.connect(other) as connection:
        connection.execute("CREATE TABLE notes (text TEXT)")
    assert main(["dashboard", "--db", f"sqlite:///{other}"]) == 1
    error = capsys.readouterr().err
    assert "has no queue schema" in error and "python -m source.cli migrate" in error  # never migrated by a read
