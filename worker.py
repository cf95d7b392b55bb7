"""Start a Headless-Wan2GP worker: `python worker.py [--db URL] [--once] ...` (see --help).

Every flag falls back to an environment variable (HW_DB_URL or DATABASE_URL, HW_WORKER_ID, ...), then to a default.
This file only parses arguments; the loop lives in source/worker/.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from source.demo import run_demo
from source.tasks import default_registry
from source.tasks.context import WorkerServices
from source.worker import EXIT_STARTUP_FAILED, SettingsError, run, settings_from_values
from source.worker.gpus import group_gpus, plan_gpus, run_per_gpu
from source.worker.logs import configure_logging
from source.worker.ranks import run_context_parallel
from source.worker.services import build_services
from source.worker.settings import WorkerSettings
from Wan2GP.catalog import ATTENTION_KERNELS, DTYPES, CatalogError


def build_arg_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="worker.py",
        description="Claim tasks from the queue and run them, one at a time.",
    )
    # None defaults: a flag not given falls back to its environment variable (settings_from_values).
    parser.add_argument(
        "--db",
        metavar="URL",
        help="sqlite:///path or postgresql://... [env HW_DB_URL, DATABASE_URL; default sqlite:///tasks.db]",
    )
    parser.add_argument("--worker-id", metavar="ID", help="[env HW_WORKER_ID; default hostname-pid]")
    parser.add_argument(
        "--poll-interval",
        type=float,
        metavar="S",
        help="seconds between polls when idle [env HW_POLL_INTERVAL; default 5]",
    )
    parser.add_argument("--output-dir", metavar="DIR", help="[env HW_OUTPUT_DIR; default ./outputs]")
    parser.add_argument(
        "--log-level", metavar="LEVEL", help="DEBUG, INFO, WARNING ... [env HW_LOG_LEVEL; default INFO]"
    )
    parser.add_argument(
        "--log-json", action="store_true", default=None, help="one JSON object per log line [env HW_LOG_JSON]"
    )
    parser.add_argument(
        "--once",
        action="store_true",
        default=None,
        help="process what is ready (including what that makes ready), then exit [env HW_ONCE]",
    )
    parser.add_argument("--max-tasks", type=int, metavar="N", help="exit after N tasks [env HW_MAX_TASKS]")
    parser.add_argument(
        "--lease-seconds",
        type=float,
        metavar="S",
        help="a task whose lease is not renewed for this "
        "long is reclaimed by another worker [env HW_LEASE_SECONDS; default 60]",
    )
    parser.add_argument(
        "--heartbeat-seconds",
        type=float,
        metavar="S",
        help="lease renewal / heartbeat interval [env HW_HEARTBEAT_SECONDS; default 10]",
    )
    parser.add_argument(
        "--grace-seconds",
        type=float,
        metavar="S",
        help="on SIGTERM/SIGINT, how long the current "
        "task may run on before it is stopped and put back [env HW_GRACE_SECONDS; default 30]",
    )
    parser.add_argument(
        "--task-types", metavar="A,B", help="claim only these task types [env HW_TASK_TYPES; default all]"
    )
    parser.add_argument(
        "--retry-delay",
        type=float,
        metavar="S",
        help="first back-off after a transient failure, doubling per attempt [env HW_RETRY_DELAY; default 5]",
    )
    parser.add_argument(
        "--cancel-window",
        type=float,
        metavar="S",
        help="after the grace period, how long a task "
        "that ignores the stop request may run before the worker puts it back and exits anyway "
        "[env HW_CANCEL_WINDOW; default 5]",
    )
    engine = parser.add_argument_group("engine and outputs")
    engine.add_argument("--device", help="torch device for the engine [env HW_DEVICE; default cuda when available]")
    engine.add_argument(
        "--model-cache-dir",
        metavar="DIR",
        help="downloaded and tiny models [env HW_MODEL_CACHE_DIR, WAN2GP_CACHE; default ~/.cache/wan2gp]",
    )
    engine.add_argument("--lora-dir", metavar="DIR", help="downloaded LoRAs [env HW_LORA_DIR; default <cache>/loras]")
    engine.add_argument(
        "--vram-budget",
        metavar="GB",
        type=float,
        help="device memory the engine plans within: everything resident when the model fits, else the encoders and "
        "then the transformers' blocks stream from pinned host memory, the VAE tiled [env HW_VRAM_BUDGET; default "
        "the card's free memory at start-up]",
    )
    engine.add_argument(
        "--gpus",
        metavar="all|N|0,1",
        help="one worker process per GPU, each on its own GPU with its own worker id (<id>-gpu<N>) and lease, "
        "restarted when it crashes; SIGTERM reaches every one [env HW_GPUS; default: one worker on --device]",
    )
    engine.add_argument(
        "--compile",
        action="store_true",
        default=None,
        help="torch.compile the transformers' repeated block when the model is resident on one GPU: 1.18x per forward "
        "on an H200 at 768x576x53 (bench/README.md); the first generation at each new size compiles [env HW_COMPILE]",
    )
    engine.add_argument(
        "--fast",
        action="store_true",
        default=None,
        help="the fast path: fp8 weights and activations in the transformers' blocks (torchao), compiled as with "
        "--compile; on a GPU without fp8 matmuls (before compute capability 8.9) the weights stay as without it "
        "[env HW_FAST]",
    )
    engine.add_argument(
        "--vae-dtype",
        choices=DTYPES,
        help="the VAE's dtype on a GPU (CPUs run float32): float16 decodes the seed segment in 1.21 s on an H200 "
        "against 1.90 s in float32, 1.8e-3 from it, and reruns a call in float32 where it overflows; bfloat16 is as "
        "fast and 1.5e-2 away (bench/README.md) [env HW_VAE_DTYPE; default the model definition's, float16 for the "
        "bundled models]",
    )
    engine.add_argument(
        "--attention",
        choices=ATTENTION_KERNELS,
        help="the transformers' attention kernel: flash3 is FlashAttention-3 (built from source, bench/README.md; "
        "compute capability 9.x), flash4 FlashAttention-4, cudnn_fp8 cuDNN's fp8 attention (lossy: for the fast path) "
        "for the self-attention (both: pip install -r requirements-hopper.txt; compute capability 9.x/10.x), all in "
        "bf16/fp16; sdpa is torch's scaled_dot_product_attention; auto takes cudnn_fp8 with --fast, then flash3, then "
        "flash4, where they can run [env HW_ATTENTION; default auto]",
    )
    engine.add_argument(
        "--context-parallel",
        metavar="N",
        type=int,
        help="split each generation over N GPUs (diffusers' context parallelism, one process per GPU, NCCL): one long "
        "high-resolution video finishes sooner; many short segments are better served by --gpus alone. With --gpus, "
        "its GPUs are grouped N to a worker. --device cpu runs the ranks as CPU processes (gloo; tests) "
        "[env HW_CONTEXT_PARALLEL; default 1]",
    )
    engine.add_argument(
        "--prompt-model",
        metavar="REPO|DIR",
        help="the Qwen2.5-VL that writes travel prompts when a run asks for enhance_prompt: a Hugging Face repo, a "
        "local folder, or 'tiny' [env HW_PROMPT_MODEL; default Qwen/Qwen2.5-VL-7B-Instruct]",
    )
    engine.add_argument(
        "--no-prompt-fallback",
        dest="prompt_fallback",
        action="store_false",
        default=None,
        help="fail a travel run that asks for enhance_prompt when the prompt model cannot be loaded, instead of "
        "generating with the base prompts [env HW_PROMPT_FALLBACK=false]",
    )
    engine.add_argument(
        "--supabase-url",
        metavar="URL",
        help="a Supabase project: with SUPABASE_SERVICE_ROLE_KEY in the environment, outputs go to its bucket; with "
        "--supabase-access-token and no --db, Reigh's edge functions are the queue [env SUPABASE_URL; default: "
        "local --output-dir]",
    )
    engine.add_argument("--supabase-bucket", metavar="NAME", help="[env SUPABASE_BUCKET; default image_uploads]")
    reigh = parser.add_argument_group(
        "Reigh's edge API as the queue (a pod with no database URL; README: Running for Reigh)"
    )
    reigh.add_argument(
        "--supabase-access-token",
        "--reigh-access-token",
        dest="supabase_access_token",
        metavar="TOKEN",
        help="with --supabase-url and no --db: claim, complete and upload through Reigh's edge functions "
        "(prefer the environment: a flag shows in process listings) [env SUPABASE_ACCESS_TOKEN, REIGH_ACCESS_TOKEN]",
    )
    reigh.add_argument(
        "--edge-timeout",
        type=float,
        metavar="S",
        help="one edge function call; 5xx and timeouts are retried a few times [env HW_EDGE_TIMEOUT; default 30]",
    )
    inputs = parser.add_argument_group("what payloads may make the worker read (README: Hostile input)")
    inputs.add_argument(
        "--input-root",
        dest="input_roots",
        action="append",
        metavar="DIR",
        help="a local folder whose files payloads may name as inputs (repeat for more) "
        "[env HW_INPUT_ROOTS, separated by ':'; default none: inputs are http(s) URLs]",
    )
    inputs.add_argument(
        "--allow-private-urls",
        action="store_true",
        default=None,
        help="let payload URLs reach loopback, private and link-local addresses (refused by default) "
        "[env HW_ALLOW_PRIVATE_URLS]",
    )
    inputs.add_argument(
        "--max-image-mb", type=float, metavar="MB", help="largest image input [env HW_MAX_IMAGE_MB; default 64]"
    )
    inputs.add_argument(
        "--max-video-mb", type=float, metavar="MB", help="largest video input [env HW_MAX_VIDEO_MB; default 1024]"
    )
    inputs.add_argument(
        "--max-lora-mb", type=float, metavar="MB", help="largest LoRA file [env HW_MAX_LORA_MB; default 4096]"
    )
    inputs.add_argument(
        "--download-seconds",
        type=float,
        metavar="S",
        help="deadline for one file, retries and redirects included [env HW_DOWNLOAD_SECONDS; default 900]",
    )
    inputs.add_argument(
        "--stall-seconds",
        type=float,
        metavar="S",
        help="give a download up after this long without a byte [env HW_STALL_SECONDS; default 30]",
    )
    parser.add_argument(
        "--defaults-dir",
        dest="defaults_dirs",
        action="append",
        metavar="DIR",
        help="a folder of model definition files (upstream Wan2GP's defaults/*.json as they are) loaded over the "
        "bundled ones; a file with a bundled model's name overrides it key by key (repeat for more) "
        "[env HW_DEFAULTS_DIRS, separated by ':']",
    )
    demo = parser.add_argument_group("demo")
    demo.add_argument(
        "--demo",
        action="store_true",
        help="enqueue a travel run over the bundled keyframes on a fresh "
        "local SQLite queue, run it to the end and print the final mp4 (tiny CPU model by default)",
    )
    demo.add_argument(
        "--model",
        metavar="NAME",
        help="with --demo: the catalog model to travel with (e.g. wan_2_2_i2v_lightning_baseline_2_2_2 on a GPU pod)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_arg_parser().parse_args(argv)
    values = vars(args)
    if values.get("task_types") is not None:
        values["task_types"] = tuple(part.strip() for part in values["task_types"].split(",") if part.strip()) or None
    demo = values.pop("demo")
    demo_model = values.pop("model")
    if demo and values.get("db") is None:
        values["db"] = "sqlite:///outputs/demo/demo.db"
    try:
        settings = settings_from_values(values)
    except SettingsError as error:
        print(f"worker.py: {error}", file=sys.stderr)
        return EXIT_STARTUP_FAILED

    # The worker's log format from the first line: loading the model catalog already logs.
    configure_logging(level=settings.log_level, json_lines=settings.log_json, worker_id=settings.worker_id)
    if settings.gpus is not None:
        if demo:
            print("worker.py: --gpus does not apply to --demo", file=sys.stderr)
            return EXIT_STARTUP_FAILED
        try:
            gpus, visible = plan_gpus(settings.gpus)
            workers = group_gpus(gpus, settings.context_parallel)
        except ValueError as error:
            print(f"worker.py: {error}", file=sys.stderr)
            return EXIT_STARTUP_FAILED
        if len(workers) > 1 or settings.context_parallel > 1:
            return run_per_gpu(
                workers,
                sys.argv[1:] if argv is None else argv,
                base_worker_id=settings.worker_id,
                stop_timeout=settings.grace_seconds + settings.cancel_window_seconds + 30,
            )
        settings = dataclasses.replace(settings, device=f"cuda:{visible.index(gpus[0])}")  # one GPU: as before
    if demo_model and not demo:
        print("worker.py: --model only applies to --demo (a task names its own model)", file=sys.stderr)
        return EXIT_STARTUP_FAILED
    try:
        services = build_services(settings)
    except CatalogError as error:  # a broken definition file is found at start-up, not by the first task using it
        print(f"worker.py: {error}", file=sys.stderr)
        return EXIT_STARTUP_FAILED

    def serve(settings: WorkerSettings, services: WorkerServices) -> int:
        registry = default_registry(services.catalog)
        if demo:
            return run_demo(settings, model=demo_model, registry=registry, services=services, fresh_db=args.db is None)
        return run(settings, registry=registry, services=services)

    if settings.context_parallel > 1:
        return run_context_parallel(settings, lambda settings, group: serve(settings, build_services(settings, group)))
    return serve(settings, services)


if __name__ == "__main__":
    sys.exit(main())
