"""One LoRA store for the worker: files keyed by the URL they came from, and checked by content before reuse.

Keying by file name made two different LoRAs that share a name (`…/a/style.safetensors`, `…/b/style.safetensors`,
or the many `high_noise_model.safetensors`) share one file, so a task could silently run with another task's
weights. Here every URL gets its own folder, `by-url/<sha256 of the URL>[:24]/`, holding the file and a manifest
(`lora.json`: the URL without secrets, size, sha256, when it was downloaded); a file is reused only while it still
matches its manifest.

Hugging Face URLs are resolved with huggingface_hub (URL, token, user agent), but their bytes go through `download`
like every other fetch, so the size cap, the deadline and the address policy apply to them too.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import threading
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

import huggingface_hub
from huggingface_hub.utils import build_hf_headers
from loguru import logger
from pydantic import BaseModel, ConfigDict, ValidationError

from source.storage.downloads import (
    DownloadError,
    DownloadLimits,
    HubFile,
    _hub_endpoint,
    download,
    head,
    hub_endpoint_host,
    is_valid_safetensors,
    local_input,
    parse_hub_url,
    redact_url,
    url_file_name,
    url_key,
)
from source.storage.network import ALLOWED_SCHEMES, NetworkPolicy
from source.storage.paths import PathOutsideRoot, confine, safe_file_name

MANIFEST_NAME = "lora.json"
_BY_URL = "by-url"
_URL_KEY_LENGTH = 24
_SAFETENSORS = ".safetensors"
# For a file in Git LFS the Hub's ETag is the sha256 of the content (for other files, the git blob's sha1).
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


class _Manifest(BaseModel):
    """What was downloaded for one URL; parsed when read back, since the folder may have been tampered with."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    url: str  # redacted: no credentials, query string or fragment
    file: str
    size: int
    sha256: str
    mtime_ns: int  # the file's when this manifest was written: a change means "hash it again"
    downloaded_at: datetime


