"""Which kernel computes the transformers' attention.

"sdpa" is torch's scaled_dot_product_attention, the path diffusers' own processor takes (on a Hopper GPU it picks
cuDNN's flash kernel, about 560 TFLOP/s on the seed segment's self-attention, half of a compiled forward:
bench/README.md); it runs everywhere and is the reference. "flash4" is FlashAttention-4 (`flash_attn.cute`, written in
CuTe DSL and compiled at run time, so it needs no build step: requirements-hopper.txt), which runs on
compute capability 9.x and 10.x GPUs in bf16 and fp16. "auto" takes flash4 where it can run and sdpa elsewhere.

diffusers' attention dispatch only knows its own backends (its FlashAttention-4 one downloads the kernel from the Hub
at run time), so a chosen kernel is installed as a processor of our own on every `WanAttention`: the same projections,
norms and rotary embedding as diffusers' `WanAttnProcessor`, the attention product by the kernel. With the sdpa
kernel it reproduces diffusers' processor bit for bit (tests/engine/test_attention.py), which is what makes it safe
to swap the product alone.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable

import torch
import torch.nn.functional as F
from diffusers.models.transformers.transformer_wan import (
    WanAttention,
    _get_added_kv_projections,
    _get_qkv_projections,
)
from loguru import logger

TEXT_CONTEXT_TOKENS = 512  # diffusers' Wan I2V processor: the image context is what precedes the last 512 tokens

# (batch, tokens, heads, head_dim) query, key and value in; (batch, tokens, heads, head_dim of value) out
AttentionProduct = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def flash4_unavailable(device: torch.device, dtype: torch.dtype) -> str | None:
    """Why FlashAttention-4 cannot run on `device` for weights of `dtype` (None: it can)."""
    capability = torch.cuda.get_device_capability(device) if device.type == "cuda" else None
    return flash4_refusal(str(device), capability, dtype, installed=flash4_installed())


def flash4_installed() -> bool:
    """Whether FlashAttention-4 can be imported: `flash_attn.cute`, not only FlashAttention-2's `flash_attn`."""
    return (
        importlib.util.find_spec("flash_attn") is not None and importlib.util.find_spec("flash_attn.cute") is not None
    )


def flash4_refusal(
    device: str, capability: tuple[int, int] | None, dtype: torch.dtype, *, installed: bool
) -> str | None:
    """The reason FlashAttention-4 cannot run on `device` (its CUDA compute capability, None for no CUDA GPU) for
    weights of `dtype`, or None where it can."""
    if capability is None:
        return f"{device} is not a CUDA GPU"
    major, minor = capability
    if major not in (9, 10):
        return f"{device} has compute capability {major}.{minor} (FlashAttention-4 runs on 9.x and 10.x)"
    if dtype not in (torch.bfloat16, torch.float16):
        return f"the transformer computes in {dtype} (FlashAttention-4 takes bf16 and fp16)"
    if not installed:
        return "flash-attn-4 is not installed (pip install -r requirements-hopper.txt)"
    return None


def choose_attention_kernel(wanted: str, device: torch.device, dtype: torch.dtype, *, context_parallel: bool) -> str:
    """The kernel a load installs on `device` for a transformer computing in `dtype` (pick_attention_kernel)."""
    refused = (
        "context-parallel ranks keep diffusers' processor, whose hooks split the sequence"
        if context_parallel
        else flash4_unavailable(device, dtype)
    )
    return pick_attention_kernel(wanted, refused, device=str(device))


def pick_attention_kernel(wanted: str, flash4_refused: str | None, *, device: str) -> str:
    """`wanted` itself, or for "auto" flash4 unless `flash4_refused` says why it cannot run, then sdpa. An explicit
    "flash4" that cannot run is an error, not a silent slowdown."""
    if wanted == "sdpa":
        return "sdpa"
    if flash4_refused is None:
        logger.info("attention by FlashAttention-4 on {}", device)
        return "flash4"
    if wanted == "flash4":
        raise ValueError(f"attention: 'flash4' cannot run here: {flash4_refused}")
    logger.info("attention by SDPA: {}", flash4_refused)
    return "sdpa"


def sdpa_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """torch's SDPA in the token-major layout: what diffusers' native backend computes."""
    heads_first = (tensor.transpose(1, 2) for tensor in (query, key, value))
    return F.scaled_dot_product_attention(*heads_first).transpose(1, 2)


@torch.library.custom_op("headless_wan::flash4_attention", mutates_args=())
def flash4_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """FlashAttention-4's forward. An opaque operator to torch.compile (its fake below gives the output's shape), so a
    full-graph compile of a block calls the kernel instead of tracing into CuTe DSL."""
    from flash_attn.cute import flash_attn_func  # imported on first use: it loads the CuTe DSL compiler

    out, _ = flash_attn_func(query, key, value)
    return out


@flash4_attention.register_fake
def _flash4_output_like(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    return query.new_empty((*query.shape[:-1], value.shape[-1]))


ATTENTION_PRODUCTS: dict[str, AttentionProduct] = {"sdpa": sdpa_attention, "flash4": flash4_attention}


def _rotated(states: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Wan's rotary embedding on interleaved (even, odd) channel pairs, computed in the frequencies' precision."""
    even, odd = states.unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = cos[..., 0::2], sin[..., 1::2]
    return torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1).flatten(-2).type_as(states)


class KernelAttnProcessor:
    """A `WanAttention` processor whose attention products (self-, text and image cross-attention) are `product`."""

    def __init__(self, product: AttentionProduct) -> None:
        self.product = product

    def __call__(
        self,
        attn: WanAttention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        if attention_mask is not None:  # Wan's blocks never pass one; the kernels here take none
            raise ValueError("KernelAttnProcessor: attention masks are not supported")
        image_context = None
        if attn.add_k_proj is not None:
            assert encoder_hidden_states is not None
            image_tokens = encoder_hidden_states.shape[1] - TEXT_CONTEXT_TOKENS
            image_context = encoder_hidden_states[:, :image_tokens]
            encoder_hidden_states = encoder_hidden_states[:, image_tokens:]

        query, key, value = _get_qkv_projections(attn, hidden_states, encoder_hidden_states)
        query, key = attn.norm_q(query), attn.norm_k(key)
        query, key, value = (tensor.unflatten(2, (attn.heads, -1)) for tensor in (query, key, value))
        if rotary_emb is not None:
            query, key = _rotated(query, *rotary_emb), _rotated(key, *rotary_emb)

        out = self.product(query, key, value).flatten(2, 3).type_as(query)
        if image_context is not None:
            image_key, image_value = _get_added_kv_projections(attn, image_context)
            image_key = attn.norm_added_k(image_key).unflatten(2, (attn.heads, -1))
            image_value = image_value.unflatten(2, (attn.heads, -1))
            out = out + self.product(query, image_key, image_value).flatten(2, 3).type_as(query)
        return attn.to_out[1](attn.to_out[0](out))


def install_attention_kernel(transformer: torch.nn.Module, kernel: str) -> int:
    """Give every `WanAttention` of `transformer` the processor of `kernel` ("sdpa" keeps diffusers' own); returns
    how many attention modules it changed."""
    if kernel == "sdpa":
        return 0
    changed = 0
    for module in transformer.modules():
        if isinstance(module, WanAttention):
            module.set_processor(KernelAttnProcessor(ATTENTION_PRODUCTS[kernel]))
            changed += 1
    return changed
