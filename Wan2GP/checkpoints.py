"""Single-file transformer checkpoints: upstream finetunes (FusioniX, ...) published on the Hugging Face Hub as one
`.safetensors` file per expert, in the original Wan key layout (`blocks.0.self_attn.q.weight`, `head.head.weight`).

A catalog model whose weights are of kind "checkpoints" takes its transformer(s) from these files, one per expert
(high-noise, then low-noise), and everything else, the transformer's config.json included, from its architecture's
diffusers-format repo (downloaded by Wan2GP.loading without the repo's own transformer weights). Each file is fetched
into the standard Hugging Face cache, its header checked against the architecture before any weight is read (a
quantized format, or a transformer of another architecture, is an error that says which), then built by diffusers'
single-file loader, which renames the original keys.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import accelerate
import torch
from diffusers.loaders.single_file_utils import SingleFileComponentError, convert_wan_transformer_to_diffusers
from huggingface_hub import hf_hub_download
from loguru import logger
from safetensors import SafetensorError, safe_open

from Wan2GP.architectures import hub_file
from Wan2GP.catalog import ModelDefinition
from Wan2GP.model_folders import TRANSFORMER_SUBFOLDERS, ModelLoadError

_FLOAT_DTYPES = frozenset({"F16", "BF16", "F32"})  # safetensors' names of the encodings diffusers loads as they are


def load_checkpoint_transformers(
    definition: ModelDefinition,
    config_dir: Path,
    transformer_class: type[torch.nn.Module],
    dtype: torch.dtype,
    device: torch.device,
) -> dict[str, torch.nn.Module]:
    """The transformer of each expert ("high", then "low"), built from the definition's checkpoint files with the
    config in `config_dir`'s transformer subfolder of that expert."""
    urls = definition.weights.checkpoints or ()  # one per expert: the catalog checks it when it loads
    experts = list(TRANSFORMER_SUBFOLDERS)[: len(urls)]
    # Every file is fetched before any is built, so that a missing low-noise file fails before minutes of loading.
    checkpoints = [
        _Checkpoint(definition, expert, url, _fetch(definition, expert, url))
        for expert, url in zip(experts, urls, strict=True)
    ]
    return {
        checkpoint.expert: _build_transformer(checkpoint, config_dir, transformer_class, dtype, device)
        for checkpoint in checkpoints
    }


def _fetch(definition: ModelDefinition, expert: str, url: str) -> Path:
    """The local path of a checkpoint URL, downloaded into the Hugging Face cache (HF_HOME, HF_ENDPOINT) if needed."""
    location = hub_file(url)
    role = _role(definition, expert)
    if location is None:  # the catalog accepts only Hub resolve URLs; kept for a definition built in code
        raise ModelLoadError(f"model {definition.id}: checkpoint {_shown(url)}{role} is not a Hugging Face file URL")
    repo_id, revision, filename = location
    try:
        path = Path(hf_hub_download(repo_id=repo_id, filename=filename, revision=revision))
    except Exception as error:  # huggingface_hub raises many types (HTTP, offline, auth); report them as one
        raise ModelLoadError(f"model {definition.id}: cannot fetch checkpoint {_shown(url)}{role}: {error}") from error
    logger.info("Checkpoint for {}{}: {} ({})", definition.id, role, _shown(url), _size(path.stat().st_size))
    return path


@dataclass(frozen=True)
class _Checkpoint:
    """One expert's checkpoint file, downloaded."""

    definition: ModelDefinition
    expert: str
    url: str
    path: Path

    @property
    def subfolder(self) -> str:
        """The repo folder with this expert's config.json."""
        return TRANSFORMER_SUBFOLDERS[self.expert]

    @property
    def described(self) -> str:
        """How an error about this file starts."""
        return f"model {self.definition.id}: checkpoint {_shown(self.url)}{_role(self.definition, self.expert)}"


