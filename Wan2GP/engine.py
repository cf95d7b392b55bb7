"""The engine object: owns the loaded model, runs one generation per ``generate`` call.

One ``WanEngine`` holds at most one catalog model, placed within its VRAM budget and the host's memory
(Wan2GP.placement), with what a travel run's next segment can reuse: the last generation's LoRAs still attached and
recent prompts' embeddings. Asking for another model frees the first. There is no module-level state: the worker holds
its own engine, scripts may create one or let ``Wan2GP.wgp.generate_video`` do it.
"""

from __future__ import annotations

import gc
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import PIL.Image
import torch
from loguru import logger
from tqdm import tqdm

from Wan2GP.attention import choose_attention_kernel, install_attention_kernel
from Wan2GP.catalog import Catalog, CatalogError, ModelDefinition, check_attention_kernel, check_vae_dtype, load_catalog
from Wan2GP.conditioning import (
    VaeCodec,
    black_frame,
    build_image_condition,
    build_vace_context,
    clip_image_tokens,
    frame_image,
    guide_pixels,
    image_to_pixels,
    latent_frames,
    load_image,
    mask_values,
    reference_pixels,
)
from Wan2GP.context_parallel import RankGroup, check_divisible, enable_context_parallel, leader_first
from Wan2GP.feed_forward import install_gelu_epilogue
from Wan2GP.loading import (
    LoadedModel,
    ModelLoadError,
    component_dtypes,
    load_components_of,
    quiet_libraries,
    resolve_weights_dir,
)
from Wan2GP.model_folders import default_cache_dir
from Wan2GP.offload import OffloadedParts, apply_placement, component_devices, model_sizes
from Wan2GP.placement import (
    HostMemoryTooSmall,
    ModelSizes,
    Placement,
    VramBudgetTooSmall,
    WorkSizes,
    plan_placement,
)
from Wan2GP.prompt_text import DEFAULT_PROMPT_MODEL
from Wan2GP.quantization import FAST_FORMAT, check_weight_format, fp8_matmuls_available
from Wan2GP.request import GenerationRequest, InvalidGenerationParams, check_param_names, resolve_request
from Wan2GP.sampler import (
    CancelFlag,
    Conditioning,
    DenoiseResult,
    GenerationCancelled,
    denoise,
    expert_for_step,
    needs_negative_prompt,
)
from Wan2GP.schedule import GenerationPlan, StepPlan
from Wan2GP.text import WAN_DEFAULT_NEGATIVE_PROMPT, PromptEmbeddingCache, PromptEncoder, first_prompt_line
from Wan2GP.vae_layers import prepare_for_gpu
from Wan2GP.video_io import VideoReadError, pixels_to_uint8, read_video, write_mp4

if TYPE_CHECKING:
    from Wan2GP.loras import LoraRuntime
    from Wan2GP.prompt_writer import PromptRequest

__all__ = [
    "GenerationCancelled",
    "GenerationResult",
    "InvalidGenerationParams",
    "ModelLoadError",
    "ProgressEvent",
    "PromptOutcome",
    "RenderedVideo",
    "WanEngine",
    "default_cache_dir",
]

STAGES = ("load", "encode", "denoise", "decode", "write")

# (definition, weights folder, run device, device per component, transformer weights format) -> the loaded components
ComponentLoader = Callable[[ModelDefinition, Path, torch.device, Mapping[str, torch.device], str], LoadedModel]


@dataclass(frozen=True)
class ProgressEvent:
    stage: str  # one of STAGES
    step: int  # steps done so far: 0 when a stage before denoising starts, 1..total in it, total after it
    total: int  # the generation's number of denoising steps (one total for every event of a generation)
    phase: int  # guidance phase of the step just done (1-based); 0 outside denoise
    expert: str  # "high" / "low" for the step just done; "" outside denoise


@dataclass(frozen=True)
class GenerationResult:
    path: Path
    frames: int
    fps: int
    width: int
    height: int
    seed: int
    timings: dict[str, float]  # seconds per stage, plus "total"
    forward_passes: dict[str, int]  # transformer forwards per expert: the cost of the run
    plan: GenerationPlan
    model: str


@dataclass(frozen=True)
class RenderedVideo:
    """A generation before it is written: final latents and uint8 frames, for callers (and tests) that need them."""

    request: GenerationRequest
    latents: torch.Tensor  # (1, z, T, h, w) float32: z = 16, or 48 for Wan 2.2 5B
    frames: np.ndarray | None  # (F, H, W, 3) uint8; None when rendered without decoding (a context-parallel follower)
    forward_passes: dict[str, int]
    timings: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class PromptOutcome:
    """One prompt the prompt writer was asked for: the prompt, or why there is none."""

    prompt: str | None
    error: str | None = None


@dataclass(frozen=True)
class _KeptLoras:
    """A LoRA runtime left attached after its generation, and what it was opened for."""

    key: tuple[tuple[tuple[str, int, int], ...], str]  # each file's identity (_file_identity), the mode asked for
    runtime: LoraRuntime


def _file_identity(path: Path) -> tuple[str, int, int]:
    """A file's resolved path, size and modification time: a changed or replaced file is another file."""
    stat = path.stat()
    return str(path.resolve()), stat.st_size, stat.st_mtime_ns


