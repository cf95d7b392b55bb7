"""join_clips_orchestrator end to end: a real SQLite queue, the real worker loop, the tiny VACE model, real ffmpeg.

Clips are solid frames whose colour encodes clip and frame index (one channel per clip, +6 per frame), so a frame of
the output can be traced to the exact source frame it came from; the tiny model's random weights generate grey noise
(all channels near 124), far from every clip colour. The plan and the frame-count contract are also tested directly.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from log_capture import captured_warnings
from reigh_payloads import join_clips_params

from source.media.video import read_frames, write_frames
from source.params.join import ClipSpan, JoinRunSettings
from source.queue import TaskStatus
from source.tasks.join_clips import (
    JoinPlanError,
    JoinRequest,
    bridge_gap_frames,
    handle_join_clips_orchestrator,
    plan_joins,
    warn_unused_settings,
)

SIZE = 64
TOLERANCE = 2.5  # codec error on a channel mean; neighbouring source frames differ by 6


def clip_colours(channel: int, frames: int) -> np.ndarray:
    colours = np.full((frames, 3), 30.0)
    colours[:, channel] = 140 + 6 * np.arange(frames)
    return colours


def write_clip(path: Path, colours: np.ndarray) -> str:
    pixels = np.broadcast_to(colours.astype(np.uint8)[:, None, None, :], (len(colours), SIZE, SIZE, 3)).copy()
    write_frames(pixels, path, fps=16)
    return str(path)


def channel_means(path: str) -> np.ndarray:
    return read_frames(Path(path)).reshape(-1, SIZE * SIZE, 3).mean(axis=1)


def assert_frames_from(output: np.ndarray, source: np.ndarray, pairs: list[tuple[int, int]]) -> None:
    """Each (output index, source index): the output frame is that source frame."""
    for out_index, source_index in pairs:
        difference = np.abs(output[out_index] - source[source_index]).max()
        assert difference < TOLERANCE, f"output frame {out_index} is not source frame {source_index} ({difference})"


def assert_generated(output: np.ndarray, indices: range, *sources: np.ndarray) -> None:
    """Those output frames are the model's (noise near grey), not any clip frame."""
    for index in indices:
        nearest = min(np.abs(output[index] - frame).max() for source in sources for frame in source)
        assert nearest > 40, f"output frame {index} looks like a clip frame"


def test_bridge_gap_is_fitted_to_4n_plus_1_as_upstream():
    assert bridge_gap_frames(15, 23, 15) == 23  # Reigh's defaults: 53 frames
    assert bridge_gap_frames(8, 53, 8) == 53  # upstream's defaults: 69
    assert bridge_gap_frames(8, 20, 8) == 17  # 36 -> 33: three gap frames dropped
    assert bridge_gap_frames(3, 7, 3) == 7
    assert bridge_gap_frames(1, 1, 1) == 3  # 3 frames round down to 1, which leaves no gap: 4 added back -> 5
    for context in range(0, 20):
        for gap in range(1, 40):
            fitted = bridge_gap_frames(context, gap, context)
            assert (2 * context + fitted - 1) % 4 == 0 and fitted >= 1 and fitted > gap - 4


def _requests(count: int, context: int, gap: int, replace: bool) -> list[JoinRequest]:
    return [JoinRequest(context, gap, replace, "context_frame_count", "gap_frame_count")] * count


def test_plan_replace_mode_keeps_the_total_length_and_takes_context_outside_the_replaced_frames():
    clips = [ClipSpan(url=name, start=0, stop=16) for name in "abc"]
    plan = plan_joins(clips, _requests(2, 3, 7, True), ["a", "b", "c"])
    assert plan.final_frames == 48  # Σ L
    first = plan.bridges[0]
    assert (first.replaced_before, first.gap_frames, first.replaced_after, first.frames) == (3, 7, 4, 13)
    # Clip a loses its last 3 frames; the bridge starts with the 3 frames before them and ends with b[4:7].
    assert (plan.kept[0].start, plan.kept[0].stop) == (0, 13)
    assert (first.context_before.url, first.context_before.start, first.context_before.stop) == ("a", 10, 13)
    assert (first.context_after.url, first.context_after.start, first.context_after.stop) == ("b", 4, 7)
    assert (plan.kept[1].start, plan.kept[1].stop) == (4, 13)


