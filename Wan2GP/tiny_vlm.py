"""A tiny random-weight Qwen2.5-VL, built deterministically from a seed, for tests and the CPU.

It is saved in the layout of a Hugging Face Qwen2.5-VL repo (config.json + safetensors, tokenizer files,
preprocessor_config.json), so the prompt writer loads it through exactly the code that loads
Qwen/Qwen2.5-VL-7B-Instruct. The tokenizer is byte-level BPE without merges (one token per byte) plus Qwen's chat and
vision special tokens, built in memory: nothing is downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from loguru import logger
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2TokenizerFast,
    Qwen2VLImageProcessorPil,
)

from Wan2GP.model_folders import build_folder_atomically

TINY_VLM_FORMAT_VERSION = 1
MARKER_FILE = "tiny_vlm.json"
SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
# Small images: 4 to 16 merged 28x28 tiles.
TINY_MIN_PIXELS = 4 * 28 * 28
TINY_MAX_PIXELS = 16 * 28 * 28


def byte_level_tokenizer() -> Qwen2TokenizerFast:
    """One token per byte plus Qwen's chat and vision special tokens: the tiny model's, and the GPU benchmark's."""
    vocabulary = {symbol: index for index, symbol in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    tokenizer = Tokenizer(models.BPE(vocab=vocabulary, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(list(SPECIAL_TOKENS))
    return Qwen2TokenizerFast(
        tokenizer_object=tokenizer, eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token=None, bos_token=None
    )


def _model(tokenizer: Qwen2TokenizerFast) -> Qwen2_5_VLForConditionalGeneration:
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS}
    config = Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=4096,
            rope_scaling={"type": "mrope", "mrope_section": [1, 1, 2]},
            bos_token_id=ids["<|endoftext|>"],
            eos_token_id=ids["<|im_end|>"],
            pad_token_id=ids["<|endoftext|>"],
        ),
        vision_config=dict(
            depth=2,
            hidden_size=32,
            intermediate_size=64,
            num_heads=4,
            out_hidden_size=32,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
            window_size=56,
            fullatt_block_indexes=[1],
            in_channels=3,
        ),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    return Qwen2_5_VLForConditionalGeneration(config).eval()


def build_tiny_vlm(seed: int, target_dir: Path) -> Path:
    """Build the tiny model from `seed` into `target_dir` (atomically: built beside it, then renamed)."""

    def build(staging: Path) -> None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            tokenizer = byte_level_tokenizer()
            tokenizer.save_pretrained(staging)
            _model(tokenizer).save_pretrained(staging)
            size = {"shortest_edge": TINY_MIN_PIXELS, "longest_edge": TINY_MAX_PIXELS}
            Qwen2VLImageProcessorPil(size=size).save_pretrained(staging)
        (staging / MARKER_FILE).write_text(json.dumps({"format_version": TINY_VLM_FORMAT_VERSION, "seed": seed}))

    target_dir = build_folder_atomically(Path(target_dir), build, lambda folder: tiny_vlm_is_current(folder, seed))
    logger.info("Built tiny Qwen2.5-VL (seed {}) in {}", seed, target_dir)
    return target_dir


def tiny_vlm_is_current(folder: Path, seed: int) -> bool:
    try:
        marker = json.loads((Path(folder) / MARKER_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return marker == {"format_version": TINY_VLM_FORMAT_VERSION, "seed": seed}


def ensure_tiny_vlm(folder: Path, seed: int) -> Path:
    if not tiny_vlm_is_current(folder, seed):
        build_tiny_vlm(seed, folder)
    return Path(folder)
