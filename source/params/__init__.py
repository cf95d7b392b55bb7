"""Task payloads: typed models of what arrives in a task row, phase_config -> WGP parameters -> per-step plan,
parameter resolution with provenance, and secret redaction. No I/O, no torch."""

from source.params.errors import PayloadError, parse_model
from source.params.payloads import (
    GenerationTaskParams,
    IndividualSegmentParams,
    OrchestratorDetails,
    TravelOrchestratorParams,
    TravelSegmentParams,
    TravelStitchParams,
    WgpGenerationFields,
)
from source.params.phase_config import (
    PhaseConfig,
    PhaseLora,
    PhaseSpec,
    WgpPhaseParams,
    phase_config_to_wgp,
    plan_for,
)
from source.params.redact import redact
from source.params.resolve import (
    SYSTEM_DEFAULTS,
    PayloadLevels,
    Resolved,
    ResolvedValue,
    levels_of,
    plan_from_resolved,
    resolve_generation,
    resolve_payload,
)
from source.params.travel import (
    GenerationSpec,
    SegmentTaskParams,
    StitchTaskParams,
    generation_params_from_details,
)

__all__ = [
    "SYSTEM_DEFAULTS",
    "GenerationSpec",
    "SegmentTaskParams",
    "StitchTaskParams",
    "generation_params_from_details",
    "GenerationTaskParams",
    "IndividualSegmentParams",
    "OrchestratorDetails",
    "PayloadError",
    "PayloadLevels",
    "PhaseConfig",
    "PhaseLora",
    "PhaseSpec",
    "Resolved",
    "ResolvedValue",
    "TravelOrchestratorParams",
    "TravelSegmentParams",
    "TravelStitchParams",
    "WgpGenerationFields",
    "WgpPhaseParams",
    "levels_of",
    "parse_model",
    "phase_config_to_wgp",
    "plan_for",
    "plan_from_resolved",
    "redact",
    "resolve_generation",
    "resolve_payload",
]
