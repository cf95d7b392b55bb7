"""What three fusions of a Wan block's small kernels would save, each measured alone at the seed segment's size (H200).

A compiled bf16 forward of the seed segment spends about 0.12 s of its 1.73 s outside attention and the GEMMs, in
inductor's fused norm, RoPE, modulation and GELU kernels (bench/README.md). Each candidate below is a pair of
functions computing the same thing, compiled with inductor as the engine compiles its blocks, timed by the wall clock
around synchronized calls (median of `--repeats`) on the 24,192 tokens of 768x576x53, with the relative norm difference of their outputs:

- `qk_norm_rope`: the self-attention's query/key RMSNorm and Wan's rotary embedding, on interleaved channel pairs
  (diffusers' layout, what Wan2GP.attention computes) against the "halves" layout, where each head's even channels
  come first and its odd ones second. That layout is an exact rewrite if the query and key projections' output rows
  (and their norms' weights) are permuted at load: attention sums over the head's channels, so the same permutation of
  query and key leaves every score as it was. Its output is compared after undoing the permutation.
- `ffn_up_gelu`: the feed-forward's first Linear and its tanh GELU as two kernels (GEMM with bias, then GELU) against
  one cuBLASLt GEMM with the GELU in its epilogue (`torch._addmm_activation`, which inductor calls as it is).
- `qkv`: the query, key and value projections as three GEMMs against one GEMM on the concatenated weights.

    python bench/block_fusions.py --json out.json     # on the GPU (bench/device_bench.sh block_fusions NAME)
    python bench/block_fusions.py --tiny              # CPU smoke test: small sizes, the same comparisons
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from memory_profiles import synchronize
from random_models import run_versions

from Wan2GP.attention import rotary_embedding


def timed(function: Callable[..., Any], args: tuple, device: torch.device, repeats: int) -> tuple[float, Any]:
    """Median seconds of `repeats` calls after two warm-ups (the first compiles), and the last output."""
    with torch.inference_mode():
        for _ in range(2):
            out = function(*args)
        seconds = []
        for _ in range(repeats):
            synchronize(device)
            started = time.perf_counter()
            out = function(*args)
            synchronize(device)
            seconds.append(time.perf_counter() - started)
    return statistics.median(seconds), out


def rel_difference(a: Any, b: Any) -> float:
    a, b = (torch.cat([t.float().flatten() for t in x]) if isinstance(x, tuple) else x.float() for x in (a, b))
    return float((a - b).norm() / b.norm())


def halves_permutation(dim: int, head_dim: int) -> torch.Tensor:
    """Channel order that puts each head's even channels first and its odd ones second."""
    within = torch.cat([torch.arange(0, head_dim, 2), torch.arange(1, head_dim, 2)])
    return (torch.arange(0, dim, head_dim)[:, None] + within[None, :]).flatten()


def interleaved_qk(query, key, norm_q, norm_k, cos, sin, heads: int):
    query, key = F.rms_norm(query, norm_q.shape, norm_q, 1e-6), F.rms_norm(key, norm_k.shape, norm_k, 1e-6)
    query, key = (tensor.unflatten(2, (heads, -1)) for tensor in (query, key))
    return rotary_embedding(query, cos, sin), rotary_embedding(key, cos, sin)


def halves_qk(query, key, norm_q, norm_k, cos_half, sin_half, heads: int):
    """The same on halves-layout projections: `cos_half`/`sin_half` hold one frequency per channel pair."""
    query, key = F.rms_norm(query, norm_q.shape, norm_q, 1e-6), F.rms_norm(key, norm_k.shape, norm_k, 1e-6)

    def rotated(states: torch.Tensor) -> torch.Tensor:
        even, odd = states.unflatten(2, (heads, -1)).chunk(2, dim=-1)
        rotated = torch.cat((even * cos_half - odd * sin_half, even * sin_half + odd * cos_half), dim=-1)
        return rotated.type_as(states)

    return rotated(query), rotated(key)


def linear_then_gelu(x, weight, bias):
    return F.gelu(F.linear(x, weight, bias), approximate="tanh")


def gelu_in_epilogue(x, weight, bias):
    return torch._addmm_activation(bias, x, weight.t(), use_gelu=True)


def three_projections(x, weights, biases):
    return tuple(F.linear(x, weight, bias) for weight, bias in zip(weights, biases, strict=True))


