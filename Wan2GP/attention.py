"""Which kernel computes the transformers' attention.

"sdpa" is torch's scaled_dot_product_attention, the path diffusers' own processor takes (on a Hopper GPU it picks
cuDNN's flash kernel, about 560 TFLOP/s on the seed segment's self-attention, half of a compiled forward:
bench/README.md); it runs everywhere and is the reference. "flash4" is FlashAttention-4 (`flash_attn.cute`, written in
CuTe DSL and compiled at run time, so it needs no build step: requirements-hopper.txt), which runs on
compute capability 9.x and 10.x GPUs in bf16 and fp16. "flash3" is FlashAttention-3 (`flash_attn_interface`, C++/CUDA
for Hopper, compute capability 9.x, bf16 and fp16; not on PyPI: it is built from its repository's `hopper/` folder,
bench/README.md says how). "auto" takes flash3, then flash4, where they can run, and sdpa elsewhere: on the H200 the
two FlashAttention kernels ran the seed segment's self-attention within 1% of each other and about 9% under SDPA's
time (bench/README.md); FA3 comes first because its kernel is compiled ahead, where FA4 compiles at its first call.

diffusers' attention dispatch only knows its own backends (its FlashAttention-4 one downloads the kernel from the Hub
at run time), so a chosen kernel is installed as a processor of our own on every `WanAttention`: the same projections,
norms and rotary embedding as diffusers' `WanAttnProcessor`, the attention product by the kernel. With the sdpa
kernel it reproduces diffusers' processor bit for bit (tests/engine/test_attention.py), which is what makes it safe
to swap the product alone.

"cudnn_fp8" is lossy and belongs to the fast path (fp8 Linear layers already quantize every block's activations):
the self-attention's query, key and value are scaled per tensor into float8_e4m3fn and cuDNN's fp8 flash kernel
(`nvidia-cudnn-frontend`, on compute capability 9.x/10.x with cuDNN >= 9.1) multiplies them, its softmax
probabilities and output in fp8 too. The text and image cross-attention (512 keys, under 2% of the FLOPs) keep the
bf16 kernel. On a CPU the operator runs `emulated_fp8_attention`, the same quantization steps in fp32 arithmetic, so
the scaling around the kernel is tested without a GPU, and the GPU benchmark compares cuDNN's result with it.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from diffusers.models.transformers.transformer_wan import (
    WanAttention,
    _get_added_kv_projections,
    _get_qkv_projections,
)
from loguru import logger

from Wan2GP.cudnn_fp8 import FP8_MAX, PROBABILITY_SCALE, cudnn_fp8_plan, cudnn_frontend_backend_version

TEXT_CONTEXT_TOKENS = 512  # diffusers' Wan I2V processor: the image context is what precedes the last 512 tokens

CUDNN_FP8_MIN_VERSION = 90100  # cuDNN's fp8 flash-attention forward came with 9.1 (Hopper) and runs on Blackwell

# the optional bf16 kernels in the order "auto" tries them (equally fast on the H200; FA3 needs no run-time compile)
BF16_KERNELS_FASTEST_FIRST = ("flash3", "flash4")

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
    refused = _hopper_or_blackwell_refusal("FlashAttention-4", device, capability, dtype)
    if refused is None and not installed:
        return "flash-attn-4 is not installed (pip install -r requirements-hopper.txt)"
    return refused


def flash3_unavailable(device: torch.device, dtype: torch.dtype) -> str | None:
    """Why FlashAttention-3 cannot run on `device` for weights of `dtype` (None: it can)."""
    capability = torch.cuda.get_device_capability(device) if device.type == "cuda" else None
    return flash3_refusal(str(device), capability, dtype, installed=flash3_installed())


def flash3_installed() -> bool:
    """Whether FlashAttention-3 can be imported: its interface module and its compiled package."""
    return all(importlib.util.find_spec(name) is not None for name in ("flash_attn_interface", "flash_attn_3"))


def flash3_refusal(
    device: str, capability: tuple[int, int] | None, dtype: torch.dtype, *, installed: bool
) -> str | None:
    """The reason FlashAttention-3 cannot run on `device` (its CUDA compute capability, None for no CUDA GPU) for
    weights of `dtype`, or None where it can. Its Hopper kernels use 9.0a's warpgroup instructions: 9.x only."""
    if capability is not None and capability[0] != 9:
        return f"{device} has compute capability {capability[0]}.{capability[1]} (FlashAttention-3 runs on 9.x)"
    refused = _hopper_or_blackwell_refusal("FlashAttention-3", device, capability, dtype)
    if refused is None and not installed:
        return "flash-attn-3 is not installed (it is built from source: bench/README.md)"
    return refused


