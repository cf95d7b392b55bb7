"""Where a LoRA named in a request lives on disk: a local path or a name in the LoRA folder.

The engine fetches no LoRA URLs, the model definitions' built-in ones included: its caller downloads them first (the
worker through its LoRA store, with size caps, content checks and the Hub's sha256) and hands it local files. One
fetcher, outside the engine.
"""

from __future__ import annotations

from pathlib import Path

from Wan2GP.request import InvalidGenerationParams, is_url, lora_url_refused


def resolve_lora_file(source: str, lora_dir: Path, *, field: str) -> Path:
    """A local file for ``source`` (a path, or a name in ``lora_dir``); a URL is refused, naming ``field``."""
    if is_url(source):
        raise lora_url_refused(source, field)
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
