"""LoRAs on the Wan transformers: every file (Wan2GP.lora_formats reads any common layout) on every expert, with
each denoising step's strengths.

What a file changes comes in two kinds (lora_formats.LoraWeights):
- low-rank pairs on Linear layers. In "unmerged" mode they are peft adapters "lora0", "lora1", ...:
  y = W x + sum_i s_i B_i (A_i x), and a change of strengths only changes peft's per-layer scaling floats. In
  "merged" mode W <- W0 + sum_i s_i B_i A_i is written into the weight;
- everything else: full deltas (diff, diff_b, diff_m, norm deltas, bias deltas) and DoRA pairs, whose magnitude
  normalisation is not a low-rank term. These are always written into their parameter, in either mode.
Every write is computed in fp32 from an exact copy of the original parameter and rounded once, and repeated only for
the parameters whose LoRAs changed strength; `close()` copies the originals back, so the transformers end
bit-identical to how they started. Where the device has room, the merged weights of each planned set of strengths are
kept beside the parameter: a travel run's next segment returns to them by a copy instead of merging again.
"""

from __future__ import annotations

import math
import re
import warnings
from collections import Counter
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from diffusers.utils import recurse_remove_peft_layers
from loguru import logger
from peft.tuners.lora import LoraLayer

from Wan2GP.lora_formats import ALL_EXPERTS, FullDelta, LoraError, LoraFile, LowRank, read_lora_file
from Wan2GP.quantization import copy_into, float8_rows, is_float8_rows, snapshot, tensor_bytes

__all__ = [
    "CPU_AUTO_MODE",
    "CUDA_DEVICE_COPY_COSTS",
    "CUDA_MODE_COSTS",
    "LoraError",
    "LoraRuntime",
    "ModeCosts",
    "StepStrengths",
    "choose_mode",
    "forward_spans",
]

# Measured (interleaved runs, 2-core CPU shared with other jobs; fp32, 2 LoRAs of rank 16 on every attention and ffn
# Linear, 2048 tokens), medians per forward / per strength change:
#   6 layers x dim 384: base 613 ms, unmerged 776 ms, merged 625 ms; change: unmerged 2 ms, merged re-merge 33 ms
#   8 layers x dim 512: base 1298 ms, unmerged 1581 ms, merged 1273 ms; change: unmerged 3 ms, merged re-merge 43 ms
# Unmerged LoRA matmuls cost ~20-25% of every forward, a re-merge ~3% of one, so "auto" merges on CPU too.
Mode = Literal["merged", "unmerged"]
CPU_AUTO_MODE: Mode = "merged"


@dataclass(frozen=True)
class ModeCosts:
    """What each mode costs on a GPU, in transformer forwards of the Wan 2.2 A14B with 2 LoRAs on every attention and
    ffn Linear; each set below says where it was measured (bench/README.md)."""

    unmerged_per_forward: float  # the extra LoRA matmuls of every forward
    first_merge: float  # per expert: the exact host copy of every targeted weight, then the merge
    re_merge: float  # per strength change of a merged expert
    unmerge: float  # per merged expert at close()


# Exact originals in host memory: on an H100 at the A14B layer size, LoRAs of rank 32 (ratios from one run).
CUDA_MODE_COSTS = ModeCosts(unmerged_per_forward=0.170, first_merge=6.26, re_merge=0.89, unmerge=1.12)
# The same with the exact originals kept on the device beside the weights (a resident model with room to spare): no
# host round trip. Measured on an H200 with the seed's two rank-64 LoRAs on every attention and ffn Linear of the A14B
# experts (bench/results/speed_h200_lora_modes.json): first merge 0.144 s, re-merge 0.129 s, close 0.029 s per expert,
# one forward 2.112 s; the unmerged cost per forward is the H100 figure above, so that both sets compare alike.
# A 16-bit weight with one active LoRA re-merges as one GEMM since (merge_low_rank: 0.038 s an expert,
# bench/results/speed_h200_vae_blocks.json); re_merge keeps the general path's cost, the larger of the two.
CUDA_DEVICE_COPY_COSTS = ModeCosts(unmerged_per_forward=0.170, first_merge=0.068, re_merge=0.061, unmerge=0.014)
# Float8 weights with per-row scales (--fast) merged by quantizing again from their float8 originals kept on the device.
# Unmerged: the seed segment's forward on the H200 (fp8 attention) took 1.289 s with the seed's two LoRAs as adapters
# against 1.200 s without (bench/results/speed_h200_fast_loras_fp8.json, speed_h200_fast_fp8.json). Merged, on the
# A14B experts with the seed's two rank-64 LoRAs, one fast forward 1.209 s (bench/results/
# speed_h200_fast_bf16_remerge.json; speed_h200_fast_kept_loras.json agrees): first merge 0.311 s (the low expert's;
# the first merge of a process also compiles the requantization), re-merge 0.176-0.183 s, close 0.067 s. Returning
# to a kept set of strengths took 0.011 s; re_merge stays the full merge's cost, which the first generation pays.
CUDA_FLOAT8_DEVICE_COPY_COSTS = ModeCosts(unmerged_per_forward=0.074, first_merge=0.26, re_merge=0.15, unmerge=0.055)

