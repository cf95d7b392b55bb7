"""LoRAs through the engine: resolved by path or name, strengths from the plan applied, base weights restored; URLs
refused (its callers download them: the worker through its LoRA store)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from Wan2GP.catalog import default_catalog_dir, load_catalog
from Wan2GP.engine import InvalidGenerationParams, WanEngine

INNER_DIM = 24  # tiny transformer: 2 heads x 12
RANK = 4


def write_lora(path: Path, seed: int) -> Path:
    """A diffusers/peft-format LoRA on every attention projection of both tiny blocks, strong enough to matter."""
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for block in range(2):
        for attention in ("attn1", "attn2"):
            for projection in ("to_q", "to_k", "to_v", "to_out.0"):
                prefix = f"transformer.blocks.{block}.{attention}.{projection}"
                tensors[f"{prefix}.lora_A.weight"] = torch.randn(RANK, INNER_DIM, generator=generator) * 0.5
                tensors[f"{prefix}.lora_B.weight"] = torch.randn(INNER_DIM, RANK, generator=generator) * 0.5
    save_file(tensors, str(path))
    return path


def latents(engine: WanEngine, **params: object) -> torch.Tensor:
    base = dict(prompt="a bird flies over the sea", seed=3, num_inference_steps=4)
    return engine.render(engine.resolve({**base, **params})).latents


def test_lora_strength_is_applied_and_weights_restored(engine: WanEngine, tmp_path: Path) -> None:
    lora = write_lora(tmp_path / "style.safetensors", seed=1)
    transformer = engine.load("wan_tiny_t2v").transformers["high"]
    weights_before = {name: value.clone() for name, value in transformer.state_dict().items()}

    base = latents(engine, model="wan_tiny_t2v")
    full = latents(engine, model="wan_tiny_t2v", activated_loras=[str(lora)], loras_multipliers="1.0")
    half = latents(engine, model="wan_tiny_t2v", activated_loras=[str(lora)], loras_multipliers="0.5")
    off = latents(engine, model="wan_tiny_t2v", activated_loras=[str(lora)], loras_multipliers="0")

    assert (full - base).abs().max() > 1e-2
    assert (half - full).abs().max() > 1e-3
    assert torch.allclose(off, base, atol=1e-5, rtol=0)
    weights_after = transformer.state_dict()
    assert weights_after.keys() == weights_before.keys()
    assert all(torch.equal(weights_after[name], value) for name, value in weights_before.items())


def test_lora_by_name_from_the_lora_dir(engine: WanEngine) -> None:
    engine.lora_dir.mkdir(parents=True, exist_ok=True)
    write_lora(engine.lora_dir / "named_style.safetensors", seed=2)
    by_name = latents(engine, model="wan_tiny_t2v", activated_loras=["named_style"])
    base = latents(engine, model="wan_tiny_t2v")
    assert (by_name - base).abs().max() > 1e-2  # a missing multiplier means 1.0


def test_per_phase_strengths_on_two_experts(engine: WanEngine, tmp_path: Path) -> None:
    lora = write_lora(tmp_path / "phased.safetensors", seed=4)
    params = dict(model="wan_tiny_i2v_2_2", activated_loras=[str(lora)])
    base = latents(engine, model="wan_tiny_i2v_2_2")
    high_only = latents(engine, **params, loras_multipliers="1;0")
    low_only = latents(engine, **params, loras_multipliers="0;1")
    both = latents(engine, **params, loras_multipliers="1;1")
    neither = latents(engine, **params, loras_multipliers="0;0")
    assert torch.allclose(neither, base, atol=1e-5, rtol=0)
    for variant in (high_only, low_only):
        assert (variant - base).abs().max() > 1e-2
        assert (variant - both).abs().max() > 1e-3
    assert (high_only - low_only).abs().max() > 1e-3


def test_missing_lora_is_bad_input(engine: WanEngine) -> None:
    with pytest.raises(InvalidGenerationParams) as caught:
        latents(engine, model="wan_tiny_t2v", activated_loras=["does_not_exist.safetensors"])
    assert caught.value.fields == ("activated_loras",)
    assert "does_not_exist" in str(caught.value)


def test_unreadable_lora_is_bad_input_and_leaves_no_adapter(engine: WanEngine, tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.safetensors"
    save_file({"unrelated.weight": torch.zeros(2, 2)}, str(bogus))
    with pytest.raises(InvalidGenerationParams) as caught:
        latents(engine, model="wan_tiny_t2v", activated_loras=[str(bogus)])
    assert caught.value.fields == ("activated_loras",)
    transformer = engine.load("wan_tiny_t2v").transformers["high"]
    assert not getattr(transformer, "peft_config", None)
    # and the engine still works afterwards
    assert torch.isfinite(latents(engine, model="wan_tiny_t2v")).all()


def test_full_delta_lora_applies_per_phase_and_is_undone(engine: WanEngine, tmp_path: Path) -> None:
    """LightX2V's extractor with --diff-only (ModelTC/LightX2V tools/extract/lora_extractor.py): no pair at all,
    only .diff (weights), .diff_b (biases) and .diff_m (modulation tables), once refused whole."""
    generator = torch.Generator().manual_seed(5)
    tensors = {"diffusion_model.head.diff_m": torch.randn(1, 2, INNER_DIM, generator=generator) * 0.5}
    for block in range(2):
        prefix = f"diffusion_model.blocks.{block}"
        tensors[f"{prefix}.diff_m"] = torch.randn(1, 6, INNER_DIM, generator=generator) * 0.5
        tensors[f"{prefix}.self_attn.q.diff"] = torch.randn(INNER_DIM, INNER_DIM, generator=generator) * 0.3
        tensors[f"{prefix}.self_attn.q.diff_b"] = torch.randn(INNER_DIM, generator=generator) * 0.3
        tensors[f"{prefix}.cross_attn.norm_q.diff"] = torch.randn(INNER_DIM, generator=generator) * 0.3
    lora = tmp_path / "diff_only.safetensors"
    save_file({key: value.to(torch.bfloat16) for key, value in tensors.items()}, str(lora))
    experts = engine.load("wan_tiny_i2v_2_2").transformers
    before = {expert: {n: v.clone() for n, v in t.state_dict().items()} for expert, t in experts.items()}

    params = dict(model="wan_tiny_i2v_2_2", activated_loras=[str(lora)])
    base = latents(engine, model="wan_tiny_i2v_2_2")
    high_only = latents(engine, **params, loras_multipliers="1;0")
    both = latents(engine, **params, loras_multipliers="1;1")
    neither = latents(engine, **params, loras_multipliers="0;0")
    assert torch.equal(neither, base)
    assert (high_only - base).abs().max() > 1e-2
    assert (both - high_only).abs().max() > 1e-3
    for expert, transformer in experts.items():
        assert all(torch.equal(transformer.state_dict()[n], v) for n, v in before[expert].items())


HUB_LORA_URL = "https://huggingface.co/someone/wan-loras/resolve/main/style.safetensors?token=SIGNED-SECRET"
BUILT_IN_MODEL = "wan_tiny_t2v_built_in_lora"


@pytest.fixture
def built_in_lora_engine(engine: WanEngine, tmp_path: Path) -> WanEngine:
    """An engine whose catalog has wan_tiny_t2v (same seed, same weights) with a built-in LoRA named by URL."""
    definition = json.loads((default_catalog_dir() / "wan_tiny_t2v.json").read_text())
    definition["model"].update(loras=[HUB_LORA_URL], loras_multipliers=["0.5"])
    folder = tmp_path / "catalog"
    folder.mkdir()
    (folder / f"{BUILT_IN_MODEL}.json").write_text(json.dumps(definition))
    return WanEngine(device="cpu", cache_dir=engine.cache_dir, catalog=load_catalog(extra_dirs=[folder]))


def test_a_lora_url_handed_to_the_engine_is_refused_naming_the_field(engine: WanEngine, fake_hub, tmp_path) -> None:
    local = write_lora(tmp_path / "local.safetensors", seed=6)
    with pytest.raises(InvalidGenerationParams) as caught:
        engine.resolve({"model": "wan_tiny_t2v", "activated_loras": [str(local), HUB_LORA_URL]})
    assert caught.value.fields == ("activated_loras",)
    message = str(caught.value)
    assert message.startswith("activated_loras[1]: ") and "download it first" in message
    assert "SIGNED-SECRET" not in message and "style.safetensors" not in message  # the host only
    assert fake_hub.requests == []  # nothing fetched, not even from the Hub


def test_a_built_in_lora_url_is_refused_until_the_caller_hands_over_its_file(
    built_in_lora_engine: WanEngine, engine: WanEngine, fake_hub, tmp_path: Path
) -> None:
    with pytest.raises(InvalidGenerationParams) as caught:
        built_in_lora_engine.resolve({"model": BUILT_IN_MODEL})
    assert caught.value.fields == ("builtin_lora_files",)
    message = str(caught.value)
    assert message.startswith(f"builtin_lora_files: model {BUILT_IN_MODEL}'s built-in LoRA loras[0] is a URL")
    assert "download it first" in message and "SIGNED-SECRET" not in message
    for files, field in (([HUB_LORA_URL], "builtin_lora_files[0]"), ([], "builtin_lora_files")):
        with pytest.raises(InvalidGenerationParams, match=rf"^{re.escape(field)}: ") as caught:
            built_in_lora_engine.resolve({"model": BUILT_IN_MODEL, "builtin_lora_files": files})
        assert caught.value.fields == ("builtin_lora_files",)
    assert fake_hub.requests == []

    # The downloaded file in its place runs at the definition's multiplier, before the caller's LoRAs.
    lora = write_lora(tmp_path / "built_in.safetensors", seed=7)
    built_in = latents(built_in_lora_engine, model=BUILT_IN_MODEL, builtin_lora_files=[str(lora)])
    same = latents(engine, model="wan_tiny_t2v", activated_loras=[str(lora)], loras_multipliers="0.5")
    assert torch.allclose(built_in, same, atol=1e-5, rtol=0)
    request = built_in_lora_engine.resolve(
        {"model": BUILT_IN_MODEL, "builtin_lora_files": [str(lora)], "activated_loras": ["named_style"]}
    )
    assert request.lora_sources == (str(lora), "named_style")
    assert request.lora_fields == ("builtin_lora_files[0]", "activated_loras[0]")
    built_in_lora_engine.unload()
