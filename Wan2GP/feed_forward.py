"""The feed-forward's first Linear and its tanh GELU as one GEMM, with the GELU in cuBLASLt's epilogue.

Wan's blocks run diffusers' `GELU(approximate="tanh")`: a Linear whose bf16 output (24,192 x 13,824 values a block at
the seed segment's size) a second kernel reads back to apply the GELU. cuBLASLt applies the same tanh GELU to the
GEMM's fp32 accumulator before it rounds (`torch._addmm_activation`, which inductor calls as it is rather than
decomposing it): one kernel instead of two, one rounding instead of two. bench/block_fusions.py measures the pair
against the single GEMM on the H200 (bench/README.md).

The fused GEMM is taken only where it computes what diffusers' module does: on a CUDA tensor (torch's CPU kernel of
the same op applies the exact GELU, not the tanh one), through a plain `nn.Linear` with a bias (peft's unmerged
adapters replace the Linear, and their B A x term must be added before the GELU) whose weight is a plain 16-bit
parameter (the fast path's fp8 and the int8 weights are torchao tensor subclasses). Elsewhere the module computes
exactly diffusers' two steps, so the CPU tests' comparisons with diffusers' pipelines hold.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.models.activations import GELU
from diffusers.models.attention import FeedForward


def gelu_epilogue_applies(proj: torch.nn.Module, device_type: str, dtype: torch.dtype) -> bool:
    """Whether `proj` applied to a `dtype` input on a `device_type` device can take the fused GEMM."""
    return (
        device_type == "cuda"
        and type(proj) is torch.nn.Linear
        and proj.bias is not None
        and type(proj.weight) is torch.nn.Parameter
        and proj.weight.dtype == dtype
        and dtype in (torch.bfloat16, torch.float16)
    )


class EpilogueGelu(torch.nn.Module):
    """diffusers' tanh `GELU` on the same `proj` (so state dicts, LoRA targets and quantization see the same names),
    whose forward is one GEMM with the GELU in its epilogue where `gelu_epilogue_applies`, else diffusers' two
    steps."""

    def __init__(self, proj: torch.nn.Module) -> None:
        super().__init__()
        self.proj = proj

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if not gelu_epilogue_applies(self.proj, hidden_states.device.type, hidden_states.dtype):
            return F.gelu(self.proj(hidden_states), approximate="tanh")
        rows = hidden_states.flatten(0, -2)
        out = torch._addmm_activation(self.proj.bias, rows, self.proj.weight.t(), use_gelu=True)
        return out.unflatten(0, hidden_states.shape[:-1])


def install_gelu_epilogue(transformer: torch.nn.Module) -> int:
    """Give every feed-forward of `transformer` whose activation is diffusers' tanh GELU an `EpilogueGelu` around the
    same Linear; returns how many it changed."""
    changed = 0
    for module in transformer.modules():
        if not isinstance(module, FeedForward):
            continue
        activation = module.net[0]
        if type(activation) is GELU and activation.approximate == "tanh":
            module.net[0] = EpilogueGelu(activation.proj)
            changed += 1
    return changed
