"""The worker loop run in-process with custom handlers (real SQLite queue): outcome mapping, services, scratch
folders, progress, lease loss, --max-tasks, and settings from flags and environment variables."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from loop_helpers import in_process_settings

from source.queue import TaskQueue, TaskStatus
from source.tasks import (
    TaskCancelled,
    TaskContext,
    TaskInputError,
    TaskOutcome,
    TaskRegistry,
    WorkerServices,
    default_registry,
)
from source.worker import SettingsError, run, settings_from_values
from worker import main as worker_main

pytestmark = pytest.mark.usefixtures("restore_loguru")


def test_outcomes_are_mapped_to_queue_transitions(sqlite_queue: TaskQueue, sqlite_url: str, tmp_path: Path) -> None:
    engine_builds: list[int] = []
    seen_dirs: dict[str, Path] = {}

    def render(ctx: TaskContext) -> TaskOutcome:
        engine = ctx.services.engine()
        seen_dirs[ctx.task.id] = ctx.work_dir
        assert ctx.work_dir.is_dir() and ctx.output_dir == tmp_path / "outputs"
        (ctx.work_dir / "scratch.bin").write_bytes(b"x")
        if ctx.params.get("bad"):
            raise TaskInputError("params.bad: expected nothing")
        return TaskOutcome(output_location=f"{engine}.mp4", result={"n": ctx.params["n"]})

    def confused(ctx: TaskContext) -> TaskOutcome:
        return {"output": "not an outcome"}  # type: ignore[return-value]

    def quits(ctx: TaskContext) -> TaskOutcome:
        raise TaskCancelled("I give up")

    registry = TaskRegistry()
    registry.register("render", render)
    registry.register("confused", confused)
    registry.register("quits", quits)
    services = WorkerServices(engine_factory=lambda: engine_builds.append(1) or "engine")

    good = [sqlite_queue.enqueue("render", {"n": n}) for n in range(2)]
    bad = sqlite_queue.enqueue("render", {"n": 9, "bad": True})
    wrong = sqlite_queue.enqueue("confused", {})
    quitting = sqlite_queue.enqueue("quits", {})

    assert (
        run(
            in_process_settings(sqlite_url, tmp_path),
            registry=registry,
            services=services,
            install_signal_handlers=False,
        )
        == 0
    )

    assert engine_builds == [1], "the engine is built once, on first use, and reused"
    for task_id, n in zip(good, range(2), strict=True):
        task = sqlite_queue.get(task_id)
        assert (task.status, task.output_location, task.result) == (TaskStatus.COMPLETE, "engine.mp4", {"n": n})
        assert not seen_dirs[task_id].exists(), "scratch is removed after success"
    failed = sqlite_queue.get(bad)
    assert (failed.status, failed.attempts, failed.error_message) == (
        TaskStatus.FAILED,
        1,
        "params.bad: expected nothing",
    )
    assert not seen_dirs[bad].exists(), "scratch (downloads included) is removed after a failure too"
    assert list((tmp_path / "outputs" / ".work").iterdir()) == []
    assert sqlite_queue.get(wrong).error_message == "the handler returned dict, expected a TaskOutcome"
    assert sqlite_queue.get(quitting).status is TaskStatus.FAILED
    assert sqlite_queue.get(quitting).attempts == 1


def test_progress_is_throttled_but_the_last_step_is_written(
    sqlite_queue: TaskQueue, sqlite_url: str, tmp_path: Path
) -> None:
    writes: list[int] = []

    class CountingQueue:
        """The real queue, with progress writes counted (delegation, not a mock: every call reaches SQLite)."""

        def __init__(self, inner: TaskQueue) -> None:
            self._inner = inner

        def report_progress(self, task_id: str, worker_id: str, *, step: int, total: int, message: str = "") -> None:
            writes.append(step)
            self._inner.report_progress(task_id, worker_id, step=step, total=total, message=message)

        def __getattr__(self, name: str) -> Any:
            return getattr(self._inner, name)

    task_id = sqlite_queue.enqueue("t", {})
    task = sqlite_queue.claim("in-process", lease_seconds=30)
    assert task is not None
    context = TaskContext(
        task=task,
        queue=CountingQueue(sqlite_queue),  # type: ignore[arg-type]
        worker_id="in-process",
        output_dir=tmp_path,
        work_dir=tmp_path,
        settings=in_process_settings(sqlite_url, tmp_path).for_tasks(),
        services=WorkerServices(),
        progress_write_interval_seconds=60.0,
    )
    for step in range(1, 101):
        context.report_progress(step, 100, "denoising")
    assert writes == [1, 100]
    assert sqlite_queue.get(task_id).progress == {"step": 100, "total": 100, "percent": 100.0, "message": "denoising"}


def test_a_task_cancelled_while_running_is_stopped_and_left_cancelled(
    sqlite_queue: TaskQueue, sqlite_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    started = threading.Event()
    stopped: list[bool] = []

    def long_job(ctx: TaskContext) -> TaskOutcome:
        started.set()
        try:
            for _ in range(200):
                ctx.sleep(0.05)
        except TaskCancelled:
            stopped.append(True)
            raise
        return TaskOutcome(output_location="should-not-happen.mp4")

    registry = TaskRegistry()
    registry.register("long", long_job)
    task_id = sqlite_queue.enqueue("long", {})

    def cancel_when_started() -> None:
        started.wait(10)
        sqlite_queue.cancel(task_id, "user pressed stop")

    canceller = threading.Thread(target=cancel_when_started)
    canceller.start()
    assert run(in_process_settings(sqlite_url, tmp_path), registry=registry, install_signal_handlers=False) == 0
    canceller.join()
    assert stopped == [True], "the heartbeat noticed the lost lease and asked the handler to stop"
    # A cancel is routine: said at INFO, never as a WARNING.
    log = capsys.readouterr().err
    assert "the task was cancelled: asking the handler to stop" in log and "WARNING" not in log
    task = sqlite_queue.get(task_id)
    assert (task.status, task.error_message, task.output_location) == (TaskStatus.CANCELLED, "user pressed stop", None)


def test_max_tasks_stops_the_worker(sqlite_queue: TaskQueue, sqlite_url: str, tmp_path: Path) -> None:
    ids = [sqlite_queue.enqueue("debug_sleep", {"seconds": 0, "steps": 1}) for _ in range(3)]
    settings = in_process_settings(sqlite_url, tmp_path, once=False, max_tasks=2)
    assert run(settings, registry=default_registry(), install_signal_handlers=False) == 0
    assert [sqlite_queue.get(task_id).status for task_id in ids] == [
        TaskStatus.COMPLETE,
        TaskStatus.COMPLETE,
        TaskStatus.QUEUED,
    ]


def test_a_bad_database_url_is_a_startup_failure(tmp_path: Path) -> None:
    settings = in_process_settings("mysql://nowhere/db", tmp_path)
    assert run(settings, registry=TaskRegistry(), install_signal_handlers=False) == 2


def test_settings_come_from_flags_then_environment_then_defaults(tmp_path: Path) -> None:
    environ = {
        "DATABASE_URL": "postgresql://fleet/db",
        "HW_WORKER_ID": "pod-3",
        "HW_LEASE_SECONDS": "120",
        "HW_TASK_TYPES": "travel_segment, travel_stitch",
        "HW_LOG_JSON": "true",
    }
    settings = settings_from_values({"poll_interval": 0.5, "output_dir": str(tmp_path)}, environ)
    assert settings.db_url == "postgresql://fleet/db"
    assert (settings.worker_id, settings.lease_seconds, settings.poll_interval) == ("pod-3", 120.0, 0.5)
    assert settings.task_types == ("travel_segment", "travel_stitch")
    assert settings.log_json is True and settings.once is False
    assert settings.output_dir == tmp_path and settings.work_root == tmp_path / ".work"

    defaults = settings_from_values({}, {})
    assert defaults.db_url == "sqlite:///tasks.db"
    assert defaults.worker_id.rsplit("-", 1)[1].isdigit(), "hostname-pid, never a hard-coded id"
    assert settings_from_values({"db": "sqlite:///flag.db"}, environ).db_url == "sqlite:///flag.db"


def test_service_settings_and_the_supabase_key_stays_out_of_reprs(tmp_path: Path) -> None:
    environ = {
        "SUPABASE_URL": "https://project.supabase.co",
        "SUPABASE_SERVICE_ROLE_KEY": "service-role-secret",
        "HW_MODEL_CACHE_DIR": str(tmp_path / "cache"),
    }
    settings = settings_from_values({"device": "cuda:1"}, environ)
    assert (settings.device, settings.supabase_url) == ("cuda:1", "https://project.supabase.co")
    assert settings.supabase_key == "service-role-secret"
    assert "service-role-secret" not in repr(settings)
    assert settings.model_cache_dir == tmp_path / "cache" and settings.lora_dir == tmp_path / "cache" / "loras"
    assert settings_from_values({}, {"WAN2GP_CACHE": str(tmp_path)}).lora_dir == tmp_path / "loras"
    assert settings_from_values({"lora_dir": str(tmp_path / "mine")}, environ).lora_dir == tmp_path / "mine"


def test_the_vram_budget_reaches_the_engine_in_bytes_and_a_bad_one_stops_the_worker(tmp_path: Path) -> None:
    from source.worker.services import build_services

    assert settings_from_values({}, {}).vram_budget_gb is None
    assert settings_from_values({}, {"HW_VRAM_BUDGET": "48"}).vram_budget_gb == 48.0
    settings = settings_from_values({"vram_budget": 24.0, "device": "cpu"}, {"HW_VRAM_BUDGET": "48"})
    engine = build_services(settings).engine_factory()
    assert engine.vram_budget == 24 * 2**30
    assert build_services(settings_from_values({"device": "cpu"}, {})).engine_factory().vram_budget is None  # CPU
    for bad in ({"vram_budget": 0.0}, {"vram_budget": 9000.0}):
        with pytest.raises(SettingsError, match="vram_budget_gb .*--vram-budget.*between 1 and 4096 GB"):
            settings_from_values(bad, {})
    with pytest.raises(SettingsError, match="HW_VRAM_BUDGET='lots'"):
        settings_from_values({}, {"HW_VRAM_BUDGET": "lots"})


def test_compile_and_fast_reach_the_engine() -> None:
    from source.worker.services import build_services

    assert settings_from_values({}, {}).compile is False
    for values, environ in (({"compile": True}, {}), ({}, {"HW_COMPILE": "yes"})):
        settings = settings_from_values({**values, "device": "cpu"}, environ)
        assert build_services(settings).engine_factory().compile_backend == "inductor"
    assert build_services(settings_from_values({"device": "cpu"}, {})).engine_factory().compile_backend is None
    fast = build_services(settings_from_values({"device": "cpu"}, {"HW_FAST": "1"})).engine_factory()
    assert (fast.compile_backend, fast.transformer_weights, fast.vae_dtype) == ("inductor", "fp8_dynamic", None)


def test_the_vae_dtype_reaches_the_engine() -> None:
    """None leaves the model definition's dtype (float16 for the bundled models on a GPU); a flag or HW_VAE_DTYPE
    overrides it, the flag first."""
    from source.worker.services import build_services

    def engine_vae_dtype(values: dict, environ: dict) -> str | None:
        return build_services(settings_from_values({**values, "device": "cpu"}, environ)).engine_factory().vae_dtype

    assert engine_vae_dtype({}, {}) is None
    assert engine_vae_dtype({}, {"HW_VAE_DTYPE": "float32"}) == "float32"
    assert engine_vae_dtype({"vae_dtype": "bfloat16"}, {"HW_VAE_DTYPE": "float32"}) == "bfloat16"
    with pytest.raises(
        SettingsError, match=r"HW_VAE_DTYPE='fp16': vae_dtype: expected one of bfloat16, float16, float32, got 'fp16'"
    ):
        settings_from_values({}, {"HW_VAE_DTYPE": "fp16"})


def test_the_attention_kernel_reaches_the_engine() -> None:
    from source.worker.services import build_services

    def engine_attention(values: dict, environ: dict) -> str:
        return build_services(settings_from_values({**values, "device": "cpu"}, environ)).engine_factory().attention

    assert engine_attention({}, {}) == "auto"
    assert engine_attention({"attention": "sdpa"}, {"HW_ATTENTION": "flash4"}) == "sdpa"  # the flag wins
    assert engine_attention({}, {"HW_ATTENTION": "flash4"}) == "flash4"
    with pytest.raises(
        SettingsError,
        match=r"HW_ATTENTION='fa3': attention: expected one of auto, sdpa, flash3, flash4, cudnn_fp8, got 'fa3'",
    ):
        settings_from_values({}, {"HW_ATTENTION": "fa3"})


def test_settings_errors_name_the_setting() -> None:
    with pytest.raises(SettingsError, match="HW_LEASE_SECONDS='soon'"):
        settings_from_values({}, {"HW_LEASE_SECONDS": "soon"})
    with pytest.raises(SettingsError, match="heartbeat_seconds .* must be smaller than lease_seconds"):
        settings_from_values({"heartbeat_seconds": 30.0, "lease_seconds": 10.0}, {})
    with pytest.raises(SettingsError, match="log_level"):
        settings_from_values({"log_level": "LOUD"}, {})


def test_misconfigured_storage_and_input_settings_stop_the_worker_at_start(tmp_path: Path) -> None:
    # A service key without its project URL used to start fine and fail every task after generating it.
    with pytest.raises(
        SettingsError, match="SUPABASE_SERVICE_ROLE_KEY is set but --supabase-url / SUPABASE_URL is not"
    ):
        settings_from_values({}, {"SUPABASE_SERVICE_ROLE_KEY": "secret"})
    with pytest.raises(
        SettingsError, match="--supabase-url / SUPABASE_URL is set but neither SUPABASE_SERVICE_ROLE_KEY .* nor"
    ):
        settings_from_values({"supabase_url": "https://p.supabase.co"}, {})
    # A URL and an access token with no database anywhere: Reigh's edge API is the queue; a database URL wins.
    edge = settings_from_values({"supabase_url": "https://p.supabase.co"}, {"REIGH_ACCESS_TOKEN": "t0ken"})
    assert edge.uses_reigh_edge and edge.supabase_access_token == "t0ken" and "t0ken" not in repr(edge)
    named = settings_from_values(
        {"supabase_url": "https://p.supabase.co", "supabase_access_token": "t"}, {"DATABASE_URL": "sqlite:///x.db"}
    )
    assert named.db_url == "sqlite:///x.db" and not named.uses_reigh_edge
    with pytest.raises(SettingsError, match="input_roots: .* is not a folder"):
        settings_from_values({"input_roots": [str(tmp_path / "missing")]}, {})
    with pytest.raises(SettingsError, match="max_image_mb: expected a positive number"):
        settings_from_values({"max_image_mb": 0.0}, {})
    roots = settings_from_values({}, {"HW_INPUT_ROOTS": f"{tmp_path}:{tmp_path}", "HW_ALLOW_PRIVATE_URLS": "yes"})
    assert roots.input_roots == (tmp_path, tmp_path) and roots.allow_private_urls is True
    assert settings_from_values({}, {}).input_roots == (), "no local reads unless the operator names a folder"
    with pytest.raises(SettingsError, match="defaults_dirs: .* is not a folder of model definition files"):
        settings_from_values({"defaults_dirs": [str(tmp_path / "missing")]}, {})
    assert settings_from_values({}, {"HW_DEFAULTS_DIRS": str(tmp_path)}).defaults_dirs == (tmp_path,)


def test_a_broken_definition_in_defaults_dir_is_set_aside_and_the_worker_starts(tmp_path: Path, capsys) -> None:
    # upstream's files use solvers this engine does not have: that one model is set aside, named, and the rest run
    (tmp_path / "mine.json").write_text('{"model": {"name": "mine", "architecture": "t2v"}, "sample_solver": "lcm"}')
    db = f"sqlite:///{tmp_path / 'q.db'}"
    assert worker_main(["--db", db, "--defaults-dir", str(tmp_path), "--once"]) == 0
    error = capsys.readouterr().err
    assert "model definition set aside: " in error and "mine.json: sample_solver: expected one of" in error


def test_default_registry_has_the_diagnostic_types_and_a_clear_unknown_type_error() -> None:
    registry = default_registry()
    assert {"debug_sleep", "debug_orchestrator"} <= set(registry.known_types())
    with pytest.raises(KeyError, match="unknown task_type 'nope'; this worker handles: .*debug_sleep"):
        registry.get("nope")
    with pytest.raises(ValueError, match="already has a handler"):
        registry.register("debug_sleep", lambda ctx: TaskOutcome())


def test_log_lines_are_bounded_and_library_warnings_share_the_format(capfd: pytest.CaptureFixture[str]) -> None:
    import logging
    import sys

    from loguru import logger

    from source.worker.logs import MAX_MESSAGE_CHARS, configure_logging

    # What huggingface_hub does at import: a stderr handler on its own logger (made here, on this test's stderr).
    logging.getLogger("huggingface_hub").addHandler(logging.StreamHandler(sys.stderr))
    configure_logging(level="INFO", json_lines=False, worker_id="log-test")
    logger.info("value: {}", "v" * 10_000_000)
    logging.getLogger("huggingface_hub.file_download").warning("Retrying in 1s [Retry 1/5]")
    logging.getLogger("httpx").info("HTTP Request: GET https://x.example/a.png?token=SECRET")
    lines = capfd.readouterr().err.splitlines()
    (long_line,) = [line for line in lines if "value: " in line]
    assert len(long_line) < MAX_MESSAGE_CHARS + 200 and long_line.endswith("more characters)")
    (hub_line,) = [line for line in lines if "Retrying in 1s" in line]  # once, never also raw
    assert "| log-test | task - | huggingface_hub.file_download: Retrying" in hub_line
    assert not any("SECRET" in line for line in lines)
