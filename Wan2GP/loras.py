"""LoRA files for the Wan transformers: read any common format, attach to every expert, apply per-step strengths.

Formats read by `load_lora_state_dict` (all give diffusers/peft keys such as "blocks.0.attn1.to_q.lora_A.weight"):
- diffusers/peft: "transformer.blocks.0.attn1.to_q.lora_A.weight" (the "transformer." prefix is optional); the
  LoRA scale alpha/rank comes from `.alpha` keys or from diffusers' `lora_adapter_metadata` when present;
- original Wan / ComfyUI: "diffusion_model.blocks.0.self_attn.q.lora_down.weight" + ".lora_up.weight" + ".alpha",
  converted by diffusers' `_convert_non_diffusers_wan_lora_to_diffusers`;
- kohya / musubi-tuner: "lora_unet_blocks_0_self_attn_q.lora_down.weight"; names are first mapped to the original
  Wan names, then converted as above, so files without ffn keys load too (diffusers' own musubi converter needs
  ffn keys for every block).
Original-format `vace_blocks.N.*` keys (before_proj/after_proj included) map to diffusers' VACE blocks.
The alpha/rank factor is folded into the returned weights, so every module's LoRA scale is exactly the multiplier.

`LoraRuntime` attaches every LoRA to every transformer given (Wan 2.2 high and low experts) as peft adapters
"lora0", "lora1", ... and applies each denoising step's multipliers in one of two modes:
- "unmerged": y = W x + sum_i s_i B_i (A_i x); changing strengths only changes peft's per-layer scaling floats;
- "merged": W <- W0 + sum_i s_i B_i A_i is written into the base weights (computed in fp32 from an exact copy of the
  original weights, rounded once), and rewritten only when the strengths change; `close()` copies the originals
  back, so the transformers end bit-identical to how they started.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import safetensors
import torch
from diffusers.loaders.lora_conversion_utils import _convert_non_diffusers_wan_lora_to_diffusers
from loguru import logger
from peft.tuners.lora import LoraLayer
from peft.utils.other import get_pattern_key
from pydantic import BaseModel, ConfigDict, ValidationError

# Measured (interleaved runs, 2-core CPU shared with other jobs; fp32, 2 LoRAs of rank 16 on every attention and ffn
# Linear, 2048 tokens), medians per forward / per strength change:
#   6 layers x dim 384: base 613 ms, unmerged 776 ms, merged 625 ms; change: unmerged 2 ms, merged re-merge 33 ms
#   8 layers x dim 512: base 1298 ms, unmerged 1581 ms, merged 1273 ms; change: unmerged 3 ms, merged re-merge 43 ms
# Unmerged LoRA matmuls cost ~20-25% of every forward, a re-merge ~3% of one, so "auto" merges on CPU too.
CPU_AUTO_MODE: Literal["merged", "unmerged"] = "merged"


@dataclass(frozen=True)
class ModeCosts:
    """What each mode costs on a GPU, in transformer forwards. Measured on an H100 at the Wan 2.2 A14B layer size with
    2 LoRAs of rank 32 on every attention and ffn Linear (bench/README.md; ratios from one run)."""

    unmerged_per_forward: float  # the extra LoRA matmuls of every forward
    first_merge: float  # per expert: the exact host copy of every targeted weight, then the merge
    re_merge: float  # per strength change of a merged expert
    unmerge: float  # per merged expert at close()


CUDA_MODE_COSTS = ModeCosts(unmerged_per_forward=0.170, first_merge=6.26, re_merge=0.89, unmerge=1.12)


def forward_spans(steps: Sequence[tuple[str, int, tuple[float, ...]]]) -> dict[str, list[int]]:
    """Per expert, how many forwards run under each constant set of strengths, in order. `steps` holds one
    (expert, forwards, strengths) per denoising step."""
    spans: dict[str, list[int]] = {}
    previous: tuple[str, tuple[float, ...]] | None = None
    for expert, forwards, strengths in steps:
        if previous == (expert, strengths):
            spans[expert][-1] += forwards
        else:
            spans.setdefault(expert, []).append(forwards)
        previous = (expert, strengths)
    return spans


def choose_mode(
    spans: Mapping[str, Sequence[int]], costs: ModeCosts = CUDA_MODE_COSTS
) -> Literal["merged", "unmerged"]:
    """The cheaper mode for a run whose strengths hold for `spans` forwards (forward_spans). Merging pays once per
    strength change; unmerged pays on every forward. On the H100 merging wins from ~5 forwards between changes and ~45
    per expert with constant strengths, which few-step (Lightning) schedules do not reach."""
    unmerged = costs.unmerged_per_forward * sum(sum(runs) for runs in spans.values())
    merged = sum(
        costs.first_merge + costs.re_merge * (len(runs) - 1) + costs.unmerge for runs in spans.values() if runs
    )
    return "merged" if merged < unmerged else "unmerged"


ADAPTER_NAME_PREFIX = "lora"

# Parameter suffixes of the keys `load_lora_state_dict` returns.
LORA_A_WEIGHT = "lora_A.weight"
LORA_B_WEIGHT = "lora_B.weight"
LORA_B_BIAS = "lora_B.bias"

# Key prefixes written by the various trainers and converters; the first match is stripped.
_KEY_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "base_model.model.", "transformer.")

# Upstream spellings of the LoRA parameter names (MMGP normalises them the same way).
_PARAM_SPELLINGS = (
    (".lora.down.", ".lora_down."),
    (".lora.up.", ".lora_up."),
    (".lora.A.", ".lora_A."),
    (".lora.B.", ".lora_B."),
    (".default.", "."),
)

# Module-name shapes of the original Wan (ComfyUI) checkpoint and of diffusers' WanTransformer3DModel.
_ORIGINAL_MODULE = re.compile(
    r"^(?:vace_)?blocks\.\d+\.(?:self_attn|cross_attn|ffn\.\d|modulation|norm\d|before_proj|after_proj)\b"
    r"|^(?:head\.head|head\.modulation|text_embedding|time_embedding|time_projection|img_emb)\b"
)
_DIFFUSERS_MODULE = re.compile(
    r"^(?:vace_)?blocks\.\d+\.(?:attn[12]|ffn\.net|proj_in|proj_out)\b"
    r"|^(?:condition_embedder|proj_out)\b"
)

# kohya/musubi flatten module paths with "_"; these undo it for every Wan module a LoRA can target.
_KOHYA_MODULES = (
    (
        re.compile(
            r"^(vace_blocks|blocks)_(\d+)_(self_attn|cross_attn)_(q|k|v|o|k_img|v_img|norm_q|norm_k|norm_k_img)$"
        ),
        r"\1.\2.\3.\4",
    ),
    (re.compile(r"^(vace_blocks|blocks)_(\d+)_ffn_(\d+)$"), r"\1.\2.ffn.\3"),
    (re.compile(r"^(vace_blocks|blocks)_(\d+)_(modulation|norm3|before_proj|after_proj)$"), r"\1.\2.\3"),
    (re.compile(r"^head_(head|modulation)$"), r"head.\1"),
    (re.compile(r"^(text_embedding|time_embedding|time_projection)_(\d+)$"), r"\1.\2"),
    (re.compile(r"^img_emb_proj_(\d+)$"), r"img_emb.proj.\1"),
)
_KOHYA_KEY = re.compile(r"^lora_unet_(?:diffusion_model_)?(?P<module>[A-Za-z0-9_]+)\.(?P<param>.+)$")

# Keys of the image cross-attention (Wan 2.1 I2V / FLF2V); upstream drops them for transformers without it.
_ORIGINAL_IMAGE_KEY = re.compile(r"\.(?:k_img|v_img|norm_k_img)\.|^img_emb\.")
_DIFFUSERS_IMAGE_MODULE = re.compile(
    r"\.attn2\.(?:add_k_proj|add_v_proj|norm_added_k)$|^condition_embedder\.image_embedder\."
)

_DIFFUSERS_PARAM = re.compile(
    r"^(?P<module>.+)\.(?P<param>lora_A\.weight|lora_B\.weight|lora_B\.bias|lora_down\.weight|lora_up\.weight|alpha"
    r"|lora_magnitude_vector|dora_scale)$"
)
_RESULT_PARAM = re.compile(r"^(?P<module>.+)\.(?P<param>lora_A\.weight|lora_B\.weight|lora_B\.bias)$")


class LoraError(ValueError):
    """A LoRA file that cannot be used: names the file and what is wrong with it."""

    def __init__(self, path: Path, problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"LoRA file {self.path}: {problem}")


class _PeftAdapterMetadata(BaseModel):
    """The LoraConfig fields diffusers writes into a LoRA file's `lora_adapter_metadata` (only those we use)."""

    model_config = ConfigDict(extra="ignore")

    lora_alpha: float | None = None
    alpha_pattern: dict[str, float] = {}
    use_rslora: bool = False
    use_dora: bool = False


