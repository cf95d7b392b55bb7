"""LoRAs kept attached between generations (WanEngine._open_loras): a travel run's next segment with the same files
reuses the attached set instead of reading and attaching them again, and gets exactly what a fresh engine renders;
anything else (no LoRAs, other files, a changed file, an error) starts from the base weights."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from test_generate_with_lora import write_lora

import Wan2GP.loras
from Wan2GP.catalog import Catalog
from Wan2GP.engine import WanEngine


def render(engine: WanEngine, loras: list[Path], multipliers: str = "", **params: object) -> torch.Tensor:
    base = dict(model="wan_tiny_t2v_2_2", prompt="a bird flies", seed=5, num_inference_steps=4, guidance_phases=2)
    if loras:
        base.update(activated_loras=[str(path) for path in loras], loras_multipliers=multipliers)
    return engine.render(engine.resolve({**base, **params})).latents


@pytest.fixture
def lora_files(tmp_path: Path) -> list[Path]:
    return [write_lora(tmp_path / f"lora{seed}.safetensors", seed=seed) for seed in (1, 2, 3)]


@pytest.fixture
def attaches(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, ...]]:
    """Every LoraRuntime the engine opens, by the names of its files."""
    opened: list[tuple[str, ...]] = []
    original = Wan2GP.loras.LoraRuntime.__init__

    def spy(self, transformers, paths, **kwargs):  # noqa: ANN001, ANN202
        opened.append(tuple(Path(path).name for path in paths))
        original(self, transformers, paths, **kwargs)

    monkeypatch.setattr(Wan2GP.loras.LoraRuntime, "__init__", spy)
    return opened


@pytest.mark.parametrize("placement", ["resident", "stream_blocks"])  # merged (CPU's auto) and unmerged adapters
def test_the_same_loras_are_attached_once_and_render_what_a_fresh_engine_does(
    cache_dir: Path, catalog: Catalog, lora_files: list[Path], attaches: list, placement: str
) -> None:
    def engine() -> WanEngine:
        return WanEngine(device="cpu", cache_dir=cache_dir, catalog=catalog, placement=placement)

    pair = lora_files[:2]
    kept = engine()
    render(kept, pair, "0.8;0 0;1.1")
    second = render(kept, pair, "0.5;0.3 1.0;0")  # other strengths, the same files: the next travel segment
    assert attaches == [("lora1.safetensors", "lora2.safetensors")]
    fresh = engine()
    assert torch.equal(second, render(fresh, pair, "0.5;0.3 1.0;0"))

    without = render(kept, [])  # no LoRAs: the base weights, exactly
    never_had_loras = engine()  # not `fresh`: it has LoRAs of its own attached by now
    assert torch.equal(without, render(never_had_loras, []))
    never_had_loras.unload()
    for transformer in kept.load("wan_tiny_t2v_2_2").transformers.values():
        assert not getattr(transformer, "peft_config", None)

    other = render(kept, lora_files[1:], "1.0 1.0")  # another set: attached anew
    assert attaches[-1] == ("lora2.safetensors", "lora3.safetensors")
    assert torch.equal(other, render(fresh, lora_files[1:], "1.0 1.0"))
    kept.unload()
    fresh.unload()


def test_a_changed_file_is_read_again(
    cache_dir: Path, catalog: Catalog, lora_files: list[Path], attaches: list
) -> None:
    engine = WanEngine(device="cpu", cache_dir=cache_dir, catalog=catalog)
    first = render(engine, lora_files[:1], "1.0")
    write_lora(lora_files[0], seed=9)  # the same name, other weights
    stat = lora_files[0].stat()
    os.utime(lora_files[0], ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    changed = render(engine, lora_files[:1], "1.0")
    assert len(attaches) == 2
    assert not torch.allclose(changed, first)
    engine.unload()


def test_a_failed_generation_gives_the_base_weights_back(
    cache_dir: Path, catalog: Catalog, lora_files: list[Path], attaches: list
) -> None:
    engine = WanEngine(device="cpu", cache_dir=cache_dir, catalog=catalog)
    render(engine, lora_files[:1], "1.0")
    transformer = engine.load("wan_tiny_t2v_2_2").transformers["high"]
    handle = transformer.register_forward_pre_hook(lambda *_: (_ for _ in ()).throw(RuntimeError("broken forward")))
    try:
        with pytest.raises(RuntimeError, match="broken forward"):
            render(engine, lora_files[:1], "1.0")
    finally:
        handle.remove()
    assert not getattr(transformer, "_lora_runtime_holding_it", None)  # nothing left written into the weights
    render(engine, lora_files[:1], "1.0")
    assert len(attaches) == 2  # attached anew after the failure
    engine.unload()
