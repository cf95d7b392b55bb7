"""The Wan architectures this engine runs, and where their weights come from: the one table an upstream model
definition without our `weights`/`experts` keys is completed from (pure Python, no torch).

Upstream Wan2GP names an architecture (`"architecture": "i2v"`) and lists its own single-file checkpoints in `URLs`;
we load diffusers-format repos. Each architecture maps to the official diffusers-format repo that holds all its
components, and each upstream checkpoint we know by name maps to the repo (and subfolder) with the same weights.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal
from urllib.parse import unquote, urlsplit

Kind = Literal["t2v", "i2v", "flf2v", "vace", "ti2v"]


@dataclass(frozen=True)
class Architecture:
    """One Wan architecture.

    kind: how it is conditioned. "i2v": start (and optional end) image latents as extra input channels, plus a CLIP
    image embedding on Wan 2.1; "flf2v": the same with first and last frame both CLIP-embedded; "vace": the VACE
    control context; "ti2v": Wan 2.2 5B, text-to-video or a start image put straight into the first latent frame with
    a per-token timestep of 0 there.
    """

    name: str
    kind: Kind
    repo_id: str  # the official diffusers-format repo with every component
    experts: int = 1  # Wan 2.2 A14B: a high-noise and a low-noise expert
    clip_image_encoder: bool = False  # Wan 2.1 i2v / flf2v condition on CLIP ViT-H/14 image features too
    latent_channels: int = 16  # Wan 2.2 5B's VAE has 48
    fps: int = 16
    size: str = "14B"

    @property
    def travel_mode(self) -> str | None:
        """How a model of this architecture travels between keyframes: "vace" (guide + mask), "i2v" (start and end
        images) or None (ti2v takes a start image only; t2v none)."""
        if self.kind == "vace":
            return "vace"
        return "i2v" if self.kind in ("i2v", "flf2v") else None

    @property
    def takes_start_image(self) -> bool:
        return self.kind in ("i2v", "flf2v", "ti2v")

    @property
    def takes_end_image(self) -> bool:
        return self.kind in ("i2v", "flf2v")


ARCHITECTURES: Mapping[str, Architecture] = {
    spec.name: spec
    for spec in (
        Architecture("t2v", "t2v", "Wan-AI/Wan2.1-T2V-14B-Diffusers"),
        Architecture("t2v_1.3B", "t2v", "Wan-AI/Wan2.1-T2V-1.3B-Diffusers", size="1.3B"),
        Architecture("i2v", "i2v", "Wan-AI/Wan2.1-I2V-14B-480P-Diffusers", clip_image_encoder=True),
        Architecture("flf2v_720p", "flf2v", "Wan-AI/Wan2.1-FLF2V-14B-720P-diffusers", clip_image_encoder=True),
        Architecture("vace_14B", "vace", "Wan-AI/Wan2.1-VACE-14B-diffusers"),
        Architecture("vace_1.3B", "vace", "Wan-AI/Wan2.1-VACE-1.3B-diffusers", size="1.3B"),
        Architecture("t2v_2_2", "t2v", "Wan-AI/Wan2.2-T2V-A14B-Diffusers", experts=2, size="A14B"),
        Architecture("i2v_2_2", "i2v", "Wan-AI/Wan2.2-I2V-A14B-Diffusers", experts=2, size="A14B"),
        # No official diffusers release of a VACE 2.2: the Fun VACE A14B, converted by a diffusers maintainer.
        Architecture("vace_14B_2_2", "vace", "linoyts/Wan2.2-VACE-Fun-14B-diffusers", experts=2, size="A14B"),
        Architecture("ti2v_2_2", "ti2v", "Wan-AI/Wan2.2-TI2V-5B-Diffusers", latent_channels=48, fps=24, size="5B"),
    )
}


@dataclass(frozen=True)
class RepoWeights:
    """Weights in a diffusers-format repo: `subfolder` is the transformer folder an upstream checkpoint matches,
    `kind` the conditioning its transformer was trained for (None: not known, e.g. our own repo spelling)."""

    repo_id: str
    subfolder: str = "transformer"
    kind: Kind | None = None


# Upstream's checkpoint files (DeepBeepMeep's mirrors, in bf16/fp16 and quanto int8 variants) by the start of their
# file name, and the diffusers-format repo holding the same weights. Longest prefix wins.
_CHECKPOINT_PREFIXES: Mapping[str, RepoWeights] = {
    "wan2.1_text2video_14B": RepoWeights("Wan-AI/Wan2.1-T2V-14B-Diffusers", kind="t2v"),
    "wan2.1_text2video_1.3B": RepoWeights("Wan-AI/Wan2.1-T2V-1.3B-Diffusers", kind="t2v"),
    "wan2.1_image2video_480p_14B": RepoWeights("Wan-AI/Wan2.1-I2V-14B-480P-Diffusers", kind="i2v"),
    "wan2.1_image2video_720p_14B": RepoWeights("Wan-AI/Wan2.1-I2V-14B-720P-Diffusers", kind="i2v"),
    "wan2.1_FLF2V_720p_14B": RepoWeights("Wan-AI/Wan2.1-FLF2V-14B-720P-diffusers", kind="flf2v"),
    "wan2.1_Vace_14B": RepoWeights("Wan-AI/Wan2.1-VACE-14B-diffusers", kind="vace"),
    "wan2.1_Vace_1_3B": RepoWeights("Wan-AI/Wan2.1-VACE-1.3B-diffusers", kind="vace"),
    "wan2.2_text2video_14B_high": RepoWeights("Wan-AI/Wan2.2-T2V-A14B-Diffusers", kind="t2v"),
    "wan2.2_text2video_14B_low": RepoWeights("Wan-AI/Wan2.2-T2V-A14B-Diffusers", "transformer_2", "t2v"),
    "wan2.2_image2video_14B_high": RepoWeights("Wan-AI/Wan2.2-I2V-A14B-Diffusers", kind="i2v"),
    "wan2.2_image2video_14B_low": RepoWeights("Wan-AI/Wan2.2-I2V-A14B-Diffusers", "transformer_2", "i2v"),
    "wan2.2_text2video_5B": RepoWeights("Wan-AI/Wan2.2-TI2V-5B-Diffusers", kind="ti2v"),
    "Wan2_2_Fun_VACE_A14B_HIGH": RepoWeights("linoyts/Wan2.2-VACE-Fun-14B-diffusers", kind="vace"),
    "Wan2_2_Fun_VACE_A14B_LOW": RepoWeights("linoyts/Wan2.2-VACE-Fun-14B-diffusers", "transformer_2", "vace"),
}

# Upstream's base model ids that other definitions name in a string URLs ("URLs": "vace_fun_14B_2_2"), for when the
# named file is not in the catalog: an architecture's own id means its repo, plus these.
UPSTREAM_BASE_MODELS: Mapping[str, RepoWeights] = {
    **{name: RepoWeights(spec.repo_id, kind=spec.kind) for name, spec in ARCHITECTURES.items()},
    "vace_fun_14B_2_2": RepoWeights("linoyts/Wan2.2-VACE-Fun-14B-diffusers", kind="vace"),
    "i2v_720p": RepoWeights("Wan-AI/Wan2.1-I2V-14B-720P-Diffusers", kind="i2v"),
}

# Our own bundled definitions spell a repo's transformer as "owner/repo/subfolder".
_REPO_SUBFOLDER = re.compile(r"^([\w.-]+/[\w.-]+)/(transformer(?:_2)?)$")


def architecture(name: str) -> Architecture | None:
    return ARCHITECTURES.get(name)


def checkpoint_file_name(url: str) -> str:
    """The file name at the end of a checkpoint URL or path ("" when there is none)."""
    try:
        path = urlsplit(url).path
    except ValueError:
        return ""
    return unquote(path.rsplit("/", 1)[-1])


def known_checkpoint(url: str) -> RepoWeights | None:
    """The diffusers-format repo holding the weights of an upstream checkpoint URL (or of our own
    "owner/repo/transformer" spelling), or None for a checkpoint we do not know (a finetune)."""
    own = _REPO_SUBFOLDER.match(url)
    if own is not None:
        return RepoWeights(own.group(1), own.group(2))
    name = checkpoint_file_name(url)
    matches = [prefix for prefix in _CHECKPOINT_PREFIXES if name.startswith(prefix)]
    if not matches:
        return None
    return _CHECKPOINT_PREFIXES[max(matches, key=len)]


def is_hub_file_url(url: str) -> bool:
    """A single file on the Hugging Face Hub: https://huggingface.co/<owner>/<repo>/resolve/<revision>/<path>."""
    return hub_file(url) is not None


def hub_file(url: str) -> tuple[str, str, str] | None:
    """(repo_id, revision, path in repo) of a Hub "resolve" URL, or None."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    if parts.scheme != "https" or parts.hostname != "huggingface.co":
        return None
    segments = [unquote(segment) for segment in parts.path.split("/") if segment]
    if len(segments) < 5 or segments[2] != "resolve" or not segments[-1].endswith(".safetensors"):
        return None
    return f"{segments[0]}/{segments[1]}", segments[3], "/".join(segments[4:])