# --------------------------------------------------------------------------------------------------------------------
# Reading LoRA files
# --------------------------------------------------------------------------------------------------------------------


def load_lora_state_dict(path: Path, *, keep_image_keys: bool = True) -> dict[str, torch.Tensor]:
    """Read a .safetensors LoRA in any supported format and return diffusers/peft keys for a Wan transformer.

    Keys look like "blocks.0.attn1.to_q.lora_A.weight" / "...lora_B.weight" (and "...lora_B.bias" for `diff_b`
    bias deltas); alpha/rank is folded into the weights. `*.modulation.diff` keys are dropped, and with
    `keep_image_keys=False` so are the image cross-attention keys (k_img, v_img, img_emb), as upstream does for
    transformers without image cross-attention (t2v, Wan 2.2 i2v, 5B).
    """
    path = Path(path)
    raw, metadata = _read_safetensors(path)
    if not raw:
        raise LoraError(path, "holds no tensors")

    if any(key.startswith("lora_unet_") for key in raw):
        if not all(key.startswith("lora_unet_") for key in raw):
            raise LoraError(path, "mixes kohya 'lora_unet_' keys with other keys")
        converted = _original_to_diffusers(path, _kohya_to_original_names(path, raw), keep_image_keys)
        lora_format = "kohya/musubi"
    else:
        normalised = _normalise_keys(raw)
        lora_format = _detect_named_format(path, normalised)
        if lora_format == "original Wan":
            converted = _original_to_diffusers(path, normalised, keep_image_keys)
        else:
            converted = _diffusers_to_folded(path, normalised, metadata, keep_image_keys)

    _check_lora_pairs(path, converted)
    modules = {_RESULT_PARAM.match(key)["module"] for key in converted}  # type: ignore[index]
    logger.debug(f"LoRA {path.name}: {lora_format} format, {len(modules)} modules")
    return converted


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