def _hopper_or_blackwell_refusal(
    kernel: str, device: str, capability: tuple[int, int] | None, dtype: torch.dtype
) -> str | None:
    """Why `kernel`, written for compute capability 9.x/10.x GPUs and a bf16/fp16 transformer, cannot run on `device`
    (its compute capability, None for no CUDA GPU) for one computing in `dtype`; None where it can."""
    if capability is None:
        return f"{device} is not a CUDA GPU"
    major, minor = capability
    if major not in (9, 10):
        return f"{device} has compute capability {major}.{minor} ({kernel} runs on 9.x and 10.x)"
    if dtype not in (torch.bfloat16, torch.float16):
        return f"the transformer computes in {dtype} ({kernel} takes bf16 and fp16)"
    return None


def cudnn_fp8_unavailable(device: torch.device, dtype: torch.dtype) -> str | None:
    """Why cuDNN's fp8 attention cannot run on `device` for a transformer computing in `dtype` (None: it can)."""
    capability = torch.cuda.get_device_capability(device) if device.type == "cuda" else None
    return cudnn_fp8_refusal(str(device), capability, dtype, cudnn_version=cudnn_frontend_backend_version())


def cudnn_fp8_refusal(
    device: str, capability: tuple[int, int] | None, dtype: torch.dtype, *, cudnn_version: int | None
) -> str | None:
    """The reason cuDNN's fp8 flash attention cannot run on `device` (its CUDA compute capability, None for no CUDA
    GPU) for a transformer computing in `dtype`, with cuDNN `cudnn_version` (None: no frontend), or None where it can."""
    refused = _hopper_or_blackwell_refusal("cuDNN's fp8 attention", device, capability, dtype)
    if refused is None and cudnn_version is None:
        return "nvidia-cudnn-frontend is not installed (pip install -r requirements-hopper.txt)"
    if refused is None and cudnn_version < CUDNN_FP8_MIN_VERSION:
        return f"cuDNN {cudnn_version} is older than 9.1 (its first fp8 attention forward)"
    return refused


def choose_attention_kernel(
    wanted: str, device: torch.device, dtype: torch.dtype, *, context_parallel: bool, fp8_activations: bool
) -> AttentionKernels:
    """The kernel a load installs on `device` for a transformer computing in `dtype`, whose blocks quantize their
    activations to fp8 when `fp8_activations` (the fast path; pick_attention_kernel)."""
    if context_parallel:
        split = "context-parallel ranks keep diffusers' processor, whose hooks split the sequence"
        refusals = {"cudnn_fp8": split, "flash3": split, "flash4": split}
    else:
        refusals = {
            "cudnn_fp8": (
                cudnn_fp8_unavailable(device, dtype)
                if wanted == "cudnn_fp8" or fp8_activations
                else "lossy: only the fast path takes it unasked"
            ),
            "flash3": flash3_unavailable(device, dtype),
            "flash4": flash4_unavailable(device, dtype),
        }
    return pick_attention_kernel(wanted, refusals, fp8_activations=fp8_activations, device=str(device))


class AttentionKernels(NamedTuple):
    """The kernel of the transformers' self-attention and the one of their text/image cross-attention."""

    self_attention: str
    cross_attention: str