def test_plan_insert_mode_adds_the_fitted_gaps():
    clips = [ClipSpan(url="a", start=5, stop=17), ClipSpan(url="b", start=0, stop=16, reverse=True)]
    plan = plan_joins(clips, _requests(1, 2, 6, False), ["a", "b"])
    assert plan.bridges[0].gap_frames == 5 and plan.final_frames == 12 + 16 + 5
    assert (plan.bridges[0].context_before.start, plan.bridges[0].context_before.stop) == (15, 17)
    assert plan.bridges[0].context_after.reverse and plan.bridges[0].context_after.stop == 2


def test_plan_shares_a_short_clip_between_two_insert_mode_contexts():
    clips = [ClipSpan(url=name, start=0, stop=frames) for name, frames in (("a", 10), ("b", 4), ("c", 10))]
    plan = plan_joins(clips, _requests(2, 3, 5, False), ["a", "b", "c"])
    first, second = plan.bridges
    assert (first.context_after.start, first.context_after.stop) == (0, 2)  # b[0:2] for the first bridge
    assert (second.context_before.start, second.context_before.stop) == (2, 4)  # b[2:4] for the second
    assert (first.context_before.frames, second.context_after.frames) == (3, 3)
    assert (first.gap_frames, first.frames) == (4, 9)  # 3 + 5 + 2 = 10 -> one gap frame dropped
    assert plan.final_frames == 24 + 4 + 4
    with pytest.raises(JoinPlanError, match="b has 4 frames"):  # replace mode cannot share: its gap is fixed
        plan_joins(clips, _requests(2, 3, 1, True), ["a", "b", "c"])


def test_plan_refuses_a_clip_too_short_for_its_context_naming_the_field():
    clips = [ClipSpan(url="a", start=0, stop=16), ClipSpan(url="b", start=0, stop=5)]
    with pytest.raises(JoinPlanError, match=r"^context_frame_count: .*b has 5 frames.*keep 8 context frames"):
        plan_joins(clips, _requests(1, 8, 1, False), ["a", "b"])


@pytest.fixture
def clips(tmp_path):
    colours = [clip_colours(channel, 16) for channel in range(3)]
    paths = [write_clip(tmp_path / f"clip{index}.mp4", colour) for index, colour in enumerate(colours)]
    return paths, [channel_means(path) for path in paths]


def _payload(paths: list[str], **details) -> dict:
    return {
        "orchestrator_details": {
            "clip_list": [{"url": path, "name": f"clip {index}"} for index, path in enumerate(paths)],
            "model": "wan_tiny_vace",
            "prompt": "a smooth transition",
            "seed": 7,
            **details,
        }
    }


def _children(queue, orchestrator_id):
    children = queue.children(orchestrator_id)
    bridges = sorted((c for c in children if c.role == "bridge"), key=lambda c: c.segment_index)
    final = next(c for c in children if c.role == "final")
    return bridges, final


@pytest.mark.slow
def test_three_clips_in_replace_mode_keep_their_length_and_their_frames(worker_env, clips, ffprobe):
    paths, sources = clips
    payload = _payload(paths, context_frame_count=3, gap_frame_count=7, replace_mode=True)
    orchestrator_id = worker_env.queue.enqueue("join_clips_orchestrator", payload, project_id="p")
    assert worker_env.drain() == 0

    orchestrator = worker_env.queue.get(orchestrator_id)
    assert orchestrator.status == TaskStatus.COMPLETE, orchestrator.error_message
    bridges, final = _children(worker_env.queue, orchestrator_id)
    assert [b.task_type for b in bridges] == ["join_clips_segment"] * 2 and final.task_type == "join_final_stitch"
    assert all(b.dependant_on is None for b in bridges)  # independent: several workers can generate them at once
    assert sorted(final.depends_on) == sorted(b.id for b in bridges)
    # The contract, computed up front and asserted by the final task: replace mode keeps Σ L = 48 frames.
    assert final.params["expected_final_frames"] == 48
    assert orchestrator.result["output"]["frames"] == 48 and orchestrator.output_location == final.output_location
    assert int(ffprobe(orchestrator.output_location)["nb_read_frames"]) == 48
    for bridge in bridges:
        assert int(ffprobe(bridge.output_location)["nb_read_frames"]) == 13  # 3 context + 7 generated + 3 context
        assert bridge.result["forward_passes"]["high"] == 4  # the tiny model's 4 steps, no CFG

    output = channel_means(orchestrator.output_location)
    a, b, c = sources
    # Clip a up to its context; b from the end of the first fade to its context; c after the second fade: each at
    # the position it has in the plain concatenation (replace mode), e.g. b[6] at 16 + 6.
    assert_frames_from(output, a, [(k, k) for k in range(10)])
    assert_frames_from(output, b, [(16 + k, k) for k in range(6, 10)])
    assert_frames_from(output, c, [(32 + k, k) for k in range(6, 16)])
    # The bridges' generated frames replaced a[13:16] + b[0:4] and b[13:16] + c[0:4].
    assert_generated(output, range(13, 20), a, b, c)
    assert_generated(output, range(29, 36), a, b, c)