# Room the VLM needs on the device beyond its weights: the vision tower's and the decoder's activations for one
# side-by-side image of at most 1280 merged tiles and 512 new tokens, with allocator slack.
PROMPT_MODEL_ACTIVATION_BYTES = 3 * 2**30


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_vram_budget(device: torch.device) -> int | None:
    """The device memory this process may use now: the card's free memory, capped by the per-process memory fraction
    (`torch.cuda.set_per_process_memory_fraction`); None on a CPU (no budget: everything resident)."""
    if device.type != "cuda":
        return None
    index = device.index if device.index is not None else torch.cuda.current_device()
    free, total = torch.cuda.mem_get_info(index)
    fraction_of = getattr(torch.cuda, "get_per_process_memory_fraction", None)  # torch >= 2.8
    fraction = fraction_of(index) if fraction_of is not None else 1.0
    return int(min(free, total * fraction))


# Host memory left to the process beside the offloaded weights: decoded frames, the loader's one-tensor-at-a-time
# staging, the Python heap.
HOST_MEMORY_MARGIN_BYTES = 4 * 2**30

# Device memory kept free beside a merged LoRA's exact copies of the weights, as a share of the estimated peak: at the
# seed size on the H200 the resident placement's estimate was 70.3 GiB, the measured peak 74.2 GiB allocated and
# 80.0 GiB reserved (bench/results/memory_h200.log).
LORA_COPY_MARGIN = 0.15
# How many generations the LoRA mode choice spreads a merge's one-time costs (first merge, close) over: the engine keeps
# a LoRA set attached for the next generation that asks for the same files, as a travel run's segments do. At the
# float8 costs measured on the H200 (Wan2GP.loras) the seed segment's merged LoRAs pay for themselves from the third
# segment on; a one-off generation that merges pays at most ~0.2 forwards more than adapters would have.
LORA_RUN_GENERATIONS = 3


def default_host_budget(cgroup: Path = Path("/sys/fs/cgroup")) -> int:
    """Host memory the offloaded parts may take now: what the system has available (psutil), capped by the cgroup's
    limit in a container (a pod's limit, not the host's memory), minus HOST_MEMORY_MARGIN_BYTES."""
    import psutil

    available = psutil.virtual_memory().available
    limit, usage = cgroup / "memory.max", cgroup / "memory.current"  # cgroup v2
    try:
        limit_text = limit.read_text().strip()
        if limit_text != "max":
            available = min(available, int(limit_text) - int(usage.read_text()))
    except (OSError, ValueError):
        pass  # no cgroup v2 memory controller: the system's figure stands
    return max(0, available - HOST_MEMORY_MARGIN_BYTES)


