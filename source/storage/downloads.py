"""Bring inputs (keyframe images, predecessor videos, LoRA files) onto this machine, within bounds.

Payloads are written by other people's apps, so every byte the worker fetches goes through `download`: http(s) only,
connections only where the `NetworkPolicy` allows (checked again on every redirect hop), at most `max_bytes`, within
`total_seconds` over all attempts and redirects, and given up when the server stalls for `stall_seconds`. Local
paths are read only inside the operator's input roots (`fetch_input`).

A download goes to a hidden `.part` file beside its destination and is renamed into place only when complete (and
its sha256 matches, when one was expected), so a file under its final name is always whole. Errors and logs name
the URL without credentials, query string or fragment (signed-URL tokens).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import threading
import time
import uuid
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urljoin, urlsplit, urlunsplit
from urllib.request import url2pathname

import httpx
from loguru import logger
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    stop_before_delay,
    wait_exponential,
)

from source.params.redact import URL_IN_TEXT
from source.storage.network import ALLOWED_SCHEMES, AddressNotAllowed, NetworkPolicy, guarded_client
from source.storage.paths import PathOutsideRoot, confine, safe_file_name, within_roots

INPUT_ROOT_FLAG = "--input-root"
MAX_REDIRECTS = 5
_PROGRESS_EVERY_SECONDS = 5.0
# Never sent to another origin after a redirect, whatever the caller says.
_CREDENTIAL_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie"})
_HF_HOSTS = frozenset({"huggingface.co", "www.huggingface.co", "hf.co"})
# safetensors refuses headers above 100 MB; anything larger is not a safetensors file.
_MAX_SAFETENSORS_HEADER_BYTES = 100_000_000
_SHOWN_SOURCE_CHARS = 200


@dataclass(frozen=True)
class DownloadLimits:
    """How much one fetch may cost. `total_seconds` covers every attempt and redirect; `stall_seconds` is the
    longest wait for a reply or for the next byte; `attempts` counts tries after connection errors, 408/429, 5xx."""

    max_bytes: int
    total_seconds: float
    stall_seconds: float = 30.0
    connect_seconds: float = 10.0
    attempts: int = 3

    def __post_init__(self) -> None:
        if self.max_bytes < 0 or min(self.total_seconds, self.stall_seconds, self.connect_seconds) <= 0:
            raise ValueError(f"download limits must be positive: {self}")
        if self.attempts < 1:
            raise ValueError(f"a download needs at least one attempt, not {self.attempts}")


class DownloadError(RuntimeError):
    """An input could not be fetched; the message names the source (no credentials, no query) and the reason.

    `transient` is True when trying the task again later may succeed: the network or the server failed (connection
    errors, 408/429/5xx after the retries here), the server stalled or never answered, the deadline passed while
    bytes were still coming (a slow link looks the same as a dripping server; the queue's attempt cap bounds the
    cost), the fetch was cancelled, or the local disk was full. It is False for what will fail the same way again:
    4xx, a refused scheme or address, too many redirects, a file over the size cap, a sha256 mismatch, a local path
    outside the input roots. `status` is the HTTP status of the reply that failed, if there was one.
    """

    def __init__(self, message: str, *, transient: bool = False, status: int | None = None) -> None:
        super().__init__(message)
        self.transient = transient
        self.status = status


@dataclass(frozen=True)
class DownloadedFile:
    """A whole file under its final name, with what was received: callers record or check size and hash."""

    path: Path
    size: int
    sha256: str


class _Failure(Exception):
    """Why one attempt failed, before the URL is put in front of it. `retry`: another attempt here may help."""

    def __init__(self, reason: str, *, transient: bool, retry: bool = False, status: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.transient = transient
        self.retry = retry
        self.status = status


def redact_url(url: str) -> str:
    """The URL without user:password, query string or fragment: safe to log and to put in error messages."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return url.split("?", 1)[0].split("#", 1)[0]
    if not parts.scheme or not parts.netloc:
        return url.split("?", 1)[0].split("#", 1)[0]
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    if port is not None:
        host = f"{host}:{port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def _without_urls(text: str) -> str:
    # Transport messages may quote a request URL, token and all.
    return URL_IN_TEXT.sub(lambda match: redact_url(match.group()), text)