@pytest.mark.slow
def test_insert_mode_from_per_join_settings_with_a_phase_config(worker_env, clips, ffprobe):
    paths, sources = clips
    # Run-level values are Reigh's defaults (which these 16-frame clips could not take); the join's own entry wins.
    phase_config = {
        "num_phases": 2,
        "steps_per_phase": [1, 2],
        "flow_shift": 5.0,
        "sample_solver": "euler",
        "model_switch_phase": 1,
        "phases": [{"phase": 1, "guidance_scale": 3.0, "loras": []}, {"phase": 2, "guidance_scale": 1.0, "loras": []}],
    }
    payload = _payload(
        paths[:2],
        context_frame_count=15,
        gap_frame_count=23,
        replace_mode=True,
        phase_config=phase_config,
        per_join_settings=[{"context_frame_count": 2, "gap_frame_count": 6, "replace_mode": False, "prompt": "dusk"}],
    )
    orchestrator_id = worker_env.queue.enqueue("join_clips_orchestrator", payload, project_id="p")
    assert worker_env.drain() == 0

    orchestrator = worker_env.queue.get(orchestrator_id)
    assert orchestrator.status == TaskStatus.COMPLETE, orchestrator.error_message
    (bridge,), final = _children(worker_env.queue, orchestrator_id)
    # 2 + 6 + 2 = 10 is not 4n+1: one gap frame is dropped, so the bridge inserts G = 5 frames: 16 + 16 + 5.
    assert (bridge.params["gap_frames"], bridge.params["prompt"]) == (5, "dusk")
    assert int(ffprobe(bridge.output_location)["nb_read_frames"]) == 9
    assert int(ffprobe(orchestrator.output_location)["nb_read_frames"]) == final.params["expected_final_frames"] == 37
    # The phase_config reached the engine: 1 step with CFG (2 forwards) + 2 steps without.
    assert bridge.result["forward_passes"]["high"] == 4 and bridge.params["generation"]["num_inference_steps"] == 3

    output = channel_means(orchestrator.output_location)
    a, b, _ = sources
    assert_frames_from(output, a, [(k, k) for k in range(14)])  # nothing of a is replaced
    assert_frames_from(output, b, [(21 + k, k) for k in range(1, 16)])  # b after the 5 inserted frames + the fade
    assert_generated(output, range(16, 21), a, b)


def run_orchestrator_here(worker_env, params: dict):
    """Enqueue a join_clips_orchestrator row and run its handler in this process (no engine is needed for it)."""
    orchestrator_id = worker_env.queue.enqueue("join_clips_orchestrator", params, project_id="p")
    task = worker_env.queue.claim("w", lease_seconds=60)
    return orchestrator_id, handle_join_clips_orchestrator(worker_env.context(task))