def _normalise_keys(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    normalised: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict.items():
        name = key
        for prefix in _KEY_PREFIXES:
            if name.startswith(prefix):
                name = name[len(prefix) :]
                break
        for spelling, canonical in _PARAM_SPELLINGS:
            name = name.replace(spelling, canonical)
        normalised[name] = tensor
    return normalised


def _detect_named_format(path: Path, state_dict: Mapping[str, torch.Tensor]) -> Literal["original Wan", "diffusers"]:
    original = [key for key in state_dict if _ORIGINAL_MODULE.search(key)]
    diffusers_style = [key for key in state_dict if _DIFFUSERS_MODULE.search(key)]
    unknown = [key for key in state_dict if key not in original and key not in diffusers_style]
    if unknown:
        raise LoraError(
            path,
            f"unknown LoRA format: {len(unknown)} keys name no Wan transformer module, e.g. {unknown[:3]} "
            "(expected diffusers 'blocks.N.attn1.to_q.lora_A.weight', original Wan "
            "'diffusion_model.blocks.N.self_attn.q.lora_down.weight' or kohya 'lora_unet_blocks_N_self_attn_q...')",
        )
    if original and diffusers_style:
        raise LoraError(path, f"mixes original Wan names ({original[0]}) with diffusers names ({diffusers_style[0]})")
    return "original Wan" if original else "diffusers"


def _kohya_to_original_names(path: Path, state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    renamed: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict.items():
        match = _KOHYA_KEY.match(key)
        if match is None:
            raise LoraError(path, f"kohya key {key!r} is not '<module>.<parameter>'")
        for pattern, replacement in _KOHYA_MODULES:
            if pattern.match(match["module"]):
                renamed[f"{pattern.sub(replacement, match['module'])}.{match['param']}"] = tensor
                break
        else:
            raise LoraError(path, f"kohya module {match['module']!r} (key {key!r}) maps to no Wan transformer module")
    return renamed


def _original_to_diffusers(
    path: Path, state_dict: Mapping[str, torch.Tensor], keep_image_keys: bool
) -> dict[str, torch.Tensor]:
    """Original Wan names (no "diffusion_model." prefix) -> diffusers names, through diffusers' converter."""
    kept = {key: value for key, value in state_dict.items() if not re.search(r"(^|\.)modulation\.diff$", key)}
    if not keep_image_keys:
        kept = {key: value for key, value in kept.items() if not _ORIGINAL_IMAGE_KEY.search(key)}
    if any(key.endswith(".dora_scale") for key in kept):
        raise LoraError(path, "is a DoRA (dora_scale keys), which is not supported")
    # diffusers' converter ignores full-weight ".diff" deltas (besides norm layers, which are zero, and head.head).
    ignored = [k for k in kept if k.endswith(".diff") and ".norm" not in k and not k.startswith("head.head.")]
    if ignored:
        logger.warning(f"LoRA {path.name}: {len(ignored)} full-weight '.diff' keys are not supported and are ignored")

    vace = {key: value for key, value in kept.items() if key.startswith("vace_blocks.")}
    main = {key: value for key, value in kept.items() if not key.startswith("vace_blocks.")}
    converted: dict[str, torch.Tensor] = {}
    if main:
        converted.update(_run_diffusers_converter(path, main))
    if vace:
        converted.update(_vace_original_to_diffusers(path, vace))
    return converted


def _run_diffusers_converter(path: Path, state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if not any(key.startswith("blocks.") for key in state_dict):
        raise LoraError(path, "has no 'blocks.N' keys; a Wan LoRA targets the transformer blocks")
    prefixed = {f"diffusion_model.{key}": value for key, value in state_dict.items()}
    try:
        converted = _convert_non_diffusers_wan_lora_to_diffusers(prefixed)
    except (KeyError, ValueError, RuntimeError, UnboundLocalError) as error:
        raise LoraError(
            path, f"original-format keys could not be converted ({type(error).__name__}: {error})"
        ) from error
    return {key.removeprefix("transformer."): value for key, value in converted.items()}


def _vace_original_to_diffusers(path: Path, state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """VACE blocks have the attention/ffn layout of main blocks plus before_proj/after_proj (diffusers proj_in/out)."""
    projections = {"before_proj": "proj_in", "after_proj": "proj_out"}
    as_main_blocks: dict[str, torch.Tensor] = {}
    converted: dict[str, torch.Tensor] = {}
    grouped: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state_dict.items():
        parts = key.split(".")  # vace_blocks.N.<module...>.<param...>
        if parts[2] in projections:
            grouped.setdefault(f"vace_blocks.{parts[1]}.{projections[parts[2]]}", {})[".".join(parts[3:])] = value
        else:
            as_main_blocks[key.removeprefix("vace_")] = value
    for module, params in grouped.items():
        converted.update(_fold_original_linear(path, module, params))
    if as_main_blocks:
        for key, value in _run_diffusers_converter(path, as_main_blocks).items():
            converted[f"vace_{key}"] = value
    return converted


def _fold_original_linear(path: Path, module: str, params: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    down = params.get("lora_down.weight", params.get("lora_A.weight"))
    up = params.get("lora_up.weight", params.get("lora_B.weight"))
    if down is None or up is None:
        raise LoraError(path, f"module {module} lacks its lora_down/lora_up pair (has {sorted(params)})")
    unknown = set(params) - {"lora_down.weight", "lora_A.weight", "lora_up.weight", "lora_B.weight", "alpha", "diff_b"}
    if unknown:
        raise LoraError(path, f"module {module} has unsupported parameters {sorted(unknown)}")
    scale = float(params["alpha"].item()) / down.shape[0] if "alpha" in params else 1.0
    folded = {f"{module}.{LORA_A_WEIGHT}": down * scale if scale != 1.0 else down, f"{module}.{LORA_B_WEIGHT}": up}
    if "diff_b" in params:
        folded[f"{module}.{LORA_B_BIAS}"] = params["diff_b"]
    return folded


def _diffusers_to_folded(
    path: Path, state_dict: Mapping[str, torch.Tensor], metadata: Mapping[str, str], keep_image_keys: bool
) -> dict[str, torch.Tensor]:
    """diffusers/peft names: spell lora_down/up as lora_A/B and fold alpha/rank into lora_A."""
    adapter_metadata = _parse_adapter_metadata(path, metadata)
    if adapter_metadata.use_dora:
        raise LoraError(path, "is a DoRA (use_dora in its metadata), which is not supported")
    per_module: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state_dict.items():
        match = _DIFFUSERS_PARAM.match(key)
        if match is None:
            raise LoraError(path, f"key {key!r} is not a LoRA parameter (lora_A/lora_B/alpha)")
        if match["param"] in ("lora_magnitude_vector", "dora_scale"):
            raise LoraError(path, f"is a DoRA ({key}), which is not supported")
        param = {"lora_down.weight": LORA_A_WEIGHT, "lora_up.weight": LORA_B_WEIGHT}.get(match["param"], match["param"])
        per_module.setdefault(match["module"], {})[param] = value

    folded: dict[str, torch.Tensor] = {}
    for module, params in per_module.items():
        if _DIFFUSERS_IMAGE_MODULE.search(module) and not keep_image_keys:
            continue
        if LORA_A_WEIGHT not in params or LORA_B_WEIGHT not in params:
            raise LoraError(path, f"module {module} lacks its lora_A/lora_B pair (has {sorted(params)})")
        down = params[LORA_A_WEIGHT]
        scale = _diffusers_scale(module, down.shape[0], params.get("alpha"), adapter_metadata)
        folded[f"{module}.{LORA_A_WEIGHT}"] = down * scale if scale != 1.0 else down
        folded[f"{module}.{LORA_B_WEIGHT}"] = params[LORA_B_WEIGHT]
        if LORA_B_BIAS in params:
            folded[f"{module}.{LORA_B_BIAS}"] = params[LORA_B_BIAS]
    return folded


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


def _diffusers_scale(module: str, rank: int, alpha: torch.Tensor | None, metadata: _PeftAdapterMetadata) -> float:
    if alpha is not None:
        return float(alpha.item()) / rank
    if metadata.lora_alpha is None:
        return 1.0  # the diffusers/peft convention without alpha: W + B A
    lora_alpha = metadata.alpha_pattern.get(get_pattern_key(list(metadata.alpha_pattern), module), metadata.lora_alpha)
    return lora_alpha / (math.sqrt(rank) if metadata.use_rslora else rank)


def _check_lora_pairs(path: Path, state_dict: Mapping[str, torch.Tensor]) -> None:
    if not state_dict:
        raise LoraError(path, "has no LoRA weights for a Wan transformer")
    modules: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state_dict.items():
        match = _RESULT_PARAM.match(key)
        if match is None:
            raise LoraError(path, f"key {key!r} is not a LoRA parameter after conversion")
        modules.setdefault(match["module"], {})[match["param"]] = value
    for module, params in modules.items():
        down, up = params.get(LORA_A_WEIGHT), params.get(LORA_B_WEIGHT)
        if down is None or up is None:
            raise LoraError(path, f"module {module} lacks its lora_A/lora_B pair")
        if down.ndim != 2 or up.ndim != 2 or down.shape[0] != up.shape[1]:
            raise LoraError(
                path, f"module {module}: lora_A {tuple(down.shape)} and lora_B {tuple(up.shape)} are not a rank-r pair"
            )
        bias = params.get(LORA_B_BIAS)
        if bias is not None and tuple(bias.shape) != (up.shape[0],):
            raise LoraError(
                path, f"module {module}: bias delta {tuple(bias.shape)} does not match lora_B {tuple(up.shape)}"
            )


# --------------------------------------------------------------------------------------------------------------------
# Attaching LoRAs to the transformers and applying per-step strengths
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class _AttachedTransformer:
    """One transformer with the LoRAs attached, and what has been applied to it."""

    transformer: torch.nn.Module
    experts: list[str]
    lora_layers: list[tuple[str, LoraLayer]] = field(default_factory=list)
    applied_strengths: tuple[float, ...] | None = None
    adapters_enabled: bool = True
    # merged mode: exact copies of the base (weight, bias) taken before the first merge; restored by close()
    original_weights: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = field(default_factory=dict)
    dirty_layers: set[str] = field(default_factory=set)


class LoraRuntime:
    """Every LoRA attached to every transformer given; per-step strengths applied merged or unmerged.

    Call `set_step_strengths(expert, strengths)` before the forward(s) of every denoising step; until the first call
    the transformers behave as their base model. Always `close()` (or use `with`) to give the transformers back with
    their base weights and without adapter layers.

    mode: "unmerged", "merged", or "auto": on CPU merged (measured faster, see CPU_AUTO_MODE); on CUDA the cheaper of
    the two for the run's `spans` (forward_spans of the plan; choose_mode), unmerged when no spans are given; always
    unmerged when a LoRA-targeted layer holds non-float (quantized) weights. Raises LoraError for a file
    that cannot be read or does not fit the transformers; nothing stays attached then.
    """

    def __init__(
        self,
        transformers: Mapping[str, torch.nn.Module],
        lora_paths: Sequence[Path],
        *,
        mode: str = "auto",
        spans: Mapping[str, Sequence[int]] | None = None,
    ) -> None:
        self._spans = spans
        if mode not in ("auto", "merged", "unmerged"):
            raise ValueError(f"mode: expected 'auto', 'merged' or 'unmerged', got {mode!r}")
        if not transformers:
            raise ValueError("transformers: expected at least one transformer, e.g. {'high': transformer}")
        self._paths = [Path(path) for path in lora_paths]
        self._adapter_names = [f"{ADAPTER_NAME_PREFIX}{index}" for index in range(len(self._paths))]
        self._closed = False

        # One entry per distinct module, so two experts that share a transformer share its applied state.
        by_identity: dict[int, _AttachedTransformer] = {}
        self._by_expert: dict[str, _AttachedTransformer] = {}
        for expert, transformer in transformers.items():
            attached = by_identity.setdefault(id(transformer), _AttachedTransformer(transformer, []))
            attached.experts.append(expert)
            self._by_expert[expert] = attached
        self._attached = list(by_identity.values())
        for attached in self._attached:
            existing = list(getattr(attached.transformer, "peft_config", {}) or {})
            if existing:
                raise RuntimeError(
                    f"transformer {attached.experts} already carries LoRA adapters {existing}; "
                    "close the previous LoraRuntime before making a new one"
                )

        state_dicts = [load_lora_state_dict(path) for path in self._paths]  # read once, attached to every expert
        try:
            for attached in self._attached:
                for adapter_name, path, state_dict in zip(self._adapter_names, self._paths, state_dicts, strict=True):
                    _attach(attached.transformer, adapter_name, path, state_dict)
                attached.lora_layers = [
                    (name, module)
                    for name, module in attached.transformer.named_modules()
                    if isinstance(module, LoraLayer)
                ]
            self._mode = self._resolve_mode(mode)
            for attached in self._attached:
                self._set_enabled(attached, False)  # base behaviour until the first set_step_strengths
        except BaseException:
            self.close()
            raise
        if self._paths:
            logger.info(
                f"LoRAs {[path.name for path in self._paths]} attached to {list(self._by_expert)} ({self._mode} mode)"
            )

    @property
    def mode(self) -> str:
        """The mode in use: "merged" or "unmerged"."""
        return self._mode

    @property
    def adapter_names(self) -> list[str]:
        return list(self._adapter_names)

    def __enter__(self) -> LoraRuntime:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def set_step_strengths(self, expert: str, strengths: Sequence[float]) -> None:
        """Apply one step's per-LoRA multipliers to the transformer of `expert`; a no-op when they did not change."""
        if self._closed:
            raise RuntimeError("set_step_strengths: this LoraRuntime is closed")
        attached = self._by_expert.get(expert)
        if attached is None:
            raise ValueError(f"expert: expected one of {sorted(self._by_expert)}, got {expert!r}")
        values = tuple(float(value) for value in strengths)
        if len(values) != len(self._adapter_names):
            raise ValueError(f"strengths: expected {len(self._adapter_names)} values (one per LoRA), got {len(values)}")
        for index, value in enumerate(values):
            if not math.isfinite(value):
                raise ValueError(f"strengths[{index}]: expected a finite number, got {value}")
        if values == attached.applied_strengths:
            return
        if self._mode == "merged":
            self._merge(attached, values)
        else:
            self._activate(attached, values)
        attached.applied_strengths = values
        logger.debug(f"LoRA strengths for {attached.experts}: {list(values)}")

    def close(self) -> None:
        """Give the transformers back exactly as they were: original weights, no adapters, plain Linear layers."""
        if self._closed:
            return
        self._closed = True
        for attached in self._attached:
            with torch.no_grad():
                for name, layer in attached.lora_layers:
                    if name in attached.dirty_layers:
                        _restore(layer.get_base_layer(), *attached.original_weights[name])
            attached.original_weights.clear()
            attached.dirty_layers.clear()
            attached.lora_layers = []
            if getattr(attached.transformer, "peft_config", None) or _has_lora_layers(attached.transformer):
                # unload_lora puts every original Linear (same module, same Parameter) back in its parent
                attached.transformer.unload_lora()

    # --- unmerged -----------------------------------------------------------------------------------------------

    def _activate(self, attached: _AttachedTransformer, strengths: tuple[float, ...]) -> None:
        # Zero-strength LoRAs are left out of the active set: exactly the base output, and no wasted matmuls.
        active = [(name, value) for name, value in zip(self._adapter_names, strengths, strict=True) if value != 0.0]
        if not active:
            self._set_enabled(attached, False)
            return
        names = [name for name, _ in active]
        if not attached.adapters_enabled:
            self._set_enabled(attached, True)
        for _, layer in attached.lora_layers:
            layer.set_adapter(names, inference_mode=True)
            for name, value in active:
                layer.set_scale(name, value)

    def _set_enabled(self, attached: _AttachedTransformer, enabled: bool) -> None:
        for _, layer in attached.lora_layers:
            layer.enable_adapters(enabled)
        attached.adapters_enabled = enabled

    # --- merged -------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def _merge(self, attached: _AttachedTransformer, strengths: tuple[float, ...]) -> None:
        for name, layer in attached.lora_layers:
            base = layer.get_base_layer()
            terms = [
                (adapter, value)
                for adapter, value in zip(self._adapter_names, strengths, strict=True)
                if value != 0.0 and adapter in layer.lora_A
            ]
            if not terms:
                if name in attached.dirty_layers:
                    _restore(base, *attached.original_weights[name])
                    attached.dirty_layers.discard(name)
                continue
            if name not in attached.original_weights:
                attached.original_weights[name] = _exact_copy(base)
            original_weight, original_bias = attached.original_weights[name]
            # One fp32 sum from the pristine copy, rounded once: no drift however often strengths change. The copy
            # travels in its own dtype and widens on the device: converting on the host first sends twice the bytes
            # (bf16 -> fp32) through a pageable-memory path (bench/README.md measured ~3 GB/s that way).
            weight = original_weight.to(device=base.weight.device, copy=True).float()
            bias = None
            if original_bias is not None:
                bias = original_bias.to(device=base.weight.device, copy=True).float()
            for adapter, value in terms:
                scale = value * layer.lora_alpha[adapter] / layer.r[adapter]
                lora_a = layer.lora_A[adapter].weight.to(device=weight.device, dtype=torch.float32)
                lora_b = layer.lora_B[adapter]
                weight.addmm_(lora_b.weight.to(device=weight.device, dtype=torch.float32), lora_a, alpha=scale)
                if lora_b.bias is not None and bias is not None:  # _attach refused bias deltas without a bias
                    bias.add_(lora_b.bias.to(device=weight.device, dtype=torch.float32), alpha=scale)
            base.weight.copy_(weight)
            if bias is not None:
                base.bias.copy_(bias)
            attached.dirty_layers.add(name)

    def _resolve_mode(self, requested: str) -> Literal["merged", "unmerged"]:
        if requested == "unmerged":
            return "unmerged"
        unmergeable = [
            name
            for attached in self._attached
            for name, layer in attached.lora_layers
            if not _is_plain_float_linear(layer.get_base_layer())
        ]
        if requested == "merged":
            if unmergeable:
                raise ValueError(f"mode 'merged': layers {unmergeable[:3]} have non-float (quantized?) weights")
            return "merged"
        if unmergeable:
            return "unmerged"
        devices = {
            parameter.device.type for attached in self._attached for parameter in attached.transformer.parameters()
        }
        if "cuda" not in devices:
            return CPU_AUTO_MODE
        return choose_mode(self._spans) if self._spans else "unmerged"


def _attach(
    transformer: torch.nn.Module, adapter_name: str, path: Path, state_dict: Mapping[str, torch.Tensor]
) -> None:
    """Attach one LoRA as a peft adapter; every key must target an existing Linear of the right shape."""
    # Layers that already carry an adapter (an earlier LoRA) are peft wrappers; check against the Linear inside.
    modules = {
        name: module.get_base_layer() if isinstance(module, LoraLayer) else module
        for name, module in transformer.named_modules()
    }
    fitted: dict[str, torch.Tensor] = {}
    unmatched: list[str] = []
    for key, value in state_dict.items():
        module_name = _RESULT_PARAM.match(key)["module"]  # type: ignore[index]
        module = modules.get(module_name)
        if module is None:
            if not _DIFFUSERS_IMAGE_MODULE.search(module_name):  # image keys: dropped where there is no image branch
                unmatched.append(module_name)
            continue
        if not isinstance(module, torch.nn.Linear):
            raise LoraError(path, f"{module_name} is a {type(module).__name__}, LoRAs apply to Linear layers only")
        fitted[key] = value
    if unmatched:
        unique = sorted(set(unmatched))
        raise LoraError(
            path,
            f"{len(unique)} LoRA modules match no module of the transformer, e.g. {unique[:3]} "
            "(a LoRA for another Wan model or variant?)",
        )
    if not fitted:
        raise LoraError(path, "none of its keys match a module of the transformer")

    ranks: dict[str, int] = {}
    tensors: dict[str, torch.Tensor] = {}
    # lora_A keys first: diffusers treats a state dict whose first key lacks "lora_A" as non-peft and renames it.
    for key in sorted(fitted, key=lambda name: (not name.endswith(LORA_A_WEIGHT), name)):
        value = fitted[key]
        module_name = _RESULT_PARAM.match(key)["module"]  # type: ignore[index]
        linear = modules[module_name]
        if key.endswith(LORA_A_WEIGHT):
            ranks[module_name] = value.shape[0]
            if value.shape[1] != linear.in_features:
                raise LoraError(
                    path,
                    f"{module_name}: lora_A has {value.shape[1]} inputs, the layer {linear.in_features} "
                    "(a LoRA for another model size?)",
                )
        elif key.endswith(LORA_B_WEIGHT) and value.shape[0] != linear.out_features:
            raise LoraError(
                path,
                f"{module_name}: lora_B has {value.shape[0]} outputs, the layer {linear.out_features} "
                "(a LoRA for another model size?)",
            )
        elif key.endswith(LORA_B_BIAS) and linear.bias is None:
            raise LoraError(path, f"{module_name}: a bias delta for a layer without bias")
        # peft would cast to the layer's dtype anyway; doing it here keeps the file's tensors untouched.
        tensors[key] = value.to(linear.weight.dtype) if value.is_floating_point() else value

    lora_bias = any(key.endswith(LORA_B_BIAS) for key in tensors)
    if lora_bias:
        # peft's lora_bias is all-or-nothing: modules without a bias delta get an exact zero one.
        for module_name in ranks:
            zero = torch.zeros(modules[module_name].out_features, dtype=modules[module_name].weight.dtype)
            tensors.setdefault(f"{module_name}.{LORA_B_BIAS}", zero)

    # An explicit LoraConfig: exact module targets (peft's list matching would also catch e.g. vace_blocks.N.proj_out
    # for "proj_out"), and lora_alpha == rank everywhere since alpha/rank is already folded into the weights.
    rank = Counter(ranks.values()).most_common(1)[0][0]
    other_ranks = {f"^{re.escape(module)}": value for module, value in ranks.items() if value != rank}
    config = {
        "r": rank,
        "lora_alpha": rank,
        "rank_pattern": other_ranks,
        "alpha_pattern": dict(other_ranks),
        "target_modules": "^(?:" + "|".join(re.escape(module) for module in sorted(ranks)) + ")$",
        "lora_bias": lora_bias,
    }
    try:
        with warnings.catch_warnings():
            # peft warns that a second adapter makes "multiple adapters in the model": that is the point here.
            warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
            transformer.load_lora_adapter(
                tensors, prefix=None, adapter_name=adapter_name, metadata=config, low_cpu_mem_usage=True
            )
    except (ValueError, RuntimeError, KeyError) as error:
        raise LoraError(path, f"peft could not attach it ({type(error).__name__}: {error})") from error


def _exact_copy(linear: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    # Kept in (pageable) CPU memory: on a GPU a copy would double the memory of every LoRA-targeted weight. Not
    # pinned: torch's pinned-memory cache rounds blocks up to powers of two (up to ~2x the host memory).
    weight = linear.weight.detach().to("cpu", copy=True)
    bias = linear.bias.detach().to("cpu", copy=True) if linear.bias is not None else None
    return weight, bias


def _restore(linear: torch.nn.Module, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    linear.weight.copy_(weight)
    if bias is not None:
        linear.bias.copy_(bias)


def _is_plain_float_linear(module: torch.nn.Module) -> bool:
    weight = getattr(module, "weight", None)
    return (
        isinstance(module, torch.nn.Linear)
        and type(weight.data) is torch.Tensor
        and weight.dtype in (torch.float32, torch.float16, torch.bfloat16)
    )


def _has_lora_layers(transformer: torch.nn.Module) -> bool:
    return any(isinstance(module, LoraLayer) for module in transformer.modules())