def _build_transformer(
    checkpoint: _Checkpoint,
    config_dir: Path,
    transformer_class: type[torch.nn.Module],
    dtype: torch.dtype,
    device: torch.device,
) -> torch.nn.Module:
    config = transformer_class.load_config(config_dir, subfolder=checkpoint.subfolder, local_files_only=True)
    # Parameters on the meta device (no memory), buffers real: the names and shapes to check the file against, and
    # the buffers as from_pretrained computes them.
    with accelerate.init_empty_weights(include_buffers=False):
        skeleton = transformer_class.from_config(config)
    names = _check_header(checkpoint, skeleton)
    try:
        transformer = transformer_class.from_single_file(
            str(checkpoint.path),
            config=str(config_dir),
            subfolder=checkpoint.subfolder,
            torch_dtype=dtype,
            local_files_only=True,
            device=str(device),
        )
    except (OSError, ValueError, KeyError, SingleFileComponentError) as error:
        raise ModelLoadError(f"{checkpoint.described}: diffusers cannot load it: {error}") from error
    _restore_float32_parts(transformer, skeleton, checkpoint.path, names)
    return transformer


def _check_header(checkpoint: _Checkpoint, skeleton: torch.nn.Module) -> dict[str, str]:
    """Check, from the file's header alone, that it is a plain float Wan transformer with exactly the tensors of
    `skeleton` (names as diffusers' converter renames them, and shapes). Returns diffusers name -> name in the file."""
    try:
        with safe_open(checkpoint.path, framework="pt") as file:
            tensors = {name: file.get_slice(name) for name in file.keys()}
            dtypes = {name: piece.get_dtype() for name, piece in tensors.items()}
            shapes = {name: tuple(piece.get_shape()) for name, piece in tensors.items()}
    except (SafetensorError, OSError) as error:
        raise ModelLoadError(f"{checkpoint.described}: not a readable .safetensors file ({error})") from error
    encoding = _quantized_encoding(dtypes)
    if encoding is not None:
        raise ModelLoadError(
            f"{checkpoint.described}: the file holds {encoding}, which this engine does not load (it loads bf16, fp16 "
            "and fp32 checkpoints): name the 16-bit file of this finetune in model.URLs"
        )
    try:
        # diffusers' own renaming, run on the names only (each value is the name in the file).
        names: dict[str, str] = convert_wan_transformer_to_diffusers({name: name for name in dtypes})
    except (TypeError, ValueError, IndexError, KeyError, AttributeError) as error:
        raise ModelLoadError(
            f"{checkpoint.described}: not a Wan transformer checkpoint diffusers can convert ({error!r})"
        ) from error
    expected = {name: tuple(tensor.shape) for name, tensor in skeleton.state_dict().items()}
    found = {name: shapes[original] for name, original in names.items()}
    ignored = type(skeleton)._keys_to_ignore_on_load_unexpected or []  # what diffusers drops without a word
    missing = sorted(expected.keys() - found.keys())
    unexpected = sorted(
        name for name in found.keys() - expected.keys() if not any(re.search(pattern, name) for pattern in ignored)
    )
    reshaped = [name for name in sorted(expected.keys() & found.keys()) if expected[name] != found[name]]
    if missing or unexpected or reshaped:
        reason = _mismatch(checkpoint.definition, missing, unexpected, reshaped, found, expected)
        raise ModelLoadError(f"{checkpoint.described}: {reason}")
    return names


def _quantized_encoding(dtypes: dict[str, str]) -> str | None:
    """The quantized format of a file, named for the error; None for plain float weights. Told apart by the tensors
    each format adds next to a weight (or the weight's own dtype)."""
    names = dtypes.keys()
    if any(name.endswith(("._data", "._scale")) for name in names):
        return "quanto weights (optimum-quanto int8/fp8: *._data and *._scale tensors, upstream's *quanto* files)"
    nvfp4_parts = (".weight_scale_2", ".weight_packed", ".weight_global_scale")
    if any(name.endswith(nvfp4_parts) for name in names) or "U8" in dtypes.values():
        return "NVFP4 weights (4-bit values packed in bytes, with block scales)"
    if "scaled_fp8" in names or any(
        name.endswith(".scale_weight") or dtype.startswith("F8") for name, dtype in dtypes.items()
    ):
        return "FP8 weights (float8 values)"
    other = sorted(set(dtypes.values()) - _FLOAT_DTYPES)
    return f"tensors of type {', '.join(other)}" if other else None


