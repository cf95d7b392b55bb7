"""Tiny random-weight Wan models, built deterministically from a seed.

They stand in for real weights in tests and the CPU demo. They are written in the same diffusers layout as a Hugging
Face "*-Diffusers" repo (``transformer/``, ``transformer_2/``, ``vae/``, ``text_encoder/``, ``tokenizer/``, and for
Wan 2.1 i2v / flf2v ``image_encoder/`` and ``image_processor/``), so the engine loads them through exactly the code path
that loads real weights. Each is shaped like its architecture (`Wan2GP.architectures`): the input channels, the CLIP
image conditioning, the 48-channel VAE of Wan 2.2 5B. Nothing here is downloaded: the tokenizer is a small Unigram
vocabulary built in memory (machine_feasibility §3).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import AutoencoderKLWan, WanTransformer3DModel, WanVACETransformer3DModel
from loguru import logger
from transformers import (
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    CLIPVisionModel,
    T5Tokenizer,
    UMT5Config,
    UMT5EncoderModel,
)

from Wan2GP.architectures import ARCHITECTURES, Architecture
from Wan2GP.model_folders import build_folder_atomically

# Bump when the tiny architecture changes, so stale cache folders are rebuilt instead of silently reused.
TINY_FORMAT_VERSION = 2
MARKER_FILE = "tiny_model.json"

TEXT_DIM = 32
# The tiny CLIP vision tower: 32x32 images in 8x8 patches, 16 patch tokens + the class token per image (ViT-H/14 at 224:
# 256 + 1), 32 wide (ViT-H: 1280). Three layers, so the penultimate layer's output Wan uses is not the last one.
CLIP_IMAGE_SIZE = 32
CLIP_PATCH_SIZE = 8
CLIP_DIM = 32
CLIP_TOKENS = (CLIP_IMAGE_SIZE // CLIP_PATCH_SIZE) ** 2 + 1
# Enough words for readable test prompts; anything else falls back to single letters or <unk>.
_WORDS = (
    "a an the cat dog red blue green video walks runs jumps on in at beach city forest night day camera slowly fast "
    "travels through mountains sea sky sun moon light dark person car bird flies over under blurry noise"
).split()


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


def _tiny_vae(spec: Architecture) -> AutoencoderKLWan:
    # No residual blocks between the resamplings (num_res_blocks=0: none in the encoder, one per decoder stage): at these
    # channel counts torch runs the CPU's 3-D convolutions on its slow im2col path, and the VAE was the largest part of
    # every tiny render (the demo's 128x128x25 segment: encode 1.33 s -> 0.11 s, decode 2.44 s -> 1.21 s).
    if spec.latent_channels == 16:
        return AutoencoderKLWan(
            base_dim=8,
            z_dim=16,
            dim_mult=[1, 1, 1, 1],
            num_res_blocks=0,
            temperal_downsample=[False, True, True],
        ).eval()
    # Wan 2.2 5B's VAE (its repo's vae/config.json): residual blocks, 2x2 pixel patches folded into 12 input channels
    # before three 2x downsamplings, so one latent pixel covers 16x16 image pixels. Its own per-channel statistics
    # (diffusers' defaults have 16); spread out, so that a normalisation left out or applied twice shows.
    z_dim = spec.latent_channels
    return AutoencoderKLWan(
        base_dim=8,
        z_dim=z_dim,
        dim_mult=[1, 1, 1, 1],
        num_res_blocks=0,
        temperal_downsample=[False, True, True],
        is_residual=True,
        in_channels=12,
        out_channels=12,
        patch_size=2,
        scale_factor_spatial=16,
        latents_mean=[round(0.1 * (index % 7 - 3), 3) for index in range(z_dim)],
        latents_std=[round(0.6 + 0.1 * (index % 9), 3) for index in range(z_dim)],
    ).eval()


def _tiny_transformer(spec: Architecture) -> torch.nn.Module:
    common = dict(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=12,
        out_channels=spec.latent_channels,
        text_dim=TEXT_DIM,
        freq_dim=256,
        ffn_dim=32,
        num_layers=2,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        rope_max_seq_len=32,
    )
    if spec.kind == "vace":
        return WanVACETransformer3DModel(in_channels=16, vace_layers=[0, 1], vace_in_channels=96, **common).eval()
    if spec.kind in ("i2v", "flf2v"):
        # noise + 4 mask + image-latent channels (Wan 2.1 and 2.2 alike: 16 + 4 + 16).
        in_channels = 2 * spec.latent_channels + 4
    else:
        in_channels = spec.latent_channels  # t2v; ti2v puts its start image into the latents themselves
    if spec.clip_image_encoder:
        # Wan 2.1 i2v / flf2v: CLIP tokens projected to the model width, attended through added key/value projections.
        # FLF2V adds a learnt position embedding over both images' tokens (the first and the last frame's).
        inner_dim = common["num_attention_heads"] * common["attention_head_dim"]
        common.update(image_dim=CLIP_DIM, added_kv_proj_dim=inner_dim)
        if spec.kind == "flf2v":
            common["pos_embed_seq_len"] = 2 * CLIP_TOKENS
    transformer = WanTransformer3DModel(in_channels=in_channels, **common).eval()
    image_embedder = transformer.condition_embedder.image_embedder
    if image_embedder is not None and image_embedder.pos_embed is not None:
        # diffusers starts it at zero (a checkpoint fills it); random, so that which image is first matters here too.
        with torch.no_grad():
            image_embedder.pos_embed.normal_()
    return transformer


def _tiny_image_encoder() -> CLIPVisionModel:
    config = CLIPVisionConfig(
        hidden_size=CLIP_DIM,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        image_size=CLIP_IMAGE_SIZE,
        patch_size=CLIP_PATCH_SIZE,
        projection_dim=CLIP_DIM,
    )
    return CLIPVisionModel(config).eval()


def _tiny_image_processor() -> CLIPImageProcessorPil:
    # The real repos' processor (bicubic resize of the short side, centre crop, CLIP's mean/std) at the tiny size.
    # The PIL processor: transformers 5's default one needs torchvision, which no build of the pinned torch matches.
    crop = {"height": CLIP_IMAGE_SIZE, "width": CLIP_IMAGE_SIZE}
    return CLIPImageProcessorPil(size={"shortest_edge": CLIP_IMAGE_SIZE}, crop_size=crop)


def build_tiny_model(architecture: str, experts: int, seed: int, target_dir: Path) -> Path:
    """Build the tiny components for ``architecture`` from ``seed`` and save them into ``target_dir``.

    Every component gets its own derived seed so that it does not depend on build order. The global torch RNG is
    forked, so callers' random state is untouched. The folder appears atomically (built next to it, then renamed),
    so a crashed or concurrent build never leaves a half-written model behind.
    """
    spec = ARCHITECTURES.get(architecture)
    if spec is None:
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
            _tiny_vae(spec).save_pretrained(staging / "vae")
            for index, subfolder in enumerate(("transformer", "transformer_2")[:experts]):
                torch.manual_seed(seed + 2 + index)
                _tiny_transformer(spec).save_pretrained(staging / subfolder)
            if spec.clip_image_encoder:
                torch.manual_seed(seed + 4)  # past both experts' seeds
                _tiny_image_encoder().save_pretrained(staging / "image_encoder")
                _tiny_image_processor().save_pretrained(staging / "image_processor")
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
