"""Model folders on disk: what a Wan repo holds where, where the engine caches, and folders written so that no reader
ever sees half of one (pure Python: the tiny Wan models and the tiny VLM share it without importing each other's
libraries)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

# Where each expert's transformer lives in a diffusers-format Wan repo.
TRANSFORMER_SUBFOLDERS = {"high": "transformer", "low": "transformer_2"}


class ModelLoadError(RuntimeError):
    """The weights of a catalog model could not be found, downloaded or loaded."""


def default_cache_dir() -> Path:
    """Where the engine keeps what it builds or converts (tiny models, LoRAs): $WAN2GP_CACHE, else ~/.cache/wan2gp.
    Hugging Face downloads stay in the Hub's own cache (HF_HOME)."""
    return Path(os.environ.get("WAN2GP_CACHE") or Path.home() / ".cache" / "wan2gp")


def tiny_model_folder(cache_dir: Path, model_id: str) -> Path:
    """The folder a tiny catalog model is built in."""
    return Path(cache_dir) / "tiny" / model_id


def build_folder_atomically(
    target_dir: Path, build: Callable[[Path], None], is_current: Callable[[Path], bool]
) -> Path:
    """`build` fills a staging folder beside `target_dir`, which is then renamed into place: a crashed or concurrent
    build never leaves a half-written model behind. When another process finished the same build first
    (`is_current`), its folder is kept (it may already be loading it)."""
    target_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target_dir.name}.", dir=target_dir.parent))
    try:
        build(staging)
        if is_current(target_dir):
            shutil.rmtree(staging, ignore_errors=True)
            return target_dir
        if target_dir.exists():
            shutil.rmtree(target_dir)
        staging.rename(target_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target_dir
