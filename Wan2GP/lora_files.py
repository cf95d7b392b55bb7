"""Where a LoRA named in a request lives on disk: a local path, a name in the LoRA folder, or a URL fetched once.

Upstream resolves LoRA names against the model's LoRA dir by basename and downloads URLs there first; so do we.
Hugging Face URLs go through huggingface_hub (its cache, resumable, auth from the environment); other URLs are
streamed with httpx into the LoRA folder.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from urllib.parse import unquote, urlparse

from loguru import logger

from Wan2GP.request import InvalidGenerationParams

# https://huggingface.co/<owner>/<repo>/(resolve|blob)/<revision>/<path/in/repo>
_HF_URL = re.compile(r"^https?://huggingface\.co/(?P<repo>[^/]+/[^/]+)/(?:resolve|blob)/(?P<rev>[^/]+)/(?P<path>.+)$")


class LoraDownloadError(RuntimeError):
    """A LoRA URL could not be fetched (network, auth): transient, unlike a bad name."""


def resolve_lora_file(source: str, lora_dir: Path, *, field: str) -> Path:
    """A local .safetensors file for ``source`` (path, name in ``lora_dir``, or http(s) URL)."""
    if source.startswith(("http://", "https://")):
        return _fetch(source, lora_dir)
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


def _fetch(url: str, lora_dir: Path) -> Path:
    match = _HF_URL.match(url.split("?", 1)[0])
    try:
        if match is not None:
            from huggingface_hub import hf_hub_download

            return Path(hf_hub_download(repo_id=match["repo"], filename=unquote(match["path"]), revision=match["rev"]))
        return _download_plain(url, lora_dir)
    except LoraDownloadError:
        raise
    except Exception as error:  # HTTP, offline, auth, disk: one transient failure type for the caller
        raise LoraDownloadError(f"cannot fetch LoRA {url}: {error}") from error


def _download_plain(url: str, lora_dir: Path) -> Path:
    import httpx

    name = Path(unquote(urlparse(url).path)).name
    if not name:
        raise LoraDownloadError(f"cannot fetch LoRA {url}: the URL names no file")
    target = lora_dir / name
    if target.is_file():
        return target
    lora_dir.mkdir(parents=True, exist_ok=True)
    logger.info("Downloading LoRA {} -> {}", url, target)
    with tempfile.NamedTemporaryFile(dir=lora_dir, prefix=f".{name}.", delete=False) as partial:
        partial_path = Path(partial.name)
        try:
            with httpx.stream("GET", url, follow_redirects=True, timeout=60.0) as response:
                response.raise_for_status()
                for chunk in response.iter_bytes():
                    partial.write(chunk)
        except BaseException:
            partial_path.unlink(missing_ok=True)
            raise
    partial_path.rename(target)  # only a complete file ever carries the final name
    return target
