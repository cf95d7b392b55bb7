"""edit_video_orchestrator end to end: Reigh's edit payload over a 40-frame source whose frame k has its own colour,
the tiny VACE model, real ffmpeg. Each portion becomes a bridge between the kept stretches around it; the output's
frame count follows the contract  N - Σ portion + Σ G  and every kept frame is traced back to its source frame."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from reigh_payloads import edit_video_params, edit_video_portion, lightbox_edit_phase_config

from source.media.video import read_frames, write_frames
from source.queue import TaskStatus
from source.tasks.edit_video import handle_edit_video_orchestrator

SIZE = 64
FRAMES = 40
TOLERANCE = 2.5  # codec error on a channel mean; neighbouring source frames differ by 5


def source_colours() -> np.ndarray:
    k = np.arange(FRAMES)
    return np.stack([40 + 5 * k, 230 - 5 * k, np.full(FRAMES, 20)], axis=1).astype(float)


def channel_means(path) -> np.ndarray:
    return read_frames(Path(path)).reshape(-1, SIZE * SIZE, 3).mean(axis=1)


@pytest.fixture
def source(tmp_path) -> tuple[str, np.ndarray]:
    colours = source_colours()
    pixels = np.broadcast_to(colours.astype(np.uint8)[:, None, None, :], (FRAMES, SIZE, SIZE, 3)).copy()
    path = tmp_path / "source.mp4"
    write_frames(pixels, path, fps=16)
    return str(path), channel_means(path)


NO_LORA_PHASES = {  # the lightbox's 3-phase config without its Hugging Face LoRAs (nothing is downloaded here)
    **lightbox_edit_phase_config(),
    "steps_per_phase": [1, 1, 1],
    "phases": [{"phase": n, "guidance_scale": 3.0 if n == 1 else 1.0, "loras": []} for n in (1, 2, 3)],
}


def reigh_edit_payload(url: str, portions: list[tuple[int, int, int]], **options) -> dict:
    """As the app's lightbox builds it (videoEditingTaskPayload.ts): a portion per (start, end, gap), end exclusive."""
    entries = [
        edit_video_portion(
            start / 16, end / 16, fps=16, total_frames=FRAMES, gap_frame_count=gap, prompt=f"portion {start}"
        )
        for start, end, gap in portions
    ]
    options = {
        "model": "wan_tiny_vace",
        "context_frame_count": 3,
        "gap_frame_count": 9,
        "phase_config": NO_LORA_PHASES,
        **options,
    }
    return edit_video_params(url, entries, source_video_total_frames=FRAMES, **options)


@pytest.mark.slow
def test_two_portions_are_regenerated_and_the_kept_frames_stay(worker_env, source, ffprobe):
    url, src = source
    # Frames [10, 18) and [26, 30); the app's gaps 9 and 5 become 7 and 3 with 3 context frames on each side (4n+1).
    payload = reigh_edit_payload(url, [(26, 30, 5), (10, 18, 9)])  # out of order: sorted by start_frame
    orchestrator_id = worker_env.queue.enqueue("edit_video_orchestrator", payload, project_id="p")
    assert worker_env.drain() == 0

    orchestrator = worker_env.queue.get(orchestrator_id)
    assert orchestrator.status == TaskStatus.COMPLETE, orchestrator.error_message
    children = worker_env.queue.children(orchestrator_id)
    bridges = sorted((c for c in children if c.role == "bridge"), key=lambda c: c.segment_index)
    final = next(c for c in children if c.role == "final")
    assert [(b.params["gap_frames"], b.params["prompt"]) for b in bridges] == [(7, "portion 10"), (3, "portion 26")]
    assert [int(ffprobe(b.output_location)["nb_read_frames"]) for b in bridges] == [13, 9]
    # Contract: 40 - (8 + 4) + (7 + 3) = 38, computed by the orchestrator and asserted by the final task.
    assert final.params["expected_final_frames"] == 38 == orchestrator.result["output"]["frames"]
    assert int(ffprobe(orchestrator.output_location)["nb_read_frames"]) == 38
    # Kept stretches are spans of the source itself: [0, 10), [18, 26), [30, 40).
    assert [(c["start"], c["stop"]) for c in final.params["clips"]] == [(0, 10), (18, 26), (30, 40)]
    # Reigh's phase_config (1+1+1 steps, CFG 3 in phase 1) reached the engine: 2 + 1 + 1 forwards.
    assert all(sum(b.result["forward_passes"].values()) == 4 for b in bridges)

    output = channel_means(orchestrator.output_location)
    pairs = [(k, k) for k in range(7)]  # before the first fade
    pairs += [(19 + j, 20 + j) for j in range(3)]  # the end of the fade into [18, 26) and its middle
    pairs += [(30 + j, 32 + j) for j in range(8)]  # from the end of the last fade to the end
    for out_index, source_index in pairs:
        assert np.abs(output[out_index] - src[source_index]).max() < TOLERANCE, (out_index, source_index)
    for index in (*range(10, 17), *range(25, 28)):  # the generated frames: noise, no source frame
        assert min(np.abs(output[index] - frame).max() for frame in src) > 40, index