# (expert, forwards, per-LoRA strengths) of one denoising step: what the runtime is told of the run ahead.
StepStrengths = tuple[str, int, tuple[float, ...]]


def forward_spans(steps: Sequence[StepStrengths]) -> dict[str, list[int]]:
    """Per expert, how many forwards run under each constant set of strengths, in order. `steps` holds one
    (expert, forwards, strengths) per denoising step."""
    spans: dict[str, list[int]] = {}
    previous: tuple[str, tuple[float, ...]] | None = None
    for expert, forwards, strengths in steps:
        if previous == (expert, strengths):
            spans[expert][-1] += forwards
        else:
            spans.setdefault(expert, []).append(forwards)
        previous = (expert, strengths)
    return spans


def choose_mode(
    spans: Mapping[str, Sequence[int]],
    costs: ModeCosts | Mapping[str, ModeCosts] = CUDA_MODE_COSTS,
    *,
    generations: int = 1,
) -> Mode:
    """The cheaper mode for generations whose strengths hold for `spans` forwards (forward_spans), with one cost set
    for every expert or one per expert, per generation of `generations` that keep the LoRAs attached (a worker keeps
    them for a travel run's next segment). Unmerged pays on every forward; merged pays the first merge and the close
    once (spread over the generations) and a re-merge per strength change, including the return to the first
    strengths that every generation after the first begins with. With host copies (H100) merging wins from ~5
    forwards between changes and ~45 per expert with constant strengths, which few-step (Lightning) schedules do not
    reach in one generation; with device copies it wins almost always."""
    if generations < 1:
        raise ValueError(f"generations: expected at least 1, got {generations}")
    per_expert = costs if isinstance(costs, Mapping) else dict.fromkeys(spans, costs)
    unmerged = sum(per_expert[expert].unmerged_per_forward * sum(runs) for expert, runs in spans.items())
    merged = 0.0
    for expert, runs in spans.items():
        if not runs:
            continue
        cost = per_expert[expert]
        returns = (generations - 1) / generations if len(runs) > 1 else 0.0
        merged += (cost.first_merge + cost.unmerge) / generations + cost.re_merge * (len(runs) - 1 + returns)
    return "merged" if merged < unmerged else "unmerged"


def auto_modes(
    steps: Sequence[StepStrengths] | None,
    experts: Mapping[int, Sequence[str]],
    copied_on_device: Collection[int],
    float8: Collection[int] = (),
    *,
    generations: int = 1,
) -> dict[int, Mode]:
    """Mode 'auto' on a GPU: per transformer (`experts`: key -> the experts it serves), the cheaper mode for the
    spans of its own experts over `generations` (choose_mode), at device-copy costs where its exact originals stay on
    the device (`copied_on_device`) and host-copy costs elsewhere; for a transformer whose LoRA layers hold float8
    weights (`float8`) at the float8 device-copy costs, and unmerged when its originals would live in host memory (not
    measured: every re-merge would carry them over). Without a step plan, unmerged (nothing says merging would pay)."""
    if not steps:
        return dict.fromkeys(experts, "unmerged")
    spans = forward_spans(steps)
    modes: dict[int, Mode] = {}
    for key, served in experts.items():
        if key in float8:
            costs = CUDA_FLOAT8_DEVICE_COPY_COSTS if key in copied_on_device else None
        else:
            costs = CUDA_DEVICE_COPY_COSTS if key in copied_on_device else CUDA_MODE_COSTS
        own = {expert: spans[expert] for expert in served if expert in spans}
        modes[key] = choose_mode(own, costs, generations=generations) if costs is not None else "unmerged"
    return modes


ADAPTER_NAME_PREFIX = "lora"
# Set on a transformer while a LoraRuntime holds it: in merged mode nothing else shows that LoRAs are written into it.
_HELD_BY = "_lora_runtime_holding_it"
_NAMES_SHOWN = 5  # how many key names a warning or error quotes


