"""WGP-named parameters -> one immutable, fully resolved ``GenerationRequest``.

This is the engine's input boundary: every value is checked here once, with errors that name the parameter and say
what was expected. Precedence, lowest first: system defaults < the model definition's settings < the caller's
parameters (a caller value of None means "not given", as in Headless-Wan2GP).
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import PIL.Image
from loguru import logger
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from Wan2GP import limits
from Wan2GP.catalog import ModelDefinition
from Wan2GP.schedule import GenerationPlan, PlanError, build_plan, multiplier_tokens
from Wan2GP.upstream_settings import NOT_IMPLEMENTED_PARAMS, UI_ONLY_PARAMS

# Every parameter name generate_video accepts. Anything else is an error, never silently dropped.
ACCEPTED_PARAMS: tuple[str, ...] = (
    "model",
    "prompt",
    "negative_prompt",
    "resolution",
    "video_length",
    "num_inference_steps",
    "seed",
    "guidance_scale",
    "guidance2_scale",
    "guidance3_scale",
    "guidance_phases",
    "switch_threshold",
    "switch_threshold2",
    "model_switch_phase",
    "flow_shift",
    "sample_solver",
    "activated_loras",
    "loras_multipliers",
    "image_start",
    "image_end",
    "video_guide",
    "video_mask",
    "image_refs",
    "video_prompt_type",
    "control_net_weight",
    "output_dir",
    "output_filename",
)

# Not a WGP name: the model definition's built-in LoRAs as local files, one per entry of its "loras", in that order.
# The engine fetches no LoRA URLs, so a caller of a model whose definition names them by URL downloads them first
# (the worker does, through its LoRA store) and hands the files over here; the definition's multipliers still apply.
BUILTIN_LORA_FILES = "builtin_lora_files"

# Upstream's factory defaults (models/_settings.json and the Wan handler), used where neither the caller nor the model
# definition gives a value.
SYSTEM_DEFAULTS: Mapping[str, Any] = {
    "prompt": "",
    "negative_prompt": "",
    "resolution": limits.DEFAULT_RESOLUTION,
    "video_length": 81,
    "num_inference_steps": 30,
    "seed": -1,
    "guidance_scale": 5.0,
    "switch_threshold": 0.0,
    "switch_threshold2": 0.0,
    "flow_shift": 5.0,
    "sample_solver": "unipc",
    "activated_loras": (),
    "loras_multipliers": "",
    "video_prompt_type": "",
    "control_net_weight": 1.0,
}

MAX_SEED = 999_999_999
MIN_FRAMES = 5
MIN_VACE_FRAMES = 17  # upstream's VACE minimum; the tiny VACE test model is allowed down to MIN_FRAMES
# video_prompt_type letters we implement: V guide video, A mask video, M fill masked guide pixels with grey (inpaint),
# U identity process, N negate the mask, I reference images (image_refs). Pose/depth/... processes need
# preprocessors we do not ship.
SUPPORTED_VIDEO_PROMPT_LETTERS = frozenset("VAMUNI")


class InvalidGenerationParams(ValueError):
    """Bad generation input. ``fields`` names the offending parameters; the message says what was expected."""

    def __init__(self, fields: Sequence[str], message: str) -> None:
        super().__init__(message)
        self.fields: tuple[str, ...] = tuple(fields)


ImageInput = Path | PIL.Image.Image


class _WgpParams(BaseModel):
    """Type checks of the merged WGP values (names as WGP spells them)."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True, frozen=True)

    prompt: str
    negative_prompt: str
    resolution: str
    video_length: int = Field(ge=1, le=limits.MAX_FRAMES)
    num_inference_steps: int = Field(ge=1, le=limits.MAX_STEPS)
    seed: int | None = Field(default=None, le=limits.MAX_SEED)  # negative: draw one
    guidance_scale: float
    guidance2_scale: float | None = None
    guidance3_scale: float | None = None
    guidance_phases: int = Field(ge=1, le=3)
    switch_threshold: float | None = None
    switch_threshold2: float | None = None
    model_switch_phase: int | None = Field(default=None, ge=1)
    flow_shift: float = Field(gt=0)
    sample_solver: str
    activated_loras: tuple[str | Path, ...] = ()
    loras_multipliers: str | tuple[str | float, ...] = ""
    builtin_lora_files: tuple[str | Path, ...] | None = None
    image_start: ImageInput | None = None
    image_end: ImageInput | None = None
    video_guide: Path | None = None
    video_mask: Path | None = None
    image_refs: tuple[ImageInput, ...] = Field(default=(), max_length=limits.MAX_IMAGE_REFS)
    video_prompt_type: str = ""
    control_net_weight: float = Field(default=1.0, ge=limits.CONTROL_NET_WEIGHT.low, le=limits.CONTROL_NET_WEIGHT.high)
    output_dir: Path | None = None
    output_filename: str | None = None

    @field_validator("guidance_scale", "guidance2_scale", "guidance3_scale", "flow_shift", "control_net_weight")
    @classmethod
    def _finite(cls, value: float | None) -> float | None:
        if value is not None and not math.isfinite(value):
            raise ValueError("expected a finite number")
        return value

    @field_validator("image_start", "image_end", mode="before")
    @classmethod
    def _image(cls, value: Any) -> Any:
        if isinstance(value, str):
            return Path(value)
        return value

    @field_validator("image_refs", mode="before")
    @classmethod
    def _images(cls, value: Any) -> Any:
        if isinstance(value, list | tuple):
            return tuple(Path(item) if isinstance(item, str) else item for item in value)
        return value


