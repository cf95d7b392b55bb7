"""Where inputs come from and outputs go: bounded downloads and local inputs confined to their roots, the LoRA store,
a local output folder, or a Supabase Storage bucket.

Knows nothing about tasks or the queue; imports neither torch nor the engine.
"""

from __future__ import annotations

from pathlib import Path

from source.storage.base import (
    VIDEO_SUFFIXES,
    OutputStorage,
    StorageError,
    StoredOutput,
    content_type_for,
    is_video,
)
from source.storage.bucket import SupabaseStorage
from source.storage.downloads import (
    DownloadedFile,
    DownloadError,
    DownloadLimits,
    HubFile,
    download,
    fetch_input,
    is_valid_safetensors,
    parse_hub_url,
    redact_url,
)
from source.storage.local import LocalStorage
from source.storage.lora_store import LoraStore
from source.storage.network import AddressNotAllowed, NetworkPolicy, guarded_client
from source.storage.paths import PathOutsideRoot, confine, safe_component, safe_file_name, within_roots

DEFAULT_BUCKET = "image_uploads"


def storage_from_settings(
    output_dir: Path, supabase_url: str | None, supabase_key: str | None, bucket: str | None
) -> OutputStorage:
    """A Supabase bucket when both URL and key are set, else the local `output_dir`.

    Exactly one of URL and key set is a configuration mistake, reported rather than silently storing locally.
    """
    url = (supabase_url or "").strip()
    key = (supabase_key or "").strip()
    if url and key:
        return SupabaseStorage(url, key, (bucket or "").strip() or DEFAULT_BUCKET)
    if url or key:
        missing = "supabase_key" if url else "supabase_url"
        raise StorageError(f"Supabase storage needs both supabase_url and supabase_key; {missing} is not set")
    return LocalStorage(Path(output_dir))


__all__ = [
    "DEFAULT_BUCKET",
    "VIDEO_SUFFIXES",
    "AddressNotAllowed",
    "DownloadError",
    "DownloadLimits",
    "DownloadedFile",
    "HubFile",
    "LocalStorage",
    "LoraStore",
    "NetworkPolicy",
    "OutputStorage",
    "PathOutsideRoot",
    "StorageError",
    "StoredOutput",
    "SupabaseStorage",
    "confine",
    "content_type_for",
    "download",
    "fetch_input",
    "guarded_client",
    "is_valid_safetensors",
    "is_video",
    "parse_hub_url",
    "redact_url",
    "safe_component",
    "safe_file_name",
    "storage_from_settings",
    "within_roots",
]
