"""LoRA files for the tiny random-weight models, written in the original Wan layout, for tests that run LoRAs through
the worker end to end."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from Wan2GP.catalog import load_catalog
from Wan2GP.loading import load_model


def write_tiny_lora(model_id: str, cache: Path, path: Path, seed: int) -> str:
    """An original-Wan-format LoRA (rank 4) on every block's self-attention query of the tiny model `model_id`."""
    loaded = load_model(load_catalog().get(model_id), cache, torch.device("cpu"))
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for index, block in enumerate(loaded.transformers["high"].blocks):
        linear = block.attn1.to_q
        tensors[f"diffusion_model.blocks.{index}.self_attn.q.lora_down.weight"] = (
            torch.randn(4, linear.in_features, generator=generator) * 0.2
        )
        tensors[f"diffusion_model.blocks.{index}.self_attn.q.lora_up.weight"] = (
            torch.randn(linear.out_features, 4, generator=generator) * 0.2
        )
    save_file(tensors, str(path))
    return str(path)
