"""Helpers shared by the generation task handlers: payload parsing at the boundary, model lookup, input downloads,
and the bridge from the engine's progress events to the task row."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

from loguru import logger
from pydantic import BaseModel

from source.media.images import check_image
from source.media.video import MediaError, probe_video
from source.storage import downloads
from source.storage.downloads import DownloadError, DownloadLimits, hub_endpoint_host
from source.storage.lora_store import LoraStore
from source.storage.network import NetworkPolicy
from source.tasks.context import (
    FatalWorkerError,
    TaskCancelled,
    TaskContext,
    TaskInputError,
    TaskSettings,
    TransientTaskError,
)
from Wan2GP import limits
from Wan2GP.catalog import Catalog, CatalogError, ModelDefinition

ModelT = TypeVar("ModelT", bound=BaseModel)


def load_model_definition(catalog: Catalog, model_name: str, *, field: str) -> ModelDefinition:
    try:
        return catalog.get(model_name)
    except CatalogError as error:
        raise TaskInputError(f"{field}: {error}") from error


def travel_model_for(
    catalog: Catalog, model: ModelDefinition, requested: str | None, *, field: str = "orchestrator_details"
) -> tuple[ModelDefinition, str]:
    """The model a travel run generates with and its mode ("vace" or "i2v"), from what the model IS (upstream guessed
    it from substrings of the name, §10.16). Reigh asks for VACE by sending model_type "vace" with its i2v model's
    name; the catalog's travel_counterparts names the VACE model of that family. A mode the model cannot run and has
    no counterpart for fails, naming the field."""
    mode = model.travel_mode
    if mode is None:
        raise TaskInputError(
            f"{field}.model_name: expected an image-to-video or VACE model for travel, "
            f"got {model.id!r} (architecture {model.architecture})"
        )
    if not requested or requested == mode:
        return model, mode
    counterpart = model.travel_counterparts.get(requested)
    if counterpart is None:
        raise TaskInputError(
            f"{field}.model_type: {requested!r} asks for a {requested} model, but {model.id!r} is a {mode} model with no "
            f"{requested} counterpart in the catalog; name a {requested} model in model_name"
        )
    logger.info(f"model_type {requested!r}: running {counterpart} (the {requested} counterpart of {model.id})")
    return load_model_definition(catalog, counterpart, field=f"{field}.model_type"), requested


MEGABYTE = 1024 * 1024
InputKind = Literal["image", "video"]


def network_policy(settings: TaskSettings) -> NetworkPolicy:
    """Where payload URLs may lead: public addresses, plus the hosts the operator configured (a Hub mirror in
    HF_ENDPOINT, the Supabase project our own outputs are uploaded to), plus private ones with --allow-private-urls."""
    hosts = [hub_endpoint_host(), urlsplit(settings.supabase_url).hostname if settings.supabase_url else None]
    return NetworkPolicy(
        allow_private=settings.allow_private_urls, trusted_hosts=frozenset(host for host in hosts if host)
    )


def input_limits(settings: TaskSettings, *, max_mb: float) -> DownloadLimits:
    return DownloadLimits(
        max_bytes=int(max_mb * MEGABYTE),
        total_seconds=settings.download_seconds,
        stall_seconds=settings.stall_seconds,
    )


def generation_size(size: tuple[int, int] | str, frames: int, *, field: str) -> tuple[int, int]:
    """The size Wan generates for a requested one ("WxH" or (width, height)): each side floored to a multiple of 16
    (limits.snap_resolution), checked against the limits for `frames` frames; TaskInputError naming `field`."""
    try:
        requested = limits.parse_resolution(size) if isinstance(size, str) else size
        width, height = limits.snap_resolution(*requested)
    except ValueError as error:
        raise TaskInputError(f"{field}: {error}") from None
    problem = limits.check_geometry(width, height, frames)
    if problem is not None:
        raise TaskInputError(f"{field}: {problem}")
    return width, height


def fetch_input(
    ctx: TaskContext, source: str, dest_dir: Path, *, field: str, kind: InputKind, own_output: bool = False
) -> Path:
    """An input file named by the payload (or, `own_output`, by a row this queue wrote: a segment's stored output),
    downloaded within the caps or found inside the allowed input roots, then checked to be the image or video it
    should be. Fails the task naming the field; a server that may recover makes it transient."""
    settings = ctx.settings
    ctx.report_stage(f"fetching {field}")
    roots = (*settings.input_roots, settings.output_dir) if own_output else settings.input_roots
    try:
        path = downloads.fetch_input(
            source,
            dest_dir,
            roots=roots,
            limits=input_limits(settings, max_mb=settings.max_image_mb if kind == "image" else settings.max_video_mb),
            network=network_policy(settings),
            cancel=ctx.cancel_event,
        )
    except DownloadError as error:
        raise _download_failure(ctx, field, error) from error
    try:
        if kind == "image":
            check_image(path)
        else:
            probe_video(path)
    except MediaError as error:
        raise TaskInputError(f"{field}: {error}") from None
    return path


def fetch_loras(ctx: TaskContext, sources: list[str], *, field: str) -> list[Path]:
    """Local LoRA files for LoRA URLs or names (the payload's, or a model definition's built-in ones), through the one
    LoRA store (keyed by URL, checked by content, downloads capped like every other input)."""
    settings = ctx.settings
    store = LoraStore(
        settings.lora_dir,
        limits=input_limits(settings, max_mb=settings.max_lora_mb),
        network=network_policy(settings),
        input_roots=settings.input_roots,
    )
    paths = []
    for index, source in enumerate(sources):
        ctx.report_stage(f"fetching {field}[{index}]")
        try:
            paths.append(store.fetch(source, cancel=ctx.cancel_event))
        except DownloadError as error:
            raise _download_failure(ctx, f"{field}[{index}]", error) from error
    return paths


def _download_failure(ctx: TaskContext, field: str, error: DownloadError) -> Exception:
    """A server that timed out or answered 5xx may recover (retried up to the attempt cap); a 404, a refused address
    or a file over the cap will not. A download stopped because the worker asked the task to stop is a cancel."""
    if ctx.cancel_event.is_set():
        return TaskCancelled(f"{field}: download stopped: the task was asked to stop")
    message = f"{field}: {error}"
    return TransientTaskError(message) if error.transient else TaskInputError(message)


def with_builtin_loras(ctx: TaskContext, request: dict[str, Any]) -> dict[str, Any]:
    """`request` with its model's built-in LoRAs (the catalog names them, often as Hugging Face URLs) fetched through
    the LoRA store like the payload's, as builtin_lora_files: the engine fetches no URLs."""
    model = load_model_definition(ctx.services.catalog, str(request["model"]), field="model")
    if not model.loras:
        return request
    paths = fetch_loras(ctx, list(model.loras), field=f"model {model.id}: loras")
    return {**request, "builtin_lora_files": [str(path) for path in paths]}


def run_engine(ctx: TaskContext, request: dict[str, Any]) -> Any:
    """Generate on this worker's engine (an mp4 in the task's scratch folder), failures mapped by engine_failures."""
    request = with_builtin_loras(ctx, request)
    engine = ctx.services.engine()
    with engine_failures(ctx):
        return engine.generate(request, output_dir=ctx.work_dir, progress=engine_progress(ctx), cancel=ctx.cancel_event)


@contextmanager
def engine_failures(ctx: TaskContext) -> Iterator[None]:
    """Map the engine's failures onto the worker's kinds: bad parameters fail the task, a cancel is a cancel, a model
    that did not load is transient, a broken GPU stops the worker (classify_gpu_failure)."""
    from Wan2GP.engine import GenerationCancelled, InvalidGenerationParams, ModelLoadError

    try:
        yield
    except InvalidGenerationParams as error:
        raise TaskInputError(str(error)) from error
    except GenerationCancelled as error:
        raise TaskCancelled(str(error)) from error
    except ModelLoadError as error:
        raise TransientTaskError(str(error)) from error
    except Exception as error:
        gpu_failure = classify_gpu_failure(error)
        if gpu_failure is None:
            raise
        raise gpu_failure from error


# After these the process's CUDA context is unusable: the task goes back to the queue and the worker exits so the pod
# restarts (upstream kept polling with a broken GPU, §10.4). Out-of-memory is different: retried, like upstream.
FATAL_GPU_MESSAGES = (
    "illegal memory access",
    "unspecified launch failure",
    "fallen off the bus",
    "cuda driver",
    "no cuda-capable device",
    "nvml",
    "device-side assert",
    "uncorrectable ecc error",
)


def classify_gpu_failure(error: BaseException) -> Exception | None:
    """FatalWorkerError for a broken GPU, TransientTaskError for running out of GPU memory, None for anything else."""
    import torch  # already imported by the engine that raised

    if isinstance(error, torch.OutOfMemoryError):
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return TransientTaskError(f"out of GPU memory: {error}")
    message = str(error).lower()
    if isinstance(error, RuntimeError) and any(pattern in message for pattern in FATAL_GPU_MESSAGES):
        return FatalWorkerError(f"the GPU is unusable: {error}")
    return None


# What the row says while the engine is in a stage other than denoising (no silent gap before step 1 or after the last).
STAGE_MESSAGES = {
    "load": "loading the model",
    "encode": "encoding the prompt and the inputs",
    "denoise": "denoising",
    "decode": "decoding the frames",
    "write": "writing the video",
}


def engine_progress(ctx: TaskContext) -> Callable[[Any], None]:
    """Forward the engine's stages and denoising steps to the task row and the log, on one total (the steps)."""

    def on_progress(event: Any) -> None:
        if event.stage == "denoise" and event.step > 0:
            expert = f", {event.expert}-noise expert" if event.expert else ""
            ctx.report_progress(event.step, event.total, f"phase {event.phase}{expert}")
        else:
            ctx.report_progress(event.step, event.total, STAGE_MESSAGES.get(event.stage, event.stage))

    return on_progress
