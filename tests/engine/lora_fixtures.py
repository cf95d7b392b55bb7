"""Tiny Wan transformers and LoRA files in every supported format, built from one set of LoRA weights.

A `LoraSpec` holds, per target module (diffusers name), the down matrix A (rank x in), the up matrix B (out x rank)
and alpha; its effective weight delta is (alpha / rank) * B @ A. The writers save that same LoRA as a diffusers,
original Wan (ComfyUI) or kohya/musubi file, so a test can check that every format gives the same delta.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import WanTransformer3DModel
from safetensors.torch import save_file

NUM_LAYERS = 2
ATTENTION_MODULES = [f"attn{a}.{p}" for a in (1, 2) for p in ("to_q", "to_k", "to_v", "to_out.0")]
FFN_MODULES = ["ffn.net.0.proj", "ffn.net.2"]

# diffusers module name inside a block -> original Wan name (ComfyUI) inside a block
_ORIGINAL_NAMES = {
    "attn1.to_q": "self_attn.q",
    "attn1.to_k": "self_attn.k",
    "attn1.to_v": "self_attn.v",
    "attn1.to_out.0": "self_attn.o",
    "attn2.to_q": "cross_attn.q",
    "attn2.to_k": "cross_attn.k",
    "attn2.to_v": "cross_attn.v",
    "attn2.to_out.0": "cross_attn.o",
    "attn2.add_k_proj": "cross_attn.k_img",
    "attn2.add_v_proj": "cross_attn.v_img",
    "ffn.net.0.proj": "ffn.0",
    "ffn.net.2": "ffn.2",
}


def tiny_transformer(seed: int = 0, *, in_channels: int = 16, num_layers: int = NUM_LAYERS, **overrides: object):
    """The tiny Wan transformer of machine_feasibility §3 (random weights, fp32, eval mode)."""
    torch.manual_seed(seed)
    config: dict[str, object] = dict(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=12,
        in_channels=in_channels,
        out_channels=16,
        text_dim=32,
        freq_dim=256,
        ffn_dim=32,
        num_layers=num_layers,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        rope_max_seq_len=32,
    )
    config.update(overrides)
    return WanTransformer3DModel(**config).eval()


@dataclass(frozen=True)
class TransformerInputs:
    hidden_states: torch.Tensor
    encoder_hidden_states: torch.Tensor
    timestep: torch.Tensor
    encoder_hidden_states_image: torch.Tensor | None = None


def transformer_inputs(
    seed: int = 1, *, in_channels: int = 16, frames: int = 2, size: int = 8, image_dim: int | None = None
) -> TransformerInputs:
    generator = torch.Generator().manual_seed(seed)
    return TransformerInputs(
        hidden_states=torch.randn(1, in_channels, frames, size, size, generator=generator),
        # with image tokens, diffusers' Wan attention takes the last 512 text tokens as text (WGP pads to 512)
        encoder_hidden_states=torch.randn(1, 8 if image_dim is None else 512, 32, generator=generator),
        timestep=torch.tensor([500.0]),
        encoder_hidden_states_image=None if image_dim is None else torch.randn(1, 5, image_dim, generator=generator),
    )


@torch.no_grad()
def run(transformer: torch.nn.Module, inputs: TransformerInputs) -> torch.Tensor:
    return transformer(
        hidden_states=inputs.hidden_states,
        encoder_hidden_states=inputs.encoder_hidden_states,
        timestep=inputs.timestep,
        encoder_hidden_states_image=inputs.encoder_hidden_states_image,
        return_dict=False,
    )[0]


@dataclass(frozen=True)
class LoraSpec:
    down: dict[str, torch.Tensor]  # diffusers module name -> A (rank x in)
    up: dict[str, torch.Tensor]  # diffusers module name -> B (out x rank)
    alpha: float
    rank: int

    def delta(self, module: str) -> torch.Tensor:
        return (self.alpha / self.rank) * self.up[module] @ self.down[module]


def make_lora_spec(
    transformer: torch.nn.Module,
    *,
    seed: int,
    rank: int = 4,
    alpha: float = 2.0,
    block_modules: list[str] | None = None,
    scale: float = 0.3,
) -> LoraSpec:
    """Random LoRA for `block_modules` (default: every attention and ffn Linear) of every block."""
    generator = torch.Generator().manual_seed(seed)
    linears = dict(transformer.named_modules())
    down: dict[str, torch.Tensor] = {}
    up: dict[str, torch.Tensor] = {}
    for block in range(len(transformer.blocks)):
        for inner in block_modules if block_modules is not None else ATTENTION_MODULES + FFN_MODULES:
            name = f"blocks.{block}.{inner}"
            linear = linears[name]
            down[name] = torch.randn(rank, linear.in_features, generator=generator) * scale
            up[name] = torch.randn(linear.out_features, rank, generator=generator) * scale
    return LoraSpec(down=down, up=up, alpha=alpha, rank=rank)


def write_diffusers(spec: LoraSpec, path: Path, *, alpha_in: str = "folded") -> Path:
    """diffusers/peft keys; alpha folded into A ("folded"), as `.alpha` keys ("keys") or in metadata ("metadata")."""
    tensors: dict[str, torch.Tensor] = {}
    metadata: dict[str, str] = {"format": "pt"}
    for module in spec.down:
        down = spec.down[module] * (spec.alpha / spec.rank) if alpha_in == "folded" else spec.down[module]
        tensors[f"transformer.{module}.lora_A.weight"] = down.contiguous()
        tensors[f"transformer.{module}.lora_B.weight"] = spec.up[module].contiguous()
        if alpha_in == "keys":
            tensors[f"transformer.{module}.alpha"] = torch.tensor(spec.alpha)
    if alpha_in == "metadata":
        config = {"transformer.r": spec.rank, "transformer.lora_alpha": spec.alpha, "transformer.use_dora": False}
        metadata["lora_adapter_metadata"] = json.dumps(config)
    save_file(tensors, str(path), metadata=metadata)
    return path


def original_name(module: str) -> str:
    """blocks.N.<diffusers inner name> -> blocks.N.<original Wan inner name>."""
    _, block, inner = module.split(".", 2)
    return f"blocks.{block}.{_ORIGINAL_NAMES[inner]}"


def write_original(spec: LoraSpec, path: Path, extra: dict[str, torch.Tensor] | None = None) -> Path:
    tensors: dict[str, torch.Tensor] = {}
    for module in spec.down:
        name = f"diffusion_model.{original_name(module)}"
        tensors[f"{name}.lora_down.weight"] = spec.down[module].contiguous()
        tensors[f"{name}.lora_up.weight"] = spec.up[module].contiguous()
        tensors[f"{name}.alpha"] = torch.tensor(spec.alpha)
    tensors.update(extra or {})
    save_file(tensors, str(path))
    return path


def write_kohya(spec: LoraSpec, path: Path) -> Path:
    tensors: dict[str, torch.Tensor] = {}
    for module in spec.down:
        name = "lora_unet_" + original_name(module).replace(".", "_")
        tensors[f"{name}.lora_down.weight"] = spec.down[module].contiguous()
        tensors[f"{name}.lora_up.weight"] = spec.up[module].contiguous()
        tensors[f"{name}.alpha"] = torch.tensor(spec.alpha)
    save_file(tensors, str(path))
    return path


def patched_copy(transformer: torch.nn.Module, terms: list[tuple[LoraSpec, float]]) -> torch.nn.Module:
    """A deep copy of `transformer` with sum of strength * delta added to the weights: the reference result."""
    reference = copy.deepcopy(transformer)
    linears = dict(reference.named_modules())
    with torch.no_grad():
        for spec, strength in terms:
            for module in spec.down:
                linears[module].weight += strength * spec.delta(module)
    return reference


def base_weights(transformer: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in transformer.state_dict().items()}
