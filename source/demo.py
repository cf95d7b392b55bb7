"""`python worker.py --demo`: the whole product on one machine, in one command.

Creates a fresh local SQLite queue, enqueues a travel_orchestrator over the three keyframes bundled in
source/assets/keyframes (two segments with an overlap and a 2-phase phase_config), runs the worker until the DAG is
done, and prints the final mp4. With no `--model` it uses the tiny random-weight i2v model on the CPU (the video is
noise-like, the pipeline is real); on a GPU pod `--model wan_2_2_i2v_lightning_baseline_2_2_2` runs real weights.
"""

from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path

import PIL.Image
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from source.media.images import contact_sheet, evenly_spaced
from source.media.video import read_frames
from source.queue import TaskRecord, TaskStatus, open_queue
from source.tasks import TaskRegistry, WorkerServices
from source.worker import WorkerSettings, run
from source.worker.logs import configure_logging

KEYFRAMES_DIR = Path(__file__).parent / "assets" / "keyframes"
DEMO_MODEL = "wan_tiny_i2v_2_2"
REAL_DEMO_MODEL = "wan_2_2_i2v_lightning_baseline_2_2_2"  # what the demo runs on a GPU pod (real weights)
TERMINAL = {TaskStatus.COMPLETE, TaskStatus.FAILED, TaskStatus.CANCELLED}


def demo_payload(model_id: str, *, tiny: bool) -> dict:
    """Three keyframes, two segments, a 4-frame overlap and a 2-phase phase_config (high-noise expert with CFG for
    the first half of the steps, then the low-noise expert without CFG)."""
    keyframes = [str(path) for path in keyframe_paths()]
    frames, resolution, steps = ([25, 25], "128x128", [2, 2]) if tiny else ([49, 49], "832x480", [3, 3])
    return {
        "orchestrator_details": {
            "model_name": model_id,
            "input_image_paths_resolved": keyframes,
            "num_new_segments_to_generate": 2,
            "segment_frames_expanded": frames,
            "frame_overlap_expanded": [4],
            "base_prompts_expanded": ["the sun climbs over the hills", "evening falls, the sky turns violet"],
            "negative_prompts_expanded": ["", ""],
            "base_prompt": "a calm landscape timelapse",
            "negative_prompt": "blurry, distorted",
            "parsed_resolution_wh": resolution,
            "seed_base": 789,
            "fps_helpers": 16,
            "phase_config": {
                "num_phases": 2,
                "steps_per_phase": steps,
                "flow_shift": 5.0,
                "sample_solver": "euler",
                "phases": [
                    {"phase": 1, "guidance_scale": 3.0, "loras": []},
                    {"phase": 2, "guidance_scale": 1.0, "loras": []},
                ],
            },
        }
    }


def run_demo(
    settings: WorkerSettings, *, model: str | None, registry: TaskRegistry, services: WorkerServices, fresh_db: bool
) -> int:
    # The worker's log format from the first line (the queue logs its migrations before the worker loop starts).
    configure_logging(level=settings.log_level, json_lines=settings.log_json, worker_id=settings.worker_id)
    console = Console(stderr=True)
    model_id = model or DEMO_MODEL
    definition = services.catalog.get(model_id)
    if fresh_db and settings.db_url.startswith("sqlite:///"):
        db_file = Path(settings.db_url.removeprefix("sqlite:///"))
        for suffix in ("", "-wal", "-shm"):
            Path(f"{db_file}{suffix}").unlink(missing_ok=True)
        db_file.parent.mkdir(parents=True, exist_ok=True)

    queue = open_queue(settings.db_url)
    try:
        queue.migrate()
        orchestrator_id = queue.enqueue(
            "travel_orchestrator",
            demo_payload(definition.id, tiny=definition.weights.kind == "tiny"),
            project_id="demo",
        )
        console.print(f"demo: queue {settings.db_url}, model {definition.id}, orchestrator {orchestrator_id}")
        done = threading.Event()
        watcher = threading.Thread(target=_show_progress, args=(queue, orchestrator_id, done, console), daemon=True)
        watcher.start()
        try:
            # The bundled keyframes are local files: the one folder this run may read besides its URLs.
            demo_settings = replace(settings, once=True, input_roots=(*settings.input_roots, KEYFRAMES_DIR.resolve()))
            exit_code = run(demo_settings, registry=registry, services=services)
        finally:
            done.set()
            watcher.join(timeout=5)
        final = queue.get(orchestrator_id)
        children = queue.children(orchestrator_id)
    finally:
        queue.close()
    if final.status != TaskStatus.COMPLETE:
        console.print(f"[red]demo failed[/red]: orchestrator {final.status}: {final.error_message}")
        return exit_code or 1
    console.print(travel_summary(final, children))
    if definition.weights.kind == "tiny":
        console.print(
            f"{definition.id} has random weights built from a seed: the video is noise by design; the pipeline around "
            "it is the real one. Real weights come from the Hugging Face repo named in "
            f"Wan2GP/defaults/<model>.json, e.g. `python worker.py --demo --model {REAL_DEMO_MODEL}` on a GPU pod."
        )
    if final.output_location and Path(final.output_location).is_file():
        sheet = keyframes_and_video_sheet(keyframe_paths(), Path(final.output_location))
        console.print(f"contact sheet (keyframes above, frames of the video below): {sheet}")
    console.print("[green]demo finished[/green], the stitched video:")
    print(final.output_location)
    return exit_code