# The float8 requantization of a merged weight (quantization.float8_rows, compiled on a GPU):
# (base data, base scale, float32 delta) -> (data, scale).
Requantize = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class _Write:
    """One parameter the LoRAs change by writing it: each LoRA's term, and the exact original to compute from."""

    name: str
    owner: torch.nn.Module
    attr: str
    terms: list[tuple[int, LowRank | FullDelta]]  # (LoRA index, its change of this parameter)
    original_on_device: bool = False  # where the exact copy is kept: beside the parameter, or in host memory
    original: torch.Tensor | None = None  # the exact copy, taken before the first write
    applied: tuple[float, ...] | None = None  # the strengths of `terms` now in the parameter; None: the original
    kept: dict[tuple[float, ...], torch.Tensor] = field(default_factory=dict)  # merged weights by strengths, on device

    @torch.no_grad()
    def apply(self, strengths: Sequence[float], requantize: Requantize, *, keep: bool = False) -> None:
        """Write the parameter for these per-LoRA strengths; `keep`: keep a copy of the merged weight on its device,
        so that coming back to these strengths is a copy rather than a merge."""
        wanted = tuple(strengths[index] for index, _ in self.terms)
        state = wanted if any(wanted) else None  # all zero: the original itself
        if state == self.applied:
            return
        parameter = getattr(self.owner, self.attr)
        if state is None:
            copy_into(parameter, self.original)
            self.applied = None
            return
        if state in self.kept:
            copy_into(parameter, self.kept[state])
            self.applied = state
            return
        self._merge(parameter, wanted, requantize)
        self.applied = state
        if keep:
            self.kept[state] = snapshot(parameter, parameter.device)

    def _merge(self, parameter: torch.Tensor, wanted: tuple[float, ...], requantize: Requantize) -> None:
        if self.original is None:
            # On the device only where the runtime found room for it (a re-merge then never leaves the GPU); else in
            # (pageable) host memory. Not pinned: torch's pinned-memory cache rounds blocks up to powers of two (up to
            # ~2x the host memory).
            self.original = snapshot(parameter, parameter.device if self.original_on_device else "cpu")
        # A host copy travels in its own dtype and widens on the device: converting on the host first sends twice the
        # bytes (bf16 -> fp32) through a pageable-memory path (bench/README.md measured ~3 GB/s that way).
        original = self.original if self.original_on_device else snapshot(self.original, parameter.device)
        # One sum from the pristine copy, rounded once: no drift however often strengths change.
        if is_float8_rows(parameter):
            # the merged weight quantized again from the float8 weights the model was loaded with
            qdata, scale = requantize(original.qdata, original.scale, self._delta(wanted, original.dequantize))
            parameter.qdata.copy_(qdata)
            parameter.scale.copy_(scale)
            return
        single = single_low_rank_term(self.terms, wanted, parameter) if parameter.is_cuda else None
        if single is not None:
            merge_low_rank(parameter, original, *single)
            return
        value = original.to(torch.float32, copy=True)
        # Only DoRA normalises against the original weight: only then is a second fp32 copy kept beside the sum.
        dora_active = any(
            isinstance(term, LowRank) and term.magnitude is not None and strength
            for (_, term), strength in zip(self.terms, wanted, strict=True)
        )
        base = value.clone() if dora_active else None
        for (_, term), strength in zip(self.terms, wanted, strict=True):
            if strength == 0.0:
                continue
            if isinstance(term, FullDelta):
                value.add_(term.delta.float(), alpha=strength)
            elif term.magnitude is None:
                value.addmm_(term.up.float(), term.down.float(), alpha=strength)
            else:
                assert base is not None  # dora_active
                value.add_(_dora_weight(base, term) - base, alpha=strength)
        parameter.copy_(value)

    def _delta(self, wanted: tuple[float, ...], base: Callable[[torch.dtype], torch.Tensor]) -> torch.Tensor:
        """The change of the LoRAs at these strengths, for a float8 weight: the low-rank pairs as one bfloat16 matmul
        over their concatenated ranks (float32 accumulation), plus the full deltas and DoRA's terms in float32 (DoRA
        needs the original itself: `base`, which gives it in float32).

        bfloat16 because the result is rounded to float8 next: its 8 mantissa bits are 32x finer than e4m3's 3 (a test
        bounds the difference to one float8 step), and the product then takes half the memory (283 MB a ffn weight in
        float32). It did not make an A14B expert's re-merge faster on the H200 (0.105 s either way, bench/README.md):
        the product is not where that time goes."""
        ups: list[torch.Tensor] = []
        downs: list[torch.Tensor] = []
        delta: torch.Tensor | None = None
        base_value: torch.Tensor | None = None
        for (_, term), strength in zip(self.terms, wanted, strict=True):
            if strength == 0.0:
                continue
            if isinstance(term, FullDelta):
                change = term.delta.float() * strength
            elif term.magnitude is None:
                ups.append(term.up.to(torch.bfloat16) * strength)
                downs.append(term.down.to(torch.bfloat16))
                continue
            else:
                base_value = base(torch.float32) if base_value is None else base_value
                change = (_dora_weight(base_value, term) - base_value) * strength
            delta = change if delta is None else delta.add_(change)
        if ups:
            low_rank = torch.cat(ups, dim=1) @ torch.cat(downs, dim=0)
            delta = low_rank if delta is None else delta.add_(low_rank.float())
        assert delta is not None  # apply() comes here only with a nonzero strength
        return delta

    @torch.no_grad()
    def restore(self) -> None:
        if self.applied is not None:
            copy_into(getattr(self.owner, self.attr), self.original)
        self.applied = None
        self.original = None
        self.kept = {}