def pick_attention_kernel(
    wanted: str, refusals: dict[str, str | None], *, fp8_activations: bool, device: str
) -> AttentionKernels:
    """`wanted` itself, or for "auto" the fastest kernel that `refusals` (kernel -> why it cannot run, None: it can)
    lets run: cudnn_fp8 only on the fast path (`fp8_activations`: it rounds far beyond bf16), then flash3, flash4,
    sdpa. An explicit kernel that cannot run is an error, not a silent slowdown. The cross-attention takes the same
    kernel, except after cudnn_fp8 (worth it only on the long self-attention): the first bf16 kernel that runs."""
    if wanted == "sdpa":
        return AttentionKernels("sdpa", "sdpa")
    if wanted != "auto":
        if refusals[wanted] is not None:
            raise ValueError(f"attention: {wanted!r} cannot run here: {refusals[wanted]}")
        chosen = wanted
    else:
        candidates = ("cudnn_fp8", *BF16_KERNELS_FASTEST_FIRST) if fp8_activations else BF16_KERNELS_FASTEST_FIRST
        chosen = next((kernel for kernel in candidates if refusals[kernel] is None), "sdpa")
        if chosen == "sdpa":
            logger.info("attention by SDPA: {}", "; ".join(f"{kernel}: {refusals[kernel]}" for kernel in candidates))
    cross = chosen
    if chosen == "cudnn_fp8":
        cross = next((kernel for kernel in BF16_KERNELS_FASTEST_FIRST if refusals[kernel] is None), "sdpa")
    if chosen != "sdpa":
        logger.info("attention by {} on {} (cross-attention by {})", chosen, device, cross)
    return AttentionKernels(chosen, cross)


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


@torch.library.custom_op("headless_wan::flash3_attention", mutates_args=())
def flash3_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """FlashAttention-3's forward, an opaque operator to torch.compile like flash4_attention."""
    from flash_attn_interface import flash_attn_func  # imported on first use: it loads the CUDA extension

    return flash_attn_func(query, key, value)


