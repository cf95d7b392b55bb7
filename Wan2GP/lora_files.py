"""Where a LoRA named in a request lives on disk: a local path, a name in the LoRA folder, or a Hugging Face file.

The engine fetches no payload URLs (the worker hands it local files, downloaded within its caps by its LoRA store).
Hugging Face URLs are the exception, because model definitions name their built-in LoRAs that way: they come through
huggingface_hub (its cache, resumable, auth from the environment), like model weights.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

from Wan2GP.request import InvalidGenerationParams

# https://huggingface.co/<owner>/<repo>/(resolve|blob)/<revision>/<path/in/repo>
_HF_URL = re.compile(r"^https?://huggingface\.co/(?P<repo>[^/]+/[^/]+)/(?:resolve|blob)/(?P<rev>[^/]+)/(?P<path>.+)$")


class LoraDownloadError(RuntimeError):
    """A Hugging Face LoRA could not be fetched (network, auth): transient, unlike a bad name."""


def resolve_lora_file(source: str, lora_dir: Path, *, field: str) -> Path:
    """A local .safetensors file for ``source`` (path, name in ``lora_dir``, or Hugging Face URL)."""
    if source.startswith(("http://", "https://")):
        match = _HF_URL.match(source.split("?", 1)[0])
        if match is None:
            raise InvalidGenerationParams(
                [field.split("[")[0]],
                f"{field}: the engine takes local LoRA files, names in its LoRA folder or Hugging Face URLs; "
                f"download other URLs first (the worker's LoRA store does, within its size and time caps)",
            )
        return _from_hub(match, source)
    path = Path(source).expanduser()
    if path.is_file():
        return path
    candidates = [lora_dir / path.name, lora_dir / f"{path.name}.safetensors"]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise InvalidGenerationParams(
        [field.split("[")[0]], f"{field}: LoRA {source!r} not found (neither a file nor a name in {lora_dir})"
    )


def _from_hub(match: re.Match[str], url: str) -> Path:
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo_id=match["repo"], filename=unquote(match["path"]), revision=match["rev"]))
    except Exception as error:  # HTTP, offline, auth, disk: one transient failure type for the caller
        raise LoraDownloadError(f"cannot fetch LoRA {url.split('?', 1)[0]}: {type(error).__name__}") from error
