"""The worker's settings: each one from its command-line flag, else its environment variable, else the default."""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from source.queue import resolve_db_url
from source.queue.urls import DB_URL_ENV_VARS
from source.tasks.context import TaskSettings
from Wan2GP.catalog import check_attention_kernel, check_vae_dtype
from Wan2GP.placement import parse_budget_gb
from Wan2GP.prompt_text import DEFAULT_PROMPT_MODEL

T = TypeVar("T")

LOG_LEVELS = ("TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL")
MAX_CONTEXT_PARALLEL = 8  # the GPUs of one host


class SettingsError(ValueError):
    """A flag or environment variable with a value the worker cannot use; the message names it."""


def default_lora_dir(model_cache_dir: Path | None, environ: Mapping[str, str]) -> Path:
    """Where downloaded LoRAs go: <model cache>/loras, the model cache being the engine's ($WAN2GP_CACHE or
    ~/.cache/wan2gp) unless one is given."""
    cache = model_cache_dir or Path(environ.get("WAN2GP_CACHE") or Path.home() / ".cache" / "wan2gp")
    return Path(cache).expanduser() / "loras"


def default_worker_id() -> str:
    """hostname-pid: unique per process, readable in `workers` and logs."""
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass(frozen=True)
class WorkerSettings:
    db_url: str | None  # None: the queue is Reigh's edge API (supabase_url + supabase_access_token)
    worker_id: str
    poll_interval: float = 5.0
    output_dir: Path = Path("outputs")
    log_level: str = "INFO"
    log_json: bool = False
    once: bool = False
    max_tasks: int | None = None
    lease_seconds: float = 60.0
    heartbeat_seconds: float = 10.0
    grace_seconds: float = 30.0
    task_types: tuple[str, ...] | None = None
    retry_delay_seconds: float = 5.0  # first back-off after a transient failure; doubles per attempt, capped
    cancel_window_seconds: float = 5.0  # after the grace period, how long a handler may ignore cancel_event
    # Services (used by the handlers' engine and storage factories, never by the loop):
    device: str | None = None  # torch device for the engine; None: cuda when available, else cpu
    model_cache_dir: Path | None = None  # None: the engine's default ($WAN2GP_CACHE or ~/.cache/wan2gp)
    lora_dir: Path = field(default_factory=lambda: default_lora_dir(None, os.environ))
    prompt_model: str = DEFAULT_PROMPT_MODEL  # the VLM behind enhance_prompt: repo id, local folder or "tiny"
    vram_budget_gb: float | None = None  # device memory the engine plans within; None: the card's free memory
    gpus: str | None = None  # --gpus: "all", a count or indices: one worker process per GPU (source.worker.gpus)
    context_parallel: int = 1  # GPUs each generation is split over (source.worker.ranks); 1: one GPU per worker
    compile: bool = False  # torch.compile the transformers' repeated block (resident placements on one GPU)
    fast: bool = False  # fp8 weights and activations in the transformers' blocks, compiled (GPUs)
    attention: str = "auto"  # the transformers' attention kernel (Wan2GP.attention's names; catalog.ATTENTION_KERNELS)
    vae_dtype: str | None = None  # None: the model definition's (float16 for the bundled models); CPUs run float32
    defaults_dirs: tuple[Path, ...] = ()  # folders of model definition files over the bundled ones (upstream's)
    prompt_fallback: bool = True  # the VLM cannot load: run with the base prompts (False: fail the travel run)
    supabase_url: str | None = None
    supabase_key: str | None = field(default=None, repr=False)  # a secret: kept out of reprs and logs
    supabase_bucket: str | None = None
    # Reigh's edge functions as the queue (a pod without a database URL); a secret like the key above
    supabase_access_token: str | None = field(default=None, repr=False)
    edge_timeout_seconds: float = 30.0  # one edge function call; 5xx and timeouts are retried a few times
    # What a payload may make the worker read (README "Hostile input"):
    input_roots: tuple[Path, ...] = ()  # local folders payload paths may name; none by default (URLs only)
    allow_private_urls: bool = False  # fetch from loopback/private/link-local addresses (a local test server)
    max_image_mb: float = 64.0  # one image input (a keyframe is a few MB at most)
    max_video_mb: float = 1024.0  # one video input (a guide, a mask, a segment's stored output)
    max_lora_mb: float = 4096.0  # one LoRA file
    download_seconds: float = 900.0  # one file, all attempts and redirects together
    stall_seconds: float = 30.0  # no byte for this long: the server is gone

    def __post_init__(self) -> None:
        for name in ("poll_interval", "lease_seconds", "heartbeat_seconds"):
            if getattr(self, name) <= 0:
                raise SettingsError(f"{name}: expected a positive number of seconds; got {getattr(self, name)!r}")
        for name in ("grace_seconds", "retry_delay_seconds", "cancel_window_seconds"):
            if getattr(self, name) < 0:
                raise SettingsError(f"{name}: expected a number of seconds >= 0; got {getattr(self, name)!r}")
        if self.heartbeat_seconds >= self.lease_seconds:
            raise SettingsError(
                f"heartbeat_seconds ({self.heartbeat_seconds}) must be smaller than lease_seconds "
                f"({self.lease_seconds}), or leases expire between two renewals"
            )
        if self.vram_budget_gb is not None:
            try:
                parse_budget_gb(self.vram_budget_gb)
            except ValueError as error:
                raise SettingsError(f"vram_budget_gb (--vram-budget, HW_VRAM_BUDGET): {error}") from None
        if self.gpus is not None:
            if self.device is not None:
                raise SettingsError(
                    f"gpus (--gpus, HW_GPUS) and device (--device, HW_DEVICE): give one; --gpus places each worker "
                    f"on its GPU itself (got --gpus {self.gpus!r} and --device {self.device!r})"
                )
            if not re.fullmatch(r"all|\d+|\d+(,\d+)+", self.gpus.replace(" ", "")):
                raise SettingsError(
                    f"gpus (--gpus, HW_GPUS): expected all, a number or indices like 0,1; got {self.gpus!r}"
                )
        if not 1 <= self.context_parallel <= MAX_CONTEXT_PARALLEL:
            raise SettingsError(
                f"context_parallel (--context-parallel, HW_CONTEXT_PARALLEL): expected 1 to {MAX_CONTEXT_PARALLEL} "
                f"GPUs per generation; got {self.context_parallel!r}"
            )
        if self.context_parallel > 1 and self.device not in (None, "cuda", "cpu"):
            raise SettingsError(
                f"context_parallel (--context-parallel, HW_CONTEXT_PARALLEL) and device (--device, HW_DEVICE): "
                f"--context-parallel {self.context_parallel} uses the first {self.context_parallel} visible GPUs "
                f"(choose them with --gpus or CUDA_VISIBLE_DEVICES), not {self.device!r}; 'cpu' runs it on CPU "
                f"processes (tests)"
            )
        if self.max_tasks is not None and self.max_tasks < 1:
            raise SettingsError(f"max_tasks: expected an integer >= 1; got {self.max_tasks!r}")
        if self.log_level.upper() not in LOG_LEVELS:
            raise SettingsError(f"log_level: expected one of {', '.join(LOG_LEVELS)}; got {self.log_level!r}")
        if not self.worker_id.strip():
            raise SettingsError("worker_id: expected a non-empty string")
        for name in ("max_image_mb", "max_video_mb", "max_lora_mb", "download_seconds", "stall_seconds"):
            if not getattr(self, name) > 0:
                raise SettingsError(f"{name}: expected a positive number; got {getattr(self, name)!r}")
        if self.db_url is None and not (self.supabase_url and self.supabase_access_token):
            raise SettingsError("no queue: give --db URL, or --supabase-url with --supabase-access-token")
        if not self.edge_timeout_seconds > 0:
            raise SettingsError(f"edge_timeout_seconds: expected a positive number; got {self.edge_timeout_seconds!r}")
        if self.supabase_key and not self.supabase_url:
            raise SettingsError(
                "SUPABASE_SERVICE_ROLE_KEY is set but --supabase-url / SUPABASE_URL is not: Supabase storage needs both "
                "(or neither)"
            )
        if self.supabase_url and not (self.supabase_key or self.supabase_access_token):
            # Found now, not after the first video is generated and cannot be stored.
            raise SettingsError(
                "--supabase-url / SUPABASE_URL is set but neither SUPABASE_SERVICE_ROLE_KEY (outputs to its bucket) "
                "nor --supabase-access-token / SUPABASE_ACCESS_TOKEN (Reigh's edge API as the queue) is"
            )
        for root in self.input_roots:
            if not root.is_dir():
                raise SettingsError(f"input_roots: {root} is not a folder")
        for folder in self.defaults_dirs:
            if not folder.is_dir():
                raise SettingsError(f"defaults_dirs: {folder} is not a folder of model definition files")

    def for_tasks(self) -> TaskSettings:
        """The part of these settings a task handler reads (source.tasks.context.TaskSettings names them)."""
        return TaskSettings(**{name: getattr(self, name) for name in TaskSettings.__dataclass_fields__})

    @property
    def uses_reigh_edge(self) -> bool:
        """No database URL: tasks come from Reigh's edge functions, outputs go up through them."""
        return self.db_url is None

    @property
    def work_root(self) -> Path:
        """Per-task scratch folders live under here."""
        return self.output_dir / ".work"


