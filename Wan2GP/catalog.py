"""The model catalog: `Wan2GP/defaults/<id>.json` model definitions in the upstream schema (upstream_engine_spec §2.1).

Each file holds a `"model"` object (name, description, architecture, URLs, LoRAs, ...) plus, at the top level, the
default generation settings of that model (WGP parameter names). On top of the upstream schema a definition may say
where its diffusers-format weights come from (`model.weights`), how many experts it has, its dtypes and fps; an
upstream file without them has them filled in from its architecture and URLs through `Wan2GP.architectures`.

Every file is validated when the catalog loads, including a dry run of the per-step plan from its settings, so a
broken definition fails at start-up with the file and field named, not halfway through a generation. A file of an
architecture this engine does not run (upstream's Hunyuan, Flux, LTX ...) is set aside with the reason, which is
the error when that model is asked for.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from loguru import logger
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from Wan2GP.architectures import (
    ARCHITECTURES,
    UPSTREAM_BASE_MODELS,
    Architecture,
    is_hub_file_url,
    known_checkpoint,
)
from Wan2GP.limits import DEFAULT_RESOLUTION, parse_resolution
from Wan2GP.schedule import PlanError, build_plan, normalize_solver

DTYPES: tuple[str, ...] = ("bfloat16", "float16", "float32")
# The engine's attention kernels (Wan2GP.attention); named here, torch-free, for the worker's flags.
ATTENTION_KERNELS: tuple[str, ...] = ("auto", "sdpa", "flash3", "flash4", "cudnn_fp8")


def check_attention_kernel(name: str) -> str:
    if name not in ATTENTION_KERNELS:
        raise ValueError(f"attention: expected one of {', '.join(ATTENTION_KERNELS)}, got {name!r}")
    return name


def check_vae_dtype(name: str) -> str:
    if name not in DTYPES:
        raise ValueError(f"vae_dtype: expected one of {', '.join(DTYPES)}, got {name!r}")
    return name


# Names that earlier payloads used for models that were later renamed (seed 001 sends the bare name).
LEGACY_ALIASES: Mapping[str, str] = {"lightning_baseline_2_2_2": "wan_2_2_vace_lightning_baseline_2_2_2"}


class CatalogError(ValueError):
    """A model id that is not in the catalog, or a definition file that is invalid (the message names file and field)."""


class WeightsSource(BaseModel):
    """Where the diffusers-format weights come from: exactly one of a Hugging Face repo, a local folder (a relative
    path is resolved by the engine against its cache dir) or a tiny random-weight model built from a seed."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    repo_id: str | None = None
    revision: str = "main"
    local_dir: Path | None = None
    tiny_seed: int | None = None
    # Single-file checkpoints (Hub "resolve" URLs), one per expert, for the transformers of a finetune that has no
    # diffusers-format repo; the other components and the transformer config come from repo_id.
    checkpoints: tuple[str, ...] | None = None

    @model_validator(mode="before")
    @classmethod
    def _flatten_tiny(cls, data: Any) -> Any:
        # The JSON spells a tiny model as {"tiny": {"seed": 1234}}.
        if isinstance(data, Mapping) and "tiny" in data:
            data = dict(data)
            tiny = data.pop("tiny")
            if not isinstance(tiny, Mapping) or set(tiny) != {"seed"}:
                raise ValueError('"tiny" must be an object with exactly one key, "seed"')
            data["tiny_seed"] = tiny["seed"]
        return data

    @model_validator(mode="after")
    def _exactly_one(self) -> WeightsSource:
        given = [name for name in ("repo_id", "local_dir", "tiny_seed") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(f"expected exactly one of repo_id, local_dir or tiny, got {given or 'none'}")
        if self.checkpoints is not None:
            if self.repo_id is None or not self.checkpoints:
                raise ValueError("checkpoints: expected one or two checkpoint URLs together with a repo_id")
            bad = [url for url in self.checkpoints if not is_hub_file_url(url)]
            if bad:
                raise ValueError(
                    f"checkpoints: expected Hugging Face resolve URLs of .safetensors files, got {bad[0]!r}"
                )
        return self

    @property
    def kind(self) -> Literal["repo", "checkpoints", "local", "tiny"]:
        if self.repo_id is not None:
            return "repo" if self.checkpoints is None else "checkpoints"
        return "local" if self.local_dir is not None else "tiny"

    def describe(self) -> str:
        """Where the weights come from, in a few words (the CLI's catalog listing)."""
        if self.kind == "tiny":
            return f"tiny (seed {self.tiny_seed})"
        if self.kind == "local":
            return f"folder {self.local_dir}"
        if self.kind == "checkpoints":
            return f"{len(self.checkpoints or ())} checkpoint file(s) + {self.repo_id}"
        return f"{self.repo_id}@{self.revision}"


class _ModelSettings(BaseModel):
    """The default generation settings a definition may carry (top-level keys). Known keys are typed; others are
    kept as given, like upstream (e.g. masking_strength)."""

    model_config = ConfigDict(extra="allow", strict=True)

    video_length: int | None = Field(default=None, ge=1)
    num_inference_steps: int | None = Field(default=None, ge=1)
    guidance_phases: int | None = Field(default=None, ge=1, le=3)
    guidance_scale: float | None = None
    guidance2_scale: float | None = None
    guidance3_scale: float | None = None
    switch_threshold: float | None = Field(default=None, ge=0, le=1000)
    switch_threshold2: float | None = Field(default=None, ge=0, le=1000)
    model_switch_phase: int | None = Field(default=None, ge=1)
    flow_shift: float | None = Field(default=None, gt=0)
    sample_solver: str | None = None
    seed: int | None = None
    negative_prompt: str | None = None
    prompt: str | None = None
    video_prompt_type: str | None = None
    image_prompt_type: str | None = None
    resolution: str | None = None

    @field_validator("sample_solver")
    @classmethod
    def _solver(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                normalize_solver(value)
            except PlanError as error:
                raise ValueError(error.reason) from None  # the reason only: the location is added once, by the caller
        return value

    @field_validator("resolution")
    @classmethod
    def _resolution(cls, value: str | None) -> str | None:
        if value is not None:
            parse_resolution(value)
        return value


class _ModelSection(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str = Field(min_length=1)
    description: str = ""
    architecture: str
    URLs: str | list[str] = Field(default_factory=list)
    URLs2: str | list[str] | None = None
    modules: list[Any] = Field(default_factory=list)
    loras: list[str] = Field(default_factory=list)
    loras_multipliers: list[str | float] = Field(default_factory=list)
    weights: WeightsSource | None = None  # None: from the architecture and URLs (Wan2GP.architectures)
    experts: Literal[1, 2] | None = None  # None: 2 with a URLs2 or a two-expert architecture, else 1
    transformer_dtype: str = "bfloat16"
    # The transformers' block weights: "auto" (16-bit where a placement fits the VRAM budget and host memory, else
    # int8), or always "native" (the dtype above), "int8" or "fp8" (Wan2GP.quantization).
    transformer_weights: Literal["auto", "native", "int8", "fp8", "fp8_dynamic"] = "auto"
    vae_dtype: str = "float16"  # on GPUs (CPUs run fp32); an fp16 overflow reruns that call in fp32 (VaeCodec)
    fps: int | None = Field(default=None, ge=1)  # None: the architecture's
    # The same model family in the other travel mode: Reigh sends model_type "vace" with its i2v model's name when a
    # run needs structure guidance, and the worker runs the VACE counterpart named here.
    travel_counterparts: dict[Literal["vace", "i2v"], str] = Field(default_factory=dict)

    @field_validator("architecture")
    @classmethod
    def _architecture(cls, value: str) -> str:
        if value not in ARCHITECTURES:
            raise ValueError(f"expected one of {', '.join(ARCHITECTURES)}, got {value!r}")
        return value

    @field_validator("transformer_dtype", "vae_dtype")
    @classmethod
    def _dtype(cls, value: str) -> str:
        if value not in DTYPES:
            raise ValueError(f"expected one of {', '.join(DTYPES)}, got {value!r}")
        return value

    @field_validator("loras_multipliers")
    @classmethod
    def _multipliers(cls, value: list[str | float]) -> list[str | float]:
        for i, item in enumerate(value):
            if isinstance(item, bool) or (isinstance(item, float) and not math.isfinite(item)):
                raise ValueError(f"[{i}]: expected a number or a multiplier string, got {item!r}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> _ModelSection:
        if ARCHITECTURES[self.architecture].experts == 2 and self.experts == 1:
            raise ValueError(f"architecture {self.architecture} has two experts, got experts={self.experts}")
        if self.URLs2 and self.experts == 1:
            raise ValueError(f"URLs2 (a second transformer) needs experts=2, got experts={self.experts}")
        if len(self.loras_multipliers) not in (0, len(self.loras)):
            raise ValueError(f"loras_multipliers has {len(self.loras_multipliers)} entries for {len(self.loras)} loras")
        return self


class ModelDefinition(BaseModel):
    """One catalog entry. `settings` are the model's default generation settings (WGP names)."""

    model_config = ConfigDict(frozen=True)

    id: str
    name: str
    description: str
    architecture: str
    experts: int
    weights: WeightsSource
    loras: tuple[str, ...] = ()
    loras_multipliers: tuple[str, ...] = ()  # one token per LoRA (floats written as strings)
    transformer_dtype: str = "bfloat16"
    transformer_weights: str = "auto"  # "auto", "native", "int8", "fp8" or "fp8_dynamic" (_ModelSection)
    vae_dtype: str = "float16"
    fps: int = 16
    travel_counterparts: dict[str, str] = Field(default_factory=dict)  # travel mode -> model id
    settings: dict[str, Any] = Field(default_factory=dict)
    urls: str | tuple[str, ...] = ()  # upstream URLs field: weight files, or the id of the model it inherits from
    urls2: str | tuple[str, ...] | None = None
    options: dict[str, Any] = Field(default_factory=dict)  # other "model" keys (group, lock_guidance_phases, ...)
    source_file: Path | None = None
    # Provenance, for `cli models show`: the file each setting came from (a later folder's file overrides key by
    # key), and how the weights were decided.
    setting_files: dict[str, Path] = Field(default_factory=dict)
    weights_origin: str = "model.weights"

    @property
    def spec(self) -> Architecture:
        return ARCHITECTURES[self.architecture]

    @property
    def is_vace(self) -> bool:
        return self.spec.kind == "vace"

    @property
    def is_i2v(self) -> bool:
        """Start/end images as input channels (Wan 2.1 i2v and flf2v, Wan 2.2 i2v)."""
        return self.spec.kind in ("i2v", "flf2v")

    @property
    def is_ti2v(self) -> bool:
        return self.spec.kind == "ti2v"

    @property
    def travel_mode(self) -> str | None:
        """How this model travels between keyframes: "vace" (guide + mask), "i2v" (start/end images) or None."""
        return self.spec.travel_mode

    @property
    def is_tiny(self) -> bool:
        return self.weights.tiny_seed is not None

    @property
    def default_guidance_phases(self) -> int:
        """Without a guidance_phases setting, a two-expert model runs 2 phases (one per expert: the Wan handler's
        default) and a one-expert model 1. The one home of this default: the catalog check, the engine's requests
        and the payload resolver read it here."""
        return 2 if self.experts == 2 else 1

    def default_resolution(self) -> tuple[int, int]:
        return parse_resolution(self.settings.get("resolution", DEFAULT_RESOLUTION))


class Catalog:
    """The model definitions by id. Read-only once loaded. `set_aside` holds, by id, why a definition that was
    found is not offered (an architecture this engine does not run)."""

    def __init__(self, definitions: Mapping[str, ModelDefinition], set_aside: Mapping[str, str] | None = None) -> None:
        self._definitions = dict(definitions)
        self.set_aside: dict[str, str] = dict(set_aside or {})

    def resolve_id(self, model_id: str, *, warn: bool = True) -> str:
        """The catalog id for `model_id`, following legacy aliases (logged as a warning unless warn=False);
        CatalogError listing the known ids if unknown."""
        if model_id in self._definitions:
            return model_id
        alias = LEGACY_ALIASES.get(model_id)
        if alias is not None and alias in self._definitions:
            if warn:
                logger.warning("model {!r} is a legacy name; using {!r}", model_id, alias)
            return alias
        if model_id in self.set_aside:
            raise CatalogError(f"model {model_id!r}: {self.set_aside[model_id]}")
        known = ", ".join(self.ids())
        raise CatalogError(f"unknown model {model_id!r}; known models: {known}")

    def get(self, model_id: str, *, warn: bool = True) -> ModelDefinition:
        return self._definitions[self.resolve_id(model_id, warn=warn)]

    def ids(self) -> list[str]:
        return sorted(self._definitions)

    def __contains__(self, model_id: object) -> bool:
        return isinstance(model_id, str) and (model_id in self._definitions or model_id in LEGACY_ALIASES)

    def __len__(self) -> int:
        return len(self._definitions)


def default_catalog_dir() -> Path:
    """The bundled definitions: Wan2GP/defaults."""
    return Path(__file__).resolve().parent / "defaults"


# "model" keys of the upstream schema this engine reads; any other is accepted and listed once at DEBUG.
_READ_MODEL_KEYS = frozenset(
    {"name", "description", "architecture", "URLs", "URLs2", "loras", "loras_multipliers", "weights", "experts"}
    | {"transformer_dtype", "transformer_weights", "vae_dtype", "fps", "travel_counterparts"}
)


@dataclass
class _Found:
    """A definition as read from its file(s), before validation: later folders' files merged in key by key."""

    path: Path
    data: dict[str, Any]
    setting_files: dict[str, Path]
    from_extra_dir: bool = False  # any of its files from an extra folder (--defaults-dir), not the bundled one


def load_catalog(directory: Path | None = None, extra_dirs: Sequence[Path] = ()) -> Catalog:
    """Load and validate every `*.json` in `directory` (default: the bundled defaults), then in `extra_dirs`.

    A file in a later directory with an id already loaded is merged into it key by key, the later file winning (as
    upstream finetunes merge into defaults); its "model" object is merged the same way. Definitions of architectures
    this engine does not run are set aside (logged once, the reason kept for the error when one is asked for). So is
    a definition from `extra_dirs` that is invalid (upstream's files use solvers and settings this engine does not
    have): one WARNING naming the file and field, and the others load; an invalid bundled file is a CatalogError.
    """
    found: dict[str, _Found] = {}
    set_aside: dict[str, str] = {}
    for order, folder in enumerate([directory or default_catalog_dir(), *extra_dirs]):
        folder = Path(folder)
        if not folder.is_dir():
            raise CatalogError(f"{folder}: not a directory of model definitions")
        for path in sorted(folder.glob("*.json")):
            model_id = path.stem
            try:
                data = _read_json(path)
            except CatalogError as error:
                if order == 0:
                    raise
                set_aside[model_id] = str(error)
                found.pop(model_id, None)
                continue
            settings_files = {key: path for key in data if key != "model"}
            if model_id in found:
                earlier = found[model_id]
                merged = {**earlier.data, **data}
                merged["model"] = {**earlier.data.get("model", {}), **data.get("model", {})}
                data = merged
                settings_files = {**earlier.setting_files, **settings_files}
            found[model_id] = _Found(path, data, settings_files, from_extra_dir=order > 0)

    other_families: dict[str, str] = {}
    sections: dict[str, _ModelSection] = {}
    for model_id, item in found.items():
        architecture = item.data["model"].get("architecture")
        if isinstance(architecture, str) and architecture not in ARCHITECTURES:
            other_families[model_id] = str(architecture)
            set_aside[model_id] = (
                f"{item.path}: architecture {architecture!r} is not one this engine runs "
                f"(it runs {', '.join(ARCHITECTURES)})"
            )
            continue
        try:
            sections[model_id] = _ModelSection.model_validate(item.data["model"])
        except ValidationError as error:
            _set_aside_or_raise(set_aside, item, f"{item.path}: {_first_error(error, 'model')}")
    if other_families:
        counts = Counter(other_families.values())
        shown = ", ".join(f"{name} ({count})" for name, count in sorted(counts.items()))
        logger.info(
            "set aside {} model definition(s) of architectures this engine does not run: {}", len(other_families), shown
        )

    completed = _WeightsResolver(sections, found)
    definitions = {}
    for model_id, section in sections.items():
        try:
            definitions[model_id] = _definition(model_id, found[model_id], section, *completed.resolve(model_id))
        except CatalogError as error:
            _set_aside_or_raise(set_aside, found[model_id], str(error))
    _log_unread_keys(definitions.values())
    for definition in list(definitions.values()):
        for mode, counterpart_id in definition.travel_counterparts.items():
            counterpart = definitions.get(counterpart_id)
            if counterpart is None or counterpart.travel_mode != mode:
                message = (
                    f"{definition.source_file}: model.travel_counterparts.{mode}: expected the id of a {mode} model "
                    f"in the catalog, got {counterpart_id!r}"
                )
                _set_aside_or_raise(set_aside, found[definition.id], message)
                definitions.pop(definition.id, None)
    return Catalog(definitions, set_aside)


def _set_aside_or_raise(set_aside: dict[str, str], item: _Found, message: str) -> None:
    """A broken bundled definition stops the load; one from an extra folder is set aside with one WARNING."""
    if not item.from_extra_dir:
        raise CatalogError(message)
    logger.warning("model definition set aside: {}", message)
    set_aside[item.path.stem] = message


class _WeightsResolver:
    """Fills in `weights` and `experts` for definitions that do not give them (upstream files), from the
    architecture table and the URLs/URLs2 fields: a string names another model whose transformers this one reuses,
    a list names checkpoint files (known ones map to a diffusers-format repo, unknown Hub files are loaded as single
    files). Never fails: what cannot be resolved falls back to the architecture's own repo, and says so."""

    def __init__(self, sections: Mapping[str, _ModelSection], found: Mapping[str, _Found]) -> None:
        self._sections = sections
        self._found = found
        self._done: dict[str, tuple[WeightsSource, int, str]] = {}

    def resolve(self, model_id: str, _visiting: tuple[str, ...] = ()) -> tuple[WeightsSource, int, str]:
        if model_id not in self._done:
            self._done[model_id] = self._resolve(model_id, (*_visiting, model_id))
        return self._done[model_id]

    def _resolve(self, model_id: str, visiting: tuple[str, ...]) -> tuple[WeightsSource, int, str]:
        section = self._sections[model_id]
        spec = ARCHITECTURES[section.architecture]
        default_experts = 2 if section.URLs2 or spec.experts == 2 else 1
        if section.weights is not None:
            return section.weights, section.experts or default_experts, "model.weights"
        own_repo = WeightsSource(repo_id=spec.repo_id)
        urls = section.URLs
        if isinstance(urls, str):
            other = self._sections.get(urls)
            base = UPSTREAM_BASE_MODELS.get(urls)
            if other is None and base is not None and base.kind == spec.kind:
                origin = f"model.URLs {urls!r}: upstream's base model, {base.repo_id}"
                return WeightsSource(repo_id=base.repo_id), section.experts or default_experts, origin
            if other is None or urls in visiting:
                why = "not a model in the catalog" if other is None else "a circular reference"
                return (
                    own_repo,
                    section.experts or default_experts,
                    (f"architecture {spec.name}: {spec.repo_id} (model.URLs {urls!r} is {why})"),
                )
            other_weights, other_experts, _ = self.resolve(urls, visiting)
            if ARCHITECTURES[other.architecture].kind != spec.kind:
                # e.g. upstream's VACE files: URLs "t2v" plus modules ["vace_14B"] (the VACE blocks grafted onto
                # the t2v transformer). On an official base, the architecture's diffusers repo holds exactly that
                # combined model; on a finetune's checkpoint, the checkpoint is what the definition runs.
                experts = section.experts or default_experts
                if other_weights.checkpoints is not None:
                    finetune = WeightsSource(repo_id=spec.repo_id, checkpoints=other_weights.checkpoints[:experts])
                    origin = f"model.URLs {urls!r}: that {other.architecture} finetune's checkpoint(s), modules of {spec.name}"
                    return finetune, experts, origin
                origin = f"architecture {spec.name}: {spec.repo_id} (model.URLs {urls!r} is a {other.architecture} model its modules are grafted onto)"
                return own_repo, experts, origin
            experts = section.experts or max(default_experts, other_experts)
            return other_weights, experts, f"model.URLs {urls!r}: that model's weights"
        experts = section.experts or default_experts
        if not urls:
            return own_repo, experts, f"architecture {spec.name}: {spec.repo_id}"
        first = _preferred_checkpoint(urls)
        known = known_checkpoint(first)
        if known is not None and known.kind not in (None, spec.kind):
            return (
                own_repo,
                experts,
                (
                    f"architecture {spec.name}: {spec.repo_id} (model.URLs names a {known.kind} checkpoint its modules "
                    f"are grafted onto)"
                ),
            )
        if known is not None:
            return (
                WeightsSource(repo_id=known.repo_id),
                experts,
                f"model.URLs: {first.rsplit('/', 1)[-1]} is in {known.repo_id}",
            )
        second = _preferred_checkpoint(section.URLs2) if isinstance(section.URLs2, list) and section.URLs2 else None
        files = (first,) if experts == 1 or second is None else (first, second)
        if all(is_hub_file_url(url) for url in files) and len(files) == experts:
            return (
                WeightsSource(repo_id=spec.repo_id, checkpoints=files),
                experts,
                f"model.URLs: single-file checkpoint(s), other components from {spec.repo_id}",
            )
        return (
            own_repo,
            experts,
            f"architecture {spec.name}: {spec.repo_id} (model.URLs {first!r} is not a known checkpoint)",
        )


def _preferred_checkpoint(urls: Sequence[str]) -> str:
    """Upstream lists one checkpoint in several encodings (bf16, fp16, quanto int8): take the first 16-bit one."""
    for url in urls:
        name = url.rsplit("/", 1)[-1].lower()
        if "quanto" not in name and "int8" not in name:
            return url
    return urls[0]


def _log_unread_keys(definitions: Any) -> None:
    unread: dict[str, int] = {}
    for definition in definitions:
        for key in definition.options:
            unread[key] = unread.get(key, 0) + 1
    if unread:
        listed = ", ".join(f"{key} ({count})" for key, count in sorted(unread.items()))
        logger.debug("model definition keys accepted and not used by this engine: {}", listed)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise CatalogError(f"{path}: not valid JSON ({error})") from error
    if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
        raise CatalogError(f'{path}: model: expected an object under the key "model"')
    return data


def _definition(
    model_id: str, item: _Found, section: _ModelSection, weights: WeightsSource, experts: int, weights_origin: str
) -> ModelDefinition:
    path, data = item.path, item.data
    if weights.checkpoints is not None and len(weights.checkpoints) != experts:
        raise CatalogError(
            f"{path}: model.weights.checkpoints: expected one checkpoint per expert ({experts}), "
            f"got {len(weights.checkpoints)}"
        )
    settings_data = {key: value for key, value in data.items() if key != "model"}
    try:
        settings = _ModelSettings.model_validate(settings_data)
    except ValidationError as error:
        raise CatalogError(f"{path}: {_first_error(error, '')}") from None
    spec = ARCHITECTURES[section.architecture]
    definition = ModelDefinition(
        id=model_id,
        name=section.name,
        description=section.description,
        architecture=section.architecture,
        experts=experts,
        weights=weights,
        loras=tuple(section.loras),
        loras_multipliers=tuple(str(m) for m in section.loras_multipliers),
        transformer_dtype=section.transformer_dtype,
        transformer_weights=section.transformer_weights,
        vae_dtype=section.vae_dtype,
        fps=section.fps or spec.fps,
        travel_counterparts=dict(section.travel_counterparts),
        settings=settings_data,
        urls=section.URLs if isinstance(section.URLs, str) else tuple(section.URLs),
        urls2=section.URLs2 if section.URLs2 is None or isinstance(section.URLs2, str) else tuple(section.URLs2),
        options={k: v for k, v in data["model"].items() if k not in _READ_MODEL_KEYS},
        source_file=path,
        setting_files=item.setting_files,
        weights_origin=weights_origin,
    )
    _check_plan(definition, settings)
    return definition


def _check_plan(definition: ModelDefinition, settings: _ModelSettings) -> None:
    """The settings must give a valid per-step plan together with the built-in LoRAs' multipliers."""
    try:
        build_plan(
            num_inference_steps=settings.num_inference_steps or 30,
            sample_solver=settings.sample_solver,
            flow_shift=settings.flow_shift or 5.0,
            guidance_phases=settings.guidance_phases or definition.default_guidance_phases,
            guidance_scale=5.0 if settings.guidance_scale is None else settings.guidance_scale,
            guidance2_scale=settings.guidance2_scale,
            guidance3_scale=settings.guidance3_scale,
            switch_threshold=settings.switch_threshold,
            switch_threshold2=settings.switch_threshold2,
            model_switch_phase=settings.model_switch_phase,
            loras_multipliers=list(definition.loras_multipliers),
            num_loras=len(definition.loras),
        )
    except PlanError as error:
        field = error.field
        if field.startswith("loras_multipliers"):
            field = "model." + field
        raise CatalogError(f"{definition.source_file}: {field}: {error.reason}") from None


def _first_error(error: ValidationError, root: str) -> str:
    """`field.path: message` for the first pydantic error."""
    first = error.errors()[0]
    location = root
    for part in first["loc"]:
        if isinstance(part, int):
            location += f"[{part}]"
        elif "[" not in part and part not in ("str", "float", "int", "list[str]"):  # skip union/validator tags
            location = f"{location}.{part}" if location else part
    if first["type"] == "missing":
        return f"{location}: required"
    message = first["msg"].removeprefix("Value error, ")
    if "got" not in message:
        message += f" (got {first.get('input')!r})"
    return f"{location}: {message}"