def _shown(source: str) -> str:
    shown = redact_url(source)
    return shown if len(shown) <= _SHOWN_SOURCE_CHARS else shown[:_SHOWN_SOURCE_CHARS] + "…"


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    return url.scheme, url.host, url.port


def _status_failure(response: httpx.Response) -> _Failure:
    status = response.status_code
    reason = f"HTTP {status} {response.reason_phrase}".strip()
    # The Hub says which kind of "not found" it means; other servers rarely send it.
    error_code = response.headers.get("x-error-code")
    if error_code:
        reason += f" ({error_code[:80]})"
    transient = status >= 500 or status in (408, 429)
    return _Failure(reason, transient=transient, retry=transient, status=status)


def _transport_failure(error: Exception, *, limits: DownloadLimits, receiving: bool) -> _Failure:
    if isinstance(error, AddressNotAllowed):
        return _Failure(str(error), transient=False)
    if isinstance(error, httpx.ConnectTimeout):
        return _Failure(f"could not connect within {limits.connect_seconds:g} s", transient=True)
    # A stalled or silent server is not retried here: another wait would cost as much again.
    if isinstance(error, httpx.TimeoutException):
        what = "stalled: no data" if receiving else "no reply"
        return _Failure(f"{what} for {limits.stall_seconds:g} s", transient=True)
    if isinstance(error, httpx.InvalidURL | httpx.UnsupportedProtocol | httpx.LocalProtocolError):
        return _Failure(f"not a valid request ({_without_urls(str(error))})", transient=False)
    return _Failure(_without_urls(str(error)) or type(error).__name__, transient=True, retry=True)


def _require_fetchable(url: str) -> httpx.URL:
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        raise _Failure("not a valid URL", transient=False) from None
    if parsed.scheme not in ALLOWED_SCHEMES:
        shown = f"{parsed.scheme}://" if parsed.scheme else "a URL without a scheme"
        raise _Failure(f"only http and https URLs are fetched, not {shown}", transient=False)
    if not parsed.host:
        raise _Failure("the URL names no host", transient=False)
    return parsed


def _redirect_target(current: httpx.URL, location: str) -> httpx.URL:
    try:
        target = str(current.join(location))
    except httpx.InvalidURL:
        raise _Failure("redirected to an invalid URL", transient=False) from None
    try:
        return _require_fetchable(target)
    except _Failure as failure:
        shown = _shown(urljoin(str(current), location))  # as the server wrote it (httpx normalizes file:///)
        raise _Failure(f"redirected to {shown}: {failure.reason}", transient=False) from None


@dataclass
class _Clock:
    """The one deadline of a fetch, shared by its attempts and redirects."""

    limits: DownloadLimits
    deadline: float
    cancel: threading.Event | None

    def check(self, received: int) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise _Failure("cancelled", transient=True)
        if time.monotonic() > self.deadline:
            raise _Failure(
                f"not finished within {self.limits.total_seconds:g} s ({received} bytes received)", transient=True
            )

    def client(self, network: NetworkPolicy) -> httpx.Client:
        """A guarded client whose every wait also ends at the deadline (a server dripping its headers included)."""
        return guarded_client(
            network,
            connect_seconds=self.limits.connect_seconds,
            stall_seconds=self.limits.stall_seconds,
            deadline=self.deadline,
        )