@dataclass(frozen=True)
class GenerationRequest:
    """One fully resolved generation: what the engine runs, nothing left to default."""

    model: str
    definition: ModelDefinition
    prompt: str
    negative_prompt: str
    width: int
    height: int
    num_frames: int
    fps: int
    seed: int
    plan: GenerationPlan
    lora_sources: tuple[str, ...]  # model-definition LoRAs first, then the caller's activated_loras
    lora_fields: tuple[str, ...]  # the parameter each of lora_sources came from, with its index there
    image_start: ImageInput | None
    image_end: ImageInput | None
    video_guide: Path | None
    video_mask: Path | None
    video_prompt_type: str
    control_net_weight: float
    output_dir: Path | None
    output_filename: str | None
    image_refs: tuple[ImageInput, ...] = ()  # VACE reference images ("I"), each a latent frame before the video

    @property
    def frames_with_references(self) -> int:
        """Pixel frames the transformer sees: the video's and 4 per reference image (each one latent frame)."""
        return self.num_frames + 4 * len(self.image_refs)

    @property
    def uses_guide_video(self) -> bool:
        return self.video_guide is not None

    @property
    def negate_mask(self) -> bool:
        return "N" in self.video_prompt_type

    @property
    def grey_masked_pixels(self) -> bool:
        return "M" in self.video_prompt_type


def setting_status(name: str) -> str:
    """What this engine does with a setting of a model definition: "used", "not implemented" or "UI only"."""
    if name in ACCEPTED_PARAMS:
        return "used"
    return "UI only" if name in UI_ONLY_PARAMS else "not implemented"


def check_param_names(params: Mapping[str, Any]) -> None:
    accepted = (*ACCEPTED_PARAMS, BUILTIN_LORA_FILES)
    not_implemented = sorted(str(name) for name in params if name in NOT_IMPLEMENTED_PARAMS)
    if not_implemented:
        raise InvalidGenerationParams(
            not_implemented,
            f"{', '.join(not_implemented)}: not implemented by this engine (upstream Wan2GP has "
            f"{'it' if len(not_implemented) == 1 else 'them'}); leave {'it' if len(not_implemented) == 1 else 'them'} "
            "out of the request",
        )
    unknown = sorted(str(name) for name in params if name not in accepted)
    if unknown:
        raise InvalidGenerationParams(
            unknown,
            f"unknown parameter(s): {', '.join(unknown)}. Accepted: {', '.join(accepted)}",
        )


_URL_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_url(source: str) -> bool:
    return _URL_SCHEME.match(source) is not None


def lora_url_refused(
    source: str, field: str, *, what: str = "the LoRA", then: str = "pass the local file"
) -> InvalidGenerationParams:
    """The error for a LoRA URL that reached the engine: it takes local files only, so the caller downloads first."""
    try:  # the host only: a URL's path, query or user part may carry a token
        parts = urlsplit(source)
        shown = f"{parts.scheme}://{parts.hostname or ''}/…"
    except ValueError:
        shown = "unparsable"
    return InvalidGenerationParams(
        [field.split("[")[0]],
        f"{field}: {what} is a URL ({shown}), and the engine fetches no LoRA URLs: it takes local LoRA files or names "
        f"in its LoRA folder. The caller must download it first (the worker's LoRA store does, within its size and "
        f"time caps) and {then}",
    )


def generation_size(value: str, block: int = limits.SIZE_BLOCK) -> tuple[int, int]:
    """The size a "WxH" request generates at (limits.parse_resolution, then limits.snap_resolution)."""
    try:
        return limits.snap_resolution(*limits.parse_resolution(value), block)
    except ValueError as error:
        raise InvalidGenerationParams(["resolution"], f"resolution: {error}") from None


