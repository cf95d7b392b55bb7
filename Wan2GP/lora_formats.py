"""LoRA files as the tools that write them lay them out, read into one form: what each file changes in a diffusers
WanTransformer3DModel, per expert.

A file holds, for each module it touches, some of these (the names after the module path):
- a low-rank pair `lora_down.weight`/`lora_up.weight` (or `lora_A.weight`/`lora_B.weight`), with an optional `alpha`:
  the weight changes by strength * (alpha / rank) * up @ down (no alpha: the factor is 1);
- `dora_scale` (kohya/LyCORIS) or `lora_magnitude_vector` (peft) next to a pair: DoRA's magnitude, see `LowRank`;
- `diff`: a full delta of the module's weight; `diff_b`: of its bias; `diff_m` (on a block or the head): of its
  modulation table, `scale_shift_table` in diffusers (ComfyUI's and LightX2V's semantics: weight += strength * diff).

Module paths come in three spellings, all mapped onto diffusers' names through one table (`_ORIGINAL_TO_DIFFUSERS`):
- original Wan (ComfyUI, Lightning, LightX2V, kijai's extractor, diffusion-pipe): "diffusion_model.blocks.0.self_attn.q";
- kohya (musubi-tuner, VideoX-Fun): "lora_unet_blocks_0_self_attn_q", "lora_unet__blocks_0_…" or the dotted
  "lora_unet_blocks_0.self_attn.q"; undone to the original spelling first;
- diffusers/peft (diffusers, ai-toolkit): "transformer.blocks.0.attn1.to_q", "diffusion_model.blocks.0.attn1.to_q".
ai-toolkit's combined Wan 2.2 file prefixes every key with "transformer_1." (the high-noise expert) or
"transformer_2." (the low-noise expert); it is split into one part per expert.

This module only reads and renames; which keys match the loaded transformer, and applying them, is Wan2GP.loras.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import safetensors
import torch
from peft.utils.other import get_pattern_key
from pydantic import BaseModel, ConfigDict, ValidationError

from Wan2GP.sampler import EXPERTS

# The expert a part of a file is for: ALL_EXPERTS, or one of the engine's expert names (sampler.EXPERTS).
ALL_EXPERTS = "*"

# ai-toolkit's DualWanTransformer3DModel: transformer_1 runs the high-noise steps, transformer_2 the low-noise ones.
_AI_TOOLKIT_EXPERTS = {"1": EXPERTS[0], "2": EXPERTS[1]}
_AI_TOOLKIT_PART = re.compile(r"^(?P<prefix>(?:model\.)?diffusion_model\.|transformer\.)?transformer_(?P<n>[12])\.")

# Key prefixes written by the various trainers and converters; the first match is stripped.
_KEY_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "base_model.model.", "transformer.")
_KOHYA_PREFIX = re.compile(r"^lora_unet__?(?:diffusion_model_)?")  # "lora_unet__": VideoX-Fun
_KOHYA_TEXT_ENCODER = re.compile(r"^lora_te\d?_")  # a text-encoder LoRA in the same file: names no transformer module

# Other spellings of the parameter names (upstream's MMGP normalises them the same way).
_PARAM_SPELLINGS = (
    (".lora.down.", ".lora_down."),
    (".lora.up.", ".lora_up."),
    (".lora.A.", ".lora_A."),
    (".lora.B.", ".lora_B."),
    (".default.", "."),
    (".default_0.", "."),
)

# Every parameter name a file may carry after its module path, longest first (so "diff_b" is not read as "diff").
_DOWN, _UP, _ALPHA, _MAGNITUDE, _PAIR_BIAS = "down", "up", "alpha", "magnitude", "pair_bias"
_DIFF, _DIFF_B, _DIFF_M = "diff", "diff_b", "diff_m"
_PARAMETERS = {
    "lora_magnitude_vector.weight": _MAGNITUDE,
    "lora_magnitude_vector": _MAGNITUDE,
    "lora_down.weight": _DOWN,
    "lora_A.weight": _DOWN,
    "lora_up.weight": _UP,
    "lora_B.weight": _UP,
    "lora_B.bias": _PAIR_BIAS,
    "dora_scale": _MAGNITUDE,
    "alpha": _ALPHA,
    "diff_b": _DIFF_B,
    "diff_m": _DIFF_M,
    "diff": _DIFF,
}
_PARAMETER = re.compile(r"^(?P<module>.+?)\.(?P<param>" + "|".join(re.escape(p) for p in _PARAMETERS) + r")$")
_OTHER_ADAPTERS = re.compile(r"\.(?:hada_|lokr_|oft_|boft_|lora_mid|glora_)")

# kohya flattens module paths with "_"; these undo it for every Wan module a LoRA can target (original spelling).
_BLOCK = r"(vace_blocks|blocks)_(\d+)"
_KOHYA_MODULES = (
    (re.compile(rf"^{_BLOCK}_(self_attn|cross_attn)_(q|k|v|o|k_img|v_img|norm_q|norm_k|norm_k_img)$"), r"\1.\2.\3.\4"),
    (re.compile(rf"^{_BLOCK}_ffn_(\d+)$"), r"\1.\2.ffn.\3"),
    (re.compile(rf"^{_BLOCK}_(modulation|norm1|norm2|norm3|before_proj|after_proj)$"), r"\1.\2.\3"),
    (re.compile(rf"^{_BLOCK}$"), r"\1.\2"),
    (re.compile(r"^head_(head|modulation)$"), r"head.\1"),
    (re.compile(r"^(text_embedding|time_embedding|time_projection)_(\d+)$"), r"\1.\2"),
    (re.compile(r"^img_emb_proj_(\d+)$"), r"img_emb.proj.\1"),
    (re.compile(r"^(head|patch_embedding|vace_patch_embedding)$"), r"\1"),
)

# Original Wan module path -> diffusers module path. Paths that match none are diffusers' already, or name nothing
# (reported when attached).
_B = r"^((?:vace_)?blocks\.\d+)\."
_ORIGINAL_TO_DIFFUSERS = tuple(
    (re.compile(pattern), replacement)
    for pattern, replacement in (
        (_B + r"self_attn\.(q|k|v)$", r"\1.attn1.to_\2"),
        (_B + r"self_attn\.o$", r"\1.attn1.to_out.0"),
        (_B + r"self_attn\.(norm_q|norm_k)$", r"\1.attn1.\2"),
        (_B + r"cross_attn\.(q|k|v)$", r"\1.attn2.to_\2"),
        (_B + r"cross_attn\.o$", r"\1.attn2.to_out.0"),
        (_B + r"cross_attn\.(norm_q|norm_k)$", r"\1.attn2.\2"),
        (_B + r"cross_attn\.k_img$", r"\1.attn2.add_k_proj"),
        (_B + r"cross_attn\.v_img$", r"\1.attn2.add_v_proj"),
        (_B + r"cross_attn\.norm_k_img$", r"\1.attn2.norm_added_k"),
        (_B + r"ffn\.0$", r"\1.ffn.net.0.proj"),
        (_B + r"ffn\.2$", r"\1.ffn.net.2"),
        (_B + r"norm3$", r"\1.norm2"),  # the cross-attention norm: norm3 in Wan, norm2 in diffusers
        (r"^(vace_blocks\.\d+)\.before_proj$", r"\1.proj_in"),
        (r"^(vace_blocks\.\d+)\.after_proj$", r"\1.proj_out"),
        (r"^head\.head$", "proj_out"),
        (r"^text_embedding\.0$", "condition_embedder.text_embedder.linear_1"),
        (r"^text_embedding\.2$", "condition_embedder.text_embedder.linear_2"),
        (r"^time_embedding\.0$", "condition_embedder.time_embedder.linear_1"),
        (r"^time_embedding\.2$", "condition_embedder.time_embedder.linear_2"),
        (r"^time_projection\.1$", "condition_embedder.time_proj"),
        (r"^img_emb\.proj\.0$", "condition_embedder.image_embedder.norm1"),
        (r"^img_emb\.proj\.1$", "condition_embedder.image_embedder.ff.net.0.proj"),
        (r"^img_emb\.proj\.3$", "condition_embedder.image_embedder.ff.net.2"),
        (r"^img_emb\.proj\.4$", "condition_embedder.image_embedder.norm2"),
    )
)
# The modulation table: "blocks.N.modulation" / "head.modulation" in Wan, a parameter named scale_shift_table in
# diffusers (on the block, or on the transformer itself for the head).
_MODULATION_OWNER = re.compile(r"^(?P<owner>(?:vace_)?blocks\.\d+|head)(?:\.modulation)?$")
_DIFFUSERS_MODULATION = re.compile(r"^(?:(?P<owner>(?:vace_)?blocks\.\d+)\.)?scale_shift_table$")

# Which spelling a file uses: names only one of the two has.
_ORIGINAL_ONLY = re.compile(
    r"(?:^|\.)(?:self_attn|cross_attn|ffn\.\d|modulation|norm3|before_proj|after_proj)(?:\.|$)"
    r"|^(?:head|text_embedding|time_embedding|time_projection|img_emb)(?:\.|$)"
)
_DIFFUSERS_ONLY = re.compile(
    r"(?:^|\.)(?:attn1|attn2|ffn\.net|proj_in|scale_shift_table)(?:\.|$)|^(?:condition_embedder|proj_out)(?:\.|$)"
)


class LoraError(ValueError):
    """A LoRA file that cannot be used: names the file and what is wrong with it."""

    def __init__(self, path: Path, problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"LoRA file {self.path}: {problem}")


@dataclass(frozen=True)
class LowRank:
    """A low-rank change of one Linear layer's weight. `down` (rank x in) already carries the file's alpha/rank, so
    at strength s the weight becomes W + s * up @ down. With a DoRA `magnitude` it becomes instead
    W + s * (m * V / ||V|| - W) where V = W + up @ down and the norm runs over each output row (magnitude shaped
    (out,) or (out, 1)) or each input column (shaped (1, in)): ComfyUI's strength semantics on DoRA's definition."""

    down: torch.Tensor
    up: torch.Tensor
    magnitude: torch.Tensor | None
    source: str  # the module path as the file spells it, for messages


@dataclass(frozen=True)
class FullDelta:
    """A full change of one parameter (a diff, diff_b, diff_m or a pair's bias): at strength s, P + s * delta."""

    delta: torch.Tensor
    source: str


@dataclass(frozen=True)
class LoraWeights:
    """What one file changes in one transformer, by diffusers name: Linear modules with a low-rank change, and
    parameters ("blocks.0.attn1.norm_q.weight", "blocks.0.scale_shift_table", ...) with a full one."""

    low_rank: dict[str, LowRank] = field(default_factory=dict)
    full: dict[str, FullDelta] = field(default_factory=dict)
    unused: list[str] = field(default_factory=list)  # module paths read that can name no Wan transformer module

    def __len__(self) -> int:
        return len(self.low_rank) + len(self.full)


@dataclass(frozen=True)
class LoraFile:
    """A LoRA file read: its layout (for messages) and its weights per expert (ALL_EXPERTS: the same for each)."""

    path: Path
    layout: str
    parts: dict[str, LoraWeights]

    def for_expert(self, expert: str) -> LoraWeights:
        """What this file changes in `expert`'s transformer (nothing, for a split file without that expert)."""
        for part in (expert, ALL_EXPERTS):
            if part in self.parts:
                return self.parts[part]
        return _NOTHING


_NOTHING = LoraWeights()


class _PeftAdapterMetadata(BaseModel):
    """The LoraConfig fields diffusers writes into a LoRA file's `lora_adapter_metadata` (only those we use)."""

    model_config = ConfigDict(extra="ignore")

    lora_alpha: float | None = None
    alpha_pattern: dict[str, float] = {}
    use_rslora: bool = False
    use_dora: bool = False


def read_lora_file(path: Path) -> LoraFile:
    """Read a .safetensors LoRA in any supported layout; LoraError for a file that is not one."""
    path = Path(path)
    tensors, metadata = _read_safetensors(path)
    if not tensors:
        raise LoraError(path, "holds no tensors")
    other = sorted(key for key in tensors if _OTHER_ADAPTERS.search(key))
    if other:
        raise LoraError(path, f"is a LyCORIS LoHa/LoKr/OFT-style file (e.g. {other[0]!r}), which is not supported")
    adapter_metadata = _parse_adapter_metadata(path, metadata)

    by_expert: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        match = _AI_TOOLKIT_PART.match(key)
        expert = _AI_TOOLKIT_EXPERTS[match["n"]] if match else ALL_EXPERTS
        name = (match["prefix"] or "") + key[match.end() :] if match else key
        by_expert.setdefault(expert, {})[name] = tensor
    if ALL_EXPERTS in by_expert and len(by_expert) > 1:
        shared = sorted(by_expert[ALL_EXPERTS])[:3]
        raise LoraError(path, f"mixes transformer_1./transformer_2. keys with keys for no expert, e.g. {shared}")

    layouts: set[str] = set()
    parts = {expert: _read_part(path, part, adapter_metadata, layouts) for expert, part in sorted(by_expert.items())}
    layout = " + ".join(sorted(layouts))
    if ALL_EXPERTS not in parts:
        layout = f"ai-toolkit Wan 2.2 combined file ({layout}; transformer_1 = high noise, transformer_2 = low noise)"
    return LoraFile(path=path, layout=layout, parts=parts)


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    if not path.is_file():
        raise LoraError(path, "file not found")
    try:
        with safetensors.safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except Exception as error:  # safetensors raises its own SafetensorError and OSError variants
        raise LoraError(path, f"is not a readable .safetensors file ({error})") from error
    return tensors, metadata


def _read_part(
    path: Path, tensors: Mapping[str, torch.Tensor], adapter_metadata: _PeftAdapterMetadata, layouts: set[str]
) -> LoraWeights:
    """One expert's keys -> LoraWeights: split each key into module and parameter, rename, group, check."""
    kohya = [key for key in tensors if _KOHYA_PREFIX.match(key) or _KOHYA_TEXT_ENCODER.match(key)]
    if kohya and len(kohya) != len(tensors):
        other = next(key for key in tensors if key not in kohya)
        raise LoraError(path, f"mixes kohya 'lora_unet_' keys with other keys ({other!r})")

    per_module: dict[str, dict[str, torch.Tensor]] = {}
    unused: set[str] = set()
    dotted_kohya = False
    for key, tensor in tensors.items():
        name = key
        for spelling, canonical in _PARAM_SPELLINGS:
            name = name.replace(spelling, canonical)
        match = _PARAMETER.match(_strip_prefix(name) if not kohya else name)
        if match is None:
            raise LoraError(
                path,
                f"key {key!r} is not a LoRA parameter (expected <module>.lora_down/lora_up/lora_A/lora_B.weight, "
                ".alpha, .diff, .diff_b, .diff_m or .dora_scale)",
            )
        if kohya and "." in match["module"]:
            dotted_kohya = True
        module = _kohya_module(match["module"]) if kohya else match["module"]
        if module is None:
            unused.add(match["module"])
            continue
        per_module.setdefault(module, {})[_PARAMETERS[match["param"]]] = tensor

    original = any(_ORIGINAL_ONLY.search(module) for module in per_module)
    diffusers_spelling = any(_DIFFUSERS_ONLY.search(module) for module in per_module)
    if original and diffusers_spelling:
        first_original = next(module for module in per_module if _ORIGINAL_ONLY.search(module))
        first_diffusers = next(module for module in per_module if _DIFFUSERS_ONLY.search(module))
        raise LoraError(path, f"mixes original Wan names ({first_original}) with diffusers names ({first_diffusers})")
    layouts.add(_layout(tensors, kohya=bool(kohya), dotted=dotted_kohya, diffusers_spelling=diffusers_spelling))

    weights = LoraWeights(unused=sorted(unused))
    for module, params in per_module.items():
        target = module if diffusers_spelling else _to_diffusers(module)
        _add_module(path, weights, module, target, params, adapter_metadata)
    return weights


def _strip_prefix(key: str) -> str:
    for prefix in _KEY_PREFIXES:
        if key.startswith(prefix):
            return key[len(prefix) :]
    return key


def _kohya_module(flat: str) -> str | None:
    """'lora_unet_blocks_0_self_attn_q' (or '__blocks_0…', or dotted 'blocks_0.self_attn.q') -> 'blocks.0.self_attn.q';
    None for a module no Wan transformer has (a text encoder's, or one the table does not know)."""
    if _KOHYA_TEXT_ENCODER.match(flat):
        return None
    flat = _KOHYA_PREFIX.sub("", flat).replace(".", "_")
    for pattern, replacement in _KOHYA_MODULES:
        if pattern.match(flat):
            return pattern.sub(replacement, flat)
    return None


def _to_diffusers(module: str) -> str:
    for pattern, replacement in _ORIGINAL_TO_DIFFUSERS:
        if pattern.match(module):
            return pattern.sub(replacement, module)
    return module


def _layout(tensors: Mapping[str, torch.Tensor], *, kohya: bool, dotted: bool, diffusers_spelling: bool) -> str:
    keys = list(tensors)
    if kohya:
        if any(key.startswith("lora_unet__") for key in keys):
            names = "VideoX-Fun kohya names (lora_unet__blocks_N_…)"
        elif dotted:
            names = "dotted kohya names (lora_unet_blocks_N.self_attn.q)"
        else:
            names = "kohya/musubi-tuner names (lora_unet_blocks_N_…)"
    elif diffusers_spelling:
        names = "diffusers names (blocks.N.attn1.to_q)"
    else:
        names = "original Wan names (diffusion_model.blocks.N.self_attn.q)"
    kinds = []
    if any(key.endswith((".lora_down.weight", ".lora_up.weight")) for key in keys):
        kinds.append("lora_down/lora_up")
    if any(key.endswith((".lora_A.weight", ".lora_B.weight")) for key in keys):
        kinds.append("lora_A/lora_B")
    kinds += [kind for kind in ("diff", "diff_b", "diff_m", "dora_scale") if any(k.endswith(f".{kind}") for k in keys)]
    if any("lora_magnitude_vector" in key for key in keys):
        kinds.append("lora_magnitude_vector")
    return f"{names} with {', '.join(kinds)}"


def _add_module(
    path: Path,
    weights: LoraWeights,
    source: str,
    target: str,
    params: Mapping[str, torch.Tensor],
    adapter_metadata: _PeftAdapterMetadata,
) -> None:
    """Put one module's parameters into `weights` under diffusers names; LoraError for an incomplete set."""
    down, up = params.get(_DOWN), params.get(_UP)
    if (down is None) != (up is None) or (down is None and ({_ALPHA, _MAGNITUDE, _PAIR_BIAS} & set(params))):
        raise LoraError(
            path, f"module {source} lacks its lora_down/lora_up (lora_A/lora_B) pair (has {sorted(params)})"
        )
    if down is not None and up is not None:
        if down.ndim != 2 or up.ndim != 2 or down.shape[0] != up.shape[1]:
            raise LoraError(
                path, f"module {source}: down {tuple(down.shape)} and up {tuple(up.shape)} are not a rank-r pair"
            )
        scale = _pair_scale(source, down.shape[0], params.get(_ALPHA), adapter_metadata)
        magnitude = params.get(_MAGNITUDE)
        if adapter_metadata.use_dora and magnitude is None:
            raise LoraError(path, f"module {source}: use_dora is set in the metadata but it has no magnitude vector")
        if magnitude is not None and not _magnitude_fits(magnitude, up.shape[0], down.shape[1]):
            raise LoraError(
                path,
                f"module {source}: DoRA magnitude {tuple(magnitude.shape)} fits neither the outputs ({up.shape[0]}) "
                f"nor the inputs ({down.shape[1]}) of its pair",
            )
        weights.low_rank[target] = LowRank(
            down=down * scale if scale != 1.0 else down, up=up, magnitude=magnitude, source=source
        )
        if _PAIR_BIAS in params:  # peft's lora_bias: the bias moves by strength * scale * lora_B.bias
            _add_full(path, weights, f"{target}.bias", params[_PAIR_BIAS] * scale, source)

    modulation = _modulation_parameter(target)
    if _DIFF in params:
        # "blocks.N.modulation.diff" is the older spelling of "blocks.N.diff_m"
        _add_full(path, weights, modulation or f"{target}.weight", params[_DIFF], source)
    if _DIFF_B in params:
        _add_full(path, weights, f"{target}.bias", params[_DIFF_B], source)
    if _DIFF_M in params:
        if modulation is None:
            raise LoraError(path, f"module {source}: diff_m belongs to a block or the head, which have modulation")
        _add_full(path, weights, modulation, params[_DIFF_M], source)


def _add_full(path: Path, weights: LoraWeights, parameter: str, delta: torch.Tensor, source: str) -> None:
    if parameter in weights.full:
        raise LoraError(path, f"module {source}: two deltas for {parameter}")
    weights.full[parameter] = FullDelta(delta=delta, source=source)


def _modulation_parameter(target: str) -> str | None:
    """The diffusers modulation table of a block or the head, or None when `target` is neither."""
    match = _MODULATION_OWNER.match(target) or _DIFFUSERS_MODULATION.match(target)
    if match is None:
        return None
    owner = match["owner"]
    return "scale_shift_table" if owner in (None, "head") else f"{owner}.scale_shift_table"


def _magnitude_fits(magnitude: torch.Tensor, out_features: int, in_features: int) -> bool:
    shape = tuple(magnitude.shape)
    return shape in ((out_features,), (out_features, 1), (1, in_features))


def _pair_scale(module: str, rank: int, alpha: torch.Tensor | None, metadata: _PeftAdapterMetadata) -> float:
    if alpha is not None:
        return float(alpha.float().item()) / rank
    if metadata.lora_alpha is None:
        return 1.0  # no alpha anywhere: W + B A (the diffusers/peft, LightX2V and kijai convention)
    lora_alpha = metadata.alpha_pattern.get(get_pattern_key(list(metadata.alpha_pattern), module), metadata.lora_alpha)
    return lora_alpha / (math.sqrt(rank) if metadata.use_rslora else rank)


def _parse_adapter_metadata(path: Path, metadata: Mapping[str, str]) -> _PeftAdapterMetadata:
    raw = metadata.get("lora_adapter_metadata")
    if not raw:
        return _PeftAdapterMetadata()
    try:
        fields = json.loads(raw)
        if not isinstance(fields, dict):
            raise TypeError("not a JSON object")
        # diffusers prefixes each LoraConfig field with the component name ("transformer.lora_alpha").
        own = {
            k.removeprefix("transformer."): v for k, v in fields.items() if "." not in k.removeprefix("transformer.")
        }
        return _PeftAdapterMetadata.model_validate(own)
    except (json.JSONDecodeError, TypeError, ValidationError) as error:
        raise LoraError(path, f"metadata 'lora_adapter_metadata' is not a valid LoraConfig ({error})") from error