@pytest.mark.parametrize(
    ("portions", "message"),
    [
        ([(10, 45, 9)], "orchestrator_details.portions_to_regenerate[0].end_frame: expected at most 39 (the source "
                        "has 40 frames"),
        ([(20, 30, 9), (0, 5, 5)], "orchestrator_details.portions_to_regenerate[1].start_frame: expected more than 0"),
        ([(10, 20, 9), (18, 25, 5)], "orchestrator_details.portions_to_regenerate[1].start_frame: expected more than "
                                     "20, the previous portion's end_frame"),
        ([(10, 20, 9), (22, 25, 5)], "orchestrator_details.context_frame_count: expected a context (or gap) that fits "
                                     "every clip: the kept stretch [20, 22) of the source has 2 frames"),
        ([(10, 14, 5), (22, 25, 5)], "orchestrator_details.portions_to_regenerate[0].gap_frame_count: expected "
                                     "context + gap + context of at most 1025 frames"),
    ],
)  # fmt: skip
def test_portions_that_leave_no_room_fail_naming_the_field(worker_env, source, portions, message):
    payload = reigh_edit_payload(source[0], portions)
    # The app caps the context below the shortest kept stretch; these payloads come from elsewhere.
    payload["orchestrator_details"].update(context_frame_count=3, gap_frame_count=None)
    if portions[0] == (10, 14, 5):
        payload["orchestrator_details"]["portions_to_regenerate"][0]["gap_frame_count"] = 1025
    orchestrator_id = worker_env.queue.enqueue("edit_video_orchestrator", payload)
    assert worker_env.drain() == 0
    orchestrator = worker_env.queue.get(orchestrator_id)
    assert orchestrator.status == TaskStatus.FAILED and orchestrator.attempts <= 1
    assert orchestrator.error_message.startswith(message), orchestrator.error_message
    assert worker_env.queue.children(orchestrator_id) == []


def test_a_portion_ending_before_it_starts_is_refused_at_the_boundary(worker_env, source):
    payload = reigh_edit_payload(source[0], [(10, 8, 5)])
    orchestrator_id = worker_env.queue.enqueue("edit_video_orchestrator", payload)
    assert worker_env.drain() == 0
    message = worker_env.queue.get(orchestrator_id).error_message
    assert message.startswith(
        "orchestrator_details.portions_to_regenerate[0].end_frame: expected more than start_frame"
    )


def test_the_edit_tools_payload_with_user_loras_plans_its_bridges(worker_env, source):
    # The Edit Video tool (useReplaceMode.ts): the join preset with the user's LoRA merged into every phase, and the
    # same LoRA again as `loras: [{path, strength}]`.
    style = "https://example.com/style.safetensors"
    payload = reigh_edit_payload(
        source[0], [(10, 18, 9)], producer="edit_tool", phase_config=None, loras=[{"path": style, "strength": 0.5}]
    )
    orchestrator_id = worker_env.queue.enqueue("edit_video_orchestrator", payload, project_id="p")
    task = worker_env.queue.claim("w", lease_seconds=60)
    outcome = handle_edit_video_orchestrator(worker_env.context(task))
    assert outcome.result["expected_final_frames"] == 40 - 8 + 7
    (bridge,) = [c for c in worker_env.queue.children(orchestrator_id) if c.role == "bridge"]
    generation = bridge.params["generation"]
    assert generation["num_inference_steps"] == 9  # the join preset's 2 + 2 + 5
    assert generation["lora_names"][-1] == style and generation["lora_multipliers"][-1] == "0.5"
    assert style not in generation["lora_names"][:-1]  # once, not once per phase and once listed
