"""The model catalog: `Wan2GP/defaults/<id>.json` model definitions in the upstream schema (upstream_engine_spec §2.1).

Each file holds a `"model"` object (name, description, architecture, URLs, LoRAs, ...) plus, at the top level, the
default generation settings of that model (WGP parameter names). On top of the upstream schema every definition says
where its diffusers-format weights come from (`model.weights`), how many experts it has, its dtypes and fps.

Every file is validated when the catalog loads, including a dry run of the per-step plan from its settings, so a
broken definition fails at start-up with the file and field named, not halfway through a generation.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from loguru import logger
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from Wan2GP.limits import DEFAULT_RESOLUTION, parse_resolution
from Wan2GP.schedule import PlanError, build_plan, normalize_solver

ARCHITECTURES: tuple[str, ...] = ("t2v", "t2v_2_2", "i2v_2_2", "vace_14B", "vace_14B_2_2")
_TWO_EXPERT_ARCHITECTURES = ("t2v_2_2", "i2v_2_2", "vace_14B_2_2")
DTYPES: tuple[str, ...] = ("bfloat16", "float16", "float32")

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
        return self

    @property
    def kind(self) -> Literal["repo", "local", "tiny"]:
        if self.repo_id is not None:
            return "repo"
        return "local" if self.local_dir is not None else "tiny"


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
            normalize_solver(value)  # raises PlanError (a ValueError) naming the accepted solvers
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
    weights: WeightsSource
    experts: Literal[1, 2]
    transformer_dtype: str = "bfloat16"
    vae_dtype: str = "float32"
    fps: int = Field(default=16, ge=1)
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
        if self.architecture in _TWO_EXPERT_ARCHITECTURES and self.experts != 2:
            raise ValueError(f"architecture {self.architecture} has two experts, got experts={self.experts}")
        if self.URLs2 is not None and self.experts != 2:
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
    vae_dtype: str = "float32"
    fps: int = 16
    travel_counterparts: dict[str, str] = Field(default_factory=dict)  # travel mode -> model id
    settings: dict[str, Any] = Field(default_factory=dict)
    urls: str | tuple[str, ...] = ()  # upstream URLs field: weight files, or the id of the model it inherits from
    urls2: str | tuple[str, ...] | None = None
    options: dict[str, Any] = Field(default_factory=dict)  # other "model" keys (group, lock_guidance_phases, ...)
    source_file: Path | None = None

    @property
    def is_vace(self) -> bool:
        return self.architecture.startswith("vace")

    @property
    def is_i2v(self) -> bool:
        return self.architecture.startswith("i2v")

    @property
    def travel_mode(self) -> str | None:
        """How this model travels between keyframes: "vace" (guide + mask), "i2v" (start/end images) or None."""
        return "vace" if self.is_vace else "i2v" if self.is_i2v else None

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
    """The model definitions by id. Read-only once loaded."""

    def __init__(self, definitions: Mapping[str, ModelDefinition]) -> None:
        self._definitions = dict(definitions)

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


def load_catalog(directory: Path | None = None, extra_dirs: Sequence[Path] = ()) -> Catalog:
    """Load and validate every `*.json` in `directory` (default: the bundled defaults), then in `extra_dirs`.

    A file in a later directory with an id already loaded is merged into it key by key, the later file winning (as
    upstream finetunes merge into defaults); its "model" object is merged the same way.
    """
    raw: dict[str, tuple[Path, dict[str, Any]]] = {}
    for folder in [directory or default_catalog_dir(), *extra_dirs]:
        folder = Path(folder)
        if not folder.is_dir():
            raise CatalogError(f"{folder}: not a directory of model definitions")
        for path in sorted(folder.glob("*.json")):
            data = _read_json(path)
            model_id = path.stem
            if model_id in raw:
                _, earlier = raw[model_id]
                merged = {**earlier, **data}
                merged["model"] = {**earlier.get("model", {}), **data.get("model", {})}
                data = merged
            raw[model_id] = (path, data)
    definitions = {model_id: _definition(model_id, path, data) for model_id, (path, data) in raw.items()}
    for definition in definitions.values():
        for field, urls in (("model.URLs", definition.urls), ("model.URLs2", definition.urls2)):
            # A string URLs is the id of the model whose weight files this one reuses.
            if isinstance(urls, str) and urls not in definitions:
                raise CatalogError(f"{definition.source_file}: {field}: expected a catalog model id, got {urls!r}")
        for mode, counterpart_id in definition.travel_counterparts.items():
            counterpart = definitions.get(counterpart_id)
            if counterpart is None or counterpart.travel_mode != mode:
                raise CatalogError(
                    f"{definition.source_file}: model.travel_counterparts.{mode}: expected the id of a {mode} model "
                    f"in the catalog, got {counterpart_id!r}"
                )
    return Catalog(definitions)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise CatalogError(f"{path}: not valid JSON ({error})") from error
    if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
        raise CatalogError(f'{path}: model: expected an object under the key "model"')
    return data


def _definition(model_id: str, path: Path, data: dict[str, Any]) -> ModelDefinition:
    settings_data = {key: value for key, value in data.items() if key != "model"}
    try:
        section = _ModelSection.model_validate(data["model"])
    except ValidationError as error:
        raise CatalogError(f"{path}: {_first_error(error, 'model')}") from None
    try:
        settings = _ModelSettings.model_validate(settings_data)
    except ValidationError as error:
        raise CatalogError(f"{path}: {_first_error(error, '')}") from None
    known = {"name", "description", "architecture", "URLs", "URLs2", "loras", "loras_multipliers", "weights"}
    known |= {"experts", "transformer_dtype", "vae_dtype", "fps", "travel_counterparts"}
    definition = ModelDefinition(
        id=model_id,
        name=section.name,
        description=section.description,
        architecture=section.architecture,
        experts=section.experts,
        weights=section.weights,
        loras=tuple(section.loras),
        loras_multipliers=tuple(str(m) for m in section.loras_multipliers),
        transformer_dtype=section.transformer_dtype,
        vae_dtype=section.vae_dtype,
        fps=section.fps,
        travel_counterparts=dict(section.travel_counterparts),
        settings=settings_data,
        urls=section.URLs if isinstance(section.URLs, str) else tuple(section.URLs),
        urls2=section.URLs2 if section.URLs2 is None or isinstance(section.URLs2, str) else tuple(section.URLs2),
        options={k: v for k, v in data["model"].items() if k not in known},
        source_file=path,
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
