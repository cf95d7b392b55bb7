"""Travel runs end to end: a travel_orchestrator row in a real SQLite queue, the real worker loop, the tiny
random-weight models through the real engine, real ffmpeg; the final mp4 is checked with ffprobe against the
frame-count contract (Σ segment frames − Σ overlaps).

The two payload shapes are seed 001's runs (tests/reproducers), scaled to the tiny models: run 1 without a
phase_config or LoRAs, run 2 with a 3-phase phase_config, 2 LoRAs and per-segment prompts."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console
from tiny_loras import write_tiny_lora

from source.demo import KEYFRAMES_DIR, travel_summary
from source.queue import TaskStatus
from source.tasks.travel_orchestrator import handle_travel_orchestrator
from Wan2GP.catalog import load_catalog

REPO = Path(__file__).resolve().parents[2]
KEYFRAMES = sorted(str(p) for p in (REPO / "source" / "assets" / "keyframes").glob("*.png"))
REPRODUCERS = REPO / "tests" / "reproducers"


def _reproducer(name: str) -> dict:
    return json.loads((REPRODUCERS / name).read_text())["params"]


def _run1_payload(model: str) -> dict:
    params = copy.deepcopy(_reproducer("seed_001_run1_no_phase_config.json"))
    details = params["orchestrator_details"]
    details.update(model_name=model, input_image_paths_resolved=KEYFRAMES, parsed_resolution_wh="64x64")
    details["model_type"] = load_catalog().get(model).travel_mode  # the seed's "vace" would pick the VACE counterpart
    return params


def _assert_final_video(queue, ffprobe, orchestrator_id: str, expected_frames: int, size: tuple[int, int]) -> dict:
    orchestrator = queue.get(orchestrator_id)
    assert orchestrator.status == TaskStatus.COMPLETE, orchestrator.error_message
    # Its progress says how it ended (not the "Enqueued 2 segments..." it showed while waiting), and its one
    # handler run counts as the attempt the log announced.
    assert (orchestrator.progress["message"], orchestrator.attempts) == ("Complete", 1)
    children = queue.children(orchestrator_id)
    assert all(child.status == TaskStatus.COMPLETE for child in children)
    stitch = next(child for child in children if child.role == "stitch")
    assert orchestrator.output_location == stitch.output_location
    assert orchestrator.result["output"]["frames"] == expected_frames
    probe = ffprobe(orchestrator.output_location)
    assert int(probe["nb_read_frames"]) == expected_frames
    assert (probe["width"], probe["height"]) == size
    assert (probe["codec_name"], probe["pix_fmt"]) == ("h264", "yuv420p")
    return probe


@pytest.mark.slow
def test_run1_shape_i2v_without_phase_config(worker_env, ffprobe):
    # Seed 001 run 1: segments [61, 61], overlap 6, no phase_config, no LoRAs -> 116 frames (upstream wrote 120).
    orchestrator_id = worker_env.queue.enqueue("travel_orchestrator", _run1_payload("wan_tiny_i2v_2_2"), project_id="p")
    assert worker_env.drain() == 0
    _assert_final_video(worker_env.queue, ffprobe, orchestrator_id, 61 + 61 - 6, (64, 64))
    segments = [c for c in worker_env.queue.children(orchestrator_id) if c.role == "segment"]
    assert [c.result["frames"] for c in segments] == [61, 61]
    # i2v segments are independent, so several workers could take them at once; only the stitch waits for both.
    assert all(c.dependant_on is None for c in segments)


@pytest.mark.slow
def test_run2_shape_vace_three_phases_two_loras(worker_env, model_cache, ffprobe):
    params = copy.deepcopy(_reproducer("seed_001_run2_3phase.json"))
    details = params["orchestrator_details"]
    high = write_tiny_lora("wan_tiny_vace", model_cache, worker_env.tmp / "high_noise_model.safetensors", seed=1)
    low = write_tiny_lora("wan_tiny_vace", model_cache, worker_env.tmp / "low_noise_model.safetensors", seed=2)
    for phase in details["phase_config"]["phases"]:
        for lora in phase["loras"]:
            lora["url"] = high if "high_noise" in lora["url"] else low
    details.update(model_name="wan_tiny_vace", input_image_paths_resolved=KEYFRAMES, parsed_resolution_wh="64x48")
    details["negative_prompts_expanded"] = ["cut, blurry", "fade only"]
    orchestrator_id = worker_env.queue.enqueue("travel_orchestrator", params, project_id="p")
    assert worker_env.drain() == 0
    # [53, 45] with overlap 6 -> 92 frames (upstream wrote 96 while logging 92).
    _assert_final_video(worker_env.queue, ffprobe, orchestrator_id, 53 + 45 - 6, (64, 48))
    segments = sorted(
        (c for c in worker_env.queue.children(orchestrator_id) if c.role == "segment"), key=lambda c: c.segment_index
    )
    # VACE segments chain: segment 1 reads segment 0's tail.
    assert segments[1].dependant_on == segments[0].id
    # Per-segment prompts and negative prompts reach the segments untouched.
    assert segments[0].params["base_prompt"].startswith("The character begins walking")
    assert [s.params["negative_prompt"] for s in segments] == ["cut, blurry", "fade only"]
    generation = segments[0].params["generation"]
    assert generation["lora_multipliers"] == ["0.75;1.0;0", "0;0;1.0"]
    # 6 steps, CFG 3 in phase 1 only (2 steps): 2*2 + 4 = 8 forwards, all on the single tiny expert.
    assert sum(segments[0].result["forward_passes"].values()) == 8


@pytest.mark.slow
def test_independent_vace_segments_with_overlap_stitch_to_the_contract(worker_env, ffprobe):
    # chain_segments=false: each VACE segment starts at its own keyframe and reads no predecessor, yet still overlaps
    # its neighbour in the stitch (segment 1 used to fail: "carries 2 frames but depends on no previous segment").
    params = _run1_payload("wan_tiny_vace")
    details = params["orchestrator_details"]
    details.update(segment_frames_expanded=[9, 13], frame_overlap_expanded=[2], chain_segments=False)
    orchestrator_id = worker_env.queue.enqueue("travel_orchestrator", params, project_id="p")
    assert worker_env.drain() == 0
    _assert_final_video(worker_env.queue, ffprobe, orchestrator_id, 9 + 13 - 2, (64, 64))
    segments = [c for c in worker_env.queue.children(orchestrator_id) if c.role == "segment"]
    assert all(c.dependant_on is None for c in segments)

    # The demo's closing table, from the same rows: frames, overlap, forwards per expert, and the contracted total.
    console = Console(width=200, record=True)
    console.print(travel_summary(worker_env.queue.get(orchestrator_id), worker_env.queue.children(orchestrator_id)))
    rows = {line.split("│")[1].strip(): [cell.strip() for cell in line.split("│")[2:-1]] for line in
            console.export_text().splitlines() if line.startswith("│")}  # fmt: skip
    # The seed's basic-mode steps=6 is the number of steps (the tiny model's own is 4), no CFG.
    assert rows["segment 0"][:3] == ["9", "2", "6/0"] and rows["segment 1"][:3] == ["13", "", "6/0"]
    assert rows["stitched"][0] == "20"


def test_zero_segments_to_generate_succeeds_vacuously(worker_env):
    # upstream_worker_spec §3.1: num_new_segments_to_generate <= 0 completes the orchestrator with nothing enqueued.
    params = _run1_payload("wan_tiny_i2v_2_2")
    params["orchestrator_details"].update(num_new_segments_to_generate=0, segment_frames_expanded=[])
    orchestrator_id = worker_env.queue.enqueue("travel_orchestrator", params, project_id="p")
    assert worker_env.drain() == 0
    orchestrator = worker_env.queue.get(orchestrator_id)
    assert orchestrator.status == TaskStatus.COMPLETE, orchestrator.error_message
    assert worker_env.queue.children(orchestrator_id) == []


@pytest.mark.slow
def test_segment_failure_fails_stitch_and_orchestrator_with_the_reason(worker_env):
    params = _run1_payload("wan_tiny_i2v_2_2")
    details = params["orchestrator_details"]
    details["segment_frames_expanded"] = [9, 9]
    details["frame_overlap_expanded"] = [2]
    missing = str(worker_env.tmp / "no_such_keyframe.png")
    details["input_image_paths_resolved"] = [KEYFRAMES[0], KEYFRAMES[1], missing]
    orchestrator_id = worker_env.queue.enqueue("travel_orchestrator", params, project_id="p")
    assert worker_env.drain() == 0
    children = {(c.role, c.segment_index): c for c in worker_env.queue.children(orchestrator_id)}
    assert children[("segment", 0)].status == TaskStatus.COMPLETE
    failed = children[("segment", 1)]
    assert failed.status == TaskStatus.FAILED and "no_such_keyframe.png" in failed.error_message
    stitch = children[("stitch", None)]
    assert stitch.status == TaskStatus.FAILED and failed.id in stitch.error_message
    orchestrator = worker_env.queue.get(orchestrator_id)
    assert orchestrator.status == TaskStatus.FAILED
    assert "no_such_keyframe.png" in orchestrator.error_message


def test_bad_payload_fails_the_orchestrator_naming_the_field(worker_env):
    params = _run1_payload("wan_tiny_i2v_2_2")
    params["orchestrator_details"]["segment_frames_expanded"] = [61, "sixty"]
    orchestrator_id = worker_env.queue.enqueue("travel_orchestrator", params, project_id="p")
    assert worker_env.drain() == 0
    orchestrator = worker_env.queue.get(orchestrator_id)
    assert orchestrator.status == TaskStatus.FAILED
    assert "orchestrator_details.segment_frames_expanded[1]" in orchestrator.error_message
    assert orchestrator.attempts <= 1  # bad input is never retried
    assert worker_env.queue.children(orchestrator_id) == []


def test_a_run_too_large_to_generate_fails_before_enqueuing_any_segment(worker_env):
    params = _run1_payload("wan_tiny_i2v_2_2")
    # Each bound alone passes (2048x2048 per frame, 1025 frames); together they are 4.3 billion pixels.
    params["orchestrator_details"].update(parsed_resolution_wh="2048x2048", segment_frames_expanded=[1025, 1025])
    orchestrator_id = worker_env.queue.enqueue("travel_orchestrator", params)
    assert worker_env.drain() == 0
    orchestrator = worker_env.queue.get(orchestrator_id)
    assert (orchestrator.status, orchestrator.attempts) == (TaskStatus.FAILED, 1)
    assert orchestrator.error_message.startswith("orchestrator_details.parsed_resolution_wh: 2048x2048 x 1025 frames")
    assert worker_env.queue.children(orchestrator_id) == []


def test_rerunning_a_crashed_orchestrator_creates_no_duplicates(worker_env):
    # The worker died after enqueueing the children but before marking the orchestrator: a re-run must find them.
    orchestrator_id = worker_env.queue.enqueue("travel_orchestrator", _run1_payload("wan_tiny_i2v_2_2"), project_id="p")
    task = worker_env.queue.claim("crashed-worker", lease_seconds=60)
    assert task.id == orchestrator_id
    contexts = [worker_env.context(task, worker_id="crashed-worker") for _ in range(2)]
    first = handle_travel_orchestrator(contexts[0])
    second = handle_travel_orchestrator(contexts[1])
    assert first.result["child_ids"] == second.result["child_ids"]
    children = worker_env.queue.children(orchestrator_id)
    assert len(children) == 3
    assert sorted((c.role, c.segment_index if c.segment_index is not None else -1) for c in children) == [
        ("segment", 0),
        ("segment", 1),
        ("stitch", -1),
    ]


@pytest.mark.slow
def test_cli_enqueue_and_worker_once_black_box(tmp_path, model_cache, ffprobe):
    """What an operator types: enqueue a travel payload with the CLI, run `python worker.py --once`."""
    payload = _run1_payload("wan_tiny_i2v_2_2")
    payload["orchestrator_details"].update(segment_frames_expanded=[13, 17], frame_overlap_expanded=[4])
    payload_file = tmp_path / "travel.json"
    payload_file.write_text(json.dumps(payload))
    db_url = f"sqlite:///{tmp_path / 'cli.db'}"
    env = {**os.environ, "WAN2GP_CACHE": str(model_cache), "HW_LORA_DIR": str(tmp_path / "loras")}
    enqueued = subprocess.run(
        [
            sys.executable,
            "-m",
            "source.cli",
            "enqueue",
            str(payload_file),
            "--type",
            "travel_orchestrator",
            "--db",
            db_url,
        ],
        check=True,
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
    )
    orchestrator_id = enqueued.stdout.strip().splitlines()[-1]
    subprocess.run(
        [
            sys.executable,
            "worker.py",
            "--once",
            "--db",
            db_url,
            "--output-dir",
            str(tmp_path / "out"),
            "--retry-delay",
            "0",
            "--input-root",
            str(KEYFRAMES_DIR),
        ],
        check=True,
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=300,
    )
    listed = subprocess.run(
        [sys.executable, "-m", "source.cli", "list", "--json", "--db", db_url],
        check=True,
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
    )
    rows = {row["id"]: row for row in json.loads(listed.stdout)}
    assert rows[orchestrator_id]["status"] == "Complete", rows[orchestrator_id]["error_message"]
    assert int(ffprobe(rows[orchestrator_id]["output_location"])["nb_read_frames"]) == 13 + 17 - 4


def test_num_new_segments_to_generate_takes_the_first_entries_of_longer_lists(worker_env):
    # Upstream reads the per-segment lists by index, so a payload may carry more entries than segments.
    params = _run1_payload("wan_tiny_i2v_2_2")
    details = params["orchestrator_details"]
    details.update(
        num_new_segments_to_generate=2,
        segment_frames_expanded=[13, 17, 21],
        frame_overlap_expanded=[4, 6],
        input_image_paths_resolved=[*KEYFRAMES, KEYFRAMES[0]],
    )
    orchestrator_id = worker_env.queue.enqueue("travel_orchestrator", params, project_id="p")
    task = worker_env.queue.claim("w", lease_seconds=60)
    outcome = handle_travel_orchestrator(worker_env.context(task))
    assert outcome.result["segment_frames"] == [13, 17]
    assert outcome.result["expected_final_frames"] == 13 + 17 - 4
    children = worker_env.queue.children(orchestrator_id)
    assert sorted(c.role for c in children) == ["segment", "segment", "stitch"]


@pytest.mark.slow
def test_every_task_of_a_run_reports_progress_on_one_total_that_never_goes_back(worker_env, monkeypatch):
    from source.queue.core import SqlTaskQueue

    written: dict[str, list[tuple[int, int]]] = {}
    real = SqlTaskQueue.report_progress

    def recording(self, task_id, worker_id, *, step, total, message=""):
        written.setdefault(task_id, []).append((step, total))
        return real(self, task_id, worker_id, step=step, total=total, message=message)

    monkeypatch.setattr(SqlTaskQueue, "report_progress", recording)
    params = _run1_payload("wan_tiny_i2v_2_2")
    params["orchestrator_details"].update(segment_frames_expanded=[9, 9], frame_overlap_expanded=[2])
    orchestrator_id = worker_env.queue.enqueue("travel_orchestrator", params, project_id="p")
    assert worker_env.drain() == 0
    children = worker_env.queue.children(orchestrator_id)
    assert {child.id for child in children} <= written.keys()  # the segments and the stitch all reported
    for task_id, reports in written.items():
        # 0 means "not known yet" (a segment fetching its keyframes); once known, one total that steps never undo.
        known = [(step, total) for step, total in reports if total]
        assert len({total for _, total in known}) == 1 and reports[-len(known) :] == known, (task_id, reports)
        steps = [step for step, _ in known]
        assert steps == sorted(steps), (task_id, reports)
