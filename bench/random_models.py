"""Random-weight Wan models made directly on a device, for the GPU benchmarks (a CPU init of 2 x 14B would take
longer than the benchmark). Shared by lora_modes.py and engine_step.py, which import it from this folder."""

from __future__ import annotations

import math
from typing import Any

import torch
from diffusers import WanTransformer3DModel
from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed
from transformers import UMT5Config, UMT5EncoderModel

# One Wan 2.2 A14B expert in diffusers' WanTransformer3DModel names (t2v: 16 input channels; i2v: 36).
A14B_CONFIG: dict[str, Any] = dict(
    patch_size=(1, 2, 2),
    num_attention_heads=40,
    attention_head_dim=128,
    in_channels=16,
    out_channels=16,
    text_dim=4096,
    freq_dim=256,
    ffn_dim=13824,
    num_layers=40,
    cross_attn_norm=True,
    qk_norm="rms_norm_across_heads",
    eps=1e-6,
)
# The same model shrunk for a CPU smoke test of a benchmark's logic.
TINY_OVERRIDES: dict[str, Any] = dict(num_attention_heads=2, attention_head_dim=16, text_dim=32, ffn_dim=64)


def fill_random(model: torch.nn.Module, generator: torch.Generator) -> None:
    """In place, on the model's device: weights N(0, 1/fan_in), norm weights 1, biases and tables small.

    Random (never zeros: zeros can time faster than real data) and scaled so activations stay O(1).
    """
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("scale_shift_table"):
                param.normal_(0.0, 1.0 / math.sqrt(param.shape[-1]), generator=generator)
            elif param.ndim >= 2 and "embed_tokens" not in name and name != "shared.weight":
                param.normal_(0.0, 1.0 / math.sqrt(math.prod(param.shape[1:])), generator=generator)
            elif param.ndim >= 2:  # token embedding table
                param.normal_(0.0, 1.0, generator=generator)
            elif "norm" in name and name.endswith("weight"):
                param.fill_(1.0)
            else:
                param.normal_(0.0, 0.02, generator=generator)


def build_transformer(config: dict[str, Any], device: torch.device, seed: int) -> WanTransformer3DModel:
    """Like from_pretrained(torch_dtype=bf16): bf16, but diffusers' _keep_in_fp32_modules stay fp32."""
    with torch.device("meta"):
        model = WanTransformer3DModel(**config)
    keep_fp32 = set(model._keep_in_fp32_modules or [])
    for module_name, module in model.named_modules():
        for param_name, param in list(module._parameters.items()):
            if param is None:
                continue
            full_name = f"{module_name}.{param_name}" if module_name else param_name
            dtype = torch.float32 if keep_fp32 & set(full_name.split(".")) else torch.bfloat16
            module._parameters[param_name] = torch.nn.Parameter(param.to(dtype), requires_grad=False)
    model.to_empty(device=device)
    fill_random(model, torch.Generator(device=device).manual_seed(seed))
    # rope's non-persistent tables were made on the meta device: compute them for real (fp32, like the loader)
    rope = WanRotaryPosEmbed(model.config.attention_head_dim, model.config.patch_size, model.config.rope_max_seq_len)
    model.rope.freqs_cos = rope.freqs_cos.to(device=device, dtype=torch.float32)
    model.rope.freqs_sin = rope.freqs_sin.to(device=device, dtype=torch.float32)
    return model.eval().requires_grad_(False)


def build_text_encoder(config: dict[str, Any], device: torch.device, seed: int) -> UMT5EncoderModel:
    with torch.device("meta"):
        model = UMT5EncoderModel(UMT5Config(**config))
    model = model.to(torch.bfloat16).to_empty(device=device)
    fill_random(model, torch.Generator(device=device).manual_seed(seed))
    return model.eval().requires_grad_(False)


def run_versions() -> dict[str, str]:
    """What a benchmark's results were measured with."""
    import sys
    from importlib.metadata import PackageNotFoundError, version

    import diffusers
    import transformers

    versions = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
    }
    for optional in ("peft", "torchao", "flash-attn-3", "flash-attn-4", "nvidia-cutlass-dsl"):
        try:
            versions[optional] = version(optional)
        except PackageNotFoundError:
            pass
    return versions
