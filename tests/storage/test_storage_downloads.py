"""Downloads against a real local HTTP server on 127.0.0.1 (no internet here), and LoRA fetching.

The Hugging Face tests point HF_ENDPOINT at the local server, which answers the Hub's resolve API (HEAD with
X-Repo-Commit / ETag / Content-Length, then GET), so `hf_hub_download` runs its real code path.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save as save_safetensors

from source.storage import (
    DownloadError,
    fetch_lora,
    fetch_to,
    is_valid_safetensors,
    lora_filename,
    parse_hub_url,
    redact_url,
)


def _lora_bytes(seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    return save_safetensors(
        {
            "blocks.0.attn.lora_down.weight": rng.standard_normal((4, 16)).astype(np.float32),
            "blocks.0.attn.lora_up.weight": rng.standard_normal((16, 4)).astype(np.float32),
        }
    )


# ----------------------------------------------------------------------------------------------- fetch_to


def test_local_paths_are_returned_as_is(tmp_path: Path) -> None:
    image = tmp_path / "key frame.png"
    image.write_bytes(b"png")
    assert fetch_to(str(image), tmp_path / "downloads") == image
    assert fetch_to(image.as_uri(), tmp_path / "downloads") == image
    assert not (tmp_path / "downloads").exists()
    with pytest.raises(DownloadError, match="no such local file"):
        fetch_to(str(tmp_path / "absent.png"), tmp_path)
    with pytest.raises(DownloadError, match="unsupported URL scheme 'ftp'"):
        fetch_to("ftp://example.org/a.png", tmp_path)


def test_http_download_lands_whole_under_the_url_file_name(http_server, tmp_path: Path) -> None:
    payload = bytes(range(256)) * 1000
    http_server.serve("GET", "/media/start%20image.png", http_server.reply(payload))

    path = fetch_to(f"{http_server.url}/media/start%20image.png?token=abc", tmp_path / "in")

    assert path == tmp_path / "in" / "start image.png"
    assert path.read_bytes() == payload
    assert sorted(child.name for child in path.parent.iterdir()) == ["start image.png"]
    renamed = fetch_to(f"{http_server.url}/media/start%20image.png", tmp_path / "in", filename="../seg00_start.png")
    assert renamed == tmp_path / "in" / "seg00_start.png"


def test_404_is_not_retried_and_names_the_url_without_credentials(http_server, tmp_path: Path) -> None:
    port_url = http_server.url.removeprefix("http://")
    secret_url = f"http://someone:hunter2@{port_url}/missing.png?token=SECRET-TOKEN"

    with pytest.raises(DownloadError) as caught:
        fetch_to(secret_url, tmp_path)

    message = str(caught.value)
    assert f"{http_server.url}/missing.png" in message and "HTTP 404" in message
    assert "SECRET-TOKEN" not in message and "hunter2" not in message
    assert caught.value.__cause__ is None  # no chained httpx error carrying the full URL
    assert caught.value.transient is False
    assert http_server.hits("GET", "/missing.png") == 1
    assert list(tmp_path.iterdir()) == []


def test_503_is_retried_until_the_file_arrives(http_server, tmp_path: Path) -> None:
    http_server.serve(
        "GET",
        "/flaky.mp4",
        http_server.reply(b"busy", 503),
        http_server.reply(b"busy", 503),
        http_server.reply(b"video-bytes"),
    )

    path = fetch_to(f"{http_server.url}/flaky.mp4", tmp_path)

    assert path.read_bytes() == b"video-bytes"
    assert http_server.hits("GET", "/flaky.mp4") == 3


def test_persistent_503_gives_up_after_the_attempts(http_server, tmp_path: Path) -> None:
    http_server.serve("GET", "/down.mp4", http_server.reply(b"busy", 503))
    with pytest.raises(DownloadError, match=r"/down.mp4: HTTP 503") as caught:
        fetch_to(f"{http_server.url}/down.mp4", tmp_path, attempts=2)
    assert caught.value.transient is True
    assert http_server.hits("GET", "/down.mp4") == 2
    assert list(tmp_path.iterdir()) == []


def test_a_stalled_server_times_out(http_server, tmp_path: Path) -> None:
    http_server.serve("GET", "/stalled.mp4", http_server.reply(hang=True))
    started = time.monotonic()
    with pytest.raises(DownloadError, match=r"stalled.mp4: timed out") as caught:
        fetch_to(f"{http_server.url}/stalled.mp4", tmp_path, timeout=0.3, attempts=1)
    assert caught.value.transient is True
    assert time.monotonic() - started < 5
    assert list(tmp_path.iterdir()) == []


def test_redirects_are_followed(http_server, tmp_path: Path) -> None:
    http_server.serve("GET", "/old.png", http_server.reply(b"", 302, Location="/new.png"))
    http_server.serve("GET", "/new.png", http_server.reply(b"moved"))
    assert fetch_to(f"{http_server.url}/old.png", tmp_path).read_bytes() == b"moved"


def test_redact_url() -> None:
    assert redact_url("https://u:p@host.io:8443/a/b.mp4?sig=1#x") == "https://host.io:8443/a/b.mp4"
    assert redact_url("/local/path?odd") == "/local/path"


# ----------------------------------------------------------------------------------------------- LoRAs


def test_safetensors_check_accepts_whole_files_and_rejects_partial_ones(tmp_path: Path) -> None:
    whole = tmp_path / "whole.safetensors"
    whole.write_bytes(_lora_bytes())
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(_lora_bytes()[:-10])
    html = tmp_path / "error_page.safetensors"
    html.write_bytes(b"<html>rate limited</html>")
    assert is_valid_safetensors(whole)
    assert not is_valid_safetensors(truncated)
    assert not is_valid_safetensors(html)
    assert not is_valid_safetensors(tmp_path / "absent.safetensors")


def test_lora_file_names_prefix_generic_names_with_their_folder() -> None:
    assert lora_filename("https://x.org/loras/My%20Style/high_noise_model.safetensors") == (
        "My_Style_high_noise_model.safetensors"
    )
    assert lora_filename("https://huggingface.co/o/wan-lora/resolve/main/v2/low_noise_model.safetensors") == (
        "v2_low_noise_model.safetensors"
    )
    assert lora_filename("https://huggingface.co/o/wan-lora/resolve/main/high_noise_model.safetensors") == (
        "wan-lora_high_noise_model.safetensors"
    )
    assert lora_filename("https://x.org/a/detail%20boost.safetensors?download=1") == "detail boost.safetensors"


def test_hub_urls_are_parsed_blob_or_resolve() -> None:
    parsed = parse_hub_url("https://huggingface.co/owner/repo/blob/main/sub%20dir/file.safetensors")
    assert parsed is not None
    assert (parsed.repo_id, parsed.revision, parsed.subfolder, parsed.filename, parsed.repo_type) == (
        "owner/repo",
        "main",
        "sub dir",
        "file.safetensors",
        None,
    )
    dataset = parse_hub_url("https://huggingface.co/datasets/o/d/resolve/v1/x.safetensors")
    assert dataset is not None and dataset.repo_type == "dataset" and dataset.subfolder is None
    assert parse_hub_url("https://example.org/owner/repo/resolve/main/x.safetensors") is None
    assert parse_hub_url("https://huggingface.co/owner/repo") is None


def test_generic_lora_url_is_downloaded_checked_and_then_reused(http_server, tmp_path: Path) -> None:
    lora = _lora_bytes(1)
    path_on_server = "/files/Fancy%20Motion/high_noise_model.safetensors"
    http_server.serve("GET", path_on_server, http_server.reply(lora))
    lora_dir = tmp_path / "loras"

    first = fetch_lora(f"{http_server.url}{path_on_server}", lora_dir)
    second = fetch_lora(f"{http_server.url}{path_on_server}", lora_dir)

    assert first == second == lora_dir / "Fancy_Motion_high_noise_model.safetensors"
    assert first.read_bytes() == lora
    assert http_server.hits("GET", path_on_server) == 1  # the valid file was reused


def test_a_partial_lora_on_disk_is_downloaded_again(http_server, tmp_path: Path) -> None:
    lora = _lora_bytes(2)
    http_server.serve("GET", "/style.safetensors", http_server.reply(lora))
    lora_dir = tmp_path / "loras"
    lora_dir.mkdir()
    (lora_dir / "style.safetensors").write_bytes(lora[: len(lora) // 2])

    path = fetch_lora(f"{http_server.url}/style.safetensors", lora_dir)

    assert path.read_bytes() == lora
    assert http_server.hits("GET", "/style.safetensors") == 1


def test_a_download_that_is_not_safetensors_is_rejected_and_removed(http_server, tmp_path: Path) -> None:
    http_server.serve("GET", "/broken.safetensors", http_server.reply(b"<html>Access denied</html>"))
    with pytest.raises(DownloadError, match="not a complete safetensors file"):
        fetch_lora(f"{http_server.url}/broken.safetensors", tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_local_lora_paths_and_names_in_the_lora_dir(tmp_path: Path) -> None:
    (tmp_path / "mine.safetensors").write_bytes(_lora_bytes(3))
    assert fetch_lora("mine.safetensors", tmp_path) == tmp_path / "mine.safetensors"
    assert fetch_lora(str(tmp_path / "mine.safetensors"), tmp_path / "elsewhere") == tmp_path / "mine.safetensors"
    (tmp_path / "bad.safetensors").write_bytes(b"nope")
    with pytest.raises(DownloadError, match="not a complete safetensors file"):
        fetch_lora(str(tmp_path / "bad.safetensors"), tmp_path)
    with pytest.raises(DownloadError, match="no such local file"):
        fetch_lora("absent.safetensors", tmp_path)


def _serve_hub_file(server, repo_path: str, body: bytes) -> None:
    commit = "0123456789abcdef0123456789abcdef01234567"
    server.serve(
        "GET",
        repo_path,
        server.reply(
            body, **{"X-Repo-Commit": commit, "ETag": '"e0e0e0e0"', "Content-Type": "application/octet-stream"}
        ),
    )


def test_hugging_face_blob_url_downloads_through_the_hub_client(fake_hub, tmp_path: Path) -> None:
    lora = _lora_bytes(4)
    _serve_hub_file(fake_hub, "/someone/wan-loras/resolve/main/motion%20v2/high_noise_model.safetensors", lora)
    lora_dir = tmp_path / "loras"

    path = fetch_lora(
        "https://huggingface.co/someone/wan-loras/blob/main/motion%20v2/high_noise_model.safetensors", lora_dir
    )

    assert path == lora_dir / "motion_v2_high_noise_model.safetensors"
    assert path.read_bytes() == lora
    assert [child.name for child in lora_dir.iterdir()] == [path.name]  # no staging folder left behind
    gets = [request for request in fake_hub.requests if request.method == "GET"]
    assert gets and all("/resolve/main/" in request.path for request in gets)


def test_hugging_face_missing_file_is_a_permanent_download_error_naming_the_url(fake_hub, tmp_path: Path) -> None:
    url = "https://huggingface.co/someone/wan-loras/resolve/main/absent.safetensors"
    # The Hub marks a missing file with this header (a bare 404 reads to the client as "Hub unreachable").
    fake_hub.serve(
        "GET",
        "/someone/wan-loras/resolve/main/absent.safetensors",
        fake_hub.reply(b"Entry not found", 404, **{"X-Error-Code": "EntryNotFound"}),
    )
    with pytest.raises(DownloadError, match=f"cannot download {url}: HTTP 404") as caught:
        fetch_lora(url, tmp_path / "loras")
    assert caught.value.transient is False
    assert not any((tmp_path / "loras").iterdir())
