"""LoRAs through the engine: resolved by path or name, strengths from the plan applied, base weights restored."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

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