class WanEngine:
    """`reinject_start_frame` (i2v): Wan2GP puts the clean start-frame latent back, re-noised to the step's level,
    before every forward and once more at the end (upstream_engine_spec §9.9), so frame 0 is exactly the start image;
    diffusers' WanImageToVideoPipeline does not. True (the default) keeps Wan2GP's behaviour; False reproduces
    diffusers', which is what the equivalence tests compare against.

    `vram_budget` (bytes; default: default_vram_budget) decides where the model's parts live (Wan2GP.placement): all
    resident when they fit, else the encoders offloaded, else the transformers' blocks streamed from pinned host
    memory; the VAE tiled where its whole-frame decode would not fit. `placement` forces one (tests, benchmarks).
    `host_budget` (bytes; default: default_host_budget when the model loads) bounds the host memory the offloaded
    parts take. `transformer_weights` ("native", "int8", "fp8", "fp8_dynamic"; default: the definition's setting,
    "auto": native where a placement fits both budgets, else int8) chooses the transformers' block weights
    (Wan2GP.quantization); "fp8_dynamic" (fp8 activations too, the worker's --fast) is "auto" on a device without fp8
    matmuls.
    `component_loader` reads a model's components onto the devices its placement gives (default: from its weights
    folder; the GPU benchmarks build random full-size ones instead, bench/memory_profiles.py). `rank_group` makes this
    engine one rank of a context-parallel group (Wan2GP.context_parallel): its transformers split each forward's
    sequence with the other ranks, which must run the same generations (ContextParallelLeader, follow).
    `compile_backend` ("inductor": the worker's --compile) compiles each loaded transformer's repeated block once with
    torch.compile (diffusers' compile_repeated_blocks; on an H200 1.18x per forward, bench/README.md) when the whole
    model is resident on one GPU; the first generation at a new size pays the compile. `vae_dtype` (the worker's
    --vae-dtype) overrides the definition's VAE dtype on a GPU (the bundled models' float16 decodes the seed segment in
    1.21 s instead of 1.90 s on an H200, 1.8e-3 from fp32; bench/README.md). On a GPU the VAE's convolutions run
    channels-last (NDHWC), and its causal convolutions, RMS norms, upsamplers and residual blocks run
    Wan2GP.vae_layers' forwards (the same arithmetic up to rounding, in fewer passes over memory; with
    `compile_backend`, the residual blocks' elementwise functions compiled, with the convolutions' biases in them);
    `stock_vae_layers` keeps diffusers' own (the segment benchmark's stock pipeline shares its first engine's VAE).
    `attention` ("auto", "sdpa", "flash3", "flash4", "cudnn_fp8"; Wan2GP.attention) picks the transformers' attention
    kernel: "auto" is, on the fast path ("fp8_dynamic" weights), cuDNN's fp8 attention where it can run (a compute
    capability 9.x/10.x GPU with nvidia-cudnn-frontend installed), then FlashAttention-3 (a 9.x GPU with flash-attn-3
    built and installed), then FlashAttention-4 (a 9.x/10.x GPU with flash-attn-4 installed), SDPA elsewhere and on
    context-parallel ranks."""

    def __init__(
        self,
        *,
        device: str | None = None,
        cache_dir: Path | None = None,
        catalog: Catalog | None = None,
        lora_dir: Path | None = None,
        reinject_start_frame: bool = True,
        prompt_model: str = DEFAULT_PROMPT_MODEL,
        vram_budget: int | None = None,
        placement: str | None = None,
        host_budget: int | None = None,
        transformer_weights: str | None = None,
        component_loader: ComponentLoader = load_components_of,
        rank_group: RankGroup | None = None,
        compile_backend: str | None = None,
        vae_dtype: str | None = None,
        stock_vae_layers: bool = False,
        attention: str = "auto",
    ) -> None:
        self.reinject_start_frame = reinject_start_frame
        self.attention = check_attention_kernel(attention)
        self.vae_dtype = check_vae_dtype(vae_dtype) if vae_dtype is not None else None
        self.stock_vae_layers = stock_vae_layers
        self.prompt_model = prompt_model  # the VLM write_prompts loads: a repo id, a local folder or "tiny"
        quiet_libraries()
        self.rank_group = rank_group
        self.compile_backend = compile_backend
        if rank_group is not None:
            device = str(rank_group.device)
        self.device = torch.device(device) if device is not None else default_device()
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.catalog = catalog if catalog is not None else load_catalog()
        self.lora_dir = Path(lora_dir) if lora_dir is not None else self.cache_dir / "loras"
        self.vram_budget = vram_budget if vram_budget is not None else default_vram_budget(self.device)
        self.forced_placement = placement
        self.host_budget = host_budget
        self.transformer_weights = check_weight_format(transformer_weights) if transformer_weights is not None else None
        self._component_loader = component_loader
        self._loaded: LoadedModel | None = None
        self._sizes: ModelSizes | None = None  # the loaded model's component sizes
        self._placement: Placement | None = None  # where the loaded model's parts live
        self._offloaded: OffloadedParts | None = None  # its offloaded parts: page-locked host memory, streamed blocks
        self._prompt_cache = PromptEmbeddingCache()  # the loaded model's recent prompt embeddings
        self._kept_loras: _KeptLoras | None = None  # the last generation's LoRAs, still attached (_open_loras)
        # One generation at a time per engine: the loaded modules are mutated by LoRA attachment.
        self._lock = threading.Lock()

    # -- model lifetime -------------------------------------------------------------------------------------------

    def loaded_model(self) -> str | None:
        return self._loaded.model_id if self._loaded is not None else None

    def definition(self, model_id: str) -> ModelDefinition:
        try:
            return self.catalog.get(model_id)
        except CatalogError as error:
            raise InvalidGenerationParams(["model"], f"model: {error}") from None

    @property
    def placement(self) -> Placement | None:
        """Where the loaded model's parts live (None when no model is loaded)."""
        return self._placement

    @property
    def pinned_host_bytes(self) -> int:
        """Page-locked host memory holding the loaded model's offloaded parts (0 when all of it is resident)."""
        return self._offloaded.pinned.bytes if self._offloaded is not None else 0

    def load(self, model_id: str, *, width: int = 832, height: int = 480, num_frames: int = 81) -> LoadedModel:
        """Make ``model_id`` the loaded model and return its components, placed for a generation of this size (a
        no-op when it is loaded and its placement has room for that size; reloaded in a leaner placement when not)."""
        definition = self.definition(model_id)
        if self._loaded is not None and self._loaded.model_id == definition.id:
            assert self._sizes is not None and self._placement is not None
            work = self._sizes.work_for(latent_frames=latent_frames(num_frames), width=width, height=height)
            if self._fits(self._placement, self._sizes, work):
                return self._loaded
            logger.info(
                "{} at {}x{}x{} needs a leaner placement than {}",
                model_id,
                width,
                height,
                num_frames,
                self._placement.kind,
            )
        self.unload()
        started = time.perf_counter()
        if self.vae_dtype is not None:
            definition = definition.model_copy(update={"vae_dtype": self.vae_dtype})
        weights_dir = resolve_weights_dir(definition, self.cache_dir)
        transformer_dtype, vae_dtype, text_dtype = component_dtypes(definition, self.device)
        formats = self._weight_formats(definition)
        sizes_of = model_sizes(
            definition,
            weights_dir,
            transformer_dtype=transformer_dtype,
            vae_dtype=vae_dtype,
            text_dtype=text_dtype,
            weights=formats,
        )
        work = sizes_of[formats[0]].work_for(latent_frames=latent_frames(num_frames), width=width, height=height)
        try:
            placement = plan_placement(
                sizes_of[formats[0]],
                work,
                self.vram_budget,
                model=definition.id,
                forced=self.forced_placement,
                weights=formats[0],
                host_budget=self._host_budget(),
                fallback=(formats[1], sizes_of[formats[1]]) if len(formats) > 1 else None,
            )
        except VramBudgetTooSmall as error:
            raise InvalidGenerationParams(
                ["resolution"], f"resolution: {width}x{height}x{num_frames}: {error}"
            ) from None
        except HostMemoryTooSmall as error:
            raise ModelLoadError(f"model {definition.id}: {error}") from None
        sizes = sizes_of[placement.weights]
        try:  # chosen before the components load: an explicit kernel that cannot run fails at once
            kernels = choose_attention_kernel(
                self.attention,
                self.device,
                transformer_dtype,
                context_parallel=self.rank_group is not None,
                fp8_activations=placement.weights == FAST_FORMAT,
            )
        except ValueError as error:
            raise ModelLoadError(f"model {definition.id}: {error}") from None
        loaded = self._component_loader(
            definition, weights_dir, self.device, component_devices(placement, self.device), placement.weights
        )
        self._offloaded = apply_placement(
            placement,
            self.device,
            transformers=loaded.transformers,
            encoders=(loaded.text_encoder, loaded.image_encoder),
            vae=loaded.vae,
        )
        if self.device.type == "cuda":
            prepare_for_gpu(loaded.vae, stock_layers=self.stock_vae_layers, compile_backend=self.compile_backend)
        for transformer in loaded.distinct_transformers:
            install_attention_kernel(transformer, kernels)
        if self.rank_group is not None:
            for transformer in loaded.transformers.values():
                enable_context_parallel(transformer, self.rank_group, model=definition.id)
        if self.compile_backend is not None:
            self._compile(loaded, placement)
        self._loaded, self._sizes, self._placement = loaded, sizes, placement
        logger.info(
            "Loaded {} on {} in {:.2f}s, placement {}{}",
            definition.id,
            self.device,
            time.perf_counter() - started,
            placement.describe(),
            f", {self.pinned_host_bytes / 1e9:.1f} GB in page-locked host memory" if self.pinned_host_bytes else "",
        )
        return loaded

    def _compile(self, loaded: LoadedModel, placement: Placement) -> None:
        """Compile the transformers' repeated block, where nothing else wraps its call: streamed blocks run inside
        diffusers' offloading hooks and context-parallel ranks inside its sequence-splitting hooks, neither of which a
        full-graph compile traces. Their feed-forwards first get the GELU in their GEMM's epilogue
        (Wan2GP.feed_forward), which reads the Linear's weight itself: an offloading hook would onload it in the
        Linear's forward."""
        if placement.kind != "resident" or self.rank_group is not None:
            why = f"placement {placement.kind}" if placement.kind != "resident" else "context parallelism"
            logger.info("not compiling the transformers: {} (compiled only when resident on one GPU)", why)
            return
        for transformer in loaded.distinct_transformers:
            install_gelu_epilogue(transformer)
            transformer.compile_repeated_blocks(fullgraph=True, backend=self.compile_backend)
        logger.info("transformer blocks compiled with torch.compile ({}) on their first forward", self.compile_backend)

    def _weight_formats(self, definition: ModelDefinition) -> tuple[str, ...]:
        """The transformer weight formats a load may use, preferred first."""
        chosen = self.transformer_weights or definition.transformer_weights
        if chosen == FAST_FORMAT and not fp8_matmuls_available(self.device):
            logger.info(
                "{} asks for fp8 activations, which {} cannot run: its weights as 'auto'", definition.id, self.device
            )
            chosen = "auto"
        return ("native", "int8") if chosen == "auto" else (chosen,)

    def _host_budget(self) -> int | None:
        """Host memory the offloaded parts may take (None: no limit; a CPU runs everything resident)."""
        if self.host_budget is not None:
            return self.host_budget
        return default_host_budget() if self.device.type == "cuda" else None

    def _fits(self, placement: Placement, sizes: ModelSizes, work: WorkSizes) -> bool:
        if self.vram_budget is None or self.forced_placement is not None:
            return True
        return placement.needed_for(sizes, work) <= self.vram_budget

    def unload(self) -> None:
        if self._loaded is None:
            return
        logger.info("Unloading {}", self._loaded.model_id)
        self.detach_loras()
        self._loaded = self._sizes = self._placement = None
        self._prompt_cache.clear()  # the next model's text encoder may differ
        gc.collect()
        if self._offloaded is not None:
            self._offloaded.release()  # unregistered before the buffers can be freed
            self._offloaded = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    # -- prompt writing -------------------------------------------------------------------------------------------

    def write_prompts(
        self,
        requests: Sequence[PromptRequest],
        *,
        max_new_tokens: int | None = None,
        on_prompt: Callable[[int, int], None] | None = None,
    ) -> list[PromptOutcome]:
        """Write one prompt per request with the prompt model, loaded for this batch and freed afterwards.

        The loaded Wan model stays on the device when both fit; when they do not, it waits in host memory while the
        VLM runs and comes back afterwards (no reload from disk). A request that fails (an unreadable image, an
        empty answer, out of memory in that one generation) gets an outcome with the error; PromptWriterUnavailable
        when the model itself cannot be fetched or loaded."""
        from Wan2GP.prompt_writer import (  # transformers' Qwen2.5-VL, imported only when prompts are asked for
            MAX_NEW_TOKENS,
            PromptWriter,
            PromptWriterUnavailable,
            resolve_prompt_model,
            weights_bytes,
        )

        if not requests:
            return []
        folder = resolve_prompt_model(self.prompt_model, self.cache_dir)
        with self._lock:
            parked = self._make_room(weights_bytes(folder) + PROMPT_MODEL_ACTIVATION_BYTES)
            try:
                try:
                    writer = PromptWriter(folder, device=self.device, max_new_tokens=max_new_tokens or MAX_NEW_TOKENS)
                except torch.OutOfMemoryError as error:
                    raise PromptWriterUnavailable(f"out of memory loading the prompt model ({error})") from error
                outcomes: list[PromptOutcome] = []
                with writer:
                    for index, request in enumerate(requests):
                        started = time.perf_counter()
                        try:
                            outcomes.append(PromptOutcome(writer.write(request)))
                        except (ValueError, RuntimeError) as error:  # torch.OutOfMemoryError is a RuntimeError
                            outcomes.append(PromptOutcome(None, f"{type(error).__name__}: {error}"))
                        logger.info(
                            "prompt {}/{} {} in {:.2f}s",
                            index + 1,
                            len(requests),
                            "written" if outcomes[-1].prompt else "failed",
                            time.perf_counter() - started,
                        )
                        if on_prompt is not None:
                            on_prompt(index + 1, len(requests))
                return outcomes
            finally:
                if parked:
                    self._move_loaded(self.device)

    def _make_room(self, needed_bytes: int) -> bool:
        """Move the loaded Wan model to host memory when the device cannot hold it and `needed_bytes` more; True
        when it was moved."""
        if self.device.type != "cuda" or self._loaded is None:
            return False
        free, _ = torch.cuda.mem_get_info(self.device)
        if self.vram_budget is not None:  # what this process may still take: the budget, not the card, is the limit
            free = min(free, self.vram_budget - torch.cuda.memory_reserved(self.device))
        if needed_bytes <= free:
            logger.info(
                "the prompt model ({:.1f} GB) fits beside {} ({:.1f} GB free)",
                needed_bytes / 1e9,
                self._loaded.model_id,
                free / 1e9,
            )
            return False
        if self._placement is not None and self._placement.kind != "resident":
            # Offloaded parts already live in host memory, tied to their hooks; what is on the device is what the
            # budget could spare. The model is loaded again for the next generation.
            logger.info(
                "{} ({}) is unloaded while the prompt model runs ({:.1f} GB needed, {:.1f} GB free)",
                self._loaded.model_id,
                self._placement.kind,
                needed_bytes / 1e9,
                free / 1e9,
            )
            self.unload()
            return False
        logger.info(
            "{} waits in host memory while the prompt model runs ({:.1f} GB needed, {:.1f} GB free)",
            self._loaded.model_id,
            needed_bytes / 1e9,
            free / 1e9,
        )
        self._move_loaded(torch.device("cpu"))
        return True

    def _move_loaded(self, device: torch.device) -> None:
        """Move a resident model (offloaded placements are unloaded instead: _make_room)."""
        model = self._loaded
        if model is None:
            return
        for module in (*model.transformers.values(), model.text_encoder, model.vae, model.image_encoder):
            if module is not None:
                module.to(device)
        if device.type == "cpu":
            gc.collect()
            torch.cuda.empty_cache()

    # -- generation -----------------------------------------------------------------------------------------------

    def resolve(self, params: Mapping[str, Any]) -> GenerationRequest:
        """Check WGP parameters and resolve defaults without loading anything (InvalidGenerationParams if bad)."""
        check_param_names(params)
        model_id = params.get("model")
        if not isinstance(model_id, str) or not model_id:
            raise InvalidGenerationParams(["model"], f"model: expected a catalog model id, got {model_id!r}")
        return resolve_request(params, self.definition(model_id))

    def generate(
        self,
        params: Mapping[str, Any],
        *,
        output_dir: Path,
        progress: Callable[[ProgressEvent], None] | None = None,
        cancel: CancelFlag | None = None,
    ) -> GenerationResult:
        return self.generate_request(self.resolve(params), output_dir=output_dir, progress=progress, cancel=cancel)

    def generate_request(
        self,
        request: GenerationRequest,
        *,
        output_dir: Path,
        progress: Callable[[ProgressEvent], None] | None = None,
        cancel: CancelFlag | None = None,
    ) -> GenerationResult:
        """`generate` for a request already resolved (its seed drawn)."""
        rendered = self.render(request, progress=progress, cancel=cancel)
        timings = dict(rendered.timings)
        with _stage("write", self.device, timings, progress, at=request.plan.num_inference_steps):
            path = write_mp4(
                rendered.frames, _output_path(request, Path(request.output_dir or output_dir)), request.fps
            )
        timings["total"] = sum(value for key, value in timings.items() if key in STAGES)
        logger.info(
            "Wrote {} ({} frames {}x{} @ {} fps, seed {}, forwards {}) in {:.2f}s",
            path,
            rendered.frames.shape[0],
            request.width,
            request.height,
            request.fps,
            request.seed,
            rendered.forward_passes,
            timings["total"],
        )
        return GenerationResult(
            path=path,
            frames=int(rendered.frames.shape[0]),
            fps=request.fps,
            width=request.width,
            height=request.height,
            seed=request.seed,
            timings=timings,
            forward_passes=dict(rendered.forward_passes),
            plan=request.plan,
            model=request.model,
        )

    def render(
        self,
        request: GenerationRequest,
        *,
        progress: Callable[[ProgressEvent], None] | None = None,
        cancel: CancelFlag | None = None,
        decode: bool = True,
    ) -> RenderedVideo:
        """Run a resolved request up to decoded frames (no file written); with `decode` False up to the latents only
        (a context-parallel follower: rank 0 decodes)."""
        with self._lock:
            return self._render(request, progress, cancel, decode)

    def _render(
        self,
        request: GenerationRequest,
        progress: Callable[[ProgressEvent], None] | None,
        cancel: CancelFlag | None,
        decode: bool,
    ) -> RenderedVideo:
        timings: dict[str, float] = {}
        _check_cancel(cancel, "before loading")
        with _stage("load", self.device, timings, progress, at=0, total=request.plan.num_inference_steps):
            if self.rank_group is not None:
                definition = self.definition(request.model)

                def fetch_unless_loaded() -> None:  # a Hub model's resolve asks the Hub again every time
                    if self.loaded_model() != definition.id:
                        resolve_weights_dir(definition, self.cache_dir)

                # every rank takes part in every generation's hand-over; rank 0 fetches only what it does not hold
                leader_first(self.rank_group, fetch_unless_loaded, what=f"model {definition.id} on rank 0")
            model = self.load(
                request.model, width=request.width, height=request.height, num_frames=request.frames_with_references
            )
            loras = self._open_loras(request, model)
        try:
            with self._placement_named_on_oom():
                result = self._encode_and_denoise(request, model, loras, timings, progress, cancel)
        except BaseException:
            self.detach_loras()  # after an error or a cancel the next generation starts from the base weights
            raise
        finally:
            if self._offloaded is not None:
                self._offloaded.sync()  # streamed 8-bit weights read right again between generations

        _check_cancel(cancel, "before decoding")
        frames = None
        if decode:
            if self.device.type == "cuda" and self._placement is not None and self._placement.kind != "resident":
                # The streamed blocks' freed copies leave the cache in block-sized pieces; under a budget the decode's
                # larger buffers need them given back first (on the H200 at 24 GB: 3.9 GiB cached in pieces, out of
                # memory asking for 0.95 GiB).
                torch.cuda.empty_cache()
            with (
                _stage("decode", self.device, timings, progress, at=request.plan.num_inference_steps),
                torch.inference_mode(),
                self._placement_named_on_oom(),
            ):
                pixels = VaeCodec(model.vae).decode(result.latents)
                frames = pixels_to_uint8(pixels[:, : request.num_frames])
        return RenderedVideo(
            request=request,
            latents=result.latents,
            frames=frames,
            forward_passes=result.forward_passes,
            timings=timings,
        )

    @contextmanager
    def _placement_named_on_oom(self) -> Iterator[None]:
        """Out of memory stays a retryable failure (the worker maps it); the log says which budget and placement were
        in force, so the retry's operator knows what to change."""
        try:
            yield
        except torch.OutOfMemoryError:
            placement = self._placement.describe() if self._placement is not None else "none"
            logger.error("out of device memory under placement {}", placement)
            raise

    def _encode_and_denoise(
        self,
        request: GenerationRequest,
        model: LoadedModel,
        loras: LoraRuntime | None,
        timings: dict[str, float],
        progress: Callable[[ProgressEvent], None] | None,
        cancel: CancelFlag | None,
    ) -> DenoiseResult:
        # Seeded generator on the device; nothing draws from it before the sampler's initial noise.
        generator = torch.Generator(self.device).manual_seed(request.seed)
        codec = VaeCodec(model.vae)
        plan = request.plan

        _check_cancel(cancel, "before encoding")
        with (
            _stage("encode", self.device, timings, progress, at=0, total=plan.num_inference_steps),
            torch.inference_mode(),
        ):
            conditioning = self._conditioning(request, model, codec)

        latent_shape = (
            1,
            int(model.vae.config.z_dim),
            conditioning.reference_frames + latent_frames(request.num_frames),
            request.height // codec.spatial_factor,
            request.width // codec.spatial_factor,
        )
        if self.rank_group is not None:
            check_divisible(
                latent_shape,
                tuple(next(iter(model.transformers.values())).config.patch_size),
                self.rank_group,
                width=request.width,
                height=request.height,
                num_frames=request.num_frames,
            )
        with (
            _stage("denoise", self.device, timings, None),
            _progress_bar(plan.num_inference_steps, wanted=progress is None) as bar,
            torch.inference_mode(),
        ):
            if progress is not None:
                progress(ProgressEvent("denoise", 0, plan.num_inference_steps, 0, ""))
            return denoise(
                plan=plan,
                transformers=model.transformers,
                conditioning=conditioning,
                latent_shape=latent_shape,
                generator=generator,
                model_dtype=model.transformer_dtype,
                loras=loras,
                cancel=cancel,
                on_step=_step_reporter(plan, progress, bar, two_experts="low" in model.transformers),
            )

    def _open_loras(self, request: GenerationRequest, model: LoadedModel) -> LoraRuntime | None:
        """The LoRAs of this generation attached to the transformers. The set stays attached after the generation: a
        travel run's next segment with the same files (same path, size and modification time) reuses it instead of
        reading and attaching 2 x 614 MB again; any other request gives the base weights back first."""
        if not request.lora_sources:
            self.detach_loras()
            return None  # no LoRA requested: the LoRA runtime (and peft) is not even imported
        from Wan2GP.lora_files import resolve_lora_file
        from Wan2GP.loras import LoraError, LoraRuntime  # imported only when LoRAs are asked for (peft is heavy)

        paths = [
            resolve_lora_file(source, self.lora_dir, field=field)
            for source, field in zip(request.lora_sources, request.lora_fields, strict=True)
        ]
        # Which mode is cheaper depends on how many forwards each set of strengths holds for (bench/README.md).
        steps = [
            (expert_for_step(step, model.transformers), 1 if step.guidance == 1.0 else 2, step.lora_multipliers)
            for step in request.plan.steps
        ]
        room = self._lora_copy_room(request)
        # Streamed blocks live in host memory between forwards: writing merged weights there would cost a host-side
        # matmul per weight per strength change, where peft's adapters stream with their blocks and change for free.
        streamed = self._placement is not None and self._placement.kind == "stream_blocks"
        mode = "unmerged" if streamed else "auto"
        key = (tuple(_file_identity(path) for path in paths), mode)
        kept = self._kept_loras
        # a bigger generation than the last may need the device room the kept set's exact copies hold
        if kept is not None and kept.key == key and kept.runtime.device_copy_bytes <= room:
            logger.info("LoRAs {} still attached from the last generation", [path.name for path in paths])
            return kept.runtime  # per-step strengths are set afresh at every step
        self.detach_loras()
        try:
            runtime = LoraRuntime(
                model.transformers,
                paths,
                steps=steps,
                mode=mode,
                device_copy_room=room,
                generations=LORA_RUN_GENERATIONS,
            )
        except LoraError as error:
            raise InvalidGenerationParams(["activated_loras"], f"activated_loras: {error}") from None
        if self._offloaded is not None:
            self._offloaded.sync()  # the adapters' weights stream with their blocks
        self._kept_loras = _KeptLoras(key, runtime)
        return runtime

    def _lora_copy_room(self, request: GenerationRequest) -> int:
        """Device bytes a merged LoRA's exact originals may take: what the budget leaves beside this generation's
        estimated peak (and a margin) under the current placement; 0 on a CPU, without a budget, or when blocks stream
        (the weights live in host memory there)."""
        placement, sizes = self._placement, self._sizes
        if self.device.type != "cuda" or self.vram_budget is None or placement is None or sizes is None:
            return 0
        if placement.kind == "stream_blocks":
            return 0
        frames = latent_frames(request.frames_with_references)
        work = sizes.work_for(latent_frames=frames, width=request.width, height=request.height)
        needed = placement.needed_for(sizes, work)
        return max(0, self.vram_budget - int(needed * (1 + LORA_COPY_MARGIN)))

    def detach_loras(self) -> None:
        """Give the transformers their base weights back (no adapters, no merged LoRA) and free what the last
        generation's LoRAs kept: before another set of LoRAs, a generation without any, an unload, after a generation
        that failed, or when a caller wants the base modules (a benchmark running stock diffusers on them)."""
        kept, self._kept_loras = self._kept_loras, None
        if kept is None:
            return
        kept.runtime.close()
        if self._offloaded is not None:
            self._offloaded.sync()  # the streamed blocks forget the adapters' host copies

    def _conditioning(self, request: GenerationRequest, model: LoadedModel, codec: VaeCodec) -> Conditioning:
        encoder = PromptEncoder(
            model.tokenizer,
            model.text_encoder,
            output_dtype=model.transformer_dtype,
            cache=self._prompt_cache,
            device=self.device,
        )
        prompt_embeds = encoder.encode(first_prompt_line(request.prompt))
        negative_embeds = None
        if needs_negative_prompt(request.plan):  # no CFG anywhere: the negative prompt is never encoded
            negative = request.negative_prompt.strip() or WAN_DEFAULT_NEGATIVE_PROMPT
            negative_embeds = encoder.encode(negative)

        size = dict(num_frames=request.num_frames, width=request.width, height=request.height)
        start_image = _frame_image(request.image_start, request)
        end_image = _frame_image(request.image_end, request)
        if model.definition.is_i2v:
            start = _pixels(start_image, request)
            end = _pixels(end_image, request)
            image = build_image_condition(codec, start=start, end=end, **size)
            return Conditioning(
                prompt_embeds=prompt_embeds,
                negative_embeds=negative_embeds,
                image_channels=image.channels.to(model.transformer_dtype),
                first_frame_latents=image.first_frame_latents if self.reinject_start_frame else None,
                model_kwargs=self._clip_kwargs(model, start_image, end_image, request),
            )
        if model.definition.is_ti2v:
            # Wan 2.2 5B: a start image is the clean first latent frame itself (no extra channels, no CLIP).
            start_latents = None if start_image is None else codec.encode(_pixels(start_image, request))
            return Conditioning(
                prompt_embeds=prompt_embeds, negative_embeds=negative_embeds, clean_first_frame=start_latents
            )
        if model.definition.is_vace:
            guide, mask = self._guide_and_mask(request)
            references = [
                reference_pixels(load_image(image), request.width, request.height) for image in request.image_refs
            ]
            context = build_vace_context(
                codec,
                guide=guide,
                mask=mask,
                grey_masked_pixels=request.grey_masked_pixels,
                references=references,
                **size,
            )
            vace_layers = model.transformers["high"].config.vace_layers
            scale = torch.full((len(vace_layers),), request.control_net_weight, device=self.device)
            return Conditioning(
                prompt_embeds=prompt_embeds,
                negative_embeds=negative_embeds,
                model_kwargs={
                    "control_hidden_states": context.to(model.transformer_dtype),
                    "control_hidden_states_scale": scale.to(model.transformer_dtype),
                },
                reference_frames=len(references),
            )
        return Conditioning(prompt_embeds=prompt_embeds, negative_embeds=negative_embeds)

    def _clip_kwargs(
        self,
        model: LoadedModel,
        start_image: PIL.Image.Image | None,
        end_image: PIL.Image.Image | None,
        request: GenerationRequest,
    ) -> dict[str, torch.Tensor] | None:
        """Wan 2.1 i2v / flf2v: the CLIP tokens the transformer attends to besides the prompt. i2v sees the start
        frame only, even with an end image (its transformer takes one image's tokens); flf2v the first and the last
        (resolve_request makes sure both are given). None for architectures without CLIP."""
        if model.image_encoder is None or model.image_processor is None:
            return None
        images = [start_image if start_image is not None else black_frame(request.width, request.height)]
        if model.definition.spec.kind == "flf2v":
            assert end_image is not None, "resolve_request refuses an flf2v request without image_end"
            images.append(end_image)
        tokens = clip_image_tokens(model.image_encoder, model.image_processor, images)
        return {"encoder_hidden_states_image": tokens.to(device=self.device, dtype=model.transformer_dtype)}

    def _guide_and_mask(self, request: GenerationRequest) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        size = dict(num_frames=request.num_frames, width=request.width, height=request.height)
        guide = mask = None
        if request.video_guide is not None:
            try:
                guide = guide_pixels(read_video(request.video_guide), **size)
            except (VideoReadError, ValueError) as error:
                raise InvalidGenerationParams(["video_guide"], f"video_guide: {error}") from None
        if request.video_mask is not None:
            try:
                mask = mask_values(read_video(request.video_mask), **size, negate=request.negate_mask)
            except (VideoReadError, ValueError) as error:
                raise InvalidGenerationParams(["video_mask"], f"video_mask: {error}") from None
        return guide, mask


