"""The per-step generation plan: timesteps per solver, the guidance phase of every step, which expert runs it, its
guidance scale and the strength of every LoRA. This is the ONE place that math lives; the sampler follows the plan
and the `plan` command explains it. numpy only (no torch), so the plan can be shown without loading a model.

Behaviour follows the Wan2GP engine (upstream_engine_spec §3.2-§3.4, §4):
- timesteps: the solver's float32 grid, then the flow shift `s·σ/(1+(s−1)·σ)` computed in float64;
- phase k+1 starts at the FIRST step whose timestep is <= threshold k (phase 2 is checked before phase 3);
- the expert switches from "high" to "low" when phase `model_switch_phase + 1` starts;
- LoRA multipliers use WGP's grammar (`a;b;c` per phase, `x,y,z` per-step lists) and its `expand` rule.
One deliberate difference: `model_switch_phase` defaults to 1 for two phases (upstream's default of 2 silently never
switches a 2-phase run to the low-noise expert).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from Wan2GP import limits

SOLVERS: tuple[str, ...] = ("euler", "unipc", "dpm++", "dpm++_sde")
_SOLVER_ALIASES = {"": "unipc"}

Expert = Literal["high", "low"]


class PlanError(ValueError):
    """Schedule input that cannot be planned. `.field` is the dotted name of the offending parameter."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.reason = message


# ---------------------------------------------------------------------------------------------------------------------
# Timesteps


def normalize_solver(name: str | None) -> str:
    """The canonical solver name: "" and None mean unipc (WGP's default); anything unknown is an error."""
    if name is None:
        return "unipc"
    if not isinstance(name, str):
        raise PlanError("sample_solver", f"expected one of {_accepted_solvers()}, got {name!r}")
    key = name.strip().lower()
    key = _SOLVER_ALIASES.get(key, key)
    if key not in SOLVERS:
        raise PlanError("sample_solver", f"expected one of {_accepted_solvers()}, got {name!r}")
    return key


def _accepted_solvers() -> str:
    return ", ".join(f'"{s}"' for s in SOLVERS) + ' or "" (= unipc)'


def _shift(sigma: np.ndarray, flow_shift: float) -> np.ndarray:
    # float64 on purpose: upstream's float32/NumPy-version dependent rounding moved thresholds in the 8th digit
    # (upstream_worker_spec §10.23).
    return flow_shift * sigma / (1.0 + (flow_shift - 1.0) * sigma)


def timesteps(solver: str, num_steps: int, flow_shift: float) -> np.ndarray:
    """The shifted timesteps (in [0, 1000]) the model is fed, one per step, float64."""
    solver = normalize_solver(solver)
    num_steps = _check_steps(num_steps)
    flow_shift = _check_shift(flow_shift)
    if solver == "euler":
        # WGP's euler grid: 1000 .. 1 (not 0), so the last timestep is the shifted image of t=1 (≈4.98 at shift 5).
        # Written in the upstream order of operations (1000·s·u / (1+(s−1)·u)) so the values match it bit for bit.
        u = np.linspace(1000, 1, num_steps, dtype=np.float32).astype(np.float64) / 1000.0
        return 1000.0 * flow_shift * u / (1.0 + (flow_shift - 1.0) * u)
    if solver == "unipc":
        # σmax is 0.999 (the last entry of the 1000-step training table). Upstream truncates unipc timesteps to
        # int64 before feeding the model; we keep the floats so the plan and the thresholds stay exact.
        grid = np.linspace(0.999, 0.0, num_steps + 1, dtype=np.float32)[:-1].astype(np.float64)
    else:  # dpm++ / dpm++_sde (upstream also truncates these to int64; we keep floats)
        grid = np.linspace(1.0, 0.0, num_steps + 1, dtype=np.float32)[:num_steps].astype(np.float64)
    return 1000.0 * _shift(grid, flow_shift)


def sigmas(solver: str, num_steps: int, flow_shift: float) -> np.ndarray:
    """timesteps/1000 plus the final 0.0 every solver lands on: length num_steps + 1."""
    return np.append(timesteps(solver, num_steps, flow_shift) / 1000.0, 0.0)


