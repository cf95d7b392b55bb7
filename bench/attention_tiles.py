"""FlashAttention-4's forward tile shapes on a Hopper GPU at the seed segment's self-attention size, against SDPA.

FA4 picks 128x128 tiles with the P@V product from registers (RS) and intra-warpgroup overlap for head_dim 128 on
SM90; FlashAttention-3's C++ kernel uses 128x176 for the same case. Compiled with the engine, FA4 took the bf16 forward
to 1.716 s against stock's 2.087 (1.217x, bench/README.md), 0.046 s short of issue 19's 1.25x; a tile that beats the
default by about 6% on this shape would close it. This times each (tile_m, tile_n, RS, overlap) through FA4's
`_flash_attn_fwd` (its private entry point: the public one takes no tile), each with its largest difference from the
default tile's output; a shape FA4 cannot build reports its error.

    python bench/attention_tiles.py --json out.json     # on an H200, with requirements-hopper.txt installed
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch
import torch.nn.functional as F

TILES = (  # (tile_m, tile_n, P@V from registers, intra-warpgroup overlap); FA4's default for head_dim 128 first
    (128, 128, True, True),
    (128, 144, True, True),
    (128, 160, True, True),
    (128, 176, True, True),
    (128, 192, True, True),
    (128, 176, False, True),
    (128, 128, False, True),
    (192, 128, False, True),
)


def median_ms(run, repeats: int) -> float:
    """Median of `repeats` CUDA-event timings after two warm-up calls (the first compiles FA4's kernel)."""
    for _ in range(2):
        run()
    times = []
    for _ in range(repeats):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        stop.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(stop))
    return statistics.median(times)


def attention_arguments(description: str) -> argparse.ArgumentParser:
    """The command line of the attention-kernel scripts: the seed segment's self-attention shape, the timed repeats and
    the JSON report."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=24192)
    parser.add_argument("--heads", type=int, default=40)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--json", type=Path)
    return parser


def main() -> None:
    args = attention_arguments(__doc__).parse_args()
    from flash_attn.cute.interface import _flash_attn_fwd

    generator = torch.Generator(device="cpu").manual_seed(7)
    shape = (1, args.tokens, args.heads, args.head_dim)
    query, key, value = (torch.randn(shape, generator=generator).to("cuda", torch.bfloat16) for _ in range(3))
    flops = 4 * args.tokens**2 * args.heads * args.head_dim
    report: dict = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "shape": list(shape)}

    def record(name: str, milliseconds: float, **extra: float) -> None:
        report[name] = {"ms": milliseconds, "tflops": flops / milliseconds / 1e9, **extra}
        print(name, json.dumps(report[name]), flush=True)
        if args.json:
            args.json.write_text(json.dumps(report, indent=2))

    with torch.inference_mode():
        heads_first = [tensor.transpose(1, 2) for tensor in (query, key, value)]
        record("sdpa", median_ms(lambda: F.scaled_dot_product_attention(*heads_first), args.repeats))
        default = None
        for tile_m, tile_n, registers, overlap in TILES:
            name = f"flash4_{tile_m}x{tile_n}{'_rs' if registers else ''}{'_overlap' if overlap else ''}"

            def run(tile=(tile_m, tile_n), registers=registers, overlap=overlap):
                return _flash_attn_fwd(
                    query, key, value, tile_mn=tile, mma_pv_is_rs=registers, intra_wg_overlap=overlap
                )[0]

            try:
                out = run()
                milliseconds = median_ms(run, args.repeats)
            except Exception as error:  # noqa: BLE001 - a tile FA4 cannot build is a result too
                report[name] = {"error": f"{type(error).__name__}: {str(error)[:300]}"}
                print(name, json.dumps(report[name]), flush=True)
                continue
            default = out if default is None else default
            record(name, milliseconds, max_abs_diff_vs_default=float((out.float() - default.float()).abs().max()))


if __name__ == "__main__":
    main()
