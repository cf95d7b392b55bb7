"""Hostile inputs through the real worker loop: generation and travel rows whose files are local secrets, non-images,
redirects to file:// or to internal addresses, oversized or never-answering downloads, frame counts the model cannot
make. Each fails the task at once (one attempt) unless the fault may pass, and nothing is read outside the roots.

HTTP goes to real servers on 127.0.0.1 (tests/local_http.py). Because they are on loopback, the tests that need them
to answer start the worker with `allow_private_urls=True`, as an operator would with --allow-private-urls.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from source.queue import TaskStatus
from source.tasks import default_registry
from source.worker import run
from source.worker.services import build_services

KEYFRAME = sorted((Path(__file__).resolve().parents[2] / "source" / "assets" / "keyframes").glob("*.png"))[0]


def _drain(worker_env, **overrides: Any) -> int:
    settings = replace(worker_env.settings, **overrides)
    return run(settings, registry=default_registry(), services=build_services(settings), install_signal_handlers=False)


def _i2v(image_start: str) -> dict[str, Any]:
    return {"model": "wan_tiny_i2v_2_2", "prompt": "x", "video_length": 5, "image_start": image_start}


def test_local_files_outside_the_roots_fail_alike_whether_or_not_they_exist(worker_env):
    tasks = {
        source: worker_env.queue.enqueue("i2v_22", _i2v(source))
        for source in ("/etc/passwd", "/etc/no-such-file-here", "file:///etc/passwd", "../../../../etc/passwd")
    }
    assert worker_env.drain() == 0
    messages = {}
    for source, task_id in tasks.items():
        task = worker_env.queue.get(task_id)
        assert (task.status, task.attempts) == (TaskStatus.FAILED, 1), source
        assert task.error_message.startswith("image_start: "), task.error_message
        assert "local paths are only read inside the allowed input roots" in task.error_message
        messages[source] = task.error_message.replace(source, "<source>")
    # No existence oracle: the file that exists and the one that does not give the same answer.
    assert messages["/etc/passwd"] == messages["/etc/no-such-file-here"]
    assert "root:" not in " ".join(messages.values())


def test_an_input_that_is_not_an_image_fails_once_naming_the_field(worker_env):
    not_an_image = worker_env.tmp / "notes.png"
    not_an_image.write_text("this is text, not a PNG")
    task_id = worker_env.queue.enqueue("i2v_22", _i2v(str(not_an_image)))
    assert worker_env.drain() == 0
    task = worker_env.queue.get(task_id)
    assert (task.status, task.attempts) == (TaskStatus.FAILED, 1)
    assert task.error_message.startswith("image_start: not an image file"), task.error_message


def test_loopback_urls_are_refused_without_the_operators_flag(worker_env, http_server):
    http_server.serve("GET", "/key.png", http_server.reply(KEYFRAME.read_bytes()))
    task_id = worker_env.queue.enqueue("i2v_22", _i2v(f"{http_server.url}/key.png"))
    assert worker_env.drain() == 0
    task = worker_env.queue.get(task_id)
    assert (task.status, task.attempts) == (TaskStatus.FAILED, 1)
    assert "--allow-private-urls" in task.error_message
    assert http_server.requests == [], "refused before any connection"


def test_a_redirect_to_a_local_file_is_a_permanent_failure(worker_env, http_server):
    http_server.serve("GET", "/key.png", http_server.reply(b"", 302, Location="file:///etc/passwd"))
    task_id = worker_env.queue.enqueue("i2v_22", _i2v(f"{http_server.url}/key.png"))
    assert _drain(worker_env, allow_private_urls=True) == 0
    task = worker_env.queue.get(task_id)
    assert (task.status, task.attempts) == (TaskStatus.FAILED, 1), task.error_message
    assert task.error_message.startswith("image_start: cannot download")
    assert http_server.hits("GET", "/key.png") == 1


def test_an_image_over_the_size_cap_is_refused_without_retries(worker_env, http_server):
    http_server.serve("GET", "/big.png", http_server.reply(KEYFRAME.read_bytes()))
    task_id = worker_env.queue.enqueue("i2v_22", _i2v(f"{http_server.url}/big.png"))
    assert _drain(worker_env, allow_private_urls=True, max_image_mb=0.0001) == 0
    task = worker_env.queue.get(task_id)
    assert (task.status, task.attempts) == (TaskStatus.FAILED, 1), task.error_message
    assert task.error_message.startswith("image_start: cannot download") and "104 bytes" in task.error_message


def test_a_server_that_never_answers_costs_one_stall_per_attempt(worker_env, http_server):
    http_server.serve("GET", "/slow.png", http_server.reply(hang=True))
    task_id = worker_env.queue.enqueue("i2v_22", _i2v(f"{http_server.url}/slow.png"))
    started = time.monotonic()
    assert _drain(worker_env, allow_private_urls=True, stall_seconds=0.4) == 0
    elapsed = time.monotonic() - started
    task = worker_env.queue.get(task_id)
    # Transient (the server may come back): retried up to the attempt cap, each attempt one stall long.
    assert (task.status, task.attempts) == (TaskStatus.FAILED, 3), task.error_message
    assert http_server.hits("GET", "/slow.png") == 3
    assert elapsed < 10, f"three stalls of 0.4 s took {elapsed:.1f} s"


def test_a_segment_frame_count_the_model_cannot_make_fails_once(worker_env):
    task_id = worker_env.queue.enqueue(
        "travel_segment",
        {
            "model_name": "wan_tiny_i2v_2_2",
            "parsed_resolution_wh": "64x64",
            "segment_frames_target": 10,
            "start_image_url": str(KEYFRAME),
        },
    )
    assert worker_env.drain() == 0
    task = worker_env.queue.get(task_id)
    assert (task.status, task.attempts) == (TaskStatus.FAILED, 1)
    assert task.error_message.startswith("segment_frames_target: expected a frame count of the form 4n+1")