# ---------------------------------------------------------------------------------------------------------------------
# helpers


def _frame_image(source: Any, request: GenerationRequest) -> PIL.Image.Image | None:
    """A start or end image at the generation's size, or None when not given."""
    if source is None:
        return None
    return frame_image(load_image(source), request.width, request.height)


def _pixels(image: PIL.Image.Image | None, request: GenerationRequest) -> torch.Tensor | None:
    return None if image is None else image_to_pixels(image, request.width, request.height)


def _check_cancel(cancel: CancelFlag | None, where: str) -> None:
    if cancel is not None and cancel.is_set():
        raise GenerationCancelled(f"cancelled {where}")


@contextmanager
def _stage(
    stage: str,
    device: torch.device,
    timings: dict[str, float],
    progress: Callable[[ProgressEvent], None] | None,
    *,
    at: int = 0,
    total: int | None = None,
) -> Iterator[None]:
    """Time a stage and announce it on the denoising scale (`at` of `total` steps: 0 before denoising, all of them
    after), so a progress reader sees one total for the whole generation and no silent stage. On a GPU the stage ends
    when its queued kernels have run; unsynchronised, the kernels a stage left queued were counted in the next one."""
    if progress is not None:
        progress(ProgressEvent(stage, at, at if total is None else total, 0, ""))
    started = time.perf_counter()
    try:
        yield
    finally:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        timings[stage] = timings.get(stage, 0.0) + time.perf_counter() - started


