"""source/storage/lora_store.py: LoRA files keyed by URL, checked by content, Hub files through the same caps.

Plain URLs come from a real server on 127.0.0.1 (allowed explicitly with `LOOPBACK`); Hub URLs from `fake_hub`, a
local server that speaks the Hub API and that HF_ENDPOINT points at (so the store trusts it, as it would trust an
operator's mirror). huggingface_hub builds the URL and headers; nothing is mocked.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from local_http import LocalServer
from loguru import logger
from safetensors.numpy import save as save_safetensors

from source.storage import DownloadError, DownloadLimits, LoraStore, NetworkPolicy, is_valid_safetensors

LOOPBACK = NetworkPolicy(allow_private=True)  # the test servers live on 127.0.0.1
LIMITS = DownloadLimits(max_bytes=1 << 20, total_seconds=5, stall_seconds=1, connect_seconds=1, attempts=2)
HUB_TOKEN = "hf_TESTTOKEN_that_must_never_be_shown"


def _lora_bytes(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    return save_safetensors(
        {
            "blocks.0.attn.lora_down.weight": rng.standard_normal((4, 16)).astype(np.float32),
            "blocks.0.attn.lora_up.weight": rng.standard_normal((16, 4)).astype(np.float32),
        }
    )


def _store(root: Path, *, network: NetworkPolicy = LOOPBACK, **kwargs) -> LoraStore:
    return LoraStore(root, limits=LIMITS, network=network, **kwargs)


def _leftovers(root: Path) -> list[str]:
    """Files that are neither a LoRA under its final name nor a manifest (staged downloads, .part files)."""
    return sorted(
        path.name
        for path in root.rglob("*")
        if path.is_file() and (path.name.startswith(".") or path.name != "lora.json" and path.suffix != ".safetensors")
    )


# ----------------------------------------------------------------------------------------------- plain URLs


def test_two_urls_with_the_same_file_name_get_their_own_files(http_server, tmp_path: Path) -> None:
    first, second = _lora_bytes(1), _lora_bytes(2)
    http_server.serve("GET", "/a/style.safetensors", http_server.reply(first))
    http_server.serve("GET", "/b/style.safetensors", http_server.reply(second))
    store = _store(tmp_path / "loras")

    path_a = store.fetch(f"{http_server.url}/a/style.safetensors")
    path_b = store.fetch(f"{http_server.url}/b/style.safetensors")

    assert path_a != path_b and path_a.name == path_b.name == "style.safetensors"
    assert path_a.read_bytes() == first and path_b.read_bytes() == second
    assert store.fetch(f"{http_server.url}/a/style.safetensors").read_bytes() == first


def test_a_url_is_downloaded_once_then_reused_and_its_manifest_keeps_no_secret(http_server, tmp_path: Path) -> None:
    lora = _lora_bytes(3)
    http_server.serve("GET", "/files/motion.safetensors", http_server.reply(lora))
    port_url = http_server.url.removeprefix("http://")
    url = f"http://user:hunter2@{port_url}/files/motion.safetensors?token=SIGNED-SECRET#frag"
    store = _store(tmp_path / "loras")

    first = store.fetch(url)
    second = store.fetch(url)

    assert first == second and first.read_bytes() == lora
    assert http_server.hits("GET", "/files/motion.safetensors") == 1
    assert first.parent.parent == tmp_path / "loras" / "by-url" and len(first.parent.name) == 24
    manifest_text = (first.parent / "lora.json").read_text()
    manifest = json.loads(manifest_text)
    assert manifest["url"] == f"{http_server.url}/files/motion.safetensors"
    assert manifest["size"] == len(lora) and manifest["sha256"] == hashlib.sha256(lora).hexdigest()
    assert "downloaded_at" in manifest
    assert "SIGNED-SECRET" not in manifest_text and "hunter2" not in manifest_text
    assert _leftovers(tmp_path / "loras") == []


def test_a_file_modified_on_disk_is_detected_and_downloaded_again(http_server, tmp_path: Path) -> None:
    lora = _lora_bytes(4)
    http_server.serve("GET", "/style.safetensors", http_server.reply(lora))
    store = _store(tmp_path / "loras")
    path = store.fetch(f"{http_server.url}/style.safetensors")

    # Same size and still a valid safetensors file: only the hash can tell.
    tampered = lora[:-1] + bytes([lora[-1] ^ 0xFF])
    path.write_bytes(tampered)
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert is_valid_safetensors(path)

    assert store.fetch(f"{http_server.url}/style.safetensors").read_bytes() == lora
    assert http_server.hits("GET", "/style.safetensors") == 2


def test_a_touched_but_unchanged_file_is_reused_after_one_rehash(http_server, tmp_path: Path) -> None:
    http_server.serve("GET", "/style.safetensors", http_server.reply(_lora_bytes(5)))
    store = _store(tmp_path / "loras")
    path = store.fetch(f"{http_server.url}/style.safetensors")
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 1_000_000_000))

    store.fetch(f"{http_server.url}/style.safetensors")

    assert http_server.hits("GET", "/style.safetensors") == 1
    assert json.loads((path.parent / "lora.json").read_text())["mtime_ns"] == path.stat().st_mtime_ns


def test_a_truncated_file_on_disk_is_downloaded_again(http_server, tmp_path: Path) -> None:
    lora = _lora_bytes(6)
    http_server.serve("GET", "/style.safetensors", http_server.reply(lora))
    store = _store(tmp_path / "loras")
    path = store.fetch(f"{http_server.url}/style.safetensors")
    path.write_bytes(lora[: len(lora) // 2])

    assert store.fetch(f"{http_server.url}/style.safetensors").read_bytes() == lora
    assert http_server.hits("GET", "/style.safetensors") == 2


def test_a_download_that_is_not_safetensors_is_rejected_and_removed(http_server, tmp_path: Path) -> None:
    http_server.serve("GET", "/broken.safetensors", http_server.reply(b"<html>Access denied</html>"))
    with pytest.raises(DownloadError, match="not a complete safetensors file") as caught:
        _store(tmp_path / "loras").fetch(f"{http_server.url}/broken.safetensors")
    assert caught.value.transient is False
    assert [path for path in (tmp_path / "loras").rglob("*") if path.is_file()] == []


def test_a_url_without_a_safetensors_name_still_lands_as_one(http_server, tmp_path: Path) -> None:
    http_server.serve("GET", "/api/download/models/12345", http_server.reply(_lora_bytes(7)))
    path = _store(tmp_path / "loras").fetch(f"{http_server.url}/api/download/models/12345?type=Model")
    assert path.name == "12345.safetensors" and is_valid_safetensors(path)


def test_loopback_urls_are_refused_unless_allowed(http_server, tmp_path: Path) -> None:
    http_server.serve("GET", "/style.safetensors", http_server.reply(_lora_bytes(8)))
    with pytest.raises(DownloadError, match="--allow-private-urls"):
        _store(tmp_path / "loras", network=NetworkPolicy()).fetch(f"{http_server.url}/style.safetensors")
    assert http_server.requests == []


def test_two_workers_fetching_one_url_at_once_both_get_the_whole_file(http_server, tmp_path: Path) -> None:
    lora = _lora_bytes(9)
    pieces = [lora[index : index + 256] for index in range(0, len(lora), 256)]

    def slowly():
        for piece in pieces:
            http_server.release.wait(0.005)
            yield piece

    http_server.serve("GET", "/shared.safetensors", http_server.streamed(slowly))
    url = f"{http_server.url}/shared.safetensors"

    with ThreadPoolExecutor(max_workers=4) as pool:
        # One store per "worker": nothing shared in memory, only the folder.
        paths = list(pool.map(lambda _: _store(tmp_path / "loras").fetch(url), range(4)))

    assert len(set(paths)) == 1 and paths[0].read_bytes() == lora
    assert _leftovers(tmp_path / "loras") == []
    manifest = json.loads((paths[0].parent / "lora.json").read_text())
    assert manifest["sha256"] == hashlib.sha256(lora).hexdigest()


# ----------------------------------------------------------------------------------------------- local names


def test_bare_names_are_looked_up_in_the_lora_folder(tmp_path: Path) -> None:
    root = tmp_path / "loras"
    root.mkdir()
    (root / "mine.safetensors").write_bytes(_lora_bytes(10))
    (root / "bad.safetensors").write_bytes(b"nope")
    store = _store(root)

    assert store.fetch("mine.safetensors") == (root / "mine.safetensors").resolve()
    with pytest.raises(DownloadError, match="not a complete safetensors file"):
        store.fetch("bad.safetensors")
    with pytest.raises(DownloadError, match="no such file in the LoRA folder"):
        store.fetch("absent.safetensors")
    with pytest.raises(DownloadError, match="not a file name"):
        store.fetch("..")


def test_local_paths_only_inside_the_input_roots_or_the_lora_folder(tmp_path: Path) -> None:
    root, inputs = tmp_path / "loras", tmp_path / "inputs"
    root.mkdir()
    inputs.mkdir()
    (inputs / "given.safetensors").write_bytes(_lora_bytes(11))
    (tmp_path / "elsewhere.safetensors").write_bytes(_lora_bytes(12))
    store = _store(root, input_roots=[inputs])

    assert store.fetch(str(inputs / "given.safetensors")) == (inputs / "given.safetensors").resolve()
    assert store.fetch((inputs / "given.safetensors").as_uri()) == (inputs / "given.safetensors").resolve()
    messages = []
    for source in (str(tmp_path / "elsewhere.safetensors"), str(tmp_path / "missing.safetensors")):
        with pytest.raises(DownloadError, match="only read inside the allowed input roots") as caught:
            store.fetch(source)
        messages.append(str(caught.value).replace(source, "<source>"))
    assert messages[0] == messages[1]  # no hint whether the file exists
    with pytest.raises(DownloadError, match="only read inside"):
        store.fetch(str(root / ".." / "elsewhere.safetensors"))


# ----------------------------------------------------------------------------------------------- Hugging Face


def _publish(fake_hub, tmp_path: Path, files: dict[str, bytes]) -> None:
    folder = tmp_path / "published"
    for name, content in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(content)
    fake_hub.add_repo("someone/wan-loras", folder)


def test_hub_blob_and_resolve_urls_download_once_with_the_etag_checked(fake_hub, tmp_path: Path) -> None:
    lora = _lora_bytes(13)
    _publish(fake_hub, tmp_path, {"motion v2/high_noise_model.safetensors": lora})
    store = LoraStore(tmp_path / "loras", limits=LIMITS, network=NetworkPolicy())  # HF_ENDPOINT's host is trusted
    base = "https://huggingface.co/someone/wan-loras"

    from_blob = store.fetch(f"{base}/blob/main/motion%20v2/high_noise_model.safetensors")
    from_resolve = store.fetch(f"{base}/resolve/main/motion%20v2/high_noise_model.safetensors")

    assert from_blob == from_resolve and from_blob.read_bytes() == lora
    assert from_blob.name == "high_noise_model.safetensors"
    assert fake_hub.file_requests("someone/wan-loras", "HEAD") == ["motion v2/high_noise_model.safetensors"]
    assert fake_hub.file_requests("someone/wan-loras", "GET") == ["motion v2/high_noise_model.safetensors"]
    manifest = json.loads((from_blob.parent / "lora.json").read_text())
    assert manifest["sha256"] == hashlib.sha256(lora).hexdigest()


def test_a_hub_file_whose_content_does_not_match_its_etag_is_refused(fake_hub, tmp_path: Path) -> None:
    lora = _lora_bytes(14)
    path = "/someone/wan-loras/resolve/main/style.safetensors"
    fake_hub.serve("GET", path, fake_hub.reply(lora, **{"ETag": f'"{"ab" * 32}"', "X-Repo-Commit": "c" * 40}))
    store = LoraStore(tmp_path / "loras", limits=LIMITS, network=NetworkPolicy())

    with pytest.raises(DownloadError, match="is not the expected abababababab") as caught:
        store.fetch("https://huggingface.co/someone/wan-loras/resolve/main/style.safetensors")

    assert caught.value.transient is False
    assert [path for path in (tmp_path / "loras").rglob("*") if path.is_file()] == []


def test_a_missing_hub_file_is_permanent_and_not_fetched(fake_hub, tmp_path: Path) -> None:
    _publish(fake_hub, tmp_path, {"present.safetensors": _lora_bytes(15)})
    url = "https://huggingface.co/someone/wan-loras/resolve/main/absent.safetensors"

    with pytest.raises(DownloadError, match=r"HTTP 404 Not Found \(EntryNotFound\)") as caught:
        LoraStore(tmp_path / "loras", limits=LIMITS, network=NetworkPolicy()).fetch(url)

    assert caught.value.transient is False and caught.value.status == 404
    assert fake_hub.file_requests("someone/wan-loras", "HEAD") == ["absent.safetensors"]
    assert fake_hub.file_requests("someone/wan-loras", "GET") == []


def test_a_hub_file_over_the_size_cap_is_refused_before_downloading(fake_hub, tmp_path: Path) -> None:
    # An LFS file: the Hub's 302 to its CDN says how big the file is; neither the CDN nor a GET is needed to refuse.
    cdn = LocalServer()
    try:
        fake_hub.serve(
            "GET",
            "/someone/wan-loras/resolve/main/big.safetensors",
            fake_hub.redirect(f"{cdn.url}/blobs/big", **{"X-Linked-Size": str(10**10)}),
        )
        with pytest.raises(DownloadError, match="10000000000 bytes, over the limit"):
            LoraStore(tmp_path / "loras", limits=LIMITS, network=NetworkPolicy()).fetch(
                "https://huggingface.co/someone/wan-loras/resolve/main/big.safetensors"
            )
        assert fake_hub.file_requests("someone/wan-loras", "GET") == [] and cdn.requests == []
    finally:
        cdn.stop()


def test_the_size_of_a_renamed_repo_file_is_read_after_the_hubs_own_redirect(fake_hub, tmp_path: Path) -> None:
    fake_hub.serve(
        "GET",
        "/someone/old-name/resolve/main/big.safetensors",
        fake_hub.redirect("/someone/new-name/resolve/main/big.safetensors", 307),
    )
    fake_hub.serve(
        "GET", "/someone/new-name/resolve/main/big.safetensors", fake_hub.reply(**{"Content-Length": str(10**10)})
    )

    with pytest.raises(DownloadError, match="10000000000 bytes, over the limit"):
        LoraStore(tmp_path / "loras", limits=LIMITS, network=NetworkPolicy()).fetch(
            "https://huggingface.co/someone/old-name/resolve/main/big.safetensors"
        )

    assert [request.method for request in fake_hub.requests] == ["HEAD", "HEAD"]


def test_the_hub_token_goes_to_the_hub_and_never_to_its_cdn(
    fake_hub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_TOKEN", HUB_TOKEN)
    lora = _lora_bytes(16)
    cdn = LocalServer()
    try:
        cdn.serve("GET", "/blobs/abc", cdn.reply(lora))
        linked = {"X-Linked-Size": str(len(lora)), "X-Linked-Etag": f'"{hashlib.sha256(lora).hexdigest()}"'}
        fake_hub.serve(
            "GET",
            "/someone/wan-loras/resolve/main/style.safetensors",
            fake_hub.redirect(f"{cdn.url}/blobs/abc?X-Amz-Signature=sig", **linked),
        )
        lines: list[str] = []
        handler_id = logger.add(lambda message: lines.append(str(message)), level="DEBUG")
        try:
            path = LoraStore(tmp_path / "loras", limits=LIMITS, network=NetworkPolicy(allow_private=True)).fetch(
                "https://huggingface.co/someone/wan-loras/blob/main/style.safetensors"
            )
        finally:
            logger.remove(handler_id)

        assert path.read_bytes() == lora
        hub_requests = [request for request in fake_hub.requests if "/resolve/" in request.path]
        assert [request.method for request in hub_requests] == ["HEAD", "GET"]
        assert all(request.headers["authorization"] == f"Bearer {HUB_TOKEN}" for request in hub_requests)
        assert all("hf_hub/" in request.headers["user-agent"] for request in hub_requests)
        assert [request.method for request in cdn.requests] == ["GET"]  # a signed CDN URL may be valid for GET only
        assert "authorization" not in cdn.requests[0].headers
        assert HUB_TOKEN not in "\n".join(lines) and "X-Amz-Signature" not in "\n".join(lines)
    finally:
        cdn.stop()


@pytest.mark.parametrize(("token", "hint"), [(None, "set HF_TOKEN"), (HUB_TOKEN, "the token in HF_TOKEN cannot")])
def test_a_refused_hub_file_says_what_to_do_about_the_token(
    fake_hub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, token: str | None, hint: str
) -> None:
    if token is not None:
        monkeypatch.setenv("HF_TOKEN", token)
    fake_hub.serve(
        "GET",
        "/someone/gated/resolve/main/style.safetensors",
        fake_hub.reply(b"Access restricted", 401, **{"X-Error-Code": "GatedRepo"}),
    )

    with pytest.raises(DownloadError, match=hint) as caught:
        LoraStore(tmp_path / "loras", limits=LIMITS, network=NetworkPolicy()).fetch(
            "https://huggingface.co/someone/gated/resolve/main/style.safetensors"
        )

    assert caught.value.transient is False and HUB_TOKEN not in str(caught.value)
