"""Tiny random-weight Wan models, built deterministically from a seed.

They stand in for real weights in tests and the CPU demo. They are written in the same diffusers layout as a Hugging
Face "*-Diffusers" repo (``transformer/``, ``transformer_2/``, ``vae/``, ``text_encoder/``, ``tokenizer/``), so the
engine loads them through exactly the code path that loads real weights. Nothing here is downloaded: the tokenizer is
a small Unigram vocabulary built in memory (machine_feasibility §3).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import AutoencoderKLWan, WanTransformer3DModel, WanVACETransformer3DModel
from loguru import logger
from transformers import T5Tokenizer, UMT5Config, UMT5EncoderModel

from Wan2GP.model_folders import build_folder_atomically

# Bump when the tiny architecture changes, so stale cache folders are rebuilt instead of silently reused.
TINY_FORMAT_VERSION = 1
MARKER_FILE = "tiny_model.json"

TEXT_DIM = 32
# Enough words for readable test prompts; anything else falls back to single letters or <unk>.
_WORDS = (
    "a an the cat dog red blue green video walks runs jumps on in at beach city forest night day camera slowly fast "
    "travels through mountains sea sky sun moon light dark person car bird flies over under blurry noise"
).split()

ARCHITECTURES = ("t2v", "t2v_2_2", "i2v_2_2", "vace_14B", "vace_14B_2_2")


def is_vace_architecture(architecture: str) -> bool:
    return architecture.startswith("vace")


def is_i2v_architecture(architecture: str) -> bool:
    return architecture.startswith("i2v")


def _tiny_tokenizer() -> T5Tokenizer:
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    vocab += [(letter, -5.0) for letter in "▁abcdefghijklmnopqrstuvwxyz"]
    vocab += [("▁" + word, -2.0) for word in _WORDS]
    return T5Tokenizer(vocab=vocab, extra_ids=0)


def _tiny_text_encoder(vocab_size: int) -> UMT5EncoderModel:
    config = UMT5Config(
        vocab_size=vocab_size,
        d_model=TEXT_DIM,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
    )
    return UMT5EncoderModel(config).eval()


def _tiny_vae() -> AutoencoderKLWan:
    return AutoencoderKLWan(
        base_dim=8,
        z_dim=16,
        dim_mult=[1, 1, 1, 1],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],
    ).eval()


def _tiny_transformer(architecture: str) -> torch.nn.Module:
    common = dict(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=12,
        out_channels=16,
        text_dim=TEXT_DIM,
        freq_dim=256,
        ffn_dim=32,
        num_layers=2,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        rope_max_seq_len=32,
    )
    if is_vace_architecture(architecture):
        return WanVACETransformer3DModel(in_channels=16, vace_layers=[0, 1], vace_in_channels=96, **common).eval()
    # Wan 2.2 i2v: 16 noise + 4 mask + 16 image-latent channels, no CLIP image encoder.
    in_channels = 36 if is_i2v_architecture(architecture) else 16
    return WanTransformer3DModel(in_channels=in_channels, **common).eval()


def build_tiny_model(architecture: str, experts: int, seed: int, target_dir: Path) -> Path:
    """Build the tiny components for ``architecture`` from ``seed`` and save them into ``target_dir``.

    Every component gets its own derived seed so that it does not depend on build order. The global torch RNG is
    forked, so callers' random state is untouched. The folder appears atomically (built next to it, then renamed),
    so a crashed or concurrent build never leaves a half-written model behind.
    """
    if architecture not in ARCHITECTURES:
        raise ValueError(f"architecture: expected one of {', '.join(ARCHITECTURES)}, got {architecture!r}")
    if experts not in (1, 2):
        raise ValueError(f"experts: expected 1 or 2, got {experts!r}")

    def build(staging: Path) -> None:
        with torch.random.fork_rng(devices=[]):
            tokenizer = _tiny_tokenizer()
            tokenizer.save_pretrained(staging / "tokenizer")
            torch.manual_seed(seed)
            _tiny_text_encoder(len(tokenizer)).save_pretrained(staging / "text_encoder")
            torch.manual_seed(seed + 1)
            _tiny_vae().save_pretrained(staging / "vae")
            for index, subfolder in enumerate(("transformer", "transformer_2")[:experts]):
                torch.manual_seed(seed + 2 + index)
                _tiny_transformer(architecture).save_pretrained(staging / subfolder)
        marker = {"format_version": TINY_FORMAT_VERSION, "architecture": architecture, "experts": experts, "seed": seed}
        (staging / MARKER_FILE).write_text(json.dumps(marker, indent=2))

    target_dir = build_folder_atomically(
        Path(target_dir), build, lambda folder: tiny_model_is_current(folder, architecture, experts, seed)
    )
    logger.info("Built tiny Wan model ({}, {} expert(s), seed {}) in {}", architecture, experts, seed, target_dir)
    return target_dir


def tiny_model_is_current(folder: Path, architecture: str, experts: int, seed: int) -> bool:
    """True when ``folder`` holds a complete tiny model built from exactly these inputs."""
    marker_path = Path(folder) / MARKER_FILE
    if not marker_path.is_file():
        return False
    try:
        marker = json.loads(marker_path.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    expected = {"format_version": TINY_FORMAT_VERSION, "architecture": architecture, "experts": experts, "seed": seed}
    return marker == expected


def ensure_tiny_model(folder: Path, architecture: str, experts: int, seed: int) -> Path:
    """Return ``folder``, building the tiny model there first if it is missing or stale."""
    if not tiny_model_is_current(folder, architecture, experts, seed):
        build_tiny_model(architecture, experts, seed, folder)
    return Path(folder)
