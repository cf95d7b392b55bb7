"""Reigh's `phase_config` -> WGP parameters -> the per-step plan (upstream_worker_spec §6).

A phase_config describes a multi-phase run directly: step counts per phase, the guidance of each phase and the LoRAs
active in each. WGP instead takes timestep thresholds and one multiplier string per LoRA. The conversion:
- num_inference_steps = sum(steps_per_phase);
- switch_threshold(2) = the float64 midpoints between the last timestep of a phase and the first of the next
  (computed by the engine's schedule module, the one place that math lives);
- lora_names = unique LoRA URLs in first-seen order; each LoRA's multiplier string joins its value in every phase
  with ";" ("0.75;1.0;0"), "0" where the LoRA is absent; a comma list gives one value per step of that phase;
- model_switch_phase defaults to 1 for two phases and 2 for three (upstream's default of 2 never switched a
  2-phase run to the low-noise expert).
Upstream's auto-correction of num_phases is kept and reported as a warning; everything else inconsistent is a
PayloadError naming the field.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Annotated, Any, ClassVar

from pydantic import AfterValidator, BeforeValidator, Field

from source.params.base import FlowShift, Guidance, Location, PayloadModel, PhaseIndex, Steps
from source.params.errors import Expected, PayloadError, join_path
from Wan2GP import limits
from Wan2GP.schedule import GenerationPlan as GenerationPlan  # re-exported for callers of plan_for
from Wan2GP.schedule import (
    PlanError,
    build_plan,
    default_model_switch_phase,
    normalize_solver,
    phase_thresholds,
)

DEFAULT_PHASE_SOLVER = "euler"  # upstream parse_phase_config's default
DEFAULT_PHASE_FLOW_SHIFT = 5.0
DEFAULT_STEPS_PER_PHASE = (2, 2, 2)
_MULTIPLIER_EXPECTED = f'a number or a comma list of numbers such as "0.9,0.8", each {limits.LORA_MULTIPLIER.span}'


def _multiplier(value: Any) -> str:
    """A LoRA multiplier kept as text (as upstream writes it into the WGP string): a number or a comma list."""
    if isinstance(value, bool):
        raise Expected(_MULTIPLIER_EXPECTED)
    if isinstance(value, int | float):
        if not limits.LORA_MULTIPLIER.contains(value):  # NaN and infinities fail the range check too
            raise Expected(_MULTIPLIER_EXPECTED)
        return str(value)
    if not isinstance(value, str) or len(value) > 4096:
        raise Expected(_MULTIPLIER_EXPECTED)
    parts = [part.strip() for part in value.split(",")]
    for part in parts:
        try:
            number = float(part)
        except ValueError:
            raise Expected(_MULTIPLIER_EXPECTED) from None
        if not limits.LORA_MULTIPLIER.contains(number):
            raise Expected(_MULTIPLIER_EXPECTED)
    # Spaces would split the WGP string into extra LoRA tokens, so they are dropped here.
    return ",".join(parts)


def _solver(value: Any) -> str:
    if not isinstance(value, str):
        raise Expected('one of "euler", "unipc", "dpm++", "dpm++_sde" or "" (= unipc)')
    try:
        return normalize_solver(value)
    except PlanError:
        raise Expected('one of "euler", "unipc", "dpm++", "dpm++_sde" or "" (= unipc)') from None


def _steps_per_phase(value: list[int]) -> list[int]:
    # An empty list used to mean "the default 2,2,2" silently; a list that is there must say something.
    if not 1 <= len(value) <= limits.MAX_PHASES:
        raise Expected(f"1 to {limits.MAX_PHASES} step counts, one per phase")
    if sum(value) > limits.MAX_STEPS:
        raise Expected(f"step counts adding up to at most {limits.MAX_STEPS} (they add up to {sum(value)})")
    return value


Multiplier = Annotated[str, BeforeValidator(_multiplier)]
SolverName = Annotated[str, BeforeValidator(_solver)]
StepsPerPhase = Annotated[list[Steps], AfterValidator(_steps_per_phase)]


class PhaseLora(PayloadModel):
    url: Location
    multiplier: Multiplier


class PhaseSpec(PayloadModel):
    phase: PhaseIndex | None = None
    guidance_scale: Guidance | None = None
    loras: Annotated[list[PhaseLora], Field(max_length=64)] = Field(default_factory=list)


class PhaseConfig(PayloadModel):
    num_phases: PhaseIndex | None = None
    steps_per_phase: StepsPerPhase | None = None
    flow_shift: FlowShift | None = None
    sample_solver: SolverName | None = None
    model_switch_phase: PhaseIndex | None = None
    svi2pro: bool | None = None
    mode: str | None = None

    NOT_USED: ClassVar[Mapping[str, str]] = MappingProxyType(
        {
            "mode": "the app's travel-mode tag; model_type and the model decide the mode",
            "svi2pro": "Stable Video Infinity is not implemented",
        }
    )
    phases: Annotated[list[PhaseSpec], Field(max_length=limits.MAX_PHASES)] = Field(default_factory=list)


@dataclass(frozen=True)
class WgpPhaseParams:
    """What a phase_config means in WGP's parameter names."""

    guidance_phases: int
    num_inference_steps: int
    steps_per_phase: tuple[int, ...]
    guidance_scale: float
    guidance2_scale: float
    guidance3_scale: float | None  # None for two phases
    flow_shift: float
    sample_solver: str
    model_switch_phase: int
    switch_threshold: float | None
    switch_threshold2: float | None  # None for two phases
    lora_names: tuple[str, ...]
    lora_multipliers: tuple[str, ...]  # one "p1;p2[;p3]" string per LoRA
    warnings: tuple[str, ...] = ()

    def as_wgp_params(self) -> dict[str, Any]:
        """WGP-named parameters (the LoRA list as activated_loras + a space-separated loras_multipliers string;
        a comma-join was upstream bug f939518). Values that do not apply (None) are left out."""
        params: dict[str, Any] = {
            "guidance_phases": self.guidance_phases,
            "num_inference_steps": self.num_inference_steps,
            "guidance_scale": self.guidance_scale,
            "guidance2_scale": self.guidance2_scale,
            "guidance3_scale": self.guidance3_scale,
            "flow_shift": self.flow_shift,
            "sample_solver": self.sample_solver,
            "model_switch_phase": self.model_switch_phase,
            "switch_threshold": self.switch_threshold,
            "switch_threshold2": self.switch_threshold2,
            "activated_loras": list(self.lora_names),
            "loras_multipliers": " ".join(self.lora_multipliers),
        }
        return {key: value for key, value in params.items() if value is not None}