def _mismatch(
    definition: ModelDefinition,
    missing: list[str],
    unexpected: list[str],
    reshaped: list[str],
    found: dict[str, tuple[int, ...]],
    expected: dict[str, tuple[int, ...]],
) -> str:
    """Why a file's tensors are not those of the definition's transformer, in words."""
    architecture = definition.architecture
    is_vace_part = re.compile(r"^vace_").match
    if definition.is_vace and missing and all(map(is_vace_part, missing)) and not unexpected and not reshaped:
        return (
            f"the file has no VACE blocks (vace_blocks.*, vace_patch_embedding: {len(missing)} tensors missing), so it "
            f"is not a {architecture} transformer. Upstream Wan2GP grafts a separate VACE module onto such a "
            "checkpoint; this engine does not: name a checkpoint that includes the VACE blocks"
        )
    if not definition.is_vace and unexpected and all(map(is_vace_part, unexpected)) and not missing and not reshaped:
        return f"the file is a VACE transformer ({len(unexpected)} vace_* tensors), expected a {architecture} one"
    problems = []
    if missing:
        problems.append(f"{len(missing)} tensor(s) missing (e.g. {', '.join(missing[:3])})")
    if unexpected:
        problems.append(f"{len(unexpected)} tensor(s) it should not have (e.g. {', '.join(unexpected[:3])})")
    for name in reshaped[:3]:
        problems.append(f"{name} has shape {list(found[name])}, expected {list(expected[name])}")
    return f"the file is not a {architecture} Wan transformer (diffusers' tensor names): " + "; ".join(problems)


def _restore_float32_parts(
    transformer: torch.nn.Module, skeleton: torch.nn.Module, path: Path, names: dict[str, str]
) -> None:
    """Make the dtypes those of the same weights loaded by from_pretrained. That keeps the modules a class lists in
    `_keep_in_fp32_modules` (Wan: norms, modulation tables, time embedder) and the computed buffers (the RoPE
    tables) in float32 whatever torch_dtype; diffusers' single-file loader casts the whole model instead, which on
    a GPU in bf16 would round the time embedding and the positions. Weights are re-read from the file."""
    keep = set(type(transformer)._keep_in_fp32_modules or ())
    kept = [name for name, _ in transformer.named_parameters() if keep.intersection(name.split("."))]  # diffusers' rule
    with safe_open(path, framework="pt") as file:
        for name in kept:
            owner_name, _, leaf = name.rpartition(".")
            owner = transformer.get_submodule(owner_name)
            value = file.get_tensor(names[name]).to(device=getattr(owner, leaf).device, dtype=torch.float32)
            setattr(owner, leaf, torch.nn.Parameter(value, requires_grad=False))
    persistent = transformer.state_dict().keys()
    for name, buffer in skeleton.named_buffers():
        if name not in persistent:  # computed at construction, not stored in any file
            owner_name, _, leaf = name.rpartition(".")
            owner = transformer.get_submodule(owner_name)
            setattr(owner, leaf, buffer.to(getattr(owner, leaf).device))


def _role(definition: ModelDefinition, expert: str) -> str:
    """Which expert a file is for, where there are two."""
    return f" ({expert}-noise expert)" if definition.experts == 2 else ""


def _shown(url: str) -> str:
    """A URL for messages and logs: without query or fragment, where a token could ride along."""
    return urlsplit(url)._replace(query="", fragment="").geturl()


def _size(size: int) -> str:
    return f"{size / 1e9:.2f} GB" if size >= 1e9 else f"{size / 1e6:.1f} MB"