def single_low_rank_term(
    terms: Sequence[tuple[int, LowRank | FullDelta]], wanted: Sequence[float], parameter: torch.Tensor
) -> tuple[LowRank, float] | None:
    """The one plain low-rank term with a nonzero strength, when it is the only one and it is in the parameter's own
    16-bit dtype (what merge_low_rank computes exactly as the float32 path); else None."""
    active = [(term, strength) for (_, term), strength in zip(terms, wanted, strict=True) if strength]
    if len(active) != 1:
        return None
    term, strength = active[0]
    if not isinstance(term, LowRank) or term.magnitude is not None:
        return None
    if (
        parameter.dtype not in (torch.bfloat16, torch.float16)
        or not term.up.dtype == term.down.dtype == parameter.dtype
    ):
        return None
    return term, strength


def merge_low_rank(parameter: torch.Tensor, original: torch.Tensor, term: LowRank, strength: float) -> None:
    """parameter = original + strength * up @ down as one GEMM: cuBLAS adds the original in its float32 epilogue and
    rounds once, as the float32 path does (which writes three float32 copies of the weight: 0.13 s an A14B expert's
    re-merge on the H200), apart from the GEMM's order of accumulation (a last-bit difference in ~4e-5 of a weight's
    elements on the CPU)."""
    torch.addmm(original, term.up, term.down, alpha=strength, out=parameter)


def _dora_weight(original: torch.Tensor, term: LowRank) -> torch.Tensor:
    """DoRA's weight at strength 1: the magnitude times the direction of W + up @ down, normalised per output row
    (magnitude (out,) or (out, 1)) or per input column (magnitude (1, in)), as ComfyUI tells the two apart."""
    combined = torch.addmm(original, term.up.float(), term.down.float())
    magnitude = term.magnitude.float()
    if magnitude.shape[0] == combined.shape[0]:
        return combined * (magnitude.reshape(-1, 1) / combined.norm(dim=1, keepdim=True))
    return combined * (magnitude.reshape(1, -1) / combined.norm(dim=0, keepdim=True))


@dataclass
class _AttachedTransformer:
    """One transformer with the LoRAs attached, and what has been applied to it."""

    transformer: torch.nn.Module
    experts: list[str]
    writes: list[_Write] = field(default_factory=list)
    lora_layers: list[tuple[str, LoraLayer]] = field(default_factory=list)  # peft adapters (unmerged mode)
    applied_strengths: tuple[float, ...] | None = None
    adapters_enabled: bool = True


@dataclass
class _Fitted:
    """What one file changes in one transformer, checked against its modules."""

    low_rank: dict[str, tuple[torch.nn.Linear, LowRank]] = field(default_factory=dict)
    full: dict[str, tuple[torch.nn.Module, str, FullDelta]] = field(default_factory=dict)
    unmatched: list[str] = field(default_factory=list)  # the file's module paths that name nothing here


