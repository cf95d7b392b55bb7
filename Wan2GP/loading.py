"""Catalog entry -> diffusers-format weights on disk -> components on the device.

Real models come from a diffusers-format Hugging Face repo (only the subfolders this engine uses are downloaded) or a
local folder; tiny test models are built from their seed into the cache folder first. All three then go through the
same ``from_pretrained(..., local_files_only=True)`` calls, so tests exercise the loading path GPU pods use. A
finetune published as single-file transformer checkpoints takes its transformers from those files instead
(Wan2GP.checkpoints) and the rest from its architecture's repo.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import diffusers.utils.logging
import huggingface_hub.utils
import torch
import transformers.utils.logging
from diffusers import AutoencoderKLWan, WanTransformer3DModel, WanVACETransformer3DModel
from loguru import logger
from transformers import (
    AutoTokenizer,
    CLIPImageProcessorPil,
    CLIPVisionModel,
    PreTrainedTokenizerBase,
    UMT5EncoderModel,
)

from Wan2GP.catalog import ModelDefinition
from Wan2GP.checkpoints import load_checkpoint_transformers
from Wan2GP.model_folders import TRANSFORMER_SUBFOLDERS, ModelLoadError, tiny_model_folder
from Wan2GP.quantization import check_weight_format, quantize_transformer
from Wan2GP.tiny import ensure_tiny_model

_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def quiet_libraries() -> None:
    """Turn off diffusers', transformers' and huggingface_hub's own tqdm bars ("Loading weights", "Writing model
    shards", downloads): they interleave with the worker's log lines, and the engine reports loading as a stage.
    And torchao's import-time warning per optional CUDA kernel library built for another torch (diffusers imports
    torchao whenever it offloads): the weight-only 8-bit layouts used here run on plain torch ops."""
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    huggingface_hub.utils.disable_progress_bars()
    logging.getLogger("torchao").setLevel(logging.ERROR)


@dataclass
class LoadedModel:
    """Everything one catalog model needs on the device. Owned by one engine; dropped as a whole on model switch."""

    definition: ModelDefinition
    weights_dir: Path
    device: torch.device
    transformers: dict[str, torch.nn.Module]  # "high" and, for two-expert models, "low"
    vae: AutoencoderKLWan
    text_encoder: UMT5EncoderModel
    tokenizer: PreTrainedTokenizerBase
    transformer_dtype: torch.dtype
    vae_dtype: torch.dtype
    text_dtype: torch.dtype
    # Wan 2.1 i2v / flf2v: the CLIP vision tower and its image processor (None for every other architecture).
    image_encoder: CLIPVisionModel | None = None
    image_processor: CLIPImageProcessorPil | None = None

    @property
    def model_id(self) -> str:
        return self.definition.id

    @property
    def distinct_transformers(self) -> list[torch.nn.Module]:
        """Each transformer module once (a definition may give both experts the same module)."""
        return list({id(module): module for module in self.transformers.values()}.values())


def component_dtypes(definition: ModelDefinition, device: torch.device) -> tuple[torch.dtype, torch.dtype, torch.dtype]:
    """(transformer, vae, text encoder) dtypes.

    On CUDA: the definition's transformer and VAE dtypes, text encoder in bf16. On CPU everything runs in float32:
    CPU bf16 matmuls are slow and round differently, which would make the CPU tests neither fast nor exact.
    """
    if device.type != "cuda":
        return torch.float32, torch.float32, torch.float32
    return _DTYPES[definition.transformer_dtype], _DTYPES[definition.vae_dtype], torch.bfloat16


def needed_subfolders(definition: ModelDefinition) -> list[str]:
    transformers = [TRANSFORMER_SUBFOLDERS["high"]]
    if definition.experts == 2:
        transformers.append(TRANSFORMER_SUBFOLDERS["low"])
    # The CLIP image encoder only where the architecture conditions on it (Wan 2.1 i2v / flf2v): Wan 2.2 i2v repos
    # ship one too, unused.
    clip = ["image_encoder", "image_processor"] if definition.spec.clip_image_encoder else []
    return [*transformers, "vae", "text_encoder", "tokenizer", *clip]


def resolve_weights_dir(definition: ModelDefinition, cache_dir: Path) -> Path:
    """The local diffusers-format folder of ``definition``'s weights (downloading or building it if needed)."""
    source = definition.weights
    if source.tiny_seed is not None:
        folder = tiny_model_folder(cache_dir, definition.id)
        return ensure_tiny_model(folder, definition.architecture, definition.experts, source.tiny_seed)
    if source.local_dir is not None:
        folder = source.local_dir if source.local_dir.is_absolute() else cache_dir / source.local_dir
        missing = _missing_subfolders(definition, folder)
        if missing:
            raise ModelLoadError(f"model {definition.id}: {folder} lacks the subfolder(s) {', '.join(missing)}")
        return folder
    return _download(definition)


def _missing_subfolders(definition: ModelDefinition, folder: Path) -> list[str]:
    return [name for name in needed_subfolders(definition) if not (folder / name).is_dir()]