def _sha256_of(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _lora_file_name(name: str) -> str:
    # The content is checked to be safetensors, so the name says so whatever the URL ended with.
    safe = safe_file_name(name, default_stem="lora")
    return safe if safe.lower().endswith(_SAFETENSORS) else safe + _SAFETENSORS


def _etag_sha256(etag: str | None) -> str | None:
    value = (etag or "").strip().removeprefix("W/").strip('"').lower()
    return value if _SHA256_HEX.fullmatch(value) else None


def _is_bare_name(text: str) -> bool:
    return not any(separator in text for separator in ("/", "\\", ":"))


class LoraStore:
    """LoRA files for tasks: downloaded by URL into `root/by-url/…`, or named in `root` itself (a folder the operator
    filled), or local paths inside `input_roots` or `root`.

    Safe for several workers on one host: files and manifests are written beside their final names and renamed into
    place, so a reader sees a whole old file or a whole new one (two workers fetching one URL both write the same
    content; the last rename wins).
    """

    def __init__(
        self,
        root: Path,
        *,
        limits: DownloadLimits,
        network: NetworkPolicy,
        input_roots: Sequence[Path] = (),
    ) -> None:
        self.root = Path(root)
        self.limits = limits
        self.network = network
        self.input_roots = tuple(Path(folder) for folder in input_roots)

    def fetch(self, source: str, *, cancel: threading.Event | None = None) -> Path:
        """A local, complete LoRA file for `source` (a URL, a name in `root`, or a local path). Raises DownloadError."""
        text = source.strip()
        if not text:
            raise DownloadError("cannot fetch a LoRA from an empty name")
        try:
            scheme = urlsplit(text).scheme.lower()
        except ValueError:
            raise DownloadError(f"cannot fetch LoRA {redact_url(text)}: not a valid path or URL") from None
        if scheme in ALLOWED_SCHEMES:
            hub_file = parse_hub_url(text)
            if hub_file is not None:
                return self._fetch_from_hub(hub_file, cancel)
            return self._fetch_url(text, url_file_name(text, default_stem="lora"), self.network, {}, cancel=cancel)
        if _is_bare_name(text):
            path = self._named(text)
        else:
            path = local_input(text, (*self.input_roots, self.root))
        if path.suffix.lower() == _SAFETENSORS and not is_valid_safetensors(path):
            raise DownloadError(f"LoRA {redact_url(text)} is not a complete safetensors file")
        return path

    def _named(self, name: str) -> Path:
        try:
            path = confine(self.root, name)
        except PathOutsideRoot:
            raise DownloadError(f"cannot fetch LoRA {name!r}: not a file name") from None
        if not path.is_file():
            raise DownloadError(f"cannot fetch LoRA {name!r}: no such file in the LoRA folder")
        return path

    def _fetch_from_hub(self, hub_file: HubFile, cancel: threading.Event | None) -> Path:
        url = huggingface_hub.hf_hub_url(
            hub_file.repo_id,
            hub_file.filename,
            subfolder=hub_file.subfolder,
            repo_type=hub_file.repo_type,
            revision=hub_file.revision,
            endpoint=_hub_endpoint(),
        )
        endpoint_host = hub_endpoint_host()
        network = self.network.trusting([endpoint_host]) if endpoint_host else self.network
        headers = build_hf_headers()  # HF_TOKEN (if any) and the Hub's user agent
        return self._fetch_url(url, hub_file.filename, network, headers, from_hub=True, cancel=cancel)

    def _hub_metadata(self, url: str, network: NetworkPolicy, headers: Mapping[str, str]) -> str | None:
        """Check the Hub's announced size against the cap and return the expected sha256, if the Hub gave one.

        The answer is the Hub's last reply about the file (after a renamed repo's redirect): for a file in LFS a 302
        to its CDN carrying X-Linked-Size and X-Linked-Etag (`head` stops there), otherwise a 200.
        """
        final = head(url, limits=self.limits, network=network, headers=headers)[-1]
        # A redirect's own Content-Length is the length of its tiny body, not the file's.
        announced = final.get("x-linked-size") or ("" if "location" in final else final.get("content-length", ""))
        if announced.isdigit() and int(announced) > self.limits.max_bytes:
            raise DownloadError(
                f"cannot download {redact_url(url)}: {announced} bytes, over the limit of {self.limits.max_bytes} bytes"
            )
        return _etag_sha256(final.get("x-linked-etag") or final.get("etag"))

    def _fetch_url(
        self,
        url: str,
        name: str,
        network: NetworkPolicy,
        headers: Mapping[str, str],
        *,
        from_hub: bool = False,
        cancel: threading.Event | None,
    ) -> Path:
        safe_url = redact_url(url)
        folder = self.root / _BY_URL / url_key(url)[:_URL_KEY_LENGTH]
        target = folder / _lora_file_name(name)
        if self._reusable(target, folder / MANIFEST_NAME, safe_url):
            logger.info(f"LoRA {safe_url}: reusing {target}")
            return target
        try:
            expected = self._hub_metadata(url, network, headers) if from_hub else None
            staged = folder / f".{target.name}.{uuid.uuid4().hex[:8]}"
            try:
                downloaded = download(
                    url,
                    staged,
                    limits=self.limits,
                    network=network,
                    headers=headers,
                    cancel=cancel,
                    expected_sha256=expected,
                )
                # Checked before it takes the final name: only whole safetensors files ever sit there.
                if not is_valid_safetensors(staged):
                    raise DownloadError(f"LoRA {safe_url} downloaded, but it is not a complete safetensors file")
                os.replace(staged, target)
            finally:
                staged.unlink(missing_ok=True)
        except DownloadError as error:
            raise (_with_hub_hint(error, headers) if from_hub else error) from None
        except OSError as error:  # the local disk, not the server
            full = error.errno in (errno.ENOSPC, errno.EDQUOT)
            raise DownloadError(f"cannot store LoRA {safe_url}: {error.strerror}", transient=full) from None
        self._write_manifest(folder / MANIFEST_NAME, target, safe_url, downloaded.sha256, datetime.now(UTC))
        logger.info(f"LoRA {safe_url} -> {target}")
        return target

    def _reusable(self, target: Path, manifest_path: Path, safe_url: str) -> bool:
        try:
            manifest = _Manifest.model_validate_json(manifest_path.read_bytes())
            stat = target.stat()
        except FileNotFoundError:
            return False
        except (OSError, ValidationError) as error:
            logger.warning(f"LoRA {safe_url}: unreadable manifest or file in {target.parent} ({type(error).__name__})")
            return False
        if manifest.file != target.name or stat.st_size != manifest.size or not is_valid_safetensors(target):
            logger.warning(f"LoRA {safe_url}: {target} no longer matches its manifest; downloading it again")
            return False
        if stat.st_mtime_ns != manifest.mtime_ns:
            # Touched since: same size and still valid is not enough, the bytes must be the ones downloaded.
            try:
                sha256 = _sha256_of(target)
            except OSError:
                sha256 = ""
            if sha256 != manifest.sha256:
                logger.warning(f"LoRA {safe_url}: {target} was modified on disk; downloading it again")
                return False
            self._write_manifest(manifest_path, target, safe_url, manifest.sha256, manifest.downloaded_at)
        return True

    @staticmethod
    def _write_manifest(path: Path, target: Path, safe_url: str, sha256: str, downloaded_at: datetime) -> None:
        stat = target.stat()
        manifest = _Manifest(
            url=safe_url,
            file=target.name,
            size=stat.st_size,
            sha256=sha256,
            mtime_ns=stat.st_mtime_ns,
            downloaded_at=downloaded_at,
        )
        staged = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
        try:
            staged.write_text(manifest.model_dump_json(indent=2))
            os.replace(staged, path)
        except OSError as error:  # the file is whole all the same; it is just downloaded again next time
            logger.warning(f"LoRA {safe_url}: cannot write {path} ({error.strerror})")
        finally:
            staged.unlink(missing_ok=True)


def _with_hub_hint(error: DownloadError, headers: Mapping[str, str]) -> DownloadError:
    """A 401/403 from the Hub says what to do about it (the token itself is never shown)."""
    if error.status not in (401, 403):
        return error
    if any(name.lower() == "authorization" for name in headers):
        hint = "the token in HF_TOKEN cannot read this repo (gated, private, or access not yet granted)"
    else:
        hint = "the repo is gated or private: set HF_TOKEN to a token that can read it"
    return DownloadError(f"{error}; {hint}", transient=False, status=error.status)