class LoraRuntime:
    """Every LoRA attached to every transformer given; per-step strengths applied merged or unmerged.

    Call `set_step_strengths(expert, strengths)` before the forward(s) of every denoising step; until the first call
    the transformers behave as their base model. Always `close()` (or use `with`) to give the transformers back with
    their base weights and without adapter layers.

    mode: "unmerged", "merged", or "auto": on CPU merged (measured faster, see CPU_AUTO_MODE); on CUDA the cheaper of
    the two for the run's `steps` (each denoising step's expert, forwards and strengths) over `generations` that keep
    this runtime (choose_mode), unmerged when no steps are given; always unmerged when a LoRA-targeted layer holds
    quantized weights other than float8 with per-row scales.
    device_copy_room: bytes of device memory the merged mode may take beside the weights (a resident model with room
    to spare): first the exact originals, for the transformers whose strengths change most often first (the others
    keep theirs in host memory); then, for a transformer whose strengths change, one merged copy of its weights per
    set of strengths in `steps`, so that a later generation returns to them by a copy instead of a merge.
    Keys that name nothing in the transformers are reported once per file at WARNING; LoraError for a file that cannot
    be read, does not fit the transformers, or of which nothing applies. Nothing stays attached after an error.
    """

    def __init__(
        self,
        transformers: Mapping[str, torch.nn.Module],
        lora_paths: Sequence[Path],
        *,
        mode: str = "auto",
        steps: Sequence[StepStrengths] | None = None,
        device_copy_room: int = 0,
        generations: int = 1,
    ) -> None:
        self._steps = list(steps) if steps else None
        self._generations = generations
        if mode not in ("auto", "merged", "unmerged"):
            raise ValueError(f"mode: expected 'auto', 'merged' or 'unmerged', got {mode!r}")
        if not transformers:
            raise ValueError("transformers: expected at least one transformer, e.g. {'high': transformer}")
        self._paths = [Path(path) for path in lora_paths]
        self._adapter_names = [f"{ADAPTER_NAME_PREFIX}{index}" for index in range(len(self._paths))]
        self._closed = False

        # One entry per distinct module, so two experts that share a transformer share its applied state.
        by_identity: dict[int, _AttachedTransformer] = {}
        self._by_expert: dict[str, _AttachedTransformer] = {}
        for expert, transformer in transformers.items():
            attached = by_identity.setdefault(id(transformer), _AttachedTransformer(transformer, []))
            attached.experts.append(expert)
            self._by_expert[expert] = attached
        self._attached = list(by_identity.values())
        for attached in self._attached:
            existing = list(getattr(attached.transformer, "peft_config", {}) or {})
            if existing or getattr(attached.transformer, _HELD_BY, False):
                held = f"LoRA adapters {existing}" if existing else "LoRAs merged into its weights"
                raise RuntimeError(
                    f"transformer {attached.experts} already carries {held}; "
                    "close the previous LoraRuntime before making a new one"
                )

        files = [read_lora_file(path) for path in self._paths]  # read once, attached to every expert
        fitted = {id(attached): [self._fit(attached, file) for file in files] for attached in self._attached}
        for index, file in enumerate(files):
            _report_unmatched(file, [fitted[id(attached)][index] for attached in self._attached], list(transformers))
        # Whose exact originals (merged mode) fit on the device: the transformers that change strengths most first;
        # then whose merged weights are kept per set of strengths in what room is left.
        self._copied_on_device, self._kept_states = self._plan_device_copies(fitted, device_copy_room)
        # A float8 re-merge compiled on a GPU: two fused passes over each weight instead of eager float32 round trips.
        # Shape-generic: one compile at the first merge serves the block's three weight shapes (a compile each cost the
        # first LoRA segment after a LoRA-less one tens of seconds on the H200, bench/README.md).
        on_gpu = any(
            parameter.device.type == "cuda"
            for attached in self._attached
            for parameter in attached.transformer.parameters()
        )
        self._requantize: Requantize = torch.compile(float8_rows, dynamic=True) if on_gpu else float8_rows
        try:
            for attached in self._attached:
                setattr(attached.transformer, _HELD_BY, True)
            self._modes = self._resolve_modes(mode, fitted)
            for attached in self._attached:
                self._install(attached, fitted[id(attached)])
        except BaseException:
            self.close()
            raise
        if self._paths:
            modes = ", ".join(f"{self._modes[id(attached)]} on {attached.experts}" for attached in self._attached)
            logger.info(f"LoRAs {[path.name for path in self._paths]} attached ({modes})")

    @property
    def mode(self) -> str:
        """The mode in use: "merged" or "unmerged", or "mixed" where auto chose each transformer's apart."""
        modes = set(self._modes.values())
        return modes.pop() if len(modes) == 1 else "mixed"

    @property
    def adapter_names(self) -> list[str]:
        return list(self._adapter_names)

    @property
    def device_copy_bytes(self) -> int:
        """Device bytes the merged mode's exact originals and kept merged weights take (or will, once their strengths
        first apply); 0 unmerged."""
        copies = sum(size for key, size in self._copied_on_device.items() if self._modes[key] == "merged")
        kept = sum(
            self._copied_on_device[key] * len(states)
            for key, states in self._kept_states.items()
            if self._modes[key] == "merged"
        )
        return copies + kept

    def __enter__(self) -> LoraRuntime:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def set_step_strengths(self, expert: str, strengths: Sequence[float]) -> None:
        """Apply one step's per-LoRA multipliers to the transformer of `expert`; a no-op when they did not change."""
        if self._closed:
            raise RuntimeError("set_step_strengths: this LoraRuntime is closed")
        attached = self._by_expert.get(expert)
        if attached is None:
            raise ValueError(f"expert: expected one of {sorted(self._by_expert)}, got {expert!r}")
        values = tuple(float(value) for value in strengths)
        if len(values) != len(self._adapter_names):
            raise ValueError(f"strengths: expected {len(self._adapter_names)} values (one per LoRA), got {len(values)}")
        for index, value in enumerate(values):
            if not math.isfinite(value):
                raise ValueError(f"strengths[{index}]: expected a finite number, got {value}")
        if values == attached.applied_strengths:
            return
        if attached.lora_layers:
            self._activate(attached, values)
        keep = values in self._kept_states.get(id(attached), ())
        for write in attached.writes:
            write.apply(values, self._requantize, keep=keep)
        attached.applied_strengths = values
        logger.debug(f"LoRA strengths for {attached.experts}: {list(values)}")

    def close(self) -> None:
        """Give the transformers back exactly as they were: original weights, no adapters, plain Linear layers."""
        if self._closed:
            return
        self._closed = True
        for attached in self._attached:
            for write in attached.writes:
                write.restore()
            attached.writes = []
            attached.lora_layers = []
            if getattr(attached.transformer, "peft_config", None) or _has_lora_layers(attached.transformer):
                _remove_adapters(attached.transformer)
            if hasattr(attached.transformer, _HELD_BY):
                delattr(attached.transformer, _HELD_BY)

    # --- fitting each file to each transformer ------------------------------------------------------------------

    @staticmethod
    def _fit(attached: _AttachedTransformer, file: LoraFile) -> _Fitted:
        """Which of the file's changes name a module or parameter of this transformer; LoraError where one does but
        does not fit it (another model size, a pair on a layer that is not Linear)."""
        parts = {id(file.for_expert(expert)): file.for_expert(expert) for expert in attached.experts}
        if len(parts) > 1:
            raise LoraError(
                file.path, f"holds different parts for the experts {attached.experts}, which share one transformer"
            )
        weights = next(iter(parts.values()))
        modules = dict(attached.transformer.named_modules())
        fitted = _Fitted(unmatched=list(weights.unused))
        for name, pair in weights.low_rank.items():
            module = modules.get(name)
            if module is None:
                fitted.unmatched.append(pair.source)
                continue
            if not isinstance(module, torch.nn.Linear):
                raise LoraError(file.path, f"{name} is a {type(module).__name__}; LoRA pairs apply to Linear layers")
            if pair.down.shape[1] != module.in_features or pair.up.shape[0] != module.out_features:
                raise LoraError(
                    file.path,
                    f"{name}: the pair maps {pair.down.shape[1]} inputs to {pair.up.shape[0]} outputs, the layer "
                    f"{module.in_features} to {module.out_features} (a LoRA for another model size?)",
                )
            fitted.low_rank[name] = (module, pair)
        for name, delta in weights.full.items():
            owner_name, _, attr = name.rpartition(".")
            owner = modules.get(owner_name)
            parameter = owner._parameters.get(attr) if owner is not None else None
            if parameter is None:
                fitted.unmatched.append(f"{delta.source} ({name})")
                continue
            if tuple(delta.delta.shape) != tuple(parameter.shape):
                raise LoraError(
                    file.path,
                    f"{name}: a delta of shape {tuple(delta.delta.shape)} for a parameter of shape "
                    f"{tuple(parameter.shape)} (a LoRA for another model size?)",
                )
            fitted.full[name] = (owner, attr, delta)
        return fitted

    def _resolve_modes(self, requested: str, fitted: Mapping[int, list[_Fitted]]) -> dict[int, Mode]:
        """id(attached) -> its mode. Auto on CUDA costs each transformer apart (its experts' spans, where its exact
        originals live): the high expert may merge from device copies while the low one runs adapters."""

        def every(mode: Mode) -> dict[int, Mode]:
            return {id(attached): mode for attached in self._attached}

        files = [file for per_transformer in fitted.values() for file in per_transformer]
        always_written = [
            (name, getattr(owner, attr)) for file in files for name, (owner, attr, _) in file.full.items()
        ]
        always_written += [
            (f"{name}.weight", module.weight)
            for file in files
            for name, (module, pair) in file.low_rank.items()
            if pair.magnitude is not None
        ]
        quantized = [name for name, parameter in always_written if not _writable(parameter)]
        if quantized:
            raise ValueError(
                f"LoRA deltas for {quantized[:3]}: these parameters hold quantized weights other than float8 with "
                "per-row scales, which nothing can be written into"
            )
        if requested == "unmerged":
            return every("unmerged")
        unmergeable = [
            name for file in files for name, (module, _) in file.low_rank.items() if not _writable(module.weight)
        ]
        if requested == "merged":
            if unmergeable:
                raise ValueError(
                    f"mode 'merged': layers {unmergeable[:3]} have quantized weights other than float8 with per-row "
                    "scales, which nothing can be merged into"
                )
            return every("merged")
        if unmergeable:
            return every("unmerged")
        devices = {
            parameter.device.type for attached in self._attached for parameter in attached.transformer.parameters()
        }
        if "cuda" not in devices:
            return every(CPU_AUTO_MODE)
        experts = {id(attached): attached.experts for attached in self._attached}
        float8 = [
            key
            for key, per_transformer in fitted.items()
            if any(is_float8_rows(module.weight) for file in per_transformer for module, _ in file.low_rank.values())
        ]
        return auto_modes(self._steps, experts, self._copied_on_device, float8, generations=self._generations)

    def _plan_device_copies(
        self, fitted: Mapping[int, list[_Fitted]], room: int
    ) -> tuple[dict[int, int], dict[int, frozenset[tuple[float, ...]]]]:
        """(id(attached) -> bytes of the exact originals it will keep on the device, id(attached) -> the sets of
        strengths whose merged weights it will keep there too).

        Originals first, for the transformers whose originals fit in `room` together, taken in order of strength
        changes (most first): a re-merge from a device copy costs a fraction of one from host memory, and a transformer
        whose strengths never change never re-merges. Then, in the same order, a transformer with device originals
        whose strengths change keeps one merged copy per distinct set of strengths of the step plan, if all of them fit
        in what is left: each later return to a set is a copy of its weights (one pass of their bytes) instead of a
        merge. A worker keeps the runtime for a travel run's next segment, which starts over at the first set."""
        if room <= 0:
            return {}, {}
        changes = {id(attached): 0 for attached in self._attached}
        used = {id(attached): set() for attached in self._attached}  # the LoRAs that ever write into it
        states: dict[int, set[tuple[float, ...]]] = {id(attached): set() for attached in self._attached}
        for expert, runs in forward_spans(self._steps or []).items():
            if expert in self._by_expert:
                changes[id(self._by_expert[expert])] += len(runs) - 1
        for expert, _, strengths in self._steps or [(name, 0, (1.0,) * len(self._paths)) for name in self._by_expert]:
            if expert in self._by_expert:
                used[id(self._by_expert[expert])].update(i for i, value in enumerate(strengths) if value != 0.0)
                if any(strengths):
                    states[id(self._by_expert[expert])].add(tuple(float(value) for value in strengths))
        order = sorted(self._attached, key=lambda attached: -changes[id(attached)])
        planned: dict[int, int] = {}
        for attached in order:
            parameters: dict[str, torch.Tensor] = {}
            for index, file in enumerate(fitted[id(attached)]):
                if index in used[id(attached)]:
                    parameters.update({f"{name}.weight": module.weight for name, (module, _) in file.low_rank.items()})
                    parameters.update({name: getattr(owner, attr) for name, (owner, attr, _) in file.full.items()})
            size = sum(tensor_bytes(parameter) for parameter in parameters.values())
            if size and size <= room - sum(planned.values()):
                planned[id(attached)] = size
        left = room - sum(planned.values())
        kept: dict[int, frozenset[tuple[float, ...]]] = {}
        for attached in order:
            key = id(attached)
            if key in planned and changes[key] > 0 and planned[key] * len(states[key]) <= left:
                kept[key] = frozenset(states[key])
                left -= planned[key] * len(states[key])
        return planned, kept

    def _install(self, attached: _AttachedTransformer, fitted: list[_Fitted]) -> None:
        """Peft adapters for the plain pairs (unmerged mode); a _Write for every other parameter a LoRA changes."""
        writes: dict[str, _Write] = {}

        def write(name: str, owner: torch.nn.Module, attr: str, index: int, term: LowRank | FullDelta) -> None:
            device = getattr(owner, attr).device  # kept beside the parameter: a re-merge moves nothing
            if isinstance(term, FullDelta):
                term = FullDelta(delta=term.delta.to(device), source=term.source)
            else:
                magnitude = term.magnitude.to(device) if term.magnitude is not None else None
                term = LowRank(term.down.to(device), term.up.to(device), magnitude, term.source)
            on_device = id(attached) in self._copied_on_device
            writes.setdefault(name, _Write(name, owner, attr, [], on_device)).terms.append((index, term))

        for index, (adapter_name, path, file) in enumerate(zip(self._adapter_names, self._paths, fitted, strict=True)):
            adapters: dict[str, tuple[torch.nn.Linear, LowRank]] = {}
            for name, (module, pair) in file.low_rank.items():
                if self._modes[id(attached)] == "unmerged" and pair.magnitude is None:
                    adapters[name] = (module, pair)
                else:
                    write(f"{name}.weight", module, "weight", index, pair)
            for name, (owner, attr, delta) in file.full.items():
                write(name, owner, attr, index, delta)
            if adapters:
                _attach(attached.transformer, adapter_name, path, adapters)
        attached.writes = list(writes.values())
        attached.lora_layers = [
            (name, module) for name, module in attached.transformer.named_modules() if isinstance(module, LoraLayer)
        ]
        if attached.lora_layers:
            self._set_enabled(attached, False)  # base behaviour until the first set_step_strengths

    # --- unmerged -----------------------------------------------------------------------------------------------

    def _activate(self, attached: _AttachedTransformer, strengths: tuple[float, ...]) -> None:
        # Zero-strength LoRAs are left out of the active set: exactly the base output, and no wasted matmuls.
        active = [(name, value) for name, value in zip(self._adapter_names, strengths, strict=True) if value != 0.0]
        if not active:
            self._set_enabled(attached, False)
            return
        names = [name for name, _ in active]
        if not attached.adapters_enabled:
            self._set_enabled(attached, True)
        for _, layer in attached.lora_layers:
            layer.set_adapter(names, inference_mode=True)
            for name, value in active:
                layer.set_scale(name, value)

    def _set_enabled(self, attached: _AttachedTransformer, enabled: bool) -> None:
        for _, layer in attached.lora_layers:
            layer.enable_adapters(enabled)
        attached.adapters_enabled = enabled