def _download(definition: ModelDefinition) -> Path:
    from huggingface_hub import snapshot_download

    source = definition.weights
    # Single-file checkpoints bring the transformer weights (Wan2GP.checkpoints): from the repo, only their config.
    config_only = set(TRANSFORMER_SUBFOLDERS.values()) if source.kind == "checkpoints" else set()
    patterns = ["model_index.json"] + [
        f"{name}/config.json" if name in config_only else f"{name}/*" for name in needed_subfolders(definition)
    ]
    logger.info("Fetching {} ({}@{}): {}", definition.id, source.repo_id, source.revision, ", ".join(patterns))
    try:
        # Uses the standard Hugging Face cache (HF_HOME), so pods share downloads with other tools.
        folder = Path(snapshot_download(repo_id=source.repo_id, revision=source.revision, allow_patterns=patterns))
    except Exception as error:  # huggingface_hub raises many types (HTTP, offline, auth); report them as one
        raise ModelLoadError(
            f"model {definition.id}: cannot fetch {source.repo_id}@{source.revision}: {error}"
        ) from error
    # A repo without a needed subfolder (not diffusers-format, or one expert short) downloads "successfully";
    # say so here instead of letting from_pretrained report a config.json missing from the snapshot root.
    missing = _missing_subfolders(definition, folder)
    if missing:
        raise ModelLoadError(
            f"model {definition.id}: {source.repo_id}@{source.revision} lacks the subfolder(s) {', '.join(missing)}"
            " (expected a diffusers-format repo)"
        )
    return folder


def load_components(
    definition: ModelDefinition,
    weights_dir: Path,
    device: torch.device,
    devices: Mapping[str, torch.device] | None = None,
    transformer_weights: str = "native",
) -> LoadedModel:
    """Every component in its run dtype for `device`, loaded on `devices[component]` ("transformer", "vae",
    "text_encoder", "image_encoder"; default: all on `device`): host memory for the parts a placement offloads.
    `transformer_weights` "int8"/"fp8": the transformers' blocks quantized (Wan2GP.quantization), each expert as soon
    as it is read, so host memory holds one 16-bit expert at most."""
    transformer_dtype, vae_dtype, text_dtype = component_dtypes(definition, device)
    transformer_class = WanVACETransformer3DModel if definition.is_vace else WanTransformer3DModel
    where = {name: torch.device(device) for name in ("transformer", "vae", "text_encoder", "image_encoder")}
    where.update(devices or {})
    quantized = check_weight_format(transformer_weights) != "native"
    # 16-bit weights that are quantized on the way cannot be read straight onto a device that only fits 8 bits
    read_transformers_on = torch.device("cpu") if quantized else where["transformer"]

    def placement(component: str, on: torch.device | None = None) -> dict[str, str]:
        # On CUDA, place weights straight on the GPU instead of staging 28 GB per expert in host memory first.
        on = on if on is not None else where[component]
        return {"device_map": str(on)} if on.type == "cuda" else {}

    def prepared(module: torch.nn.Module, component: str) -> torch.nn.Module:
        if component == "transformer" and quantized:
            quantize_transformer(module, transformer_weights, work_device=device, keep_on=where[component])
        return module.to(where[component]).eval().requires_grad_(False)

    if definition.weights.kind == "checkpoints":
        loaded = load_checkpoint_transformers(
            definition, weights_dir, transformer_class, transformer_dtype, read_transformers_on
        )
        transformers = {expert: prepared(module, "transformer") for expert, module in loaded.items()}
    else:
        transformers = {
            expert: prepared(
                transformer_class.from_pretrained(
                    weights_dir,
                    subfolder=TRANSFORMER_SUBFOLDERS[expert],
                    torch_dtype=transformer_dtype,
                    local_files_only=True,
                    **placement("transformer", read_transformers_on),
                ),
                "transformer",
            )
            for expert in ("high", "low")[: definition.experts]
        }
    vae = prepared(
        AutoencoderKLWan.from_pretrained(
            weights_dir, subfolder="vae", torch_dtype=vae_dtype, local_files_only=True, **placement("vae")
        ),
        "vae",
    )
    text_encoder = prepared(
        UMT5EncoderModel.from_pretrained(
            weights_dir, subfolder="text_encoder", dtype=text_dtype, local_files_only=True, **placement("text_encoder")
        ),
        "text_encoder",
    )
    tokenizer = AutoTokenizer.from_pretrained(weights_dir, subfolder="tokenizer", local_files_only=True)
    image_encoder = image_processor = None
    if definition.spec.clip_image_encoder:
        # float32 on every device, as diffusers' Wan i2v examples load it: it runs once per generation.
        image_encoder = prepared(
            CLIPVisionModel.from_pretrained(
                weights_dir,
                subfolder="image_encoder",
                dtype=torch.float32,
                local_files_only=True,
                **placement("image_encoder"),
            ),
            "image_encoder",
        )
        # The PIL processor: transformers' default one needs torchvision, which no build of the pinned torch matches.
        image_processor = CLIPImageProcessorPil.from_pretrained(
            weights_dir, subfolder="image_processor", local_files_only=True
        )
    return LoadedModel(
        definition=definition,
        weights_dir=weights_dir,
        device=device,
        transformers=transformers,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer_dtype=transformer_dtype,
        vae_dtype=vae_dtype,
        text_dtype=text_dtype,
        image_encoder=image_encoder,
        image_processor=image_processor,
    )


def load_model(definition: ModelDefinition, cache_dir: Path, device: torch.device) -> LoadedModel:
    """Every component on `device` (the engine places them within its budget instead: WanEngine.load)."""
    return load_components_of(definition, resolve_weights_dir(definition, cache_dir), device)


def load_components_of(
    definition: ModelDefinition,
    weights_dir: Path,
    device: torch.device,
    devices: Mapping[str, torch.device] | None = None,
    transformer_weights: str = "native",
) -> LoadedModel:
    """load_components, its errors as ModelLoadError naming the model."""
    try:
        return load_components(definition, weights_dir, device, devices, transformer_weights)
    except (OSError, ValueError, KeyError) as error:
        raise ModelLoadError(f"model {definition.id}: cannot load weights from {weights_dir}: {error}") from error
