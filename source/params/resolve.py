"""Parameter resolution with provenance: ONE precedence scheme for every task type.

    system defaults < model definition settings < orchestrator_details < segment params < individual_segment_params

Each layer that carries a `phase_config` contributes the converted WGP values on top of its own plain keys (so a
phase_config wins over sibling keys of its layer, and loses to higher layers). Every resolved value remembers the
field it came from, so `plan --explain` and error messages can name it.

"Not given" is None, "" or an empty list/object (upstream's prefer-truthy rule, which Reigh payloads rely on), except
for the LoRA list a phase_config produces: a phase_config without LoRAs means "no LoRAs". Unlike upstream, 0 is a
value (upstream let 0 fall through to lower layers).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from source.params.errors import PayloadError
from source.params.payloads import (
    GENERATION_KNOBS,
    GenerationOverrides,
    GenerationSpec,
    GenerationTaskParams,
    IndividualSegmentParams,
    IndividualTravelSegmentParams,
    OrchestratorDetails,
    OrchestratorOverrides,
    TravelOrchestratorParams,
    TravelSegmentParams,
    WgpGenerationFields,
)
from source.params.phase_config import PhaseConfig, phase_config_to_wgp, plan_for
from Wan2GP.catalog import ModelDefinition
from Wan2GP.request import ACCEPTED_PARAMS
from Wan2GP.request import SYSTEM_DEFAULTS as ENGINE_DEFAULTS
from Wan2GP.schedule import GenerationPlan, PlanError

# The WGP parameters a generation is resolved over: the names the engine accepts, less the call's plumbing.
GENERATION_KEYS: tuple[str, ...] = tuple(
    name for name in ACCEPTED_PARAMS if name not in ("output_dir", "output_filename")
)

# The engine's own fallbacks, taken from the engine (torch-free module) so `plan` explains what it will do. Upstream's
# headless wrapper had different ones (25 steps, euler, shift 7, CFG 7.5; upstream_worker_spec §7.1); every catalog
# model sets these values itself, so they only matter for payloads explained without a model.
SYSTEM_DEFAULTS: Mapping[str, Any] = MappingProxyType({"guidance_phases": 1, **ENGINE_DEFAULTS})

SYSTEM = "system defaults"

# The two LoRA slots a level may fill (internal keys, joined into activated_loras + loras_multipliers by
# resolve_layers): each a tuple of (LoRA name or URL, WGP multiplier token).
PHASE_LORAS = "phase_config LoRAs"
LISTED_LORAS = "listed LoRAs"

# Payload-specific names that mean a WGP parameter (used only when the WGP name itself is not given).
_ALIASES: dict[type, dict[str, str]] = {
    OrchestratorDetails: {
        "parsed_resolution_wh": "resolution",
        "seed_base": "seed",
        "model_name": "model",
        "base_prompt": "prompt",
        "steps": "num_inference_steps",  # Reigh's basic mode (upstream_worker_spec §7: steps -> num_inference_steps)
    },
    TravelSegmentParams: {
        "parsed_resolution_wh": "resolution",
        "seed_to_use": "seed",
        "model_name": "model",
        "segment_frames_target": "video_length",
        "base_prompt": "prompt",
    },
    OrchestratorOverrides: {
        "parsed_resolution_wh": "resolution",
        "seed_base": "seed",
        "model_name": "model",
        "base_prompt": "prompt",
        "steps": "num_inference_steps",
    },
    GenerationOverrides: {
        "parsed_resolution_wh": "resolution",
        "seed_to_use": "seed",
        "model_name": "model",
        "segment_frames_target": "video_length",
        "base_prompt": "prompt",
    },
    IndividualSegmentParams: {
        "num_frames": "video_length",
        "seed_to_use": "seed",
        "enhanced_prompt": "prompt",
        "base_prompt": "prompt",
    },
    IndividualTravelSegmentParams: {
        "parsed_resolution_wh": "resolution",
        "seed_to_use": "seed",
        "model_name": "model",
        "num_frames": "video_length",
        "enhanced_prompt": "prompt",
        "base_prompt": "prompt",
    },
    GenerationTaskParams: {"model_name": "model", "steps": "num_inference_steps"},
}


@dataclass(frozen=True)
class ResolvedValue:
    value: Any
    source: str  # the payload field it came from ("orchestrator_details.seed_base"), or "system defaults"/"model X"
    layer: str  # "system", "model", "orchestrator_details", "params", "individual_segment_params", ...


@dataclass(frozen=True)
class Layer:
    """One precedence level: values with the field path each came from."""

    name: str
    values: Mapping[str, Any]
    sources: Mapping[str, str]


class Resolved(Mapping[str, ResolvedValue]):
    """Resolved WGP parameters: name -> (value, source). Immutable."""

    def __init__(
        self,
        entries: Mapping[str, ResolvedValue],
        warnings: Sequence[str] = (),
        model: ModelDefinition | None = None,
        lora_sources: Sequence[str] = (),
    ) -> None:
        self._entries = dict(entries)
        self.warnings: tuple[str, ...] = tuple(warnings)
        self.model = model  # the catalog entry whose settings took part (its built-in LoRAs run first)
        self.lora_sources: tuple[str, ...] = tuple(lora_sources)  # the field each entry of activated_loras came from

    def __getitem__(self, name: str) -> ResolvedValue:
        return self._entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def value(self, name: str, default: Any = None) -> Any:
        entry = self._entries.get(name)
        return default if entry is None else entry.value

    def source(self, name: str) -> str | None:
        entry = self._entries.get(name)
        return None if entry is None else entry.source

    def as_params(self) -> dict[str, Any]:
        """Plain WGP parameters (name -> value)."""
        return {name: entry.value for name, entry in self._entries.items()}

    def rows(self) -> list[tuple[str, Any, str]]:
        """(name, value, source) in GENERATION_KEYS order, then any others."""
        order = {name: i for i, name in enumerate(GENERATION_KEYS)}
        names = sorted(self._entries, key=lambda name: (order.get(name, len(order)), name))
        return [(name, self._entries[name].value, self._entries[name].source) for name in names]

    def render(self) -> str:
        """One line per value: `name = value    <- source`."""
        rows = [(name, repr(value), source) for name, value, source in self.rows()]
        width = max((len(name) for name, _, _ in rows), default=0)
        value_width = min(max((len(value) for _, value, _ in rows), default=0), 60)
        return "\n".join(f"{name:<{width}} = {value:<{value_width}}  <- {source}" for name, value, source in rows)


def resolve_layers(
    layers: Sequence[Layer], warnings: Sequence[str] = (), model: ModelDefinition | None = None
) -> Resolved:
    """Later layers win. Every value of every layer counts (filtering "not given" is the layer builder's job).

    LoRAs are two slots resolved separately, then joined: the phase_config's LoRAs (strengths per phase) and the
    listed LoRAs (additional_loras, lora_names, activated_loras, a pair's loras). A higher level replaces a slot, not
    both, so a pair that adds a style LoRA keeps the run's Lightning LoRAs; a LoRA in both slots runs once, with the
    listed strength (upstream: segment LoRAs take precedence over phase_config LoRAs)."""
    entries: dict[str, ResolvedValue] = {}
    for layer in layers:
        for name, value in layer.values.items():
            entries[name] = ResolvedValue(value, layer.sources.get(name, layer.name), layer.name)
    phase, listed = entries.pop(PHASE_LORAS, None), entries.pop(LISTED_LORAS, None)
    notes = list(warnings)
    lora_sources: list[str] = []
    if phase is not None or listed is not None:
        listed_names = {name for name, _ in listed.value} if listed is not None else set()
        names: list[str] = []
        tokens: list[str] = []
        for slot in (phase, listed):
            if slot is None:
                continue
            for name, token in slot.value:
                if slot is phase and name in listed_names:
                    notes.append(
                        f"LoRA {name} is in {phase.source} and in {listed.source}: it runs once, at {listed.source}'s strength"
                    )
                    continue
                names.append(name)
                tokens.append(token)
                lora_sources.append(slot.source)
        slots = [slot for slot in (phase, listed) if slot is not None]
        source = " + ".join(dict.fromkeys(slot.source for slot in slots))
        layer = slots[-1].layer
        entries["activated_loras"] = ResolvedValue(names, source, layer)
        entries["loras_multipliers"] = ResolvedValue(" ".join(tokens), source, layer)
    return Resolved(entries, notes, model, lora_sources)


def generation_spec(layers: Sequence[Layer]) -> GenerationSpec:
    """The GenerationSpec a child row carries: the payload's own values from `layers` (no system or model layers: the
    engine applies the model's settings itself), its LoRAs, and the field each value came from."""
    own = resolve_layers(layers)
    values = own.as_params()
    return GenerationSpec(
        **{name: values[name] for name in GENERATION_KNOBS if name in values},
        lora_names=[str(name) for name in values.get("activated_loras") or []],
        lora_multipliers=str(values.get("loras_multipliers") or "").split(),
        sources={name: entry.source for name, entry in own.items() if name != "model"},
    )


def system_layer() -> Layer:
    return Layer("system", dict(SYSTEM_DEFAULTS), dict.fromkeys(SYSTEM_DEFAULTS, SYSTEM))


def model_layer(model: ModelDefinition) -> Layer:
    """The model definition's default settings (only the keys a generation is resolved over). Like the engine, a
    two-expert model without a guidance_phases setting runs 2 phases (the Wan handler's default)."""
    label = f"model {model.id}"
    values: dict[str, Any] = {"model": model.id, "guidance_phases": model.default_guidance_phases}
    sources = {"model": label, "guidance_phases": f"{label} ({model.experts} expert(s))"}
    for key, value in model.settings.items():
        if key in GENERATION_KEYS and _given(value):
            values[key] = value
            sources[key] = label
    return Layer("model", values, sources)


def payload_layers(payload: WgpGenerationFields, *, name: str, root: str) -> list[Layer]:
    """A payload level as layers: its plain keys, then (if present) what its phase_config means.
    `root` is the payload's path ("" for the top level of params), used in sources and errors."""
    return _payload_layers(payload, name=name, root=root)[0]


def _payload_layers(payload: WgpGenerationFields, *, name: str, root: str) -> tuple[list[Layer], list[str]]:
    given = payload.model_fields_set | set(payload.model_extra or {})
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}

    def take(key: str, value: Any, field: str) -> None:
        if key not in values and _given(value):
            values[key] = value
            sources[key] = _path(root, field)

    for key in GENERATION_KEYS:
        if key in given and key in type(payload).model_fields:
            take(key, getattr(payload, key), key)
    for field, key in _aliases_for(payload).items():
        if field in given:
            take(key, getattr(payload, field), field)
    # Reigh's LoRA spellings: lora_names + lora_multipliers (list), or additional_loras {url: multiplier}.
    if payload.lora_names:
        take("activated_loras", list(payload.lora_names), "lora_names")
    if payload.lora_multipliers:
        take("loras_multipliers", " ".join(payload.lora_multipliers), "lora_multipliers")
    if payload.additional_loras and "activated_loras" not in values:
        take("activated_loras", list(payload.additional_loras), "additional_loras")
        take("loras_multipliers", " ".join(str(v) for v in payload.additional_loras.values()), "additional_loras")
    warnings: list[str] = []
    _to_listed_slot(values, sources)
    layers = [Layer(name, values, sources)]
    spec = getattr(payload, "generation", None)
    if isinstance(spec, GenerationSpec):
        # Knobs our orchestrator resolved once and wrote into the segment row; they keep their original sources.
        spec_values: dict[str, Any] = spec.wgp_params()
        spec_root = _path(root, "generation")
        spec_sources = {key: spec.sources.get(key, _path(spec_root, key)) for key in spec_values}
        if spec.lora_names:
            spec_values[LISTED_LORAS] = tuple(
                zip(spec.lora_names, _padded(spec.lora_multipliers, spec.lora_names), strict=False)
            )
            spec_sources[LISTED_LORAS] = spec.sources.get("activated_loras", _path(spec_root, "lora_names"))
        layers.append(Layer(f"{name}.generation", spec_values, spec_sources))
    if payload.phase_config is not None:
        layers.append(
            phase_config_layer(
                payload.phase_config, name=f"{name}.phase_config", root=_path(root, "phase_config"), warnings=warnings
            )
        )
    return layers, warnings


def phase_config_layer(phase_config: PhaseConfig, *, name: str, root: str, warnings: list[str]) -> Layer:
    """What a phase_config means, as one layer (its LoRAs in the phase slot); its warnings are appended."""
    converted = phase_config_to_wgp(phase_config, root=root)
    values = converted.as_wgp_params()
    names, tokens = values.pop("activated_loras"), values.pop("loras_multipliers")
    values[PHASE_LORAS] = tuple(zip(names, tokens.split(), strict=True))
    warnings += converted.warnings
    return Layer(name, values, dict.fromkeys(values, root))


def pair_layers(
    details: OrchestratorDetails | OrchestratorOverrides, index: int, *, root: str = "orchestrator_details"
) -> tuple[list[Layer], list[str]]:
    """Segment `index`'s per-pair overrides (phase_configs_expanded[index], loras_per_segment_expanded[index]) as
    layers between orchestrator_details and the segment's own params; none when the pair has no override."""
    layers: list[Layer] = []
    warnings: list[str] = []
    phase_configs = details.phase_configs_expanded or []
    if index < len(phase_configs) and phase_configs[index] is not None:
        path = f"{_path(root, 'phase_configs_expanded')}[{index}]"
        layers.append(
            phase_config_layer(phase_configs[index], name=f"pair {index} phase_config", root=path, warnings=warnings)
        )
    pair_loras = details.loras_per_segment_expanded or []
    if index < len(pair_loras) and pair_loras[index]:
        path = f"{_path(root, 'loras_per_segment_expanded')}[{index}]"
        slot = tuple((lora.path, str(lora.strength)) for lora in pair_loras[index])
        layers.append(Layer(f"pair {index} loras", {LISTED_LORAS: slot}, {LISTED_LORAS: path}))
    return layers, warnings


def _to_listed_slot(values: dict[str, Any], sources: dict[str, str]) -> None:
    """A level's plain LoRA keys (activated_loras + loras_multipliers, whichever spelling) become its listed slot:
    (name, token) pairs, a missing token meaning 1.0; more tokens than LoRAs is an error naming the field."""
    names = values.pop("activated_loras", None)
    tokens_text = values.pop("loras_multipliers", None)
    names_source = sources.pop("activated_loras", None)
    tokens_source = sources.pop("loras_multipliers", None)
    if not names:
        if tokens_text:
            raise PayloadError.at(
                tokens_source or "loras_multipliers", "expected no multipliers without LoRAs to apply them to"
            )
        return
    names = [str(item) for item in names]
    tokens = _tokens(tokens_text)
    if len(tokens) > len(names):
        raise PayloadError.at(
            tokens_source or "loras_multipliers",
            f"expected at most {len(names)} multipliers (one per LoRA), got {len(tokens)}",
        )
    values[LISTED_LORAS] = tuple(zip(names, _padded(tokens, names), strict=True))
    sources[LISTED_LORAS] = tokens_source or names_source or ""


def _padded(tokens: Sequence[str], names: Sequence[str]) -> list[str]:
    return [*tokens, *["1.0"] * (len(names) - len(tokens))]


@dataclass(frozen=True)
class PayloadLevels:
    """The levels of a task payload, lowest precedence first (any may be None)."""

    orchestrator: OrchestratorDetails | OrchestratorOverrides | None = None
    orchestrator_root: str = "orchestrator_details"
    segment: WgpGenerationFields | None = None
    segment_root: str = ""
    individual: IndividualSegmentParams | None = None
    individual_root: str = "individual_segment_params"
    pair_index: int | None = None  # this segment's per-pair overrides in the orchestrator's *_expanded lists

    def payloads(self) -> list[tuple[WgpGenerationFields, str, str]]:
        """(payload, layer name, root) of the levels that are present, lowest precedence first."""
        levels = [
            (self.orchestrator, "orchestrator_details", self.orchestrator_root),
            (self.segment, "params", self.segment_root),
            (self.individual, "individual_segment_params", self.individual_root),
        ]
        return [(payload, name, root) for payload, name, root in levels if payload is not None]

    def model_name(self) -> str | None:
        """The model the payload asks for (highest level wins)."""
        for level in (self.individual, self.segment, self.orchestrator):
            if level is None:
                continue
            for field in ("model", "model_name"):
                value = getattr(level, field, None)
                if isinstance(value, str) and value:
                    return value
        return None


def levels_of(payload: WgpGenerationFields) -> PayloadLevels:
    """Split a parsed task payload into its precedence levels."""
    if isinstance(payload, TravelSegmentParams):
        orchestrator_root = "orchestrator_details" if payload.orchestrator_details else "full_orchestrator_payload"
        return PayloadLevels(
            orchestrator=payload.orchestrator,
            orchestrator_root=orchestrator_root,
            segment=payload,
            individual=payload.individual_segment_params,
        )
    if isinstance(payload, IndividualTravelSegmentParams):
        return PayloadLevels(
            orchestrator=payload.orchestrator_details, segment=payload, individual=payload.individual_segment_params
        )
    if isinstance(payload, GenerationOverrides):
        nested = payload.orchestrator_details or payload.full_orchestrator_payload
        orchestrator_root = "orchestrator_details" if payload.orchestrator_details else "full_orchestrator_payload"
        return PayloadLevels(
            orchestrator=nested,
            orchestrator_root=orchestrator_root,
            segment=payload,
            individual=payload.individual_segment_params,
        )
    if isinstance(payload, TravelOrchestratorParams):
        return PayloadLevels(orchestrator=payload.orchestrator_details, segment=payload)
    if isinstance(payload, OrchestratorDetails | OrchestratorOverrides):
        return PayloadLevels(orchestrator=payload, orchestrator_root="")
    return PayloadLevels(segment=payload)


def payload_level_layers(levels: PayloadLevels) -> tuple[list[Layer], list[str]]:
    """The payload's own layers, lowest precedence first (a travel pair's overrides right above orchestrator_details),
    and the warnings their phase_configs gave. No system or model layer: what a child row's GenerationSpec holds."""
    layers: list[Layer] = []
    warnings: list[str] = []
    for payload, name, root in levels.payloads():
        built, notes = _payload_layers(payload, name=name, root=root)
        layers += built
        warnings += notes
        travel = isinstance(payload, OrchestratorDetails | OrchestratorOverrides)
        if name == "orchestrator_details" and levels.pair_index is not None and travel:
            built, notes = pair_layers(payload, levels.pair_index, root=root)
            layers += built
            warnings += notes
    return layers, warnings


def resolve_generation(levels: PayloadLevels, model: ModelDefinition | None = None) -> Resolved:
    """Resolve the WGP parameters of one generation from system defaults, the model definition and the payload.
    `activated_loras`/`loras_multipliers` are the payload's own LoRAs (what to hand the engine, which runs the
    model's built-in LoRAs first by itself); `plan_from_resolved` accounts for both."""
    layers = [system_layer()]
    if model is not None:
        layers.append(model_layer(model))
    payload_layers_, warnings = payload_level_layers(levels)
    if model is not None and model.loras:
        warnings += [
            f"model {model.id} has built-in LoRAs: they run before the phase_config's LoRAs "
            "(upstream's phase_config patch dropped them)"
            for payload, _, _ in levels.payloads()
            if payload.phase_config is not None
        ]
    return resolve_layers([*layers, *payload_layers_], warnings, model)


def checked_generation(
    levels: PayloadLevels, model: ModelDefinition | None
) -> tuple[GenerationSpec, Resolved, GenerationPlan]:
    """What a child row (a segment, a bridge) generates with, its full resolution and its per-step plan, checked
    against the model now so a bad combination fails where the payload came in (PayloadError naming the field)."""
    resolved = resolve_generation(levels, model)
    plan = plan_from_resolved(resolved)
    return generation_spec(payload_level_layers(levels)[0]), resolved, plan


def resolve_payload(payload: WgpGenerationFields, model: ModelDefinition | None = None) -> Resolved:
    return resolve_generation(levels_of(payload), model)


def plan_from_resolved(resolved: Resolved) -> GenerationPlan:
    """The per-step plan of resolved parameters, as the engine will run it (the model's built-in LoRAs first, then
    the payload's); a bad value becomes a PayloadError naming the payload field it came from."""
    params = resolved.as_params()
    model = resolved.model
    built_in = len(model.loras) if model is not None else 0
    if model is not None and model.loras:
        user_loras = list(params.get("activated_loras") or [])
        user_tokens = _tokens(params.get("loras_multipliers"))
        user_tokens = user_tokens[: len(user_loras)] + ["1.0"] * (len(user_loras) - len(user_tokens))
        model_tokens = list(model.loras_multipliers) + ["1.0"] * (len(model.loras) - len(model.loras_multipliers))
        params["activated_loras"] = [*model.loras, *user_loras]
        params["loras_multipliers"] = model_tokens + user_tokens
    try:
        return plan_for(params, extra_warnings=resolved.warnings)
    except PlanError as error:
        name, _, rest = error.field.partition("[")
        index = int(rest.split("]", 1)[0]) - built_in if rest[:1].isdigit() else None
        if (
            name in ("loras_multipliers", "activated_loras")
            and index is not None
            and 0 <= index < len(resolved.lora_sources)
        ):
            # Name the field the offending LoRA came from, with its index there.
            source = resolved.lora_sources[index]
            position = [i for i, s in enumerate(resolved.lora_sources) if s == source].index(index)
            raise PayloadError.at(f"{source}[{position}]", error.reason) from None
        source = resolved.source(name) or name
        suffix = error.field[len(name) :] if source.endswith(name) else ""
        raise PayloadError.at(source + suffix, error.reason) from None


# ---------------------------------------------------------------------------------------------------------------------


def _given(value: Any) -> bool:
    return value is not None and value != "" and not (isinstance(value, list | tuple | dict) and not value)


def _path(root: str, field: str) -> str:
    return f"{root}.{field}" if root else field


def _aliases_for(payload: WgpGenerationFields) -> dict[str, str]:
    for cls, aliases in _ALIASES.items():
        if isinstance(payload, cls):
            return aliases
    return {}


def _tokens(multipliers: Any) -> list[str]:
    if multipliers is None:
        return []
    if isinstance(multipliers, str):
        lines = [line for line in multipliers.splitlines() if not line.strip().startswith("#")]
        return " ".join(lines).replace("|", " ").split()
    return [str(item) for item in multipliers]


def generation_params(payload: GenerationTaskParams) -> dict[str, Any]:
    """The engine parameters a generation payload gives (WGP names, `model` excluded): its own keys and aliases, with
    its phase_config applied on top. Model defaults are left to the engine. Raises PayloadError for a bad
    phase_config."""
    resolved = resolve_layers(payload_layers(payload, name="params", root="")).as_params()
    resolved.pop("model", None)
    return resolved