def _report_unmatched(file: LoraFile, fitted: Sequence[_Fitted], experts: Sequence[str]) -> None:
    """One WARNING per file for what names nothing in the transformers; LoraError when nothing of it applies."""
    applied = sum(len(part.low_rank) + len(part.full) for part in fitted)
    unmatched = sorted({source for part in fitted for source in part.unmatched})
    unused_parts = sorted(expert for expert in file.parts if expert != ALL_EXPERTS and expert not in experts)
    if not applied:
        examples = unmatched[:_NAMES_SHOWN] or [f"its part for {unused_parts}"]
        raise LoraError(
            file.path,
            f"nothing in it applies to this model's transformers {list(experts)} (it looks like {file.layout}); "
            f"{len(unmatched)} modules name nothing here, e.g. {examples} (a LoRA for another Wan model?)",
        )
    if unmatched:
        logger.warning(
            f"LoRA {file.path.name} ({file.layout}): {len(unmatched)} of its modules name nothing in this model and "
            f"are not applied, e.g. {unmatched[:_NAMES_SHOWN]} (a LoRA made for another Wan variant?)"
        )
    for expert in unused_parts:
        logger.warning(
            f"LoRA {file.path.name}: its part for the {expert}-noise expert ({len(file.parts[expert])} modules) is not "
            f"applied: this model has the experts {list(experts)}"
        )


