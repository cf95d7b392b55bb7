"""The base of every payload model: unknown keys kept, JSON null means "not given", instances immutable."""

from __future__ import annotations

import math
from collections.abc import Mapping
from types import MappingProxyType
from typing import Annotated, Any, ClassVar

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, model_validator

from source.params.errors import Expected
from Wan2GP import limits
from Wan2GP.limits import Bound


class PayloadModel(BaseModel):
    """Reigh adds fields over time, so unknown keys are kept (`model_extra`) while known keys are typed."""

    model_config = ConfigDict(extra="allow", frozen=True, populate_by_name=True)

    @model_validator(mode="before")
    @classmethod
    def _null_means_not_given(cls, data: Any) -> Any:
        # Dropping nulls lets defaults apply and makes a required field sent as null read "required", not "null".
        if isinstance(data, dict):
            return {key: value for key, value in data.items() if value is not None}
        return data

    # Keys this model accepts and deliberately does not use, each with the reason: a task that sends one gets an INFO
    # line naming it (docs/reigh_payloads.md lists them all). Unknown keys are reported the same way.
    NOT_USED: ClassVar[Mapping[str, str]] = MappingProxyType({})
    UNKNOWN_KEY: ClassVar[str] = "not a key this worker knows"

    def unused_keys(self, root: str = "") -> list[tuple[str, str]]:
        """(dotted path, reason) of every key this payload gave that the worker will not use, nested payloads
        included."""
        found: list[tuple[str, str]] = []
        extras = self.model_extra or {}
        for name in sorted(self.model_fields_set - extras.keys()):
            path = f"{root}.{name}" if root else name
            if name in self.NOT_USED:
                found.append((path, self.NOT_USED[name]))
            else:
                found += _unused_in(getattr(self, name), path)
        for name in sorted(extras):
            found.append((f"{root}.{name}" if root else name, self.NOT_USED.get(name, self.UNKNOWN_KEY)))
        return found

    def given(self) -> dict[str, Any]:
        """The fields present in the payload (known and unknown), as plain JSON-like values."""
        return self.model_dump(mode="json", exclude_unset=True, by_alias=True)


def _unused_in(value: Any, path: str) -> list[tuple[str, str]]:
    if isinstance(value, PayloadModel):
        return value.unused_keys(path)
    if isinstance(value, list | tuple):
        return [item for index, entry in enumerate(value) for item in _unused_in(entry, f"{path}[{index}]")]
    return []


def _not_bool(value: Any) -> Any:
    # JSON true/false silently becoming 1/0 hides mistakes in numeric fields.
    if isinstance(value, bool):
        raise Expected("a number, not true/false")
    return value


def _finite(value: float) -> float:
    # NaN and infinities pass every comparison check that follows (NaN > 0 is False, but so is NaN <= 0).
    if not math.isfinite(value):
        raise Expected("a finite number")
    return value


def within(bound: Bound) -> AfterValidator:
    """A validator keeping a number inside `bound` (Wan2GP.limits, the one home of the bounds)."""

    def check(value: float) -> float:
        if not bound.contains(value):
            raise Expected(bound.expected)
        return value

    return AfterValidator(check)


def _positive_int(value: int) -> int:
    if value < 1:
        raise Expected("an integer >= 1")
    return value


def _resolution(value: Any) -> Any:
    try:
        width, height = limits.parse_resolution(value)
    except ValueError:
        raise Expected(f"a resolution {limits.RESOLUTION_FORM}") from None
    problem = limits.check_geometry(width, height, 1)
    if problem is not None:
        raise Expected(f'a resolution "WIDTHxHEIGHT" within the limits ({problem})')
    return f"{width}x{height}"


def _text_or_empty(value: Any) -> Any:
    return "" if value is None else value


def _bounded_text(max_length: int) -> AfterValidator:
    def check(value: str) -> str:
        if len(value) > max_length:
            raise Expected(f"a text of at most {max_length} characters (got {len(value)})")
        return value

    return AfterValidator(check)


Number = Annotated[float, BeforeValidator(_not_bool), AfterValidator(_finite)]
Integer = Annotated[int, BeforeValidator(_not_bool)]
PositiveInt = Annotated[int, BeforeValidator(_not_bool), AfterValidator(_positive_int)]
Resolution = Annotated[str, BeforeValidator(_resolution)]
TextOrEmpty = Annotated[str, BeforeValidator(_text_or_empty)]  # list entries where null means ""

# Bounded numbers (each range lives in Wan2GP.limits).
Steps = Annotated[Integer, within(limits.STEPS)]
Frames = Annotated[Integer, within(limits.FRAMES)]
Overlap = Annotated[Integer, within(limits.OVERLAP)]
Seed = Annotated[Integer, within(limits.SEED)]
Fps = Annotated[Integer, within(limits.FPS)]
SegmentCount = Annotated[Integer, within(limits.SEGMENTS)]
PhaseIndex = Annotated[Integer, within(limits.PHASES)]
Guidance = Annotated[Number, within(limits.GUIDANCE)]
FlowShift = Annotated[Number, within(limits.FLOW_SHIFT)]
SwitchThreshold = Annotated[Number, within(limits.SWITCH_THRESHOLD)]
ControlNetWeight = Annotated[Number, within(limits.CONTROL_NET_WEIGHT)]
LoraStrength = Annotated[Number, within(limits.LORA_MULTIPLIER)]
Strength = Annotated[Number, within(limits.STRENGTH)]
PostSaturation = Annotated[Number, within(limits.POST_SATURATION)]
PostBrightness = Annotated[Number, within(limits.POST_BRIGHTNESS)]

# A URL or a path: long signed URLs run to a few hundred characters; nothing real needs more than this.
MAX_LOCATION_LENGTH = 4096
Location = Annotated[str, _bounded_text(MAX_LOCATION_LENGTH)]