@contextmanager
def _open(
    client: httpx.Client,
    method: str,
    url: str,
    *,
    headers: Mapping[str, str],
    sensitive: frozenset[str],
    clock: _Clock,
    hops: list[httpx.Headers] | None = None,
    leave_origin: bool = True,
) -> Iterator[httpx.Response]:
    """The final 2xx response to `method url`, redirects followed here so that every hop is checked: its scheme, its
    address (by the client's policy), and no credential headers once the chain leaves the first origin. Without
    `leave_origin`, a redirect to another origin is itself the answer."""
    current = _require_fetchable(url)
    first_origin = _origin(current)
    for _hop in range(MAX_REDIRECTS + 1):
        clock.check(0)
        same_origin = _origin(current) == first_origin
        hop_headers = {name: value for name, value in headers.items() if same_origin or name.lower() not in sensitive}
        try:
            response = client.send(client.build_request(method, current, headers=hop_headers), stream=True)
        except (httpx.HTTPError, httpx.InvalidURL, AddressNotAllowed) as error:
            clock.check(0)  # a timeout at the deadline is the deadline's
            raise _transport_failure(error, limits=clock.limits, receiving=False) from None
        try:
            if hops is not None:
                hops.append(response.headers)
            if response.has_redirect_location:
                current = _redirect_target(current, response.headers["location"])
                if leave_origin or _origin(current) == first_origin:
                    continue
                yield response
                return
            if not response.is_success:
                raise _status_failure(response)
            yield response
            return
        finally:
            response.close()
    raise _Failure(f"more than {MAX_REDIRECTS} redirects", transient=False)


def _request_headers(headers: Mapping[str, str] | None) -> dict[str, str]:
    # Asked plainly: the byte cap counts what arrives, and a compressed body could hide a much larger one.
    plain = {name: value for name, value in (headers or {}).items() if name.lower() != "accept-encoding"}
    return {**plain, "Accept-Encoding": "identity"}


def _sensitive(sensitive_headers: Collection[str]) -> frozenset[str]:
    return _CREDENTIAL_HEADERS | {name.lower() for name in sensitive_headers}