def phase_thresholds(
    solver: str | None, num_steps: int, flow_shift: float, steps_per_phase: Sequence[int]
) -> tuple[float | None, float | None]:
    """switch_threshold and switch_threshold2 that give exactly `steps_per_phase` steps per phase.

    Each threshold is the float64 midpoint of the last timestep of one phase and the first of the next, because a
    phase starts at the first step with `t <= threshold`. A phase that is not there (1 or 2 counts) gives None.
    """
    counts = [_check_count(f"steps_per_phase[{i}]", c) for i, c in enumerate(steps_per_phase)]
    if not 1 <= len(counts) <= 3:
        raise PlanError("steps_per_phase", f"expected 1 to 3 step counts, got {len(counts)}")
    num_steps = _check_steps(num_steps)
    if sum(counts) != num_steps:
        raise PlanError("steps_per_phase", f"the step counts add up to {sum(counts)}, expected {num_steps}")
    t = timesteps(solver, num_steps, flow_shift)
    found: list[float | None] = []
    boundary = 0
    for count in counts[:-1]:
        boundary += count
        found.append(float((t[boundary - 1] + t[boundary]) / 2.0))  # boundary < num_steps: every count is >= 1
    found += [None] * (2 - len(found))
    return found[0], found[1]


def default_model_switch_phase(guidance_phases: int) -> int:
    """1 for one or two phases (switch to the low-noise expert with phase 2), 2 for three phases."""
    return 2 if guidance_phases >= 3 else 1


def expand(values: Sequence[float], n: int) -> list[float]:
    """WGP's stretch of a per-step list over n steps: `pos += len/n`, take `values[int(pos)]` (float accumulation as
    upstream, so [.9, .8, .7, .6] over 6 steps gives [.9, .9, .8, .7, .7, .6])."""
    if n <= 0:
        return []
    if len(values) == 0:
        raise ValueError("expand() needs at least one value")
    increment = len(values) / n
    position = 0.0
    out: list[float] = []
    for _ in range(n):
        out.append(values[min(int(position), len(values) - 1)])
        position += increment
    return out


# ---------------------------------------------------------------------------------------------------------------------
# The plan


@dataclass(frozen=True)
class StepPlan:
    index: int
    timestep: float
    phase: int  # 1-based guidance phase
    guidance: float
    expert: Expert
    lora_multipliers: tuple[float, ...]  # one per LoRA, in LoRA order

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "timestep": self.timestep,
            "phase": self.phase,
            "guidance": self.guidance,
            "expert": self.expert,
            "lora_multipliers": list(self.lora_multipliers),
        }


@dataclass(frozen=True)
class GenerationPlan:
    num_inference_steps: int
    guidance_phases: int
    sample_solver: str
    flow_shift: float
    model_switch_phase: int
    timesteps: tuple[float, ...]
    sigmas: tuple[float, ...]
    switch_threshold: float | None  # None when phase 2 is not used
    switch_threshold2: float | None  # None when phase 3 is not used
    guidance_scales: tuple[float, float, float]
    lora_multipliers: tuple[str, ...]  # the multiplier token of every LoRA, as given (missing ones "1.0")
    steps: tuple[StepPlan, ...]
    warnings: tuple[str, ...]
    lora_names: tuple[str, ...] = field(default=())

    def phase_start_steps(self) -> tuple[int, int]:
        """Index of the first step of phase 2 and of phase 3 (num_inference_steps when that phase never starts)."""
        n = self.num_inference_steps
        start2 = next((s.index for s in self.steps if s.phase >= 2), n)
        start3 = next((s.index for s in self.steps if s.phase >= 3), n)
        return start2, start3

    def expert_switch_step(self) -> int:
        """Index of the first step run by the low-noise expert (num_inference_steps when it never runs)."""
        return next((s.index for s in self.steps if s.expert == "low"), self.num_inference_steps)

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "num_inference_steps": self.num_inference_steps,
            "guidance_phases": self.guidance_phases,
            "sample_solver": self.sample_solver,
            "flow_shift": self.flow_shift,
            "model_switch_phase": self.model_switch_phase,
            "timesteps": list(self.timesteps),
            "sigmas": list(self.sigmas),
            "switch_threshold": self.switch_threshold,
            "switch_threshold2": self.switch_threshold2,
            "guidance_scales": list(self.guidance_scales),
            "phase_start_steps": list(self.phase_start_steps()),
            "expert_switch_step": self.expert_switch_step(),
            "lora_names": list(self.lora_names),
            "lora_multipliers": list(self.lora_multipliers),
            "warnings": list(self.warnings),
            "steps": [step.to_json_dict() for step in self.steps],
        }