@contextmanager
def _progress_bar(total: int, *, wanted: bool) -> Iterator[tqdm | None]:
    """A tqdm bar on a terminal for a caller that takes no progress callback; a caller with one (the worker) draws
    its own, so two bars never compete."""
    if not wanted or not sys.stderr.isatty():
        yield None
        return
    bar = tqdm(total=total, desc="denoise", unit="step", leave=False)
    try:
        yield bar
    finally:
        bar.close()


def _step_reporter(
    plan: GenerationPlan, progress: Callable[[ProgressEvent], None] | None, bar: tqdm | None, *, two_experts: bool
) -> Callable[[StepPlan, str], None]:
    """Steps to the bar and the callback; the expert is named only when there are two (a one-expert model's steps
    are all "high" in the sampler's bookkeeping, which would read as a label it does not have)."""

    def report(step: StepPlan, sampler_expert: str) -> None:
        expert = sampler_expert if two_experts else ""
        if bar is not None:
            bar.set_postfix(phase=step.phase, **({"expert": expert} if expert else {}), refresh=False)
            bar.update(1)
        if progress is not None:
            progress(ProgressEvent("denoise", step.index + 1, plan.num_inference_steps, step.phase, expert))

    return report


_UNSAFE_FILENAME_CHARS = re.compile(r"[^A-Za-z0-9._-]+")


def _output_path(request: GenerationRequest, output_dir: Path) -> Path:
    """``output_filename`` (".mp4" added) or upstream's ``<date-time>_seed<seed>_<prompt>.mp4``, made unique."""
    if request.output_filename:
        name = request.output_filename
        stem = name[:-4] if name.lower().endswith(".mp4") else name
    else:
        prompt = _UNSAFE_FILENAME_CHARS.sub("_", first_prompt_line(request.prompt)).strip("_")[:50]
        stem = f"{datetime.now():%Y-%m-%d-%Hh%Mm%Ss}_seed{request.seed}" + (f"_{prompt}" if prompt else "")
    candidate = output_dir / f"{stem}.mp4"
    counter = 2
    while candidate.exists():
        candidate = output_dir / f"{stem}({counter}).mp4"
        counter += 1
    return candidate
