"""Output storage: the local folder, and a Supabase bucket.

Real Supabase cannot run here (no Docker, no network), so SupabaseStorage talks through the real supabase-py client to
a local HTTP server that speaks the Supabase Storage REST API: POST /storage/v1/object/<bucket>/<path> with a
multipart body, answering {"Key": "<bucket>/<path>"}.
"""

from __future__ import annotations

import json
import logging
import traceback
from email import policy
from email.parser import BytesParser
from pathlib import Path

import numpy as np
import pytest
from loguru import logger
from PIL import Image

from source.media import write_frames
from source.storage import (
    LocalStorage,
    StorageError,
    StoredOutput,
    SupabaseStorage,
    storage_from_settings,
)

SERVICE_KEY = "sb-test-service-key-0123456789-SHOULD-NEVER-BE-LOGGED"


def _video(path: Path) -> Path:
    frames = np.zeros((3, 32, 48, 3), np.uint8)
    frames[0] = (10, 200, 10)
    write_frames(frames, path, fps=16)
    return path


# ----------------------------------------------------------------------------------------------- local


def test_local_storage_moves_the_video_and_writes_a_thumbnail(tmp_path: Path) -> None:
    source = _video(tmp_path / "work" / "final.mp4")
    storage = LocalStorage(tmp_path / "outputs")

    stored = storage.store(source, task_type="travel_stitch", task_id="task-1")

    target = tmp_path / "outputs" / "travel_stitch" / "task-1_final.mp4"
    assert stored == StoredOutput(location=str(target), thumbnail=str(target.with_name("task-1_final_thumb.jpg")))
    assert target.is_file() and not source.exists()
    with Image.open(stored.thumbnail) as thumbnail:
        assert thumbnail.format == "JPEG" and thumbnail.size == (48, 32)


def test_local_storage_copy_mode_keeps_the_source_and_images_get_no_thumbnail(tmp_path: Path) -> None:
    image = tmp_path / "task-2_result.png"
    Image.new("RGB", (8, 8), (1, 2, 3)).save(image)

    stored = LocalStorage(tmp_path / "outputs", copy=True).store(image, task_type="generate image", task_id="task-2")

    # A folder name that had to be cleaned carries a short hash of the original, so two types never share one.
    assert stored.location == str(tmp_path / "outputs" / "generate_image-73b8066568" / "task-2_result.png")
    assert stored.thumbnail is None
    assert image.exists() and Path(stored.location).read_bytes() == image.read_bytes()


def test_storing_a_retried_task_again_replaces_the_earlier_output(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "outputs")
    first = tmp_path / "a" / "out.png"
    first.parent.mkdir()
    first.write_bytes(b"first")
    storage.store(first, task_type="t", task_id="id")
    second = tmp_path / "out.png"
    second.write_bytes(b"second")

    stored = storage.store(second, task_type="t", task_id="id")

    assert Path(stored.location).read_bytes() == b"second"
    assert [child.name for child in (tmp_path / "outputs" / "t").iterdir()] == ["id_out.png"]
    with pytest.raises(StorageError, match="does not exist"):
        storage.store(tmp_path / "gone.png", task_type="t", task_id="id")


def test_storage_from_settings_picks_the_backend(tmp_path: Path) -> None:
    assert isinstance(storage_from_settings(tmp_path, None, None, None), LocalStorage)
    bucket = storage_from_settings(tmp_path, "http://127.0.0.1:1", SERVICE_KEY, None)
    assert isinstance(bucket, SupabaseStorage) and bucket.bucket == "image_uploads"
    assert SERVICE_KEY not in repr(bucket)
    with pytest.raises(StorageError, match="supabase_url is not set"):
        storage_from_settings(tmp_path, "", SERVICE_KEY, None)
    with pytest.raises(StorageError, match="supabase_key is not set") as caught:
        storage_from_settings(tmp_path, "http://127.0.0.1:1", None, "videos")
    assert SERVICE_KEY not in str(caught.value)


# ----------------------------------------------------------------------------------------------- Supabase