def _retrying(limits: DownloadLimits, safe_url: str, cancel: threading.Event | None) -> Retrying:
    def log_retry(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome is not None else None
        wait = state.next_action.sleep if state.next_action is not None else 0.0
        logger.warning(
            f"fetching {safe_url} failed ({error}); attempt {state.attempt_number} of {limits.attempts}, "
            f"next in {wait:.1f} s"
        )

    def sleep(seconds: float) -> None:
        # A cancelled task stops waiting at once; the next attempt then reports the cancellation.
        if cancel is None:
            time.sleep(seconds)
        else:
            cancel.wait(seconds)

    return Retrying(
        stop=stop_after_attempt(limits.attempts) | stop_before_delay(limits.total_seconds),
        wait=wait_exponential(multiplier=0.5, max=10),
        retry=retry_if_exception(lambda error: isinstance(error, _Failure) and error.retry),
        before_sleep=log_retry,
        sleep=sleep,
        reraise=True,
    )


def _receive(
    client: httpx.Client,
    url: str,
    partial: Path,
    *,
    headers: Mapping[str, str],
    sensitive: frozenset[str],
    clock: _Clock,
    safe_url: str,
) -> tuple[int, str]:
    """One attempt: the body into `partial`, counted, hashed and timed as it arrives. Returns (size, sha256)."""
    limits = clock.limits
    with _open(client, "GET", url, headers=headers, sensitive=sensitive, clock=clock) as response:
        encoding = response.headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            raise _Failure(f"the server sent a {encoding}-encoded body though identity was asked", transient=False)
        announced = response.headers.get("content-length", "")
        if announced.isdigit() and int(announced) > limits.max_bytes:
            raise _Failure(f"{announced} bytes, over the limit of {limits.max_bytes} bytes", transient=False)
        hasher = hashlib.sha256()
        received = 0
        started = last_report = time.monotonic()
        with partial.open("wb") as sink:
            try:
                # No chunk size: each piece is handled as it arrives, so a drip meets the deadline check byte by byte.
                for chunk in response.iter_raw():
                    received += len(chunk)
                    if received > limits.max_bytes:
                        raise _Failure(f"more than the limit of {limits.max_bytes} bytes", transient=False)
                    sink.write(chunk)
                    hasher.update(chunk)
                    clock.check(received)
                    now = time.monotonic()
                    if now - last_report >= _PROGRESS_EVERY_SECONDS:
                        last_report = now
                        of_total = f" of {int(announced) / 1e6:.1f}" if announced.isdigit() else ""
                        rate = received / 1e6 / max(now - started, 1e-6)
                        logger.info(f"downloading {safe_url}: {received / 1e6:.1f}{of_total} MB ({rate:.1f} MB/s)")
            except httpx.HTTPError as error:
                clock.check(received)  # a timeout at the deadline is the deadline's
                raise _transport_failure(error, limits=limits, receiving=True) from None
    return received, hasher.hexdigest()


def download(
    url: str,
    destination: Path,
    *,
    limits: DownloadLimits,
    network: NetworkPolicy,
    headers: Mapping[str, str] | None = None,
    sensitive_headers: Collection[str] = (),
    cancel: threading.Event | None = None,
    expected_sha256: str | None = None,
) -> DownloadedFile:
    """Fetch `url` into `destination` (replacing it) within `limits`, connecting only where `network` allows.

    Redirects (at most 5) are followed here, each hop checked like the first; `headers` named in
    `sensitive_headers`, and Authorization, Proxy-Authorization and Cookie, are not sent once a redirect leaves the
    URL's origin. Retried up to `limits.attempts` times on connection errors, 408/429 and 5xx; a stall, a
    `cancel`, or anything in DownloadError's permanent list ends it at once. Raises DownloadError.
    """
    safe_url = redact_url(url)
    destination = Path(destination)
    clock = _Clock(limits, time.monotonic() + limits.total_seconds, cancel)
    partial = destination.with_name(f".{destination.name}.{uuid.uuid4().hex[:8]}.part")
    try:
        _require_fetchable(url)
        logger.info(f"downloading {safe_url} (at most {limits.max_bytes} bytes in {limits.total_seconds:g} s)")
        started = time.monotonic()
        destination.parent.mkdir(parents=True, exist_ok=True)
        request_headers = _request_headers(headers)
        with clock.client(network) as client:
            for attempt in _retrying(limits, safe_url, cancel):
                with attempt:
                    clock.check(0)
                    size, sha256 = _receive(
                        client,
                        url,
                        partial,
                        headers=request_headers,
                        sensitive=_sensitive(sensitive_headers),
                        clock=clock,
                        safe_url=safe_url,
                    )
        if expected_sha256 is not None and sha256 != expected_sha256.strip().lower():
            raise _Failure(
                f"content sha256 {sha256[:12]}… is not the expected {expected_sha256[:12]}…", transient=False
            )
        os.replace(partial, destination)
    except _Failure as failure:
        raise DownloadError(
            f"cannot download {safe_url}: {failure.reason}", transient=failure.transient, status=failure.status
        ) from None
    except OSError as error:  # the local disk, not the server
        full = error.errno in (errno.ENOSPC, errno.EDQUOT)
        raise DownloadError(
            f"cannot download {safe_url}: cannot write {destination.name}: {error.strerror}", transient=full
        ) from None
    finally:
        partial.unlink(missing_ok=True)
    seconds = time.monotonic() - started
    logger.info(
        f"downloaded {safe_url} -> {destination} ({size} bytes in {seconds:.1f} s, "
        f"{size / 1e6 / max(seconds, 1e-6):.1f} MB/s)"
    )
    return DownloadedFile(destination, size, sha256)


def head(
    url: str,
    *,
    limits: DownloadLimits,
    network: NetworkPolicy,
    headers: Mapping[str, str] | None = None,
    sensitive_headers: Collection[str] = (),
) -> list[httpx.Headers]:
    """The headers of every response to a HEAD of `url`, first to last, along redirects within its origin (a renamed
    Hub repo). A redirect to another origin ends it: that is where a GET would go, often through a URL signed for
    GET only (the Hub's 302 to its CDN, which carries the file's size and hash itself). Same checks, retries and
    errors as `download`."""
    safe_url = redact_url(url)
    clock = _Clock(limits, time.monotonic() + limits.total_seconds, None)
    try:
        with clock.client(network) as client:
            for attempt in _retrying(limits, safe_url, None):
                with attempt:
                    hops: list[httpx.Headers] = []
                    with _open(
                        client,
                        "HEAD",
                        url,
                        headers=_request_headers(headers),
                        sensitive=_sensitive(sensitive_headers),
                        clock=clock,
                        hops=hops,
                        leave_origin=False,
                    ):
                        pass
    except _Failure as failure:
        raise DownloadError(
            f"cannot download {safe_url}: {failure.reason}", transient=failure.transient, status=failure.status
        ) from None
    return hops


def _outside_roots(source: str, roots: Sequence[Path]) -> DownloadError:
    # The same words whether or not the file exists: an error must not tell a payload what is on this machine.
    allowed = ", ".join(str(root) for root in roots) or "none are configured"
    return DownloadError(
        f"cannot fetch {_shown(source)}: local paths are only read inside the allowed input roots ({allowed}); "
        f"pass an http(s) URL, or start the worker with {INPUT_ROOT_FLAG} DIR"
    )


def local_input(source: str, roots: Sequence[Path]) -> Path:
    """The file a local path or file:// URL names, resolved, if it lies inside one of `roots` (symlinks followed).

    A relative path is looked up under each root in turn. Outside the roots the error is the same whether or not
    the file exists; inside them, a missing file is reported as such.
    """
    text = source.strip()
    try:
        parts = urlsplit(text)
    except ValueError:
        raise DownloadError(f"cannot fetch {_shown(text)}: not a valid path or URL") from None
    scheme = parts.scheme.lower()
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise _outside_roots(text, roots)
        path = Path(url2pathname(parts.path))  # url2pathname does the percent-decoding
    elif len(scheme) > 1:  # one letter is a Windows drive, not a scheme
        raise DownloadError(f"cannot fetch {_shown(text)}: unsupported URL scheme {scheme!r}; pass an http(s) URL")
    else:
        path = Path(text)
    if "\x00" in str(path):
        raise _outside_roots(text, roots)
    if path.is_absolute():
        candidates = [resolved] if (resolved := within_roots(path, roots)) is not None else []
    else:
        candidates = []
        for root in roots:
            try:
                candidates.append(confine(root, path))
            except PathOutsideRoot:
                continue
    if not candidates:
        raise _outside_roots(text, roots)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise DownloadError(f"cannot fetch {_shown(text)}: no such file")


def url_key(url: str) -> str:
    """A stable name for a URL (its fragment aside): the hex sha256. The query counts: it may select the content."""
    parts = urlsplit(url)
    return hashlib.sha256(urlunsplit(parts._replace(fragment="")).encode()).hexdigest()


def url_file_name(url: str, *, default_stem: str = "download") -> str:
    """A safe, bounded local file name from a URL's last path segment, keeping a short extension."""
    return safe_file_name(unquote(PurePosixPath(urlsplit(url).path).name), default_stem=default_stem)


def fetch_input(
    source: str,
    dest_dir: Path,
    *,
    roots: Sequence[Path],
    limits: DownloadLimits,
    network: NetworkPolicy,
    cancel: threading.Event | None = None,
) -> Path:
    """A local file for an input named by a payload.

    An http(s) URL is downloaded into `dest_dir/<url key>/<safe file name>` (a folder per URL: two URLs ending in
    the same name never overwrite each other's file). A local path or file:// URL is returned only inside `roots`
    (see `local_input`). Any other scheme is refused. Raises DownloadError.
    """
    text = source.strip()
    if not text:
        raise DownloadError("cannot fetch an empty path or URL")
    try:
        scheme = urlsplit(text).scheme.lower()
    except ValueError:
        raise DownloadError(f"cannot fetch {_shown(text)}: not a valid path or URL") from None
    if scheme in ALLOWED_SCHEMES:
        destination = Path(dest_dir) / url_key(text)[:16] / url_file_name(text)
        return download(text, destination, limits=limits, network=network, cancel=cancel).path
    return local_input(text, roots)


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


def hub_endpoint_host() -> str | None:
    """The host of HF_ENDPOINT, if set: operator configuration, so fetches from it are trusted."""
    endpoint = _hub_endpoint()
    return (urlsplit(endpoint).hostname or None) if endpoint else None


def parse_hub_url(url: str) -> HubFile | None:
    """`https://huggingface.co/<owner>/<repo>/(resolve|blob)/<revision>/<path>` (also datasets/ and spaces/, and the
    host of HF_ENDPOINT) -> HubFile; any other URL -> None."""
    try:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
    except ValueError:
        return None
    endpoint_host = (hub_endpoint_host() or "").lower()
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