def frame_count(requested: int, definition: ModelDefinition) -> int:
    """Upstream geometry: 4n+1 frames (floored), at least 5; VACE needs 17 except on the tiny test model."""
    frames = max(MIN_FRAMES, (requested - 1) // 4 * 4 + 1)
    if definition.is_vace and not definition.is_tiny and frames < MIN_VACE_FRAMES:
        raise InvalidGenerationParams(
            ["video_length"], f"video_length: VACE models need at least {MIN_VACE_FRAMES} frames, got {requested}"
        )
    return frames


def _merged_values(params: Mapping[str, Any], definition: ModelDefinition) -> dict[str, Any]:
    values: dict[str, Any] = dict(SYSTEM_DEFAULTS)
    values["guidance_phases"] = definition.default_guidance_phases
    ignored = []
    for name, value in definition.settings.items():
        if name in ACCEPTED_PARAMS and name != "model":
            values[name] = value
        else:
            ignored.append(name)
    if ignored:
        logger.debug("model {}: settings not used by this engine: {}", definition.id, ", ".join(sorted(ignored)))
    for name, value in params.items():
        if name != "model" and value is not None:
            values[name] = value
    if values.get("sample_solver") == "":
        values["sample_solver"] = "unipc"  # WGP: "" means unipc
    return values


def _validation_error(error: ValidationError) -> InvalidGenerationParams:
    lines = []
    fields = []
    for item in error.errors():
        location = ".".join(str(part) for part in item["loc"])
        fields.append(str(item["loc"][0]) if item["loc"] else "")
        message = item["msg"].removeprefix("Value error, ")
        shown = repr(item.get("input"))
        lines.append(f"{location}: {message} (got {shown if len(shown) <= 120 else shown[:117] + '...'})")
    return InvalidGenerationParams(fields, "; ".join(lines))


def _lora_multipliers(definition: ModelDefinition, user: str | tuple[str | float, ...]) -> str | list[str | float]:
    """The model definition's LoRA multipliers first (one per built-in LoRA), then the caller's."""
    if not definition.loras:
        return user if isinstance(user, str) else list(user)
    built_in: list[str | float] = list(definition.loras_multipliers)
    built_in += ["1.0"] * (len(definition.loras) - len(built_in))
    return built_in + multiplier_tokens(user)  # WGP's grammar, read in one place (schedule.py)


def _lora_sources(definition: ModelDefinition, wgp: _WgpParams) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Every LoRA the generation runs, with the parameter each came from: the model definition's built-in LoRAs
    first (the caller's builtin_lora_files in their place when given), then activated_loras. URLs are refused here,
    before any model is loaded."""
    if wgp.builtin_lora_files is None:
        for index, source in enumerate(definition.loras):
            if is_url(source):
                raise lora_url_refused(
                    source,
                    BUILTIN_LORA_FILES,
                    what=f"model {definition.id}'s built-in LoRA loras[{index}]",
                    then=f"pass the local files in {BUILTIN_LORA_FILES}, one per built-in LoRA in its definition's order",
                )
        built_in: tuple[str | Path, ...] = definition.loras
    elif len(wgp.builtin_lora_files) != len(definition.loras):
        raise InvalidGenerationParams(
            [BUILTIN_LORA_FILES],
            f"{BUILTIN_LORA_FILES}: expected {len(definition.loras)} file(s), one per built-in LoRA of model "
            f"{definition.id} in its definition's order, got {len(wgp.builtin_lora_files)}",
        )
    else:
        built_in = wgp.builtin_lora_files
    entries = [(str(source), f"{BUILTIN_LORA_FILES}[{index}]") for index, source in enumerate(built_in)]
    entries += [(str(source), f"activated_loras[{index}]") for index, source in enumerate(wgp.activated_loras)]
    for source, field in entries:
        if is_url(source):
            raise lora_url_refused(source, field)
    return tuple(source for source, _ in entries), tuple(field for _, field in entries)


def resolve_request(
    params: Mapping[str, Any], definition: ModelDefinition, *, rng: random.Random | None = None
) -> GenerationRequest:
    """Check and resolve WGP parameters against a model definition (InvalidGenerationParams on bad input)."""
    check_param_names(params)
    try:
        wgp = _WgpParams.model_validate(_merged_values(params, definition))
    except ValidationError as error:
        raise _validation_error(error) from None

    width, height = generation_size(wgp.resolution, limits.TI2V_SIZE_BLOCK if definition.is_ti2v else limits.SIZE_BLOCK)
    num_frames = frame_count(wgp.video_length, definition)
    too_big = limits.check_geometry(width, height, num_frames)
    if too_big is not None:
        raise InvalidGenerationParams(["resolution"], f"resolution: {too_big}")
    seed = wgp.seed
    if seed is None or seed < 0:
        seed = (rng or random.Random()).randint(0, MAX_SEED)

    for field, image, taken, which in (
        ("image_start", wgp.image_start, definition.spec.takes_start_image, "start"),
        ("image_end", wgp.image_end, definition.spec.takes_end_image, "end"),
    ):
        if image is not None and not taken:
            raise InvalidGenerationParams(
                [field], f"{field}: model {definition.id} ({definition.architecture}) takes no {which} image"
            )
    if definition.spec.kind == "flf2v" and wgp.image_end is None:
        # its transformer takes the CLIP tokens of exactly two images, the first and the last frame
        raise InvalidGenerationParams(
            ["image_end"],
            f"image_end: model {definition.id} ({definition.architecture}) generates from a first to a last frame: "
            "expected an end image, got none",
        )
    if (wgp.video_guide is not None or wgp.video_mask is not None) and not definition.is_vace:
        field = "video_guide" if wgp.video_guide is not None else "video_mask"
        raise InvalidGenerationParams(
            [field], f"{field}: model {definition.id} ({definition.architecture}) is not a VACE model"
        )
    unsupported = sorted(set(wgp.video_prompt_type) - SUPPORTED_VIDEO_PROMPT_LETTERS)
    if unsupported:
        raise InvalidGenerationParams(
            ["video_prompt_type"],
            f"video_prompt_type: letters {''.join(unsupported)!r} are not supported; "
            f"expected letters from {''.join(sorted(SUPPORTED_VIDEO_PROMPT_LETTERS))!r}",
        )
    if bool(wgp.image_refs) != ("I" in wgp.video_prompt_type):
        raise InvalidGenerationParams(
            ["image_refs"],
            "image_refs: reference images go with an 'I' in video_prompt_type, and 'I' needs at least one; got "
            f"{len(wgp.image_refs)} image(s) and video_prompt_type {wgp.video_prompt_type!r}",
        )
    if wgp.image_refs and not definition.is_vace:
        raise InvalidGenerationParams(
            ["image_refs"], f"image_refs: model {definition.id} ({definition.architecture}) is not a VACE model"
        )
    images = [("image_start", wgp.image_start), ("image_end", wgp.image_end)]
    images += [(f"image_refs[{index}]", image) for index, image in enumerate(wgp.image_refs)]
    for field, path in images:
        if isinstance(path, Path) and not path.is_file():
            raise InvalidGenerationParams([field.split("[")[0]], f"{field}: file not found: {path}")
    for field, path in (("video_guide", wgp.video_guide), ("video_mask", wgp.video_mask)):
        if path is not None and not path.is_file():
            raise InvalidGenerationParams([field], f"{field}: file not found: {path}")
    if wgp.output_filename is not None and (
        not wgp.output_filename.strip()
        or Path(wgp.output_filename).name != wgp.output_filename
        or len(wgp.output_filename.encode()) > 200  # file systems stop at 255 bytes; ".mp4" and "(2)" come on top
    ):
        raise InvalidGenerationParams(
            ["output_filename"],
            f"output_filename: expected a plain file name of at most 200 bytes, got {wgp.output_filename[:60]!r}",
        )

    lora_sources, lora_fields = _lora_sources(definition, wgp)
    try:
        plan = build_plan(
            num_inference_steps=wgp.num_inference_steps,
            sample_solver=wgp.sample_solver,
            flow_shift=wgp.flow_shift,
            guidance_phases=wgp.guidance_phases,
            guidance_scale=wgp.guidance_scale,
            guidance2_scale=wgp.guidance2_scale,
            guidance3_scale=wgp.guidance3_scale,
            switch_threshold=wgp.switch_threshold,
            switch_threshold2=wgp.switch_threshold2,
            model_switch_phase=wgp.model_switch_phase,
            loras_multipliers=_lora_multipliers(definition, wgp.loras_multipliers),
            num_loras=len(lora_sources),
            lora_names=lora_sources,
        )
    except PlanError as error:
        raise InvalidGenerationParams([error.field.split("[")[0]], str(error)) from None
    for warning in plan.warnings:
        logger.warning("plan: {}", warning)

    return GenerationRequest(
        model=definition.id,
        definition=definition,
        prompt=wgp.prompt,
        negative_prompt=wgp.negative_prompt,
        width=width,
        height=height,
        num_frames=num_frames,
        fps=definition.fps,
        seed=seed,
        plan=plan,
        lora_sources=lora_sources,
        lora_fields=lora_fields,
        image_start=wgp.image_start,
        image_end=wgp.image_end,
        video_guide=wgp.video_guide,
        video_mask=wgp.video_mask,
        image_refs=wgp.image_refs,
        video_prompt_type=wgp.video_prompt_type,
        control_net_weight=wgp.control_net_weight,
        output_dir=wgp.output_dir,
        output_filename=wgp.output_filename,
    )