def one_projection(x, weight, bias):
    return F.linear(x, weight, bias).chunk(3, dim=-1)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--compile-backend", default="inductor", help="tests: eager")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--workdir", type=Path, help="unused; device_bench.sh passes one")
    args = parser.parse_args(argv)
    device = torch.device("cpu" if args.tiny or not torch.cuda.is_available() else "cuda:0")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    tokens, dim, heads, ffn = (96, 64, 2, 160) if args.tiny else (24192, 5120, 40, 13824)
    head_dim = dim // heads
    generator = torch.Generator(device="cpu").manual_seed(5)

    def random(*shape: int, scale: float = 1.0, of: torch.dtype = dtype) -> torch.Tensor:
        return (torch.randn(shape, generator=generator) * scale).to(device, of)

    def compiled(function: Callable[..., Any]) -> Callable[..., Any]:
        return torch.compile(function, backend=args.compile_backend, fullgraph=True, dynamic=False)

    report: dict[str, Any] = {
        "command": " ".join(["python", "bench/block_fusions.py", *(argv if argv is not None else sys.argv[1:])]),
        "versions": run_versions(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "tokens": tokens,
        "dim": dim,
    }

    # the query/key norm and RoPE: interleaved pairs against the halves layout (permuted projections)
    query, key = random(1, tokens, dim), random(1, tokens, dim)
    norm_q, norm_k = random(dim, scale=0.1) + 1, random(dim, scale=0.1) + 1
    angles = torch.rand((1, tokens, 1, head_dim // 2), generator=generator) * 6.28
    cos = angles.cos().repeat_interleave(2, dim=-1).to(device)  # diffusers' fp32 tables, one value per channel
    sin = angles.sin().repeat_interleave(2, dim=-1).to(device)
    order = halves_permutation(dim, head_dim).to(device)
    interleaved_seconds, interleaved = timed(
        compiled(lambda *a: interleaved_qk(*a, heads=heads)),
        (query, key, norm_q, norm_k, cos, sin),
        device,
        args.repeats,
    )
    halves_seconds, halves = timed(
        compiled(lambda *a: halves_qk(*a, heads=heads)),
        (query[..., order], key[..., order], norm_q[order], norm_k[order], cos[..., 0::2], sin[..., 1::2]),
        device,
        args.repeats,
    )
    # undo the permutation within each head: the halves output's channel j holds the interleaved one's within[j]
    unpermute = torch.argsort(order[:head_dim])
    report["qk_norm_rope"] = {
        "interleaved_seconds": interleaved_seconds,
        "halves_seconds": halves_seconds,
        "rel_difference": rel_difference(tuple(t[..., unpermute] for t in halves), interleaved),
    }
    print("qk_norm_rope:", json.dumps(report["qk_norm_rope"]), flush=True)

    # the feed-forward's first Linear and GELU
    x = random(tokens, dim)
    weight, bias = random(ffn, dim, scale=dim**-0.5), random(ffn, scale=0.1)
    two_seconds, two = timed(compiled(linear_then_gelu), (x, weight, bias), device, args.repeats)
    one_seconds, one = timed(compiled(gelu_in_epilogue), (x, weight, bias), device, args.repeats)
    with torch.inference_mode():
        exact = linear_then_gelu(x.float(), weight.float(), bias.float())
    report["ffn_up_gelu"] = {
        "linear_then_gelu_seconds": two_seconds,
        "gelu_in_epilogue_seconds": one_seconds,
        "rel_difference": rel_difference(one, two),
        "linear_then_gelu_rel_error_vs_fp32": rel_difference(two, exact),
        "gelu_in_epilogue_rel_error_vs_fp32": rel_difference(one, exact),
    }
    print("ffn_up_gelu:", json.dumps(report["ffn_up_gelu"]), flush=True)

    # the query, key and value projections
    weights = tuple(random(dim, dim, scale=dim**-0.5) for _ in range(3))
    biases = tuple(random(dim, scale=0.1) for _ in range(3))
    three_seconds, three = timed(compiled(three_projections), (x, weights, biases), device, args.repeats)
    one_seconds, fused = timed(
        compiled(one_projection), (x, torch.cat(weights), torch.cat(biases)), device, args.repeats
    )
    report["qkv"] = {
        "three_seconds": three_seconds,
        "one_seconds": one_seconds,
        "rel_difference": rel_difference(fused, three),
    }
    print("qkv:", json.dumps(report["qkv"]), flush=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