def phase_config_to_wgp(phase_config: PhaseConfig, *, root: str = "phase_config") -> WgpPhaseParams:
    """Convert a validated PhaseConfig. `root` is where it sits in the payload, for error messages."""
    phases = phase_config.phases
    steps = list(phase_config.steps_per_phase or DEFAULT_STEPS_PER_PHASE)
    warnings: list[str] = []
    if not phases:
        raise PayloadError(join_path(root, "phases"), "a list of 2 or 3 phases", [])
    if len(steps) != len(phases):
        raise PayloadError(
            join_path(root, "steps_per_phase"),
            f"one step count per phase ({len(phases)} entries, like {join_path(root, 'phases')})",
            steps,
        )
    count = len(phases)
    given_count = phase_config.num_phases
    if given_count is not None and given_count != count:
        warnings.append(
            f"{join_path(root, 'num_phases')} is {given_count} but steps_per_phase and phases describe {count} "
            f"phases; using {count}"
        )
    if count not in (2, 3):
        field = "num_phases" if given_count is not None else "phases"
        raise PayloadError(join_path(root, field), "2 or 3 phases", given_count if given_count is not None else count)
    for index, spec in enumerate(phases):
        if spec.phase is not None and spec.phase != index + 1:
            warnings.append(
                f"{join_path(root, 'phases', index, 'phase')} is {spec.phase}; phases are applied in list order, "
                f"so it runs as phase {index + 1}"
            )

    total = sum(steps)
    solver = phase_config.sample_solver if phase_config.sample_solver is not None else DEFAULT_PHASE_SOLVER
    flow_shift = phase_config.flow_shift if phase_config.flow_shift is not None else DEFAULT_PHASE_FLOW_SHIFT
    switch_phase = phase_config.model_switch_phase or default_model_switch_phase(count)
    if switch_phase > count:
        raise PayloadError(
            join_path(root, "model_switch_phase"),
            f"a phase from 1 to {count} (the phase whose end switches to the low-noise expert; {count} = never)",
            switch_phase,
        )
    threshold, threshold2 = phase_thresholds(solver, total, flow_shift, steps)

    lora_names, lora_multipliers = _lora_strings(phases, steps, root)
    guidance = [
        spec.guidance_scale if spec.guidance_scale is not None else (3.0 if index == 0 else 1.0)
        for index, spec in enumerate(phases)
    ]
    return WgpPhaseParams(
        guidance_phases=count,
        num_inference_steps=total,
        steps_per_phase=tuple(steps),
        guidance_scale=guidance[0],
        guidance2_scale=guidance[1],
        guidance3_scale=guidance[2] if count == 3 else None,
        flow_shift=flow_shift,
        sample_solver=solver,
        model_switch_phase=switch_phase,
        switch_threshold=threshold,
        switch_threshold2=threshold2 if count == 3 else None,
        lora_names=tuple(lora_names),
        lora_multipliers=tuple(lora_multipliers),
        warnings=tuple(warnings),
    )