def build_plan(
    *,
    num_inference_steps: int,
    sample_solver: str | None,
    flow_shift: float,
    guidance_phases: int = 1,
    guidance_scale: float,
    guidance2_scale: float | None = None,
    guidance3_scale: float | None = None,
    switch_threshold: float | None = None,
    switch_threshold2: float | None = None,
    model_switch_phase: int | None = None,
    loras_multipliers: str | Sequence[str | float] = "",
    num_loras: int | None = None,
    warnings: Sequence[str] = (),
    lora_names: Sequence[str] = (),
) -> GenerationPlan:
    """The full per-step plan from WGP-named parameters.

    `loras_multipliers` is WGP's string (one whitespace-separated token per LoRA) or a list with one element per LoRA.
    `num_loras` is how many LoRAs are active: extra tokens are ignored (with a warning), missing ones mean 1.0. When it
    is None it is len(lora_names) if names are given, else the number of tokens.
    """
    notes = list(warnings)
    n = _check_steps(num_inference_steps)
    solver = normalize_solver(sample_solver)
    shift = _check_shift(flow_shift)
    phases = _check_int("guidance_phases", guidance_phases)
    if not 1 <= phases <= 3:
        raise PlanError("guidance_phases", f"expected 1, 2 or 3, got {guidance_phases!r}")
    g1 = _check_bounded("guidance_scale", guidance_scale, limits.GUIDANCE)
    g2 = g1 if guidance2_scale is None else _check_bounded("guidance2_scale", guidance2_scale, limits.GUIDANCE)
    g3 = g2 if guidance3_scale is None else _check_bounded("guidance3_scale", guidance3_scale, limits.GUIDANCE)
    switch_phase = (
        default_model_switch_phase(phases)
        if model_switch_phase is None
        else _check_int("model_switch_phase", model_switch_phase)
    )
    if not 1 <= switch_phase <= max(phases, 1):
        raise PlanError(
            "model_switch_phase", f"expected a phase from 1 to {max(phases, 1)}, got {model_switch_phase!r}"
        )
    if phases >= 2 and switch_phase >= phases:
        notes.append(
            f"model_switch_phase={switch_phase} with {phases} guidance phases: the low-noise expert is never used"
        )

    # A threshold only matters for a phase that exists; 0 (WGP's default) means "never switch".
    th1 = _check_threshold("switch_threshold", switch_threshold) if phases >= 2 else None
    th2 = _check_threshold("switch_threshold2", switch_threshold2) if phases >= 3 else None

    t = timesteps(solver, n, shift)
    start2 = _first_step_at_or_below(t, th1)
    start3 = _first_step_at_or_below(t, th2)
    if start3 < start2:
        raise PlanError(
            "switch_threshold2",
            f"phase 3 would start (step {start3}, switch_threshold2={th2}) before phase 2 "
            f"(switch_threshold={th1}); switch_threshold2 must be below switch_threshold",
        )
    if phases >= 2 and start2 == n:
        notes.append(f"phase 2 never starts (no timestep <= switch_threshold={th1})")
    if phases >= 3 and start3 == n:
        notes.append(f"phase 3 never starts (no timestep <= switch_threshold2={th2})")
    if phases >= 3 and start3 == start2 < n:
        notes.append(f"phase 2 has no steps: phases 2 and 3 both start at step {start2}")

    starts = (0, start2, start3)  # first step of phase 1, 2, 3
    switch_step = starts[switch_phase] if switch_phase < phases else n

    tokens = multiplier_tokens(loras_multipliers)
    names = tuple(str(name) for name in lora_names)
    if num_loras is None:
        count = len(names) if names else len(tokens)
    else:
        count = _check_int("num_loras", num_loras)
    if len(tokens) > count:
        notes.append(f"{len(tokens)} LoRA multipliers for {count} LoRAs: the extra ones are ignored")
    tokens = tokens[:count] + ["1.0"] * (count - len(tokens))  # WGP: a missing multiplier means 1.0
    per_lora = [
        _lora_schedule(f"loras_multipliers[{i}]", token, n, phases, switch_phase, start2, start3)
        for i, token in enumerate(tokens)
    ]

    guidance_by_phase = (g1, g2, g3)
    steps = []
    for i in range(n):
        phase = 1 + (i >= start2) + (i >= start3)
        steps.append(
            StepPlan(
                index=i,
                timestep=float(t[i]),
                phase=phase,
                guidance=guidance_by_phase[phase - 1],
                expert="low" if i >= switch_step else "high",
                lora_multipliers=tuple(values[i] for values in per_lora),
            )
        )
    return GenerationPlan(
        num_inference_steps=n,
        guidance_phases=phases,
        sample_solver=solver,
        flow_shift=shift,
        model_switch_phase=switch_phase,
        timesteps=tuple(float(x) for x in t),
        sigmas=tuple(float(x) for x in np.append(t / 1000.0, 0.0)),
        switch_threshold=th1,
        switch_threshold2=th2,
        guidance_scales=guidance_by_phase,
        lora_multipliers=tuple(tokens),
        steps=tuple(steps),
        warnings=tuple(notes),
        lora_names=names,
    )


# ---------------------------------------------------------------------------------------------------------------------
# LoRA multipliers (upstream_engine_spec §4.1-§4.3)