def keyframe_paths() -> list[Path]:
    return sorted(KEYFRAMES_DIR.glob("*.png"))


def keyframes_and_video_sheet(keyframes: list[Path], video: Path, *, samples: int = 6, height: int = 128) -> Path:
    """A PNG beside `video`: the keyframes in a row on top, `samples` evenly spaced frames of the video below."""
    rows = [
        [PIL.Image.open(path).convert("RGB") for path in keyframes],
        [PIL.Image.fromarray(frame) for frame in evenly_spaced(read_frames(video), samples)],
    ]
    return contact_sheet(rows, video.with_name(f"{video.stem}_contact.png"), height=height)


def travel_summary(orchestrator: TaskRecord, children: list[TaskRecord]) -> Table:
    """What a finished travel run did, from its rows: per segment its frames, overlap with the next, forwards per
    expert and seconds per engine stage; then the stitched total (frames minus overlaps)."""
    table = Table(
        title=f"travel run {orchestrator.id}",
        caption="stitched = Σ segment frames − Σ overlaps; seconds per engine stage: load/encode/denoise/decode",
    )
    for column in ("task", "frames", "overlap", "forwards high/low", "seconds"):
        table.add_column(column, no_wrap=True)
    planned = orchestrator.result or {}
    overlaps = list((planned.get("output") or {}).get("overlaps") or [])  # what the stitch reported using
    segments = sorted((c for c in children if c.role == "segment"), key=lambda c: c.segment_index or 0)
    for index, segment in enumerate(segments):
        result = segment.result or {}
        forwards = result.get("forward_passes") or {}
        timings = result.get("timings") or {}
        table.add_row(
            f"segment {segment.segment_index}",
            str(result.get("frames", "?")),
            str(overlaps[index]) if index < len(overlaps) else "",
            f"{forwards.get('high', 0)}/{forwards.get('low', 0)}",
            "/".join(f"{timings.get(stage, 0.0):.2f}" for stage in ("load", "encode", "denoise", "decode")),
        )
    stitched = (planned.get("output") or {}).get("frames", "?")
    table.add_row("stitched", str(stitched), "", "", "")
    return table


def _show_progress(queue, orchestrator_id: str, done: threading.Event, console: Console) -> None:
    """A bar over the run's tasks (orchestrator, segments, stitch) while the worker runs in the main thread."""
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        bar = progress.add_task("travel run", total=None)
        while not done.wait(0.5):
            children = queue.children(orchestrator_id)
            finished = sum(1 for c in children if c.status in TERMINAL)
            running = [
                f"{c.role} {c.segment_index if c.segment_index is not None else ''}".strip()
                for c in children
                if c.status == TaskStatus.IN_PROGRESS
            ]
            progress.update(
                bar,
                total=len(children) or None,
                completed=finished,
                description=f"travel run: {', '.join(running) or 'planning'}",
            )
        children = queue.children(orchestrator_id)
        progress.update(
            bar,
            total=len(children),
            completed=sum(1 for c in children if c.status in TERMINAL),
            description="travel run",
        )