def _lora_strings(phases: list[PhaseSpec], steps: list[int], root: str) -> tuple[list[str], list[str]]:
    per_phase: list[dict[str, str]] = []
    names: list[str] = []
    for index, spec in enumerate(phases):
        values: dict[str, str] = {}
        for position, lora in enumerate(spec.loras):
            url = lora.url.strip()
            if not url:  # upstream skips blank URLs
                continue
            where = join_path(root, "phases", index, "loras", position)
            if url in values:
                raise PayloadError(join_path(where, "url"), "each LoRA at most once per phase", lora.url)
            step_values = lora.multiplier.split(",")
            if len(step_values) > 1 and len(step_values) != steps[index]:
                raise PayloadError(
                    join_path(where, "multiplier"),
                    f"{steps[index]} comma-separated values (one per step of phase {index + 1}), "
                    f"got {len(step_values)} values in",
                    lora.multiplier,
                )
            values[url] = lora.multiplier
            if url not in names:
                names.append(url)
        per_phase.append(values)
    multipliers = [";".join(values.get(name, "0") for values in per_phase) for name in names]
    return names, multipliers


# ---------------------------------------------------------------------------------------------------------------------
# The plan


def plan_for(params: WgpPhaseParams | Mapping[str, Any], *, extra_warnings: tuple[str, ...] = ()) -> GenerationPlan:
    """The per-step plan for WGP parameters: a WgpPhaseParams, or a mapping of resolved WGP names (which must hold
    num_inference_steps, sample_solver, flow_shift and guidance_scale; resolve.SYSTEM_DEFAULTS has them all).
    Raises Wan2GP.schedule.PlanError naming the WGP parameter."""
    if isinstance(params, WgpPhaseParams):
        values = params.as_wgp_params()
        warnings = params.warnings + extra_warnings
    else:
        values = dict(params)
        warnings = extra_warnings
    missing = [key for key in ("num_inference_steps", "flow_shift", "guidance_scale") if values.get(key) is None]
    if missing:
        raise PlanError(missing[0], "expected a value, got nothing")
    names = values.get("activated_loras") or []
    if isinstance(names, str):
        names = names.split()
    return build_plan(
        num_inference_steps=values["num_inference_steps"],
        sample_solver=values.get("sample_solver"),
        flow_shift=values["flow_shift"],
        guidance_phases=values.get("guidance_phases") or 1,
        guidance_scale=values["guidance_scale"],
        guidance2_scale=values.get("guidance2_scale"),
        guidance3_scale=values.get("guidance3_scale"),
        switch_threshold=values.get("switch_threshold"),
        switch_threshold2=values.get("switch_threshold2"),
        model_switch_phase=values.get("model_switch_phase"),
        loras_multipliers=values.get("loras_multipliers") or "",
        num_loras=len(names),
        lora_names=[str(name) for name in names],
        warnings=warnings,
    )
