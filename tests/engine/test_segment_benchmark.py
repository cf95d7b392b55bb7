"""bench/segment_vs_stock.py (issue 19's benchmark, bench/README.md) in tiny mode on the CPU, so it cannot rot: our
engine and stock WanImageToVideoPipeline on the same random modules, every forward timed by the harness."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def test_the_speed_benchmark_runs_in_tiny_mode(tmp_path: Path) -> None:
    repo = Path(__file__).resolve().parents[2]
    out = tmp_path / "speed.json"
    subprocess.run(
        [
            *(
                sys.executable,
                "bench/segment_vs_stock.py",
                "--tiny",
                "--json",
                str(out),
                "--workdir",
                str(tmp_path / "w"),
            ),
            *(
                "--variants",
                "ours_loras,ours,ours_attention,fast,fast_loras",
                "--compile-backend",
                "eager",
                "--runs",
                "1",
            ),
            *("--attention", "auto", "--fp32-reference"),
        ],
        cwd=repo,
        env={**os.environ, "PYTHONPATH": str(repo)},
        check=True,
        capture_output=True,
        timeout=300,
    )
    report = json.loads(out.read_text())
    variants = report["variants"]
    assert list(variants) == ["ours_loras", "ours", "stock", "ours_attention", "fast", "fast_loras"]
    # the seed segment's plan: 3 guided steps on the high expert (2 forwards each), then one forward a step; stock
    # runs the unconditional pass on every one of its 6 steps
    for name in ("ours_loras", "ours", "ours_attention", "fast", "fast_loras"):
        assert variants[name]["forward_count"] == 8
        for run in variants[name]["runs"]:
            assert run["forwards"] == {"high": 6, "low": 2}
            assert len(run["forward_seconds"]) == 8, "the harness timed every forward the engine counted"
            assert set(run["timings"]) == {"load", "encode", "denoise", "decode"}
    assert variants["stock"]["forward_count"] == 12
    # --fast on a CPU: no fp8 matmuls, so the weights stay native; compiled with dynamo's eager backend on a new
    # engine rebuilt from the same seed, its video is the eager one's (tests/engine/test_compile.py covers --compile)
    assert variants["fast"]["weights"] == "native" and variants["fast"]["latents_rel_error_vs_ours"] == 0.0
    assert variants["fast"]["one_forward_rel_error_vs_eager"] == 0.0
    # --attention auto on a CPU is SDPA through diffusers' own processor: the eager engine's video, forward for forward
    assert variants["ours_attention"]["latents_rel_error_vs_ours"] == 0.0
    assert variants["ours_attention"]["one_forward_rel_error_vs_eager"] == 0.0
    # each variant's forward against an fp32 copy of the seeded expert: on a CPU everything is fp32 already
    assert report["one_forward_rel_error_vs_fp32"] == {"ours": 0.0, "ours_attention": 0.0, "fast": 0.0}
    kernels = report["attention_check"]  # each kernel alone: SDPA timed against fp32, FlashAttention-4 says why not
    assert kernels["sdpa"]["seconds"] > 0 and kernels["sdpa"]["rel_error_vs_fp32"] < 1e-6
    assert kernels["flash3"] == kernels["flash4"] == kernels["cudnn_fp8"] == {"unavailable": "cpu is not a CUDA GPU"}
    # the GPU's check of cuDNN against the emulation, run where the operator is the emulation: no difference
    assert kernels["fp8_operator_on_cpu"]["rel_error"] == 0.0 and kernels["fp8_operator_on_cpu"]["heads_compared"] == 2
    # where one forward's time goes: on the CPU the aten ops stand in for kernels; the blocks' Linear layers and SDPA
    # are both there, and the kinds add up to the total
    profile = variants["fast"]["kernel_profile"]
    assert profile["seconds_by_kind"]["matmul"] > 0 and profile["seconds_by_kind"]["attention"] > 0
    assert abs(sum(profile["seconds_by_kind"].values()) - profile["total_seconds"]) < 1e-9
    assert profile["longest"] and profile["longest"][0]["seconds"] >= profile["longest"][-1]["seconds"]
    # the gaps between ops: nested ops (aten calls inside aten calls on a CPU) count once, so never below zero
    assert profile["span_seconds"] > 0 and 0 <= profile["idle_seconds"] < profile["span_seconds"]
    assert 0 < variants["stock"]["boundary_ratio"] < 1
    assert report["vae_decode"]["fp32_seconds"] > 0
    merges = report["lora_merge_costs"]  # both experts' exact originals fit the CPU's unbounded room
    assert merges["device_copy_gib"] > 0
    assert {"first_merge_high_seconds", "re_merge_high_seconds", "close_seconds"} <= set(merges)
    # and again on the --fast engine's own weights (float8 on an H200; native here), after its LoRAs were detached
    assert report["lora_merge_costs_fast"]["device_copy_gib"] > 0
    assert variants["fast_loras"]["latents_rel_error_vs_ours_loras"] == 0.0
    for variant in variants.values():
        assert variant["speedup_vs_stock"] > 0


def _run_tiny_bench(script: str, tmp_path: Path, *args: str) -> dict:
    """bench/`script` --tiny --repeats 2 `args` as its own process (bench/ on its import path, as on the device);
    its JSON report."""
    repo = Path(__file__).resolve().parents[2]
    out = tmp_path / "report.json"
    subprocess.run(
        [sys.executable, f"bench/{script}", "--tiny", "--repeats", "2", *args, "--json", str(out)],
        cwd=repo,
        env={**os.environ, "PYTHONPATH": os.pathsep.join((str(repo), str(repo / "bench")))},
        check=True,
        capture_output=True,
        timeout=300,
    )
    return json.loads(out.read_text())


def test_the_attention_block_benchmark_runs_in_tiny_mode(tmp_path: Path) -> None:
    """bench/attention_block.py on the CPU: a fresh model per kernel, compiled as the engine compiles its blocks; SDPA
    reproduces the eager reference, cudnn_fp8 (its operator's CPU kernel, the emulation) is close to it, not equal."""
    report = _run_tiny_bench("attention_block.py", tmp_path)
    assert report["weights"] == "native" and report["layers"] == 2  # no fp8 matmuls on a CPU
    kernels = report["kernels"]
    assert kernels["sdpa"]["rel_error_vs_bf16_eager_sdpa"] == 0.0
    assert 1e-3 < kernels["cudnn_fp8"]["rel_error_vs_bf16_eager_sdpa"] < 0.05
    for kernel in kernels.values():
        assert kernel["forward_seconds"] > 0 and kernel["per_layer_seconds"] == kernel["forward_seconds"] / 2


def test_the_block_fusions_benchmark_runs_in_tiny_mode(tmp_path: Path) -> None:
    """bench/block_fusions.py on the CPU, with dynamo's eager backend: each pair computes the same thing. The halves
    RoPE layout on permuted projections gives the engine's interleaved RoPE back once unpermuted (to fp32 rounding);
    the GELU epilogue op's CPU kernel applies the exact GELU, so it is near the tanh one, not equal."""
    report = _run_tiny_bench("block_fusions.py", tmp_path, "--compile-backend", "eager")
    assert report["qk_norm_rope"]["rel_difference"] < 1e-6
    assert 1e-6 < report["ffn_up_gelu"]["rel_difference"] < 1e-2
    assert report["qkv"]["rel_difference"] == 0.0
    for pair in ("qk_norm_rope", "ffn_up_gelu", "qkv"):
        assert all(value > 0 for key, value in report[pair].items() if key.endswith("_seconds"))


def test_the_vae_chunks_benchmark_runs_in_tiny_mode(tmp_path: Path) -> None:
    """bench/vae_chunks.py on the CPU: n latent frames per VAE call is the same arithmetic as diffusers' one frame a
    call (the causal cache carries the same frames), to fp32 rounding, in both directions."""
    report = _run_tiny_bench("vae_chunks.py", tmp_path, "--frames-per-call", "1,2,3")
    rows = report["rows"]
    assert [(row["dtype"], row["latent_frames_per_call"]) for row in rows] == [("fp32", n) for n in (1, 2, 3)]
    assert rows[0]["decode_rel_error"] == rows[0]["encode_rel_error"] == 0.0  # the reference itself
    for row in rows[1:]:
        assert row["decode_rel_error"] < 1e-5 and row["encode_rel_error"] < 1e-5
        assert row["decode_seconds"] > 0 and row["encode_seconds"] > 0


def test_the_vae_layers_benchmark_runs_in_tiny_mode(tmp_path: Path) -> None:
    """bench/vae_convs.py on the CPU: every convolution and every variant of the VAE gives the native one's output to
    fp32 rounding (tests/engine/test_vae_layers.py checks the engine's layers themselves)."""
    report = _run_tiny_bench("vae_convs.py", tmp_path)
    assert {row["convolution"] for row in report["layers"]} == {"native", "im2col", "framewise"}
    for row in report["layers"]:
        assert row["rel_error_vs_fp32"] < 1e-5 and row["ms"] > 0
    variants = [row["variant"] for row in report["codec"]]
    assert variants == ["native", "im2col", "framewise", "fast_layers", "fast_layers_compiled"]
    for row in report["codec"]:
        assert row["decode_rel_error_vs_fp32"] < 1e-5 and row["encode_rel_error_vs_fp32"] < 1e-5
        assert row["decode_seconds"] > 0 and row["encode_seconds"] > 0
        assert row["decode_to_uint8_seconds"] >= row["decode_seconds"] * 0.5