def test_reigh_payload_plans_bridges_with_its_phase_config_and_loras(worker_env):
    paths = [write_clip(worker_env.tmp / f"long{i}.mp4", clip_colours(i, 30)) for i in range(2)]
    # joinClips.ts with the app's defaults (15 context, 23 gap, replace, the 3-phase VACE preset), a user LoRA, the
    # app's random seed and a project resolution off Wan's grid; the details repeated at the top level, as Reigh does.
    style = "https://example.com/style.safetensors"
    payload = join_clips_params(paths, seed=-1, resolution=(902, 508), loras=[{"path": style, "strength": 0.8}])
    orchestrator_id, outcome = run_orchestrator_here(worker_env, payload)

    assert outcome.awaiting_children and outcome.result["expected_final_frames"] == 60  # replace mode: 30 + 30
    (bridge,), final = _children(worker_env.queue, orchestrator_id)
    params = bridge.params
    assert params["model_name"] == "wan_2_2_vace_lightning_baseline_2_2_2"
    # 15 + 23 + 15 = 53 = 4 * 13 + 1; the 23 replaced frames are split 11 | 12 around the seam.
    assert params["gap_frames"] == 23
    assert (params["context_before"]["start"], params["context_before"]["stop"]) == (4, 19)
    assert (params["context_after"]["start"], params["context_after"]["stop"]) == (12, 27)
    assert params["resolution"] == "896x496"  # [902, 508] on Wan's 16-pixel grid
    assert 0 <= params["seed"] <= 999_999_999  # seed -1: drawn once, stored in the row
    generation = params["generation"]
    assert (generation["num_inference_steps"], generation["guidance_phases"]) == (9, 3)  # the phase_config's
    # The preset's three LoRAs (one in several phases runs once, with per-phase strengths), then the user's LoRA,
    # which the app put into every phase and into additional_loras: it runs once, at the listed strength.
    preset = payload["orchestrator_details"]["phase_config"]["phases"]
    preset_urls = list(
        dict.fromkeys(lora["url"] for phase in preset for lora in phase["loras"] if lora["url"] != style)
    )
    assert generation["lora_names"] == [*preset_urls, style] and generation["lora_multipliers"][-1] == "0.8"
    assert final.params["clips"][0]["stop"] == 19 and final.params["clips"][1]["start"] == 12
    assert final.params["resolution"] == "64x64" and final.params["expected_final_frames"] == 60


def test_a_loop_joins_the_first_clip_to_itself_played_backwards(worker_env):
    path = write_clip(worker_env.tmp / "loop.mp4", clip_colours(0, 30))
    # The Join Clips page's loop: the clip sent twice, loop_first_clip true.
    payload = join_clips_params([path, path], loop_first_clip=True, context_frame_count=4, gap_frame_count=9)
    orchestrator_id, outcome = run_orchestrator_here(worker_env, payload)
    (bridge,), final = _children(worker_env.queue, orchestrator_id)
    # 4 + 9 + 4 = 17; replace mode takes the clip's last 4 frames and the reversed clip's first 5 (the same frames).
    assert (bridge.params["context_before"]["start"], bridge.params["context_before"]["stop"]) == (22, 26)
    assert bridge.params["context_after"] == {"url": path, "start": 5, "stop": 9, "reverse": True}
    assert [clip.get("reverse", False) for clip in final.params["clips"]] == [False, True]
    assert outcome.result["expected_final_frames"] == 60


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda p: p["orchestrator_details"].update(clip_list=p["orchestrator_details"]["clip_list"][:1]),
         "orchestrator_details.clip_list: expected at least 2 clips to join"),
        (lambda p: p["orchestrator_details"].update(context_frame_count=14, gap_frame_count=5),
         "orchestrator_details.context_frame_count: expected a context (or gap) that fits every clip: clip_list[1] "
         "has 16 frames"),
        (lambda p: p["orchestrator_details"]["clip_list"][1].update(url="/nowhere/clip.mp4"),
         "orchestrator_details.clip_list[1].url:"),
        (lambda p: p["orchestrator_details"].update(model="wan_tiny_i2v_2_2"),
         "orchestrator_details.model: expected a VACE model"),
    ],
)  # fmt: skip
def test_bad_input_fails_the_orchestrator_naming_the_field(worker_env, clips, change, message):
    payload = _payload(clips[0][:2], context_frame_count=3, gap_frame_count=7)
    change(payload)
    orchestrator_id = worker_env.queue.enqueue("join_clips_orchestrator", payload, project_id="p")
    assert worker_env.drain() == 0
    orchestrator = worker_env.queue.get(orchestrator_id)
    assert orchestrator.status == TaskStatus.FAILED and orchestrator.attempts <= 1
    assert orchestrator.error_message.startswith(message), orchestrator.error_message
    assert worker_env.queue.children(orchestrator_id) == []


def test_settings_the_user_turned_on_and_this_worker_ignores_are_warned_with_their_reason() -> None:
    with captured_warnings() as warnings:
        warn_unused_settings(JoinRunSettings(audio_url="https://example.com/a.mp3", vid2vid_init_strength=0.0))
    assert warnings == ["orchestrator_details.audio_url is ignored: this worker writes video only"]  # 0.0 is off