def _from_env(name: str, parse: Callable[[str], T], environ: Mapping[str, str]) -> T | None:
    raw = environ.get(name, "").strip()
    if not raw:
        return None
    try:
        return parse(raw)
    except ValueError as error:
        raise SettingsError(f"environment variable {name}={raw!r}: {error}") from None


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true/false, 1/0, yes/no or on/off")


def parse_task_types(text: str) -> tuple[str, ...]:
    types = tuple(part.strip() for part in text.split(",") if part.strip())
    if not types:
        raise ValueError("expected a comma-separated list of task types")
    return types


def settings_from_values(values: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> WorkerSettings:
    """`values` holds the command-line flags (None where not given); each missing one falls back to its
    HW_* environment variable, then to the default."""
    env = os.environ if environ is None else environ

    def default_of(name: str) -> Any:
        """A setting's default, from the one place that says it: the WorkerSettings field."""
        return WorkerSettings.__dataclass_fields__[name].default

    def pick(key: str, env_name: str, parse: Callable[[str], T], default: T) -> T:
        given = values.get(key)
        if given is not None:
            return given
        from_env = _from_env(env_name, parse, env)
        return default if from_env is None else from_env

    model_cache_dir = _path(pick("model_cache_dir", "HW_MODEL_CACHE_DIR", str, None))
    supabase_url = pick("supabase_url", "SUPABASE_URL", str, None)
    access_token = (
        values.get("supabase_access_token")
        or _from_env("SUPABASE_ACCESS_TOKEN", str, env)
        or _from_env("REIGH_ACCESS_TOKEN", str, env)  # the upstream worker's name
    )
    # Reigh's edge API is the queue when no database is named anywhere and a Supabase URL comes with a token.
    database_named = values.get("db") or any(env.get(name, "").strip() for name in DB_URL_ENV_VARS)
    db_url = None if (supabase_url and access_token and not database_named) else resolve_db_url(values.get("db"), env)
    return WorkerSettings(
        db_url=db_url,
        worker_id=pick("worker_id", "HW_WORKER_ID", str, default_worker_id()),
        poll_interval=pick("poll_interval", "HW_POLL_INTERVAL", float, default_of("poll_interval")),
        output_dir=Path(pick("output_dir", "HW_OUTPUT_DIR", str, str(default_of("output_dir")))).expanduser().resolve(),
        log_level=pick("log_level", "HW_LOG_LEVEL", str, default_of("log_level")).upper(),
        log_json=bool(values.get("log_json")) or bool(_from_env("HW_LOG_JSON", _parse_bool, env)),
        once=bool(values.get("once")) or bool(_from_env("HW_ONCE", _parse_bool, env)),
        max_tasks=pick("max_tasks", "HW_MAX_TASKS", int, None),
        lease_seconds=pick("lease_seconds", "HW_LEASE_SECONDS", float, default_of("lease_seconds")),
        heartbeat_seconds=pick("heartbeat_seconds", "HW_HEARTBEAT_SECONDS", float, default_of("heartbeat_seconds")),
        grace_seconds=pick("grace_seconds", "HW_GRACE_SECONDS", float, default_of("grace_seconds")),
        task_types=pick("task_types", "HW_TASK_TYPES", parse_task_types, None),
        retry_delay_seconds=pick("retry_delay", "HW_RETRY_DELAY", float, default_of("retry_delay_seconds")),
        cancel_window_seconds=pick("cancel_window", "HW_CANCEL_WINDOW", float, default_of("cancel_window_seconds")),
        device=pick("device", "HW_DEVICE", str, None),
        model_cache_dir=model_cache_dir,
        lora_dir=_path(pick("lora_dir", "HW_LORA_DIR", str, None)) or default_lora_dir(model_cache_dir, env),
        prompt_model=pick("prompt_model", "HW_PROMPT_MODEL", str, default_of("prompt_model")),
        vram_budget_gb=pick("vram_budget", "HW_VRAM_BUDGET", float, None),
        gpus=pick("gpus", "HW_GPUS", str, None),
        context_parallel=pick("context_parallel", "HW_CONTEXT_PARALLEL", int, default_of("context_parallel")),
        compile=bool(values.get("compile")) or bool(_from_env("HW_COMPILE", _parse_bool, env)),
        fast=bool(values.get("fast")) or bool(_from_env("HW_FAST", _parse_bool, env)),
        attention=pick("attention", "HW_ATTENTION", check_attention_kernel, default_of("attention")),
        vae_dtype=pick("vae_dtype", "HW_VAE_DTYPE", check_vae_dtype, None),
        defaults_dirs=tuple(
            _path(text)
            for text in (values.get("defaults_dirs") or _from_env("HW_DEFAULTS_DIRS", _path_list, env) or ())
        ),
        prompt_fallback=pick("prompt_fallback", "HW_PROMPT_FALLBACK", _parse_bool, default_of("prompt_fallback")),
        supabase_url=supabase_url,
        supabase_access_token=access_token,
        edge_timeout_seconds=pick("edge_timeout", "HW_EDGE_TIMEOUT", float, default_of("edge_timeout_seconds")),
        # the key comes from the environment only: a command-line secret shows up in process listings
        supabase_key=_from_env("SUPABASE_SERVICE_ROLE_KEY", str, env) or _from_env("SUPABASE_KEY", str, env),
        supabase_bucket=pick("supabase_bucket", "SUPABASE_BUCKET", str, None),
        input_roots=tuple(
            _path(text) for text in (values.get("input_roots") or _from_env("HW_INPUT_ROOTS", _path_list, env) or ())
        ),
        allow_private_urls=bool(values.get("allow_private_urls"))
        or bool(_from_env("HW_ALLOW_PRIVATE_URLS", _parse_bool, env)),
        max_image_mb=pick("max_image_mb", "HW_MAX_IMAGE_MB", float, default_of("max_image_mb")),
        max_video_mb=pick("max_video_mb", "HW_MAX_VIDEO_MB", float, default_of("max_video_mb")),
        max_lora_mb=pick("max_lora_mb", "HW_MAX_LORA_MB", float, default_of("max_lora_mb")),
        download_seconds=pick("download_seconds", "HW_DOWNLOAD_SECONDS", float, default_of("download_seconds")),
        stall_seconds=pick("stall_seconds", "HW_STALL_SECONDS", float, default_of("stall_seconds")),
    )


def _path_list(text: str) -> tuple[str, ...]:
    return tuple(part for part in text.split(os.pathsep) if part.strip())


def _path(text: str | None) -> Path | None:
    return None if text is None else Path(text).expanduser().resolve()
