"""Every execution plan cuDNN offers for the fast path's fp8 attention at the seed segment's size, timed (GPU only).

The engine builds its cuDNN fp8 attention graph with cuDNN's heuristic choice (`Wan2GP.cudnn_fp8.CudnnFp8Plan`). This
builds the same graph (`define_fp8_attention_graph`) with every plan cuDNN's heuristics modes A, B and FALLBACK
propose, runs each on the same fp8 operands (the seed segment's self-attention: 24,192 tokens, 40 heads of 128, as
the engine quantizes them, `Wan2GP.attention.to_fp8`), and reports per plan: its name, its workspace, the median of
`--repeats` timed calls (CUDA events, after 2 untimed), its rate, and how far its output is from the engine's plan's.
If a plan beats the heuristic choice by a margin, the engine should time the candidates as it builds a shape.

    python bench/cudnn_fp8_plans.py --json out.json     # bench/device_bench.sh cudnn_fp8_plans NAME on the GPU
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from attention_tiles import attention_arguments, median_ms
from random_models import run_versions

from Wan2GP.attention import to_fp8
from Wan2GP.cudnn_fp8 import cudnn_fp8_plan, define_fp8_attention_graph


def time_calls(call, repeats: int) -> float:
    """Seconds: the median of `repeats` CUDA-event timings after two untimed calls."""
    return median_ms(call, repeats) / 1000


def main() -> None:
    parser = attention_arguments(__doc__)
    parser.add_argument("--workdir", type=Path, help="unused; device_bench.sh passes it to every script")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("cudnn_fp8_plans.py needs a CUDA GPU with nvidia-cudnn-frontend (no CPU mode: cuDNN only)")
    import cudnn

    device = torch.device("cuda", 0)
    shape = (1, args.tokens, args.heads, args.head_dim)
    flops = 4 * args.tokens * args.tokens * args.heads * args.head_dim
    generator = torch.Generator(device=device).manual_seed(0)
    operands = [to_fp8(torch.randn(shape, generator=generator, device=device, dtype=torch.bfloat16)) for _ in "qkv"]
    (query8, query_descale), (key8, key_descale), (value8, value_descale) = operands
    report: dict[str, Any] = {"shape_bshd": list(shape), "versions": run_versions(), "cudnn": cudnn.backend_version()}

    engine_plan = cudnn_fp8_plan(0, 1, args.tokens, args.tokens, args.heads, args.head_dim)
    reference = torch.empty_like(query8)
    reference_pack = engine_plan.variant_pack(
        query8, key8, value8, query_descale, key_descale, value_descale, reference
    )
    engine_seconds = time_calls(lambda: engine_plan.run(reference_pack), args.repeats)
    report["engine_plan"] = {"seconds": engine_seconds, "tflops": flops / engine_seconds / 1e12}
    try:
        report["engine_plan"]["name"] = engine_plan.graph.get_plan_name_at_index(0)
    except Exception as error:  # a graph built by build() may not keep its candidate list
        report["engine_plan"]["name"] = f"unknown ({type(error).__name__})"
    print("engine's plan:", json.dumps(report["engine_plan"]), flush=True)

    plans = []
    for modes in (["A", "B", "FALLBACK"], ["A", "FALLBACK"]):
        graph, _ = define_fp8_attention_graph(
            cudnn, engine_plan.handle, 1, args.tokens, args.tokens, args.heads, args.head_dim
        )
        try:
            graph.validate()
            graph.build_operation_graph()
            graph.create_execution_plans([getattr(cudnn.heur_mode, mode) for mode in modes])
            graph.check_support()
            graph.build_plans(cudnn.build_plan_policy.ALL)
        except Exception as error:
            report[f"modes_{'_'.join(modes)}_error"] = f"{type(error).__name__}: {error}"
            print("modes", modes, "failed:", error, flush=True)
            continue
        report["modes"] = modes
        count = graph.get_execution_plan_count()
        print(f"modes {modes}: {count} plans", flush=True)
        for index in range(count):
            entry: dict[str, Any] = {"index": index}
            try:
                entry["name"] = graph.get_plan_name_at_index(index)
                workspace_bytes = int(graph.get_workspace_size_plan_at_index(index))
                entry["workspace_bytes"] = workspace_bytes
                workspace = torch.empty(max(workspace_bytes, 1), dtype=torch.uint8, device=device)
                out8 = torch.empty_like(query8)
                pack = engine_plan.variant_pack(query8, key8, value8, query_descale, key_descale, value_descale, out8)

                def call(pack=pack, workspace=workspace, index=index, graph=graph) -> None:
                    graph.execute_plan_at_index(pack, workspace, index=index, handle=engine_plan.handle)

                entry["seconds"] = time_calls(call, args.repeats)
                entry["tflops"] = flops / entry["seconds"] / 1e12
                entry["x_engine_plan"] = engine_seconds / entry["seconds"]
                difference = out8.float() - reference.float()
                entry["rel_diff_vs_engine_plan"] = float(difference.norm() / reference.float().norm())
            except Exception as error:
                entry["error"] = f"{type(error).__name__}: {error}"
            print("plan:", json.dumps(entry), flush=True)
            plans.append(entry)
        break
    report["plans"] = plans
    timed = [plan for plan in plans if "seconds" in plan]
    if timed:
        fastest = min(timed, key=lambda plan: plan["seconds"])
        report["fastest"] = fastest
        print(
            f"fastest plan: {fastest['name']} {fastest['seconds'] * 1e3:.2f} ms, {fastest['x_engine_plan']:.3f}x the "
            f"engine's ({engine_seconds * 1e3:.2f} ms)",
            flush=True,
        )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
