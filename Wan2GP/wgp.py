"""``generate_video`` with upstream WGP's parameter names: a thin convenience over ``WanEngine``.

Scripts can call it directly; a long-lived process (the worker) passes its own ``engine`` so the model stays loaded
between calls. Without ``engine`` a fresh one is made for the call (and the model is loaded for that call only).

    from Wan2GP.wgp import generate_video
    result = generate_video(model="wan_tiny_t2v", prompt="a cat walks on the beach", output_dir="outputs")
    print(result.path, result.frames, result.forward_passes)
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from Wan2GP.engine import (
    GenerationCancelled,
    GenerationResult,
    InvalidGenerationParams,
    ProgressEvent,
    WanEngine,
)

__all__ = [
    "GenerationCancelled",
    "GenerationResult",
    "InvalidGenerationParams",
    "ProgressEvent",
    "WanEngine",
    "generate_video",
]


def generate_video(
    *,
    model: str,
    output_dir: str | Path = "outputs",
    progress_callback: Callable[[ProgressEvent], None] | None = None,
    cancel_event: threading.Event | None = None,
    engine: WanEngine | None = None,
    **wgp_params: Any,
) -> GenerationResult:
    """Generate one video with ``model`` (a catalog id) and WGP-named parameters; returns where it was written.

    Unknown parameter names raise InvalidGenerationParams listing them; missing ones come from the model definition,
    then the system defaults. Cancelling via ``cancel_event`` raises GenerationCancelled between denoising steps.

    LoRAs are local files or names in the engine's LoRA folder: the engine fetches no URLs, so a URL in
    ``activated_loras`` is refused naming it. A model whose definition names built-in LoRAs by URL needs them
    downloaded first and passed as ``builtin_lora_files`` (one local file per entry of the definition's ``loras``, in
    its order; not a WGP name); the worker does this through its LoRA store.
    """
    engine = engine if engine is not None else WanEngine()
    return engine.generate(
        {"model": model, **wgp_params},
        output_dir=Path(output_dir),
        progress=progress_callback,
        cancel=cancel_event,
    )