def _attach(
    transformer: torch.nn.Module, adapter_name: str, path: Path, pairs: Mapping[str, tuple[torch.nn.Linear, LowRank]]
) -> None:
    """Attach one LoRA's plain pairs (already checked against their Linear layers) as a peft adapter."""
    tensors: dict[str, torch.Tensor] = {}
    ranks: dict[str, int] = {}
    # lora_A keys first: diffusers treats a state dict whose first key lacks "lora_A" as non-peft and renames it.
    for name in sorted(pairs):
        linear, pair = pairs[name]
        ranks[name] = pair.down.shape[0]
        # peft would cast to the layer's dtype anyway; doing it here keeps the file's tensors untouched.
        tensors[f"{name}.lora_A.weight"] = pair.down.to(linear.weight.dtype)
    for name in sorted(pairs):
        linear, pair = pairs[name]
        tensors[f"{name}.lora_B.weight"] = pair.up.to(linear.weight.dtype)

    # An explicit LoraConfig: exact module targets (peft's list matching would also catch e.g. vace_blocks.N.proj_out
    # for "proj_out"), and lora_alpha == rank everywhere since alpha/rank is already folded into the weights.
    rank = Counter(ranks.values()).most_common(1)[0][0]
    other_ranks = {f"^{re.escape(module)}": value for module, value in ranks.items() if value != rank}
    config = {
        "r": rank,
        "lora_alpha": rank,
        "rank_pattern": other_ranks,
        "alpha_pattern": dict(other_ranks),
        "target_modules": "^(?:" + "|".join(re.escape(module) for module in sorted(ranks)) + ")$",
    }
    try:
        with warnings.catch_warnings():
            # peft warns that a second adapter makes "multiple adapters in the model": that is the point here.
            warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
            # on 8-bit weights (Wan2GP.quantization) peft cannot merge: the adapters run unmerged there by design
            warnings.filterwarnings("ignore", message="TorchaoLoraLinear was instantiated without")
            transformer.load_lora_adapter(
                tensors, prefix=None, adapter_name=adapter_name, metadata=config, low_cpu_mem_usage=True
            )
    except (ValueError, RuntimeError, KeyError) as error:
        raise LoraError(path, f"peft could not attach it ({type(error).__name__}: {error})") from error


def _remove_adapters(transformer: torch.nn.Module) -> None:
    """What diffusers' `unload_lora` does, without its re-application of group offloading (which would undo the
    engine's own arrangement of streamed and resident blocks, Wan2GP.offload): every original Linear (same module,
    same Parameter) goes back in its parent and the peft config is dropped."""
    recurse_remove_peft_layers(transformer)
    if hasattr(transformer, "peft_config"):
        del transformer.peft_config
    if hasattr(transformer, "_hf_peft_config_loaded"):
        transformer._hf_peft_config_loaded = None


def _writable(parameter: torch.Tensor) -> bool:
    """Whether a merged LoRA or a full delta can be written into this parameter: a float tensor, or a float8 weight
    with per-row scales (quantized again after every write)."""
    plain = type(parameter.data) is torch.Tensor and parameter.dtype in (torch.float32, torch.float16, torch.bfloat16)
    return plain or is_float8_rows(parameter.data)


def _has_lora_layers(transformer: torch.nn.Module) -> bool:
    return any(isinstance(module, LoraLayer) for module in transformer.modules())
