"""Reigh's own travel payloads end to end: rows built exactly as the app's create-task resolvers build them
(tests/reigh_payloads.py, transcribed from banodoco/reigh-app), run by the real worker loop over a real SQLite queue
with the tiny random-weight models, real ffmpeg, outputs checked with ffprobe and decoded frames.

What each test guards: the per-pair overrides reach the segment that owns them (and only it), with provenance that
`cli plan --explain` shows; basic mode's `steps`; the app's link fields on the segment rows; the post-generation
saturation measured on later segments; model_type "vace" picking the VACE model of Reigh's default i2v family;
`individual_travel_segment` and the turbo-mode `wan_2_2_i2v` rows; raw structure guidance; and that every key the
worker does not use is named once in the log."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from reigh_payloads import (
    individual_travel_segment_params,
    travel_between_images_params,
    travel_between_images_task,
)
from tiny_loras import write_tiny_lora

from source.demo import KEYFRAMES_DIR
from source.media.video import read_frames, write_frames
from source.queue import TaskStatus
from source.tasks.individual_segment import parse_individual_segment
from Wan2GP.catalog import load_catalog

REPO = Path(__file__).resolve().parents[2]
KEYFRAMES = sorted(str(p) for p in KEYFRAMES_DIR.glob("*.png"))
TINY_I2V = "wan_tiny_i2v_2_2"
TINY_VACE = "wan_tiny_vace"


def _phase_config(steps: list[int], loras: list[tuple[str, list[str]]] = (), shift: float = 5.0) -> dict:
    """A phase_config as the app writes one (resolvers' PhaseConfig): per-phase guidance and LoRA multipliers."""
    return {
        "num_phases": len(steps),
        "steps_per_phase": steps,
        "flow_shift": shift,
        "sample_solver": "euler",
        "model_switch_phase": 1,
        "phases": [
            {
                "phase": index + 1,
                "guidance_scale": 1.0,
                "loras": [{"url": url, "multiplier": multipliers[index]} for url, multipliers in loras],
            }
            for index in range(len(steps))
        ],
    }


def _segments(queue, orchestrator_id: str) -> list:
    children = queue.children(orchestrator_id)
    return sorted((c for c in children if c.role == "segment"), key=lambda c: c.segment_index)


def _chroma(video: str) -> float:
    """Mean distance of the decoded frames' colour from grey (RGB channel spread), a saturation measure."""
    frames = read_frames(Path(video)).astype(np.float32)
    return float(np.mean(frames.max(axis=-1) - frames.min(axis=-1)))


@pytest.mark.slow
def test_basic_mode_links_steps_and_saturation_after_the_first_segment(worker_env, ffprobe):
    def run(saturation: float) -> list:
        params = travel_between_images_params(
            KEYFRAMES[:3],
            base_prompts=["a walk", "a run"],
            segment_frames=[9, 9],
            frame_overlap=[2],
            model_name=TINY_I2V,
            steps=3,
            shot_id="11111111-1111-4111-8111-111111111111",
            parent_generation_id="22222222-2222-4222-8222-222222222222",
            pair_shot_generation_ids=["pair-a", "pair-b"],
            after_first_post_generation_saturation=saturation,
        )
        orchestrator_id = worker_env.queue.enqueue("travel_orchestrator", params, project_id="p")
        assert worker_env.drain() == 0
        assert worker_env.queue.get(orchestrator_id).status == TaskStatus.COMPLETE
        return _segments(worker_env.queue, orchestrator_id)

    plain, desaturated = run(1.0), run(0.4)
    for segment in plain:
        row = segment.params
        # The link fields Reigh's complete_task reads off a segment row (docs/reigh_payloads.md §7).
        assert row["shot_id"] == "11111111-1111-4111-8111-111111111111"
        assert row["parent_generation_id"] == "22222222-2222-4222-8222-222222222222"
        assert row["pair_shot_generation_id"] == ["pair-a", "pair-b"][segment.segment_index]
        assert row["orchestrator_details"]["base_prompts_expanded"] == ["a walk", "a run"]
        assert row["orchestrator_details"]["pair_shot_generation_ids"] == ["pair-a", "pair-b"]
        # Basic mode's steps=3 is the number of steps (the tiny model's own is 4): two on the high-noise expert with
        # CFG (two passes each), one on the low-noise expert.
        assert row["generation"]["num_inference_steps"] == 3
        assert row["generation"]["sources"]["num_inference_steps"] == "orchestrator_details.steps"
        assert segment.result["forward_passes"] == {"high": 4, "low": 1}
    # Segment 0 is untouched; segment 1 lost about 60% of its colour, measured on the stored videos.
    assert _chroma(desaturated[0].output_location) == pytest.approx(_chroma(plain[0].output_location), rel=0.01)
    ratio = _chroma(desaturated[1].output_location) / _chroma(plain[1].output_location)
    assert 0.3 < ratio < 0.5, ratio
    assert int(ffprobe(desaturated[1].output_location)["nb_read_frames"]) == 9


@pytest.mark.slow
def test_per_pair_phase_configs_and_loras_reach_their_own_segment(worker_env, model_cache, tmp_path):
    style = write_tiny_lora(TINY_I2V, model_cache, worker_env.tmp / "style.safetensors", seed=1)
    speed = write_tiny_lora(TINY_I2V, model_cache, worker_env.tmp / "speed_high_noise.safetensors", seed=2)
    run_config = _phase_config([2, 2], loras=[(speed, ["1.0", "0"])])
    pair_config = _phase_config([1, 2], loras=[(speed, ["0.5", "0"])], shift=3.0)
    params = travel_between_images_params(
        [*KEYFRAMES, KEYFRAMES[0]],  # three pairs: dawn-noon, noon-dusk, dusk-dawn
        base_prompts=["one", "two", "three"],
        segment_frames=[9, 9, 9],
        frame_overlap=[2],
        model_name=TINY_I2V,
        advanced_mode=True,
        phase_config=run_config,
        pair_phase_configs=[None, pair_config, None],
        pair_loras=[None, None, [{"path": style, "strength": 0.7}]],
    )
    orchestrator_id = worker_env.queue.enqueue("travel_orchestrator", params, project_id="p")
    assert worker_env.drain() == 0
    segments = _segments(worker_env.queue, orchestrator_id)
    generations = [s.params["generation"] for s in segments]
    # Segment 0: the run's phase_config. Segment 1: its pair's (3 steps, shift 3, the speed LoRA at 0.5).
    # Segment 2: the run's phase_config plus its pair's style LoRA (the pair LoRA does not drop the run's).
    assert [g["num_inference_steps"] for g in generations] == [4, 3, 4]
    assert [g["flow_shift"] for g in generations] == [5.0, 3.0, 5.0]
    assert generations[0]["sources"]["num_inference_steps"] == "orchestrator_details.phase_config"
    assert generations[1]["sources"]["num_inference_steps"] == "orchestrator_details.phase_configs_expanded[1]"
    assert generations[1]["lora_multipliers"] == ["0.5;0"]
    assert generations[2]["lora_names"] == [speed, style] and generations[2]["lora_multipliers"] == ["1.0;0", "0.7"]
    assert generations[2]["sources"]["activated_loras"] == (
        "orchestrator_details.phase_config + orchestrator_details.loras_per_segment_expanded[2]"
    )
    assert [sum(s.result["forward_passes"].values()) for s in segments] == [4, 3, 4]

    # `cli plan --explain` on the stored segment row says where each value came from.
    row = tmp_path / "segment1.json"
    row.write_text(json.dumps({"task_type": "travel_segment", "params": segments[1].params}))
    explained = subprocess.run(
        [sys.executable, "-m", "source.cli", "plan", str(row), "--explain", "--json"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    sources = json.loads(explained.stdout)["sources"]
    assert sources["flow_shift"]["source"] == "orchestrator_details.phase_configs_expanded[1]"
    assert sources["num_inference_steps"]["value"] == 3


@pytest.mark.slow
def test_model_type_vace_runs_the_vace_model_of_the_family_and_unused_keys_are_named_once(worker_env, capsys):
    params = travel_between_images_params(
        KEYFRAMES[:2], base_prompts=["x"], segment_frames=[9], frame_overlap=[2], model_name=TINY_I2V, model_type="vace"
    )
    params["orchestrator_details"]["a_key_from_the_future"] = 1
    orchestrator_id = worker_env.queue.enqueue("travel_orchestrator", params, project_id="p")
    assert worker_env.drain() == 0
    lines = capsys.readouterr().err.splitlines()
    assert worker_env.queue.get(orchestrator_id).status == TaskStatus.COMPLETE
    (segment,) = _segments(worker_env.queue, orchestrator_id)
    assert segment.params["model_name"] == TINY_VACE and segment.params["travel_mode"] == "vace"
    reports = [line for line in lines if "payload key(s) not used" in line]
    assert len(reports) == 1  # the orchestrator's; our own segment and stitch rows hold only keys the worker uses
    assert "orchestrator_details.a_key_from_the_future (not a key this worker knows)" in reports[0]
    assert "orchestrator_details.amount_of_motion (UI state" in reports[0]
    assert reports[0].count("a_key_from_the_future") == 1


@pytest.mark.slow
def test_individual_travel_segment_runs_on_its_own(worker_env, ffprobe):
    params = individual_travel_segment_params(
        KEYFRAMES[1],
        KEYFRAMES[2],
        project_id="p",
        segment_index=2,
        parent_generation_id="33333333-3333-4333-8333-333333333333",
        pair_shot_generation_id="pair-c",
        model_name=TINY_I2V,
        num_frames=13,
        phase_config=_phase_config([1, 1]),
        base_prompt="on its own",
    )
    task_id = worker_env.queue.enqueue("individual_travel_segment", params, project_id="p")
    assert worker_env.drain() == 0
    task = worker_env.queue.get(task_id)
    assert task.status == TaskStatus.COMPLETE, task.error_message
    assert int(ffprobe(task.output_location)["nb_read_frames"]) == 13
    # The individual_segment_params phase_config ran (2 steps), not the app's orchestrator_details defaults.
    assert sum(task.result["forward_passes"].values()) == 2
    # The app copies the phase_config's step sum, shift and guidance to the lower levels too; only the provenance
    # shows that the highest level, individual_segment_params, is the one that ran.
    segment, _ = parse_individual_segment(params, catalog=load_catalog())
    assert segment.generation.sources["num_inference_steps"] == "individual_segment_params.phase_config"
    assert segment.segment_index == 2 and segment.pair_shot_generation_id == "pair-c"


@pytest.mark.slow
def test_turbo_mode_wan_2_2_i2v_is_a_travel_run(worker_env, ffprobe):
    task_type, params = travel_between_images_task(
        KEYFRAMES[:2], base_prompts=["x"], segment_frames=[9], frame_overlap=[2], model_name=TINY_I2V, turbo_mode=True
    )
    assert task_type == "wan_2_2_i2v"
    task_id = worker_env.queue.enqueue(task_type, params, project_id="p")
    assert worker_env.drain() == 0
    task = worker_env.queue.get(task_id)
    assert task.status == TaskStatus.COMPLETE, task.error_message
    assert int(ffprobe(task.output_location)["nb_read_frames"]) == 9


@pytest.mark.slow
def test_raw_structure_guidance_fills_the_generated_frames_of_the_vace_guide(worker_env, monkeypatch):
    # A structure video of solid colours, one per frame: the guide must carry frame t of the run at segment frame k.
    colours = np.stack([np.full((32, 32, 3), 10 * t, dtype=np.uint8) for t in range(20)])
    guide_video = worker_env.tmp / "structure.mp4"
    write_frames(colours, guide_video, fps=16, lossless_rgb=True)
    params = travel_between_images_params(
        KEYFRAMES[:3],
        base_prompts=["x", "y"],
        segment_frames=[9, 9],
        frame_overlap=[2],
        model_name=TINY_I2V,
        model_type="vace",
        independent_segments=True,
        travel_guidance={
            "kind": "vace",
            "mode": "raw",
            "strength": 0.6,
            "videos": [{"path": str(guide_video), "start_frame": 0, "end_frame": 16, "treatment": "clip"}],
        },
    )
    written: list[tuple[str, np.ndarray, dict]] = []
    import source.tasks.travel_segment as travel_segment

    real_build = travel_segment.build_vace_guide

    def recording_build(**kwargs):
        guide = real_build(**kwargs)
        written.append((kwargs["name"], read_frames(guide.guide), kwargs))
        return guide

    monkeypatch.setattr(travel_segment, "build_vace_guide", recording_build)
    orchestrator_id = worker_env.queue.enqueue("travel_orchestrator", params, project_id="p")
    assert worker_env.drain() == 0
    assert worker_env.queue.get(orchestrator_id).status == TaskStatus.COMPLETE
    by_name = {name: frames for name, frames, _ in written}
    # Segment 1 starts at run frame 7 (9 - 2): its frames 1..7 are guided by source frames 8..14; 8 is its end
    # keyframe, frame 0 its start keyframe; run frame 16 and later have no guidance (end_frame is 16).
    seg1 = by_name["seg01"]
    for k in range(1, 8):
        assert abs(float(seg1[k].mean()) - 10 * (7 + k)) < 1.5, k
    seg0 = by_name["seg00"]
    for k in range(1, 8):
        assert abs(float(seg0[k].mean()) - 10 * k) < 1.5, k


def test_unsupported_guidance_and_continuations_fail_at_once_naming_the_field(worker_env):
    for guidance, field in (
        ({"kind": "vace", "mode": "depth", "videos": [{"path": "x.mp4"}]}, "travel_guidance.mode"),
        ({"kind": "uni3c", "videos": [{"path": "x.mp4"}]}, "travel_guidance.kind"),
    ):
        params = travel_between_images_params(
            KEYFRAMES[:2], base_prompts=["x"], segment_frames=[9], frame_overlap=[2], model_name=TINY_I2V,
            travel_guidance=guidance,
        )  # fmt: skip
        task_id = worker_env.queue.enqueue("travel_orchestrator", params, project_id="p")
        assert worker_env.drain() == 0
        task = worker_env.queue.get(task_id)
        assert task.status == TaskStatus.FAILED and task.attempts == 1
        assert f"orchestrator_details.{field}" in task.error_message and "raw" in task.error_message
    # A colour change the segment could not apply is refused before anything is generated.
    params = travel_between_images_params(
        KEYFRAMES[:2], base_prompts=["x"], segment_frames=[9], frame_overlap=[2], model_name=TINY_I2V,
        after_first_post_generation_brightness=-1,
    )  # fmt: skip
    task_id = worker_env.queue.enqueue("travel_orchestrator", params, project_id="p")
    assert worker_env.drain() == 0
    task = worker_env.queue.get(task_id)
    assert task.status == TaskStatus.FAILED and not worker_env.queue.children(task_id)
    assert "orchestrator_details.after_first_post_generation_brightness" in task.error_message
    params = travel_between_images_params(
        KEYFRAMES[:2], base_prompts=["x"], segment_frames=[9], frame_overlap=[2], model_name=TINY_I2V,
        continuation_config={"strategy": "svi_latent_chaining", "overlap_frames": 4},
    )  # fmt: skip
    task_id = worker_env.queue.enqueue("travel_orchestrator", params, project_id="p")
    assert worker_env.drain() == 0
    task = worker_env.queue.get(task_id)
    assert task.status == TaskStatus.FAILED
    assert "orchestrator_details.continuation_config.strategy" in task.error_message