@flash3_attention.register_fake
def _flash3_output_like(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    return query.new_empty((*query.shape[:-1], value.shape[-1]))


def to_fp8(tensor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`tensor` in float8_e4m3fn, scaled as a whole so that its largest magnitude is FP8_MAX, and the float32 descale
    that brings it back (shape (1, 1, 1, 1): cuDNN's scalar operands). An all-zero tensor stays zero."""
    amax = tensor.detach().abs().amax().float().clamp_min(torch.finfo(torch.float32).tiny)
    descale = (amax / FP8_MAX).reshape(1, 1, 1, 1)
    return (tensor.float() / descale).to(torch.float8_e4m3fn), descale


def fp8_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """Attention with query, key and value quantized per tensor to fp8 (cuDNN's kernel on a GPU): its fp8 output is
    in value's scale, so value's descale brings it back. Traced by torch.compile, the scaling fuses into the kernels
    around the operator."""
    (query8, query_descale), (key8, key_descale), (value8, value_descale) = (
        to_fp8(tensor) for tensor in (query, key, value)
    )
    out8 = scaled_fp8_attention(query8, key8, value8, query_descale, key_descale, value_descale)
    return (out8.float() * value_descale).to(query.dtype)


@torch.library.custom_op("headless_wan::scaled_fp8_attention", mutates_args=(), device_types="cuda")
def scaled_fp8_attention(
    query8: torch.Tensor,
    key8: torch.Tensor,
    value8: torch.Tensor,
    query_descale: torch.Tensor,
    key_descale: torch.Tensor,
    value_descale: torch.Tensor,
) -> torch.Tensor:
    """softmax(Q K^T / sqrt(head_dim)) V from (batch, tokens, heads, head_dim) float8_e4m3fn operands and their float32
    descales, by cuDNN's fp8 flash kernel: the probabilities pass through fp8 scaled by PROBABILITY_SCALE, and the
    output comes back in float8_e4m3fn divided by `value_descale` (so it stays within e4m3's range: every output row
    is a weighted mean of value rows)."""
    query8, key8, value8 = (tensor.contiguous() for tensor in (query8, key8, value8))
    batch, q_tokens, heads, head_dim = query8.shape
    plan = cudnn_fp8_plan(query8.device.index, batch, q_tokens, key8.shape[1], heads, head_dim)
    out8 = torch.empty_like(query8)
    plan.run(plan.variant_pack(query8, key8, value8, query_descale, key_descale, value_descale, out8))
    return out8


@scaled_fp8_attention.register_fake
def _scaled_fp8_output_like(
    query8: torch.Tensor,
    key8: torch.Tensor,
    value8: torch.Tensor,
    query_descale: torch.Tensor,
    key_descale: torch.Tensor,
    value_descale: torch.Tensor,
) -> torch.Tensor:
    return query8.new_empty((*query8.shape[:-1], value8.shape[-1]))


def emulated_fp8_attention(
    query8: torch.Tensor,
    key8: torch.Tensor,
    value8: torch.Tensor,
    query_descale: torch.Tensor,
    key_descale: torch.Tensor,
    value_descale: torch.Tensor,
) -> torch.Tensor:
    """What scaled_fp8_attention computes, in fp32 arithmetic on any device: the scores from the descaled operands,
    the softmax's probabilities (relative to each row's maximum) rounded to fp8 at PROBABILITY_SCALE before they
    weight the values, the output rounded to fp8 in value's scale. cuDNN's kernel rounds the probabilities relative to
    a running maximum, block by block, so the two agree to fp8's rounding, not bit for bit."""
    query = query8.float() * query_descale.float()
    key = key8.float() * key_descale.float()
    scores = torch.einsum("bqhd,bkhd->bhqk", query, key) * query.shape[-1] ** -0.5
    probabilities = (scores - scores.amax(dim=-1, keepdim=True)).exp()
    totals = probabilities.sum(dim=-1, keepdim=True)
    probabilities8 = (probabilities * PROBABILITY_SCALE).to(torch.float8_e4m3fn).float() / PROBABILITY_SCALE
    out = torch.einsum("bhqk,bkhd->bqhd", probabilities8 / totals, value8.float())
    # rounded-up weights can take a mean past 448: torch's cast to e4m3fn saturates there, as an fp8 output must
    return out.to(torch.float8_e4m3fn).contiguous()


# On a CPU the operator is its emulation: what the tests check the scaling around it against.
scaled_fp8_attention.register_kernel("cpu", emulated_fp8_attention)

ATTENTION_PRODUCTS: dict[str, AttentionProduct] = {
    "sdpa": sdpa_attention,
    "flash3": flash3_attention,
    "flash4": flash4_attention,
    "cudnn_fp8": fp8_attention,
}


def rotary_embedding(states: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Wan's rotary embedding on interleaved (even, odd) channel pairs, computed in the frequencies' precision."""
    even, odd = states.unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = cos[..., 0::2], sin[..., 1::2]
    # each half rounded to the states' dtype before they interleave: compiled, the stack is then written once in that
    # dtype instead of in the frequencies' and converted by a second kernel (the same values either way)
    rotated = ((even * cos - odd * sin).type_as(states), (even * sin + odd * cos).type_as(states))
    return torch.stack(rotated, dim=-1).flatten(-2)


class KernelAttnProcessor:
    """A `WanAttention` processor whose attention product is `product`; on a cross-attention module (text and image
    context) `cross_product` (default: the same)."""

    def __init__(self, product: AttentionProduct, cross_product: AttentionProduct | None = None) -> None:
        self.product = product
        self.cross_product = cross_product if cross_product is not None else product

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

        product = self.product if encoder_hidden_states is None else self.cross_product
        query, key, value = _get_qkv_projections(attn, hidden_states, encoder_hidden_states)
        query, key = attn.norm_q(query), attn.norm_k(key)
        query, key, value = (tensor.unflatten(2, (attn.heads, -1)) for tensor in (query, key, value))
        if rotary_emb is not None:
            query, key = rotary_embedding(query, *rotary_emb), rotary_embedding(key, *rotary_emb)

        out = product(query, key, value).flatten(2, 3).type_as(query)
        if image_context is not None:
            image_key, image_value = _get_added_kv_projections(attn, image_context)
            image_key = attn.norm_added_k(image_key).unflatten(2, (attn.heads, -1))
            image_value = image_value.unflatten(2, (attn.heads, -1))
            out = out + product(query, image_key, image_value).flatten(2, 3).type_as(query)
        return attn.to_out[1](attn.to_out[0](out))


def install_attention_kernel(transformer: torch.nn.Module, kernels: AttentionKernels) -> int:
    """Give every `WanAttention` of `transformer` the processor of `kernels` (sdpa for both keeps diffusers' own);
    returns how many attention modules it changed."""
    if kernels == ("sdpa", "sdpa"):
        return 0
    processor = KernelAttnProcessor(
        ATTENTION_PRODUCTS[kernels.self_attention], ATTENTION_PRODUCTS[kernels.cross_attention]
    )
    changed = 0
    for module in transformer.modules():
        if isinstance(module, WanAttention):
            module.set_processor(processor)
            changed += 1
    return changed
