"""Bring inputs (keyframe images, predecessor videos, LoRA files) onto this machine.

Downloads go to a hidden `.part` file beside the destination and are renamed into place only when complete, so a file
under its final name is always whole. Errors name the URL with credentials and query strings (signed-URL tokens)
removed.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlsplit, urlunsplit
from urllib.request import url2pathname

import httpx
from huggingface_hub import hf_hub_download
from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled
from loguru import logger
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, wait_exponential

_CHUNK_BYTES = 1 << 20
_HF_HOSTS = frozenset({"huggingface.co", "www.huggingface.co", "hf.co"})
# LoRA releases that ship a high- and a low-noise file under these generic names collide in one LoRA folder.
_GENERIC_LORA_NAMES = frozenset({"high_noise_model.safetensors", "low_noise_model.safetensors"})
# safetensors refuses headers above 100 MB; anything larger is not a safetensors file.
_MAX_SAFETENSORS_HEADER_BYTES = 100_000_000


class DownloadError(RuntimeError):
    """An input could not be fetched; the message names the URL (no credentials, no query) and the reason.

    `transient` is True when the last failure was the network's or the server's (timeout, connection error, 408/429,
    5xx) after the retries here ran out, so trying the task again later may succeed; False for a missing file, a 4xx
    or a corrupt download, which will fail the same way again.
    """

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


def redact_url(url: str) -> str:
    """The URL without user:password, query string or fragment: safe to log and to put in error messages."""
    parts = urlsplit(url)
    if not parts.scheme or not parts.netloc:
        return url.split("?", 1)[0]
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def _safe_filename(name: str) -> str:
    name = PurePosixPath(name.replace("\\", "/")).name
    if name in ("", ".", ".."):
        return ""
    return name


def _is_transient(error: BaseException) -> bool:
    if isinstance(error, httpx.HTTPStatusError):
        status = error.response.status_code
        return status >= 500 or status in (408, 429)
    return isinstance(error, httpx.TransportError)


def _describe(error: BaseException, url: str, safe_url: str) -> str:
    if isinstance(error, httpx.HTTPStatusError):
        response = error.response
        return f"HTTP {response.status_code} {response.reason_phrase}".strip()
    if isinstance(error, httpx.TimeoutException):
        return f"timed out ({type(error).__name__})"
    text = str(error) or type(error).__name__
    # Transport messages may quote the request URL, token and all.
    return text.replace(url, safe_url)


def _download_once(client: httpx.Client, url: str, partial: Path) -> int:
    received = 0
    with client.stream("GET", url) as response:
        response.raise_for_status()
        with partial.open("wb") as sink:
            for chunk in response.iter_bytes(_CHUNK_BYTES):
                sink.write(chunk)
                received += len(chunk)
    return received


def _download_http(url: str, destination: Path, *, timeout: float, attempts: int) -> Path:
    safe_url = redact_url(url)
    partial = destination.with_name(f".{destination.name}.{uuid.uuid4().hex[:8]}.part")

    def log_retry(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome is not None else None
        reason = _describe(error, url, safe_url) if error is not None else "unknown error"
        logger.warning(f"download of {safe_url} failed ({reason}); attempt {state.attempt_number} of {attempts}")

    retrying = Retrying(
        stop=stop_after_attempt(attempts),
        wait=wait_exponential(multiplier=0.5, max=10),
        retry=retry_if_exception(_is_transient),
        before_sleep=log_retry,
        reraise=True,
    )
    try:
        destination.parent.mkdir(parents=True, exist_ok=True)
        with httpx.Client(timeout=httpx.Timeout(timeout), follow_redirects=True) as client:
            received = retrying(_download_once, client, url, partial)
        os.replace(partial, destination)
    except (httpx.HTTPError, OSError) as error:
        raise DownloadError(
            f"cannot download {safe_url}: {_describe(error, url, safe_url)}", transient=_is_transient(error)
        ) from None
    finally:
        partial.unlink(missing_ok=True)
    logger.info(f"downloaded {safe_url} -> {destination} ({received} bytes)")
    return destination


def fetch_to(
    source: str, dest_dir: Path, *, timeout: float = 60.0, filename: str | None = None, attempts: int = 3
) -> Path:
    """A local path for `source`.

    - a local path (or file:// URL) that exists is returned as is, without copying; a missing one is a DownloadError;
    - an http(s) URL is downloaded into `dest_dir` as `filename` (default: the URL's last path segment; an existing
      file of that name is replaced), retried up to `attempts` times on network errors, timeouts, 408/429 and 5xx;
      other 4xx fail at once. `timeout` bounds each network operation (connect, each read), not the whole transfer.
    """
    source = source.strip()
    if not source:
        raise DownloadError("cannot fetch an empty path or URL")
    parts = urlsplit(source)
    scheme = parts.scheme.lower()
    if scheme in ("http", "https"):
        name = _safe_filename(filename) if filename is not None else _safe_filename(unquote(parts.path))
        if not name:
            name = f"download_{uuid.uuid4().hex[:8]}"
        return _download_http(source, Path(dest_dir) / name, timeout=timeout, attempts=attempts)
    if scheme == "file":
        local = Path(url2pathname(parts.path))  # url2pathname does the percent-decoding
    elif len(scheme) > 1:  # one letter is a Windows drive, not a scheme
        raise DownloadError(f"cannot fetch {redact_url(source)}: unsupported URL scheme {scheme!r}")
    else:
        local = Path(source).expanduser()
    if not local.is_file():
        raise DownloadError(f"cannot fetch {redact_url(source)}: no such local file")
    return local


def is_valid_safetensors(path: Path) -> bool:
    """True if `path` is a complete safetensors file: a JSON header whose tensors exactly cover the rest of the file.

    A partial download fails this check (its data section is shorter than the header promises).
    """
    try:
        size = path.stat().st_size
        if size < 8:
            return False
        with path.open("rb") as handle:
            header_length = int.from_bytes(handle.read(8), "little")
            if header_length < 2 or header_length > _MAX_SAFETENSORS_HEADER_BYTES or 8 + header_length > size:
                return False
            header = json.loads(handle.read(header_length))
    except (OSError, ValueError):
        return False
    if not isinstance(header, dict):
        return False
    data_length = size - 8 - header_length
    data_end = 0
    tensor_count = 0
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(value, int) for value in offsets)):
            return False
        start, end = offsets
        if not 0 <= start <= end <= data_length:
            return False
        data_end = max(data_end, end)
        tensor_count += 1
    return tensor_count > 0 and data_end == data_length


@dataclass(frozen=True)
class HubFile:
    """A file on the Hugging Face Hub, parsed from a /resolve/ or /blob/ URL."""

    repo_id: str
    repo_type: str | None
    revision: str
    path_in_repo: str

    @property
    def subfolder(self) -> str | None:
        parent = PurePosixPath(self.path_in_repo).parent.as_posix()
        return None if parent == "." else parent

    @property
    def filename(self) -> str:
        return PurePosixPath(self.path_in_repo).name


def _hub_endpoint() -> str | None:
    # Read at call time (huggingface_hub reads HF_ENDPOINT once at import): a mirror or a test server set later works.
    endpoint = os.environ.get("HF_ENDPOINT", "").strip().rstrip("/")
    return endpoint or None


def parse_hub_url(url: str) -> HubFile | None:
    """`https://huggingface.co/<owner>/<repo>/(resolve|blob)/<revision>/<path>` (also datasets/ and spaces/, and the
    host of HF_ENDPOINT) -> HubFile; any other URL -> None."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    endpoint = _hub_endpoint()
    endpoint_host = (urlsplit(endpoint).hostname or "").lower() if endpoint else ""
    if host not in _HF_HOSTS and (not endpoint_host or host != endpoint_host):
        return None
    segments = [unquote(segment) for segment in parts.path.split("/") if segment]
    repo_type: str | None = None
    if segments and segments[0] in ("datasets", "spaces"):
        repo_type = segments[0][:-1]
        segments = segments[1:]
    if len(segments) < 5 or segments[2] not in ("resolve", "blob"):
        return None
    owner, repo, _kind, revision, *path_segments = segments
    return HubFile(
        repo_id=f"{owner}/{repo}", repo_type=repo_type, revision=revision, path_in_repo="/".join(path_segments)
    )


def lora_filename(url: str) -> str:
    """The local file name for a LoRA URL: the last path segment, except that generic Wan 2.2 names
    (high_noise_model / low_noise_model.safetensors) get their folder's name as a prefix so two LoRAs do not
    overwrite each other. A file at the root of a Hub repo takes the repo's name instead."""
    hub_file = parse_hub_url(url)
    if hub_file is not None:
        name = hub_file.filename
        folder = PurePosixPath(hub_file.path_in_repo).parent.name or hub_file.repo_id.split("/")[-1]
    else:
        path = PurePosixPath(unquote(urlsplit(url).path))
        name = path.name
        folder = path.parent.name
    name = _safe_filename(name)
    if not name:
        raise DownloadError(f"cannot tell a LoRA file name from {redact_url(url)}")
    if name.lower() in _GENERIC_LORA_NAMES and folder:
        name = f"{folder.replace(' ', '_')}_{name}"
    return name


def _download_from_hub(hub_file: HubFile, url: str, destination: Path, *, timeout: float) -> None:
    safe_url = redact_url(url)
    staging = destination.parent / f".hub-{uuid.uuid4().hex[:8]}"
    try:
        downloaded = hf_hub_download(
            hub_file.repo_id,
            hub_file.filename,
            subfolder=hub_file.subfolder,
            repo_type=hub_file.repo_type,
            revision=hub_file.revision,
            local_dir=staging,
            endpoint=_hub_endpoint(),
            etag_timeout=timeout,
        )
        os.replace(downloaded, destination)
    except OfflineModeIsEnabled:
        raise DownloadError(f"cannot download {safe_url}: HF_HUB_OFFLINE is set") from None
    except LocalEntryNotFoundError as error:
        raise DownloadError(
            f"cannot download {safe_url}: the Hub could not be reached ({error})", transient=True
        ) from None
    except HfHubHTTPError as error:
        status = error.response.status_code if error.response is not None else None
        transient = status is None or status >= 500 or status in (408, 429)
        raise DownloadError(
            f"cannot download {safe_url}: HTTP {status or '?'} from the Hub", transient=transient
        ) from None
    except Exception as error:  # the Hub client has many error types (xet, httpx2, validation); all mean "not fetched"
        raise DownloadError(f"cannot download {safe_url}: {type(error).__name__}: {error}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _require_valid_lora(path: Path, described_as: str) -> None:
    if path.suffix.lower() == ".safetensors" and not is_valid_safetensors(path):
        raise DownloadError(f"LoRA {described_as} is not a complete safetensors file ({path})")


def fetch_lora(url_or_path: str, lora_dir: Path, *, timeout: float = 300.0) -> Path:
    """A local LoRA file for a URL, a path, or a file name already in `lora_dir`.

    URLs land in `lora_dir` under `lora_filename(url)`. huggingface.co /resolve/ and /blob/ URLs go through
    `hf_hub_download` (HF_ENDPOINT and HF_TOKEN respected); other URLs through `fetch_to`. A file already there is
    reused only if it is a complete safetensors file; otherwise it is downloaded again. Downloaded .safetensors files
    are checked the same way.
    """
    source = url_or_path.strip()
    lora_dir = Path(lora_dir)
    scheme = urlsplit(source).scheme.lower()
    if scheme not in ("http", "https"):
        in_lora_dir = lora_dir / source
        if scheme != "file" and not Path(source).expanduser().is_file() and in_lora_dir.is_file():
            local = in_lora_dir
        else:
            local = fetch_to(source, lora_dir)
        _require_valid_lora(local, str(local))
        return local

    safe_url = redact_url(source)
    destination = lora_dir / lora_filename(source)
    if destination.is_file():
        if is_valid_safetensors(destination):
            logger.debug(f"LoRA {safe_url}: reusing {destination}")
            return destination
        logger.warning(f"LoRA {safe_url}: {destination} is not a complete safetensors file; downloading it again")
    lora_dir.mkdir(parents=True, exist_ok=True)
    hub_file = parse_hub_url(source)
    if hub_file is not None:
        _download_from_hub(hub_file, source, destination, timeout=timeout)
    else:
        fetch_to(source, lora_dir, timeout=timeout, filename=destination.name)
    if destination.suffix.lower() == ".safetensors" and not is_valid_safetensors(destination):
        destination.unlink(missing_ok=True)
        raise DownloadError(f"LoRA {safe_url} downloaded, but it is not a complete safetensors file")
    logger.info(f"LoRA {safe_url} -> {destination}")
    return destination