def multiplier_tokens(loras_multipliers: str | Sequence[str | float] | None) -> list[str]:
    """WGP's loras_multipliers grammar: one token per LoRA. A string drops its comment lines (#), joins its lines and
    reads "|" (the accelerator/user LoRA boundary) as a space; a list gives one token per element, never split."""
    if loras_multipliers is None:
        return []
    if isinstance(loras_multipliers, str):
        lines = [line for line in loras_multipliers.splitlines() if not line.strip().startswith("#")]
        return " ".join(lines).replace("|", " ").split()
    tokens = []
    for i, item in enumerate(loras_multipliers):
        if isinstance(item, bool) or not isinstance(item, str | int | float | np.integer | np.floating):
            raise PlanError(f"loras_multipliers[{i}]", f"expected a number or a multiplier string, got {item!r}")
        # A list element is one LoRA's token: it is never split on spaces (as in model JSONs).
        tokens.append(item.strip() if isinstance(item, str) else str(item))
    return tokens


def _parse_values(field: str, text: str) -> float | list[float]:
    """One phase's value: a number, or a comma list of per-step numbers."""
    parts = text.split(",")
    values = []
    for part in parts:
        try:
            value = float(part)
        except ValueError:
            raise PlanError(field, f"expected a number or a comma list of numbers, got {text!r}") from None
        if not limits.LORA_MULTIPLIER.contains(value):  # NaN and infinities fail the range too
            raise PlanError(field, f"expected numbers {limits.LORA_MULTIPLIER.span}, got {text!r}")
        values.append(value)
    return values[0] if len(parts) == 1 else values


def _lora_schedule(
    field: str, token: str, n: int, phases: int, switch_phase: int, start2: int, start3: int
) -> list[float]:
    """Per-step strengths of one LoRA from its multiplier token."""
    parts = token.split(";")
    if len(parts) == 1:  # shared by every phase; a comma list is stretched over ALL steps
        value = _parse_values(field, parts[0])
        return expand(value, n) if isinstance(value, list) else [value] * n
    if len(parts) > phases:
        raise PlanError(
            field, f"{token!r} has {len(parts)} phase values but guidance_phases is {phases} (at most {phases})"
        )
    per_phase = [_parse_values(field, part) for part in parts]
    if len(per_phase) < phases:
        # Two values for three phases: WGP pads them so they line up with the experts, [a, a, b] when the expert
        # switches at phase 3, else [a, b, b].
        a, b = per_phase
        per_phase = [a, a, b] if switch_phase == 2 else [a, b, b]
    per_phase += [per_phase[-1]] * (3 - len(per_phase))  # phases that do not exist get 0 steps
    spans = (start2, start3 - start2, n - start3)
    out: list[float] = []
    for value, span in zip(per_phase, spans, strict=True):
        out += expand(value, span) if isinstance(value, list) else [value] * span
    return out


# ---------------------------------------------------------------------------------------------------------------------
# Input checks


def _first_step_at_or_below(t: np.ndarray, threshold: float | None) -> int:
    if threshold is None:
        return len(t)
    hits = np.nonzero(t <= threshold)[0]
    return int(hits[0]) if hits.size else len(t)


def _as_number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float | np.integer | np.floating):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return None
    return None


def _check_number(field: str, value: Any) -> float:
    number = _as_number(value)
    if number is None or not math.isfinite(number):
        raise PlanError(field, f"expected a number, got {value!r}")
    return number


def _check_int(field: str, value: Any) -> int:
    number = _as_number(value)
    if number is None or not math.isfinite(number) or number != int(number):
        raise PlanError(field, f"expected an integer, got {value!r}")
    return int(number)


def _check_bounded(field: str, value: Any, bound: limits.Bound) -> float:
    number = _check_number(field, value)
    if not bound.contains(number):
        raise PlanError(field, f"expected {bound.expected}, got {value!r}")
    return number


def _check_steps(value: Any) -> int:
    steps = _check_int("num_inference_steps", value)
    if not limits.STEPS.contains(steps):
        raise PlanError("num_inference_steps", f"expected {limits.STEPS.expected}, got {value!r}")
    return steps


def _check_count(field: str, value: Any) -> int:
    count = _check_int(field, value)
    if count < 1:
        raise PlanError(field, f"expected a step count >= 1, got {value!r}")
    return count


def _check_shift(value: Any) -> float:
    return _check_bounded("flow_shift", value, limits.FLOW_SHIFT)


def _check_threshold(field: str, value: Any) -> float | None:
    if value is None:
        return None
    threshold = _check_bounded(field, value, limits.SWITCH_THRESHOLD)
    return None if threshold == 0 else threshold
