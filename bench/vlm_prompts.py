"""The prompt writer at the real Qwen2.5-VL-7B-Instruct size, with random weights: seconds per prompt and peak memory.

Builds a Qwen2_5_VLForConditionalGeneration with the 7B-Instruct configuration (text: 28 layers, hidden 3584, 28
heads / 4 KV heads, ffn 18944, vocabulary 152064; vision: 32 blocks, hidden 1280) directly on the device with random
weights (bench/random_models.fill_random), saves it with a tokenizer and the image processor as a model folder, frees
it, then times what the worker does: `PromptWriter(folder)` (load) and `write()` per segment, on two random
768x576 keyframes side by side (the seed segment's size), with the upstream pixel bounds (at most 1280 merged tiles).

What random weights change, said with the numbers: the model never writes its end-of-answer token, so every prompt
decodes exactly `max_new_tokens` tokens; the run is made at 512 (the worker's bound: an upper bound per prompt) and at
160 (about what a three-sentence answer of at most 120 words takes). The tokenizer is the tiny model's byte-level one
(the real vocabulary cannot be fetched on the device): the instruction becomes ~1,900 prompt tokens instead of the
~450 the real tokenizer gives, which makes the prefill a little dearer, not cheaper.

    python bench/vlm_prompts.py --tiny            # CPU smoke test of the script (tiny dims), seconds
    python bench/vlm_prompts.py --json out.json   # on the GPU
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from random_models import fill_random
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2VLImageProcessorPil

from Wan2GP.prompt_writer import PromptRequest, PromptWriter, weights_bytes
from Wan2GP.tiny_vlm import SPECIAL_TOKENS, byte_level_tokenizer

# Qwen/Qwen2.5-VL-7B-Instruct config.json (the public repo's values).
TEXT_7B: dict[str, Any] = dict(
    vocab_size=152064,
    hidden_size=3584,
    intermediate_size=18944,
    num_hidden_layers=28,
    num_attention_heads=28,
    num_key_value_heads=4,
    max_position_embeddings=128000,
    rms_norm_eps=1e-6,
    rope_theta=1000000.0,
    rope_scaling={"type": "mrope", "mrope_section": [16, 24, 24]},
    tie_word_embeddings=False,
)
VISION_7B: dict[str, Any] = dict(
    depth=32,
    hidden_size=1280,
    intermediate_size=3420,
    num_heads=16,
    in_channels=3,
    out_hidden_size=3584,
    patch_size=14,
    spatial_merge_size=2,
    temporal_patch_size=2,
    window_size=112,
    fullatt_block_indexes=[7, 15, 23, 31],
    tokens_per_second=2,
    hidden_act="silu",
)
TINY_TEXT = dict(
    TEXT_7B,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]},
    vocab_size=512,
)
TINY_VISION = dict(
    VISION_7B, depth=2, hidden_size=32, intermediate_size=64, num_heads=4, out_hidden_size=64, fullatt_block_indexes=[1]
)


def build_model_folder(folder: Path, device: torch.device, *, tiny: bool, seed: int = 0) -> int:
    """A random-weight model folder at the 7B size (or tiny); returns its parameter count."""
    tokenizer = byte_level_tokenizer()
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS}
    text = dict(
        TINY_TEXT if tiny else TEXT_7B,
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
        bos_token_id=ids["<|endoftext|>"],
    )
    config = Qwen2_5_VLConfig(
        text_config=text,
        vision_config=TINY_VISION if tiny else VISION_7B,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    with torch.device("meta"):
        model = Qwen2_5_VLForConditionalGeneration(config).to(dtype)
    model.to_empty(device=device)
    fill_random(model, torch.Generator(device=device).manual_seed(seed))
    count = sum(parameter.numel() for parameter in model.parameters())
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    Qwen2VLImageProcessorPil().save_pretrained(folder)  # the real repo's defaults; the writer narrows them
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return count


def keyframes(folder: Path, size: tuple[int, int]) -> tuple[Path, Path]:
    rng = np.random.default_rng(1)
    paths = (folder / "start.png", folder / "end.png")
    for path in paths:
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return paths


def write(writer: PromptWriter, request: PromptRequest) -> None:
    """One prompt, timed whole. The random model picks ids from the whole 152,064-token vocabulary, which the
    byte-level tokenizer cannot spell: its prompt decodes to nothing, which the writer refuses after generating."""
    try:
        writer.write(request)
    except ValueError as error:
        if "empty prompt" not in str(error):
            raise


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny dimensions on the CPU (a smoke test of the script)")
    parser.add_argument("--prompts", type=int, default=4, help="prompts timed per max_new_tokens setting")
    parser.add_argument("--max-new-tokens", type=int, nargs="+", default=[160, 512])
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    device = torch.device("cpu" if args.tiny or not torch.cuda.is_available() else "cuda")
    results: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "versions": {"torch": torch.__version__, "python": sys.version.split()[0]},
        "tiny": args.tiny,
    }
    import transformers

    results["versions"]["transformers"] = transformers.__version__
    with tempfile.TemporaryDirectory(prefix="vlm_bench_") as scratch:
        folder = Path(scratch) / "model"
        started = time.perf_counter()
        results["parameters"] = build_model_folder(folder, device, tiny=args.tiny)
        results["build_and_save_seconds"] = time.perf_counter() - started
        results["weights_gb"] = weights_bytes(folder) / 1e9
        start, end = keyframes(Path(scratch), (768, 576))

        runs = []
        for max_new_tokens in args.max_new_tokens:
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
            synchronize(device)
            started = time.perf_counter()
            writer = PromptWriter(folder, device=device, max_new_tokens=max_new_tokens)
            synchronize(device)
            load_seconds = time.perf_counter() - started
            request = PromptRequest(start, end, "the camera glides along the street", 53, 16.0)
            seconds, new_tokens = [], []
            with writer:
                write(writer, request)  # warm-up: kernels chosen, caches made
                for _ in range(args.prompts):
                    synchronize(device)
                    started = time.perf_counter()
                    write(writer, request)
                    synchronize(device)
                    seconds.append(time.perf_counter() - started)
                    new_tokens.append(writer.tokens_written)
                peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
            run = {
                "max_new_tokens": max_new_tokens,
                "load_seconds": load_seconds,
                "seconds_per_prompt": seconds,
                "median_seconds_per_prompt": statistics.median(seconds),
                "decoded_tokens_per_prompt": new_tokens,
                "prompt_tokens": writer.tokens_read,
                "peak_allocated_gib": None if peak is None else peak / 2**30,
                "image_tiles_bound": writer.max_pixels // (28 * 28),
            }
            runs.append(run)
            print(
                f"max_new_tokens {max_new_tokens}: load {load_seconds:.1f} s, median {run['median_seconds_per_prompt']:.2f} "
                f"s/prompt over {len(seconds)} prompts, peak {run['peak_allocated_gib'] or 0:.2f} GiB",
                flush=True,
            )
        results["runs"] = runs
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
