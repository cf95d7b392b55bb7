"""Does the Wan VAE's encode give other numbers when device memory is short, and does that stick?

bench/memory_profiles.py saw the capped profiles' later segments land a fixed 9.3e-3 (relative latent norm) away
from the resident run, while the first capped segment matched exactly; with deterministic cuDNN too. The suspect:
cuDNN choosing convolution algorithms by the workspace it can get, and keeping the choice for the shape. This
encodes the seed segment's i2v condition video (start frame, zeros, end frame; 768x576x53) with one random float32
VAE three times in one process: with the device free, with the memory fraction leaving ~0.5 GiB beside the
encode's own peak, and free again; with cuDNN deterministic, as the benchmark runs.

    python bench/vae_workspace_check.py --json out.json    # on the GPU (about a minute)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from memory_profiles import build_vae, write_model_folder

from Wan2GP.conditioning import VaeCodec

GIB = 2**30


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/vae_workspace_check"))
    args = parser.parse_args()
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    device = torch.device("cuda:0")
    args.workdir.mkdir(parents=True, exist_ok=True)
    write_model_folder(args.workdir / "model", tiny=False, cache_dir=args.workdir / "cache")
    codec = VaeCodec(build_vae(args.workdir / "model", device, seed=3))
    generator = torch.Generator().manual_seed(0)
    video = torch.zeros(3, 53, 576, 768)
    video[:, 0] = torch.rand(3, 576, 768, generator=generator) * 2 - 1
    video[:, -1] = torch.rand(3, 576, 768, generator=generator) * 2 - 1

    def encode() -> tuple[torch.Tensor, float]:
        torch.cuda.reset_peak_memory_stats(device)
        latents = codec.encode(video).cpu()
        return latents, torch.cuda.max_memory_allocated(device) / GIB

    free_first, peak = encode()
    total = torch.cuda.get_device_properties(device).total_memory
    torch.cuda.empty_cache()
    report: dict[str, object] = {"encode_peak_gib": peak}
    for margin_gib in (0.5, 0.1):
        # fill the cache with block-sized pieces, as streamed blocks leave it, then cap just above the encode's peak
        cap = (peak + margin_gib) * GIB / total
        torch.cuda.set_per_process_memory_fraction(cap, device)
        try:
            capped, capped_peak = encode()
            error = None
        except torch.OutOfMemoryError as oom:
            capped, capped_peak, error = None, None, str(oom).splitlines()[0]
        torch.cuda.set_per_process_memory_fraction(1.0, device)
        torch.cuda.empty_cache()
        free_again, _ = encode()
        report[f"margin_{margin_gib}_gib"] = {
            "capped_peak_gib": capped_peak,
            "capped_error": error,
            "capped_vs_free_rel": None if capped is None else float((capped - free_first).norm() / free_first.norm()),
            "free_again_vs_first_rel": float((free_again - free_first).norm() / free_first.norm()),
        }
    torch.backends.cudnn.enabled = False
    no_cudnn, _ = encode()
    report["without_cudnn_vs_first_rel"] = float((no_cudnn - free_first).norm() / free_first.norm())
    report["versions"] = {"torch": torch.__version__, "cudnn": torch.backends.cudnn.version()}
    print(json.dumps(report, indent=2), file=sys.stdout, flush=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
