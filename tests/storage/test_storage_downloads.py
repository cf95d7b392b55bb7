"""source/storage/paths.py and downloads.py: paths confined to their roots, and every download bounded.

Downloads run against real servers on 127.0.0.1 (no internet here), so each test allows loopback explicitly
(`LOOPBACK`); nothing in httpx is mocked. Small limits keep the slow-server cases fast.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from loguru import logger
from safetensors.numpy import save as save_safetensors

from source.storage import (
    DownloadError,
    DownloadLimits,
    NetworkPolicy,
    PathOutsideRoot,
    confine,
    download,
    fetch_input,
    is_valid_safetensors,
    parse_hub_url,
    redact_url,
    safe_component,
    safe_file_name,
    within_roots,
)

LOOPBACK = NetworkPolicy(allow_private=True)  # the test servers live on 127.0.0.1
LIMITS = DownloadLimits(max_bytes=1 << 20, total_seconds=5, stall_seconds=1, connect_seconds=1, attempts=3)
_COMPONENT_CHARACTERS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-")


def _files_under(folder: Path) -> list[str]:
    return sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file())


@pytest.fixture
def log_lines() -> Iterator[list[str]]:
    lines: list[str] = []
    handler_id = logger.add(lambda message: lines.append(str(message)), level="DEBUG")
    try:
        yield lines
    finally:
        logger.remove(handler_id)


# ----------------------------------------------------------------------------------------------- paths


def test_confine_keeps_paths_inside_their_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    assert confine(root, "sub", "a.png") == root.resolve() / "sub" / "a.png"
    assert confine(root, "sub/../b.png") == root.resolve() / "b.png"
    for escaping in ("../../etc/x", "sub/../../x", "/etc/passwd", Path("/tmp")):
        with pytest.raises(PathOutsideRoot) as caught:
            confine(root, escaping)
        assert str(escaping) in str(caught.value) and str(tmp_path) not in str(caught.value)
    with pytest.raises(PathOutsideRoot):
        confine(root, "a\x00b")


def test_confine_follows_symlinks_out_of_the_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "secret.txt").write_text("secret")
    (root / "innocent.png").symlink_to(tmp_path / "secret.txt")
    (root / "door").symlink_to(tmp_path)
    (root / "fine.png").write_text("png")
    (root / "alias.png").symlink_to(root / "fine.png")

    for name in ("innocent.png", "door/secret.txt"):
        with pytest.raises(PathOutsideRoot):
            confine(root, name)
    assert confine(root, "alias.png") == (root / "fine.png").resolve()


def test_within_roots(tmp_path: Path) -> None:
    inside, outside = tmp_path / "inside", tmp_path / "outside"
    inside.mkdir()
    outside.mkdir()
    (inside / "link.png").symlink_to(outside / "x.png")
    assert within_roots(inside / "a.png", [outside, inside]) == (inside / "a.png").resolve()
    assert within_roots(inside / ".." / "outside" / "a.png", [inside]) is None
    assert within_roots(inside / "link.png", [inside]) is None
    assert within_roots(Path("relative.png"), [Path.cwd()]) is None  # no meaning without a working folder
    assert within_roots(inside / "a.png", []) is None


@pytest.mark.parametrize(
    ("text", "kept"),
    [("seg00_start.png", True), ("3f2a9c1e-5b6d-4e7f-8a9b-0c1d2e3f4a5b", True), ("a" * 80, True)],
)
def test_safe_component_keeps_what_is_already_safe(text: str, kept: bool) -> None:
    assert (safe_component(text) == text) is kept


@pytest.mark.parametrize(
    "text", ["", ".", "..", "../../etc/x", "/abs/path", ".hidden", "-rf", "naïve café.png", "日本語", "a" * 10_000]
)
def test_safe_component_alters_the_rest_into_one_bounded_component(text: str) -> None:
    component = safe_component(text)
    assert component not in ("", ".", "..") and not component.startswith((".", "-"))
    assert set(component) <= _COMPONENT_CHARACTERS and len(component) <= 80
    assert component.endswith("-" + hashlib.sha256(text.encode()).hexdigest()[:10])


def test_an_altered_component_cannot_be_forged_by_a_text_that_looks_like_it() -> None:
    altered = safe_component("a b")
    assert safe_component(altered) != altered  # else "a b" and the literal text would share a folder


@given(st.text(max_size=300), st.text(max_size=300), st.integers(min_value=22, max_value=120))
def test_safe_component_is_always_one_valid_component_and_never_merges_two_texts(
    first: str, second: str, max_length: int
) -> None:
    for text in (first, second):
        component = safe_component(text, max_length=max_length)
        assert component not in ("", ".", "..") and not component.startswith(".")
        assert set(component) <= _COMPONENT_CHARACTERS and len(component) <= max_length + 11
    if first != second:
        assert safe_component(first, max_length=max_length) != safe_component(second, max_length=max_length)


def test_safe_file_name_keeps_a_short_extension() -> None:
    assert safe_file_name("start.png") == "start.png"
    assert safe_file_name("start image.png").endswith(".png") and " " not in safe_file_name("start image.png")
    assert safe_file_name(".png") == "download.png"
    assert safe_file_name("") == "download"
    long_name = safe_file_name("x" * 5000 + ".safetensors")
    assert long_name.endswith(".safetensors") and len(long_name) <= 80


# ----------------------------------------------------------------------------------------------- downloads


def test_a_url_downloads_whole_into_its_own_folder_under_a_safe_name(http_server, tmp_path: Path) -> None:
    payload = bytes(range(256)) * 1000
    http_server.serve("GET", "/media/start%20image.png", http_server.reply(payload))
    url = f"{http_server.url}/media/start%20image.png?token=abc"

    path = fetch_input(url, tmp_path / "in", roots=[], limits=LIMITS, network=LOOPBACK)

    assert path.read_bytes() == payload
    assert path.parent.parent == tmp_path / "in" and path.suffix == ".png" and path.name.startswith("start_image")
    assert _files_under(tmp_path / "in") == [f"{path.parent.name}/{path.name}"]  # no .part left
    assert http_server.requests[0].headers["accept-encoding"] == "identity"


def test_two_urls_ending_in_the_same_name_do_not_overwrite_each_other(http_server, tmp_path: Path) -> None:
    http_server.serve("GET", "/a/image.png", http_server.reply(b"first"))
    http_server.serve("GET", "/b/image.png", http_server.reply(b"second"))
    first = fetch_input(f"{http_server.url}/a/image.png", tmp_path, roots=[], limits=LIMITS, network=LOOPBACK)
    second = fetch_input(f"{http_server.url}/b/image.png", tmp_path, roots=[], limits=LIMITS, network=LOOPBACK)
    assert (first.read_bytes(), second.read_bytes()) == (b"first", b"second")


def test_a_name_too_long_for_the_filesystem_downloads_under_a_bounded_name(http_server, tmp_path: Path) -> None:
    segment = "x" * 5000 + ".png"
    http_server.serve("GET", f"/{segment}", http_server.reply(b"png"))

    path = fetch_input(f"{http_server.url}/{segment}", tmp_path, roots=[], limits=LIMITS, network=LOOPBACK)

    assert path.read_bytes() == b"png" and len(path.name) <= 80 and path.suffix == ".png"


def test_download_reports_size_and_sha256(http_server, tmp_path: Path) -> None:
    http_server.serve("GET", "/clip.mp4", http_server.reply(b"video-bytes"))
    downloaded = download(f"{http_server.url}/clip.mp4", tmp_path / "clip.mp4", limits=LIMITS, network=LOOPBACK)
    assert downloaded.path == tmp_path / "clip.mp4" and downloaded.size == len(b"video-bytes")
    assert downloaded.sha256 == hashlib.sha256(b"video-bytes").hexdigest()


def test_a_content_length_over_the_cap_is_refused_before_reading_the_body(http_server, tmp_path: Path) -> None:
    # The body never comes: reading it would stall for 5 s, so a fast failure proves the client did not read.
    http_server.serve(
        "GET", "/huge.mp4", http_server.streamed(http_server.drip(b"x", 30), **{"Content-Length": str(10**10)})
    )
    limits = DownloadLimits(max_bytes=1000, total_seconds=10, stall_seconds=5)
    started = time.monotonic()

    with pytest.raises(DownloadError, match=r"10000000000 bytes, over the limit of 1000 bytes") as caught:
        download(f"{http_server.url}/huge.mp4", tmp_path / "huge.mp4", limits=limits, network=LOOPBACK)

    assert time.monotonic() - started < 2
    assert caught.value.transient is False
    assert http_server.hits("GET", "/huge.mp4") == 1
    assert _files_under(tmp_path) == []


def test_an_endless_stream_stops_just_past_the_cap_and_leaves_nothing(http_server, tmp_path: Path) -> None:
    http_server.serve("GET", "/endless.mp4", http_server.streamed(http_server.endless(b"\0" * 16384)))
    limits = DownloadLimits(max_bytes=1 << 20, total_seconds=10, stall_seconds=1)
    started = time.monotonic()

    with pytest.raises(DownloadError, match=r"more than the limit of 1048576 bytes") as caught:
        download(f"{http_server.url}/endless.mp4", tmp_path / "endless.mp4", limits=limits, network=LOOPBACK)

    assert caught.value.transient is False
    assert http_server.hits("GET", "/endless.mp4") == 1  # a size cap is not retried
    assert time.monotonic() - started < 3
    assert _files_under(tmp_path) == []


def test_a_server_that_never_answers_is_given_up_after_the_stall_time_without_retrying(
    http_server, tmp_path: Path
) -> None:
    http_server.serve("GET", "/silent.mp4", http_server.reply(hang=True))
    limits = DownloadLimits(max_bytes=1000, total_seconds=10, stall_seconds=0.3, attempts=3)
    started = time.monotonic()

    with pytest.raises(DownloadError, match=r"silent.mp4: no reply for 0.3 s") as caught:
        download(f"{http_server.url}/silent.mp4", tmp_path / "silent.mp4", limits=limits, network=LOOPBACK)

    assert caught.value.transient is True
    assert time.monotonic() - started < 1.5
    assert http_server.hits("GET", "/silent.mp4") == 1
    assert _files_under(tmp_path) == []


def test_a_stall_in_the_middle_of_the_body_gives_up_after_the_stall_time(http_server, tmp_path: Path) -> None:
    http_server.serve("GET", "/stuck.mp4", http_server.streamed(http_server.drip(b"ab", 0.01, then_hang=True)))
    limits = DownloadLimits(max_bytes=1000, total_seconds=10, stall_seconds=0.3)

    with pytest.raises(DownloadError, match=r"stalled: no data for 0.3 s") as caught:
        download(f"{http_server.url}/stuck.mp4", tmp_path / "stuck.mp4", limits=limits, network=LOOPBACK)

    assert caught.value.transient is True and http_server.hits("GET", "/stuck.mp4") == 1
    assert _files_under(tmp_path) == []


def test_a_dripping_server_is_cut_off_at_the_total_deadline(http_server, tmp_path: Path) -> None:
    # One byte every 0.2 s never trips the 1 s stall timeout; only the deadline checked after every byte stops it.
    http_server.serve("GET", "/drip.mp4", http_server.streamed(http_server.drip(b"d" * 100, 0.2)))
    limits = DownloadLimits(max_bytes=1000, total_seconds=1, stall_seconds=1)
    started = time.monotonic()

    with pytest.raises(DownloadError, match=r"not finished within 1 s") as caught:
        download(f"{http_server.url}/drip.mp4", tmp_path / "drip.mp4", limits=limits, network=LOOPBACK)

    assert 0.9 < time.monotonic() - started < 2
    assert caught.value.transient is True
    assert _files_under(tmp_path) == []


def test_a_cancelled_download_stops_between_chunks(http_server, tmp_path: Path) -> None:
    http_server.serve("GET", "/long.mp4", http_server.streamed(http_server.drip(b"d" * 100, 0.05)))
    cancel = threading.Event()
    threading.Timer(0.3, cancel.set).start()
    started = time.monotonic()

    with pytest.raises(DownloadError, match=r"long.mp4: cancelled$") as caught:
        download(f"{http_server.url}/long.mp4", tmp_path / "long.mp4", limits=LIMITS, network=LOOPBACK, cancel=cancel)

    assert caught.value.transient is True
    assert time.monotonic() - started < 2  # the drip alone would take 5 s
    assert _files_under(tmp_path) == []


def test_a_sha256_mismatch_is_permanent_and_leaves_nothing(http_server, tmp_path: Path) -> None:
    http_server.serve("GET", "/lora.bin", http_server.reply(b"content"))
    url = f"{http_server.url}/lora.bin"
    good = hashlib.sha256(b"content").hexdigest()

    with pytest.raises(DownloadError, match="is not the expected") as caught:
        download(url, tmp_path / "lora.bin", limits=LIMITS, network=LOOPBACK, expected_sha256="0" * 64)
    assert caught.value.transient is False and _files_under(tmp_path) == []

    path = download(url, tmp_path / "lora.bin", limits=LIMITS, network=LOOPBACK, expected_sha256=good.upper()).path
    assert path.read_bytes() == b"content"


def test_redirects_are_followed_and_keep_credentials_on_the_same_origin(http_server, tmp_path: Path) -> None:
    http_server.serve("GET", "/old.png", http_server.redirect("/new.png", 301))
    http_server.serve("GET", "/new.png", http_server.reply(b"moved"))

    path = download(
        f"{http_server.url}/old.png",
        tmp_path / "a.png",
        limits=LIMITS,
        network=LOOPBACK,
        headers={"Authorization": "Bearer same-origin"},
    ).path

    assert path.read_bytes() == b"moved"
    assert http_server.requests[-1].headers["authorization"] == "Bearer same-origin"


def test_credentials_are_dropped_when_a_redirect_leaves_the_origin(http_server, tmp_path: Path) -> None:
    from local_http import LocalServer

    other = LocalServer()
    try:
        other.serve("GET", "/file.png", other.reply(b"from the cdn"))
        http_server.serve("GET", "/file.png", http_server.redirect(f"{other.url}/file.png"))
        headers = {"Authorization": "Bearer SECRET", "Cookie": "s=1", "X-Api-Key": "KEY", "X-Trace": "t-1"}

        path = download(
            f"{http_server.url}/file.png",
            tmp_path / "file.png",
            limits=LIMITS,
            network=LOOPBACK,
            headers=headers,
            sensitive_headers=["x-api-key"],
        ).path

        assert path.read_bytes() == b"from the cdn"
        assert http_server.requests[0].headers["authorization"] == "Bearer SECRET"
        received = other.requests[0].headers
        assert "authorization" not in received and "cookie" not in received and "x-api-key" not in received
        assert received["x-trace"] == "t-1"
    finally:
        other.stop()


def test_a_redirect_to_a_file_url_is_permanent(http_server, tmp_path: Path) -> None:
    http_server.serve("GET", "/sneaky.png", http_server.redirect("file:///etc/passwd"))
    with pytest.raises(DownloadError, match=r"redirected to file:///etc/passwd: only http and https") as caught:
        download(f"{http_server.url}/sneaky.png", tmp_path / "x.png", limits=LIMITS, network=LOOPBACK)
    assert caught.value.transient is False
    assert http_server.hits("GET", "/sneaky.png") == 1


def test_a_redirect_to_a_loopback_host_is_refused_even_from_a_trusted_host(http_server, tmp_path: Path) -> None:
    # 127.0.0.1 is trusted (say, the operator's own storage); where it redirects to is checked on its own.
    port = http_server.url.rsplit(":", 1)[1]
    http_server.serve("GET", "/hop.png", http_server.redirect(f"http://localhost:{port}/internal.png"))
    http_server.serve("GET", "/internal.png", http_server.reply(b"internal"))
    trusted = NetworkPolicy(trusted_hosts=frozenset({"127.0.0.1"}))

    with pytest.raises(DownloadError, match=r"localhost resolves to no public address.*--allow-private-urls") as caught:
        download(f"{http_server.url}/hop.png", tmp_path / "x.png", limits=LIMITS, network=trusted)

    assert caught.value.transient is False
    assert http_server.hits("GET", "/internal.png") == 0
    assert _files_under(tmp_path) == []


def test_a_loopback_url_is_refused_by_the_default_policy(http_server, tmp_path: Path) -> None:
    http_server.serve("GET", "/a.png", http_server.reply(b"png"))
    with pytest.raises(DownloadError, match=r"127.0.0.1 is not a public address") as caught:
        download(f"{http_server.url}/a.png", tmp_path / "a.png", limits=LIMITS, network=NetworkPolicy())
    assert caught.value.transient is False and http_server.requests == []


def test_too_many_redirects(http_server, tmp_path: Path) -> None:
    http_server.serve("GET", "/loop", http_server.redirect("/loop"))
    with pytest.raises(DownloadError, match="more than 5 redirects") as caught:
        download(f"{http_server.url}/loop", tmp_path / "x", limits=LIMITS, network=LOOPBACK)
    assert caught.value.transient is False
    assert http_server.hits("GET", "/loop") == 6


@pytest.mark.parametrize("url", ["ftp://example.org/a.png", "file:///etc/passwd", "gopher://127.0.0.1/x"])
def test_other_schemes_are_never_downloaded(url: str, tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="only http and https URLs are fetched") as caught:
        download(url, tmp_path / "x", limits=LIMITS, network=LOOPBACK)
    assert caught.value.transient is False


def test_a_compressed_reply_is_refused(http_server, tmp_path: Path) -> None:
    # identity was asked; a compressed body would slip past the byte cap (a small gzip can inflate enormously)
    http_server.serve("GET", "/a.bin", http_server.reply(b"\x1f\x8b...", **{"Content-Encoding": "gzip"}))
    with pytest.raises(DownloadError, match="gzip-encoded"):
        download(f"{http_server.url}/a.bin", tmp_path / "a.bin", limits=LIMITS, network=LOOPBACK)


def test_404_is_not_retried_and_names_the_url_without_credentials(http_server, tmp_path: Path, log_lines) -> None:
    port_url = http_server.url.removeprefix("http://")
    secret_url = f"http://someone:hunter2@{port_url}/missing.png?token=SECRET-TOKEN"

    with pytest.raises(DownloadError) as caught:
        download(secret_url, tmp_path / "missing.png", limits=LIMITS, network=LOOPBACK)

    message = str(caught.value)
    assert message == f"cannot download {http_server.url}/missing.png: HTTP 404 Not Found"
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
    assert caught.value.transient is False and caught.value.status == 404
    assert http_server.hits("GET", "/missing.png") == 1
    assert http_server.requests[0].headers["authorization"].startswith("Basic ")  # userinfo is used, not shown
    logged = "\n".join(log_lines)
    assert "SECRET-TOKEN" not in logged and "hunter2" not in logged and f"{http_server.url}/missing.png" in logged
    assert _files_under(tmp_path) == []


def test_503_is_retried_until_the_file_arrives(http_server, tmp_path: Path) -> None:
    http_server.serve("GET", "/flaky.mp4", http_server.reply(b"busy", 503), http_server.reply(b"video-bytes"))
    path = download(f"{http_server.url}/flaky.mp4", tmp_path / "flaky.mp4", limits=LIMITS, network=LOOPBACK).path
    assert path.read_bytes() == b"video-bytes"
    assert http_server.hits("GET", "/flaky.mp4") == 2


def test_persistent_503_gives_up_after_the_attempts(http_server, tmp_path: Path) -> None:
    http_server.serve("GET", "/down.mp4", http_server.reply(b"busy", 503))
    limits = DownloadLimits(max_bytes=1000, total_seconds=5, stall_seconds=1, attempts=2)
    with pytest.raises(DownloadError, match=r"/down.mp4: HTTP 503") as caught:
        download(f"{http_server.url}/down.mp4", tmp_path / "down.mp4", limits=limits, network=LOOPBACK)
    assert caught.value.transient is True
    assert http_server.hits("GET", "/down.mp4") == 2
    assert _files_under(tmp_path) == []


def test_retries_stop_at_the_total_deadline(http_server, tmp_path: Path) -> None:
    http_server.serve("GET", "/down.mp4", http_server.reply(b"busy", 503))
    limits = DownloadLimits(max_bytes=1000, total_seconds=0.3, stall_seconds=1, attempts=10)
    # No wait for a retry that could not start in time: the 503 itself is the answer, not the deadline.
    with pytest.raises(DownloadError, match="HTTP 503"):
        download(f"{http_server.url}/down.mp4", tmp_path / "down.mp4", limits=limits, network=LOOPBACK)
    assert http_server.hits("GET", "/down.mp4") == 1


def test_redact_url() -> None:
    assert redact_url("https://u:p@host.io:8443/a/b.mp4?sig=1#x") == "https://host.io:8443/a/b.mp4"
    assert redact_url("http://u:p@[::1]:80/a?b") == "http://[::1]:80/a"
    assert redact_url("/local/path?odd") == "/local/path"


# ----------------------------------------------------------------------------------------------- local inputs


def test_local_paths_inside_a_root_are_returned_resolved(tmp_path: Path) -> None:
    root = tmp_path / "inputs"
    (root / "frames").mkdir(parents=True)
    image = root / "frames" / "key frame.png"
    image.write_bytes(b"png")

    def fetch(source: str) -> Path:
        return fetch_input(source, tmp_path / "downloads", roots=[root], limits=LIMITS, network=LOOPBACK)

    assert fetch(str(image)) == image.resolve()
    assert fetch(image.as_uri()) == image.resolve()
    assert fetch("frames/key frame.png") == image.resolve()  # relative: looked up under the roots
    assert not (tmp_path / "downloads").exists()
    with pytest.raises(DownloadError, match=r"frames/absent.png: no such file$"):
        fetch(str(root / "frames" / "absent.png"))


def _outside_message(source: str, roots: list[Path]) -> str:
    with pytest.raises(DownloadError) as caught:
        fetch_input(source, Path("/nonexistent-downloads"), roots=roots, limits=LIMITS, network=LOOPBACK)
    assert caught.value.transient is False
    return str(caught.value)


def test_paths_outside_the_roots_get_one_message_whether_or_not_the_file_exists(tmp_path: Path) -> None:
    roots = [tmp_path / "inputs"]
    roots[0].mkdir()

    existing = _outside_message("/etc/passwd", roots)
    missing = _outside_message("/etc/definitely-missing", roots)

    assert existing == (
        "cannot fetch /etc/passwd: local paths are only read inside the allowed input roots "
        f"({roots[0]}); pass an http(s) URL, or start the worker with --input-root DIR"
    )
    assert missing == existing.replace("/etc/passwd", "/etc/definitely-missing")
    assert _outside_message("file:///etc/passwd", roots) == existing.replace("/etc/passwd", "file:///etc/passwd")
    assert "none are configured" in _outside_message("/etc/passwd", [])


def test_dot_dot_and_symlinks_cannot_leave_a_root(tmp_path: Path) -> None:
    root = tmp_path / "inputs"
    root.mkdir()
    (tmp_path / "secret.png").write_bytes(b"secret")
    (root / "innocent.png").symlink_to(tmp_path / "secret.png")

    for source in (
        str(root / ".." / "secret.png"),
        "../secret.png",
        str(root / "innocent.png"),
        "innocent.png",
        (root / "innocent.png").as_uri(),
        "file://other-host/etc/passwd",
    ):
        assert "only read inside the allowed input roots" in _outside_message(source, [root]), source


def test_other_schemes_and_empty_sources_are_refused(tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="unsupported URL scheme 'ftp'"):
        fetch_input("ftp://example.org/a.png", tmp_path, roots=[tmp_path], limits=LIMITS, network=LOOPBACK)
    with pytest.raises(DownloadError, match="empty"):
        fetch_input("  ", tmp_path, roots=[tmp_path], limits=LIMITS, network=LOOPBACK)


# ----------------------------------------------------------------------------------------------- safetensors, Hub


def _lora_bytes(seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    return save_safetensors({"blocks.0.attn.lora_down.weight": rng.standard_normal((4, 16)).astype(np.float32)})


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
    assert parse_hub_url("http://[::1") is None
