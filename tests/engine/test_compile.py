"""`WanEngine(compile_backend=...)` (the worker's --compile): the transformers' repeated block goes through
torch.compile when the model is resident, and the video is the uncompiled engine's. Here with dynamo's "eager" backend
(the graph is captured and replayed with the same operators; inductor's code generation is what the H200 benchmark
measures, bench/README.md), so the latents must match exactly, LoRAs and their per-phase strengths included."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from log_capture import captured_messages
from test_generate_with_lora import write_lora

from Wan2GP.catalog import Catalog
from Wan2GP.engine import WanEngine

MODEL = "wan_tiny_t2v"


def _params(**extra: object) -> dict:
    return dict(
        model=MODEL, prompt="a red cat", video_length=9, num_inference_steps=4, guidance_scale=3.0, seed=5, **extra
    )


def _compiled(transformer: torch.nn.Module) -> bool:
    return all(getattr(block, "_compiled_call_impl", None) is not None for block in transformer.blocks)


def test_compiled_blocks_give_the_uncompiled_latents(
    engine: WanEngine, cache_dir: Path, catalog: Catalog, tmp_path: Path
) -> None:
    lora = write_lora(tmp_path / "lora.safetensors", seed=3)
    with_lora = _params(
        activated_loras=[str(lora)], loras_multipliers="0.5;1.0", guidance_phases=2, guidance2_scale=1.0
    )
    compiled = WanEngine(device="cpu", cache_dir=cache_dir, catalog=catalog, compile_backend="eager")
    try:
        for params in (_params(), with_lora):
            expected = engine.render(engine.resolve(params)).latents
            actual = compiled.render(compiled.resolve(params)).latents
            assert torch.equal(actual, expected)
        assert all(_compiled(transformer) for transformer in compiled.load(MODEL).transformers.values())
    finally:
        compiled.unload()


@pytest.mark.parametrize("placement", ["stream_blocks"])
def test_streamed_blocks_are_not_compiled(cache_dir: Path, catalog: Catalog, placement: str) -> None:
    engine = WanEngine(device="cpu", cache_dir=cache_dir, catalog=catalog, compile_backend="eager", placement=placement)
    try:
        with captured_messages("INFO") as messages:
            transformers = engine.load(MODEL).transformers
        assert not any(_compiled(transformer) for transformer in transformers.values())
        assert f"not compiling the transformers: placement {placement} (compiled only when resident on one GPU)" in (
            messages
        )
    finally:
        engine.unload()