class FakeStorageApi:
    """Records uploads to the local server the way Supabase Storage would accept them."""

    def __init__(self, server) -> None:
        self.server = server
        self.uploads: dict[str, dict[str, object]] = {}
        self.failures_before_success = 0
        self.error_reply = None
        server.fallback = self.handle

    def handle(self, request):
        prefix = "/storage/v1/object/"
        if request.method != "POST" or not request.path.startswith(prefix):
            return self.server.reply(b'{"message":"not found"}', 404)
        if self.error_reply is not None:
            return self.error_reply
        if self.failures_before_success > 0:
            self.failures_before_success -= 1
            return self.server.reply(b'{"statusCode":"503","error":"Unavailable","message":"try later"}', 503)
        key = request.path[len(prefix) :]
        message = BytesParser(policy=policy.default).parsebytes(
            b"Content-Type: " + request.headers["content-type"].encode() + b"\r\n\r\n" + request.body
        )
        file_part = next(
            part for part in message.iter_parts() if part.get_param("name", header="content-disposition") == "file"
        )
        self.uploads[key] = {
            "content_type": file_part.get_content_type(),
            "body": file_part.get_payload(decode=True),
            "x_upsert": request.headers.get("x-upsert"),
            "authorization": request.headers.get("authorization"),
        }
        return self.server.reply(json.dumps({"Key": key}).encode(), **{"Content-Type": "application/json"})


@pytest.fixture
def captured_logs(caplog: pytest.LogCaptureFixture):
    """Everything loguru and stdlib logging (httpx) emit during the test, as text."""
    messages: list[str] = []
    handler_id = logger.add(lambda message: messages.append(str(message)), level="DEBUG")
    caplog.set_level(logging.DEBUG)
    try:
        yield lambda: "\n".join(messages) + "\n" + caplog.text
    finally:
        logger.remove(handler_id)


def test_supabase_upload_sends_content_types_and_upsert_and_returns_public_urls(
    http_server, tmp_path: Path, captured_logs
) -> None:
    api = FakeStorageApi(http_server)
    video = _video(tmp_path / "task-9_output.mp4")
    storage = SupabaseStorage(http_server.url, SERVICE_KEY, "image_uploads")

    stored = storage.store(video, task_type="travel_stitch", task_id="task-9")

    video_key = "image_uploads/travel_stitch/task-9/task-9_output.mp4"
    thumb_key = "image_uploads/travel_stitch/task-9/task-9_output_thumb.jpg"
    assert set(api.uploads) == {video_key, thumb_key}
    assert api.uploads[video_key]["content_type"] == "video/mp4"
    assert api.uploads[video_key]["body"] == video.read_bytes()
    assert api.uploads[thumb_key]["content_type"] == "image/jpeg"
    assert api.uploads[thumb_key]["body"][:2] == b"\xff\xd8"  # JPEG magic
    assert all(upload["x_upsert"] == "true" for upload in api.uploads.values())
    assert all(upload["authorization"] == f"Bearer {SERVICE_KEY}" for upload in api.uploads.values())
    assert stored.location == f"{http_server.url}/storage/v1/object/public/{video_key}"
    assert stored.thumbnail == f"{http_server.url}/storage/v1/object/public/{thumb_key}"
    assert video.exists()
    assert SERVICE_KEY not in captured_logs()


def test_supabase_upload_retries_a_503(http_server, tmp_path: Path) -> None:
    api = FakeStorageApi(http_server)
    api.failures_before_success = 1
    image = tmp_path / "frame.png"
    Image.new("RGB", (4, 4)).save(image)

    stored = SupabaseStorage(http_server.url, SERVICE_KEY, "outputs").store(image, task_type="img", task_id="t1")

    assert stored.thumbnail is None
    assert api.uploads["outputs/img/t1/frame.png"]["content_type"] == "image/png"
    assert http_server.hits("POST", "/storage/v1/object/outputs/img/t1/frame.png") == 2


def test_supabase_errors_never_contain_the_key(http_server, tmp_path: Path, captured_logs) -> None:
    api = FakeStorageApi(http_server)
    # A misbehaving server that echoes the credential back in its error body.
    api.error_reply = http_server.reply(
        json.dumps({"statusCode": "403", "error": "Unauthorized", "message": f"bad key {SERVICE_KEY}"}).encode(), 403
    )
    image = tmp_path / "frame.png"
    Image.new("RGB", (4, 4)).save(image)

    with pytest.raises(StorageError) as caught:
        SupabaseStorage(http_server.url, SERVICE_KEY, "outputs").store(image, task_type="img", task_id="t1")

    assert "frame.png" in str(caught.value) and "Unauthorized" in str(caught.value)
    assert "[redacted]" in str(caught.value)
    assert SERVICE_KEY not in str(caught.value)
    assert SERVICE_KEY not in "".join(traceback.format_exception(caught.value))  # the storage3 error is not chained
    assert SERVICE_KEY not in captured_logs()
    assert http_server.hits("POST", "/storage/v1/object/outputs/img/t1/frame.png") == 1  # 403 is not retried
