"""Outputs uploaded to a Supabase Storage bucket, returned as public URLs."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import httpx
from loguru import logger
from storage3.exceptions import StorageApiError
from storage3.utils import StorageException
from supabase import ClientOptions, create_client
from supabase_auth import SyncMemoryStorage
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, wait_exponential

from source.media.video import MediaError, write_thumbnail
from source.storage.base import StorageError, StoredOutput, content_type_for, is_video
from source.storage.paths import safe_component, safe_file_name

_REDACTED = "[redacted]"


def _is_transient(error: BaseException) -> bool:
    if isinstance(error, StorageApiError):
        try:
            status = int(error.status)
        except (TypeError, ValueError):
            return False
        return status >= 500 or status in (408, 429)
    return isinstance(error, httpx.TransportError)


class SupabaseStorage:
    """Uploads each output to `<bucket>/<task_type>/<task_id>/<name>` (videos also `<stem>_thumb.jpg` beside it).

    Uploads are upserts with an explicit content type (video/mp4, image/jpeg, ...) and a long timeout, retried on
    network errors and 5xx. The local file is left in place; deleting it is the caller's decision. The service key is
    held only by the client: it is never logged, and any error text that echoes it is redacted.
    """

    def __init__(self, url: str, key: str, bucket: str, *, timeout: float = 600.0, attempts: int = 3) -> None:
        if not url:
            raise StorageError("Supabase storage needs a project URL; got an empty one")
        if not key:
            raise StorageError("Supabase storage needs a service key; got an empty one")
        if not bucket:
            raise StorageError("Supabase storage needs a bucket name; got an empty one")
        self.url = url.rstrip("/")
        self.bucket = bucket
        self.attempts = attempts
        self._key = key
        options = ClientOptions(
            storage_client_timeout=math.ceil(timeout),
            auto_refresh_token=False,
            persist_session=False,
            storage=SyncMemoryStorage(),
        )
        try:
            self._client = create_client(self.url, key, options=options)
        except Exception as error:  # supabase raises its own exception types for a malformed URL or key
            raise StorageError(f"cannot create a Supabase client for {self.url}: {self._scrub(str(error))}") from None

    def __repr__(self) -> str:
        return f"SupabaseStorage(url={self.url!r}, bucket={self.bucket!r})"

    def _scrub(self, text: str) -> str:
        return text.replace(self._key, _REDACTED) if self._key else text

    def _upload(self, local_path: Path, object_path: str) -> str:
        content_type = content_type_for(local_path)
        bucket_api = self._client.storage.from_(self.bucket)

        def log_retry(state: RetryCallState) -> None:
            error = state.outcome.exception() if state.outcome is not None else None
            logger.warning(
                f"upload of {object_path} to bucket {self.bucket} failed ({self._scrub(str(error))}); "
                f"attempt {state.attempt_number} of {self.attempts}"
            )

        retrying = Retrying(
            stop=stop_after_attempt(self.attempts),
            wait=wait_exponential(multiplier=1, max=20),
            retry=retry_if_exception(_is_transient),
            before_sleep=log_retry,
            reraise=True,
        )
        try:
            retrying(
                bucket_api.upload,
                object_path,
                local_path,
                {"content-type": content_type, "upsert": "true"},
            )
        except (StorageException, httpx.HTTPError, OSError) as error:
            raise StorageError(
                f"upload of {local_path.name} to bucket {self.bucket} at {object_path} failed: "
                f"{self._scrub(str(error)) or type(error).__name__}"
            ) from None
        public_url = bucket_api.get_public_url(object_path).rstrip("?")
        size_mb = local_path.stat().st_size / 1e6
        logger.info(f"uploaded {local_path.name} ({size_mb:.1f} MB, {content_type}) to {public_url}")
        return public_url

    def store(self, local_path: Path, *, task_type: str, task_id: str) -> StoredOutput:
        local_path = Path(local_path)
        if not local_path.is_file():
            raise StorageError(f"output to store does not exist: {local_path}")
        object_dir = f"{safe_component(task_type)}/{safe_component(task_id)}"
        location = self._upload(local_path, f"{object_dir}/{safe_file_name(local_path.name)}")
        thumbnail: str | None = None
        if is_video(local_path):
            with tempfile.TemporaryDirectory(prefix="thumb-") as scratch:
                thumbnail_name = f"{safe_component(local_path.stem)}_thumb.jpg"
                try:
                    thumbnail_path = write_thumbnail(local_path, Path(scratch) / thumbnail_name)
                    thumbnail = self._upload(thumbnail_path, f"{object_dir}/{thumbnail_name}")
                except (MediaError, StorageError) as error:
                    # A missing thumbnail must not fail a finished generation.
                    logger.warning(f"no thumbnail for {local_path.name}: {error}")
        return StoredOutput(location=location, thumbnail=thumbnail)
