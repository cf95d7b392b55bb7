"""enhance_prompt in a travel run: the orchestrator has the tiny random-weight Qwen2.5-VL write the prompts of the
segments that have none, and they land in the segment rows of a real SQLite queue. The app's copy goes through
update-shot-pair-prompts on Reigh's edge API (a local server of ours written from reigh-app's function, see
tests/reigh_edge.py)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from log_capture import captured_warnings

from source.demo import KEYFRAMES_DIR
from source.tasks.context import TransientTaskError
from source.tasks.travel_orchestrator import handle_travel_orchestrator
from source.worker.services import build_services
from Wan2GP.prompt_text import DEFAULT_BASE_PROMPT

KEYFRAMES = sorted(str(path) for path in KEYFRAMES_DIR.glob("*.png"))[:3]


def _payload(**details: Any) -> dict[str, Any]:
    orchestrator_details = {
        "model_name": "wan_tiny_i2v_2_2",
        "model_type": "i2v",
        "input_image_paths_resolved": KEYFRAMES,
        "num_new_segments_to_generate": 2,
        "segment_frames_expanded": [17, 21],
        "frame_overlap_expanded": [4],
        "parsed_resolution_wh": "64x64",
        "fps_helpers": 16,
        "base_prompt": "a quiet street",
        "base_prompts_expanded": ["the camera glides", "the lights come on"],
        "enhanced_prompts_expanded": ["", ""],
        "enhance_prompt": True,
        "seed_base": 11,
    }
    orchestrator_details.update(details)
    return {"orchestrator_details": orchestrator_details}


class Run:
    """One orchestrator row handled in-process, with a count of the prompt model's batches."""

    def __init__(self, worker_env, payload: dict[str, Any], **settings: Any) -> None:
        self.env = worker_env
        self.settings = dataclasses.replace(worker_env.settings, **{"prompt_model": "tiny", **settings})
        self.services = build_services(self.settings)
        self.requests: list[Any] = []
        engine = self.services.engine()
        write_prompts = engine.write_prompts

        def counted(requests, **kwargs):
            self.requests.extend(requests)
            return write_prompts(requests, max_new_tokens=8, on_prompt=kwargs.get("on_prompt"))

        engine.write_prompts = counted
        self.id = worker_env.queue.enqueue("travel_orchestrator", payload, project_id="p")
        self.task = worker_env.queue.claim("w", lease_seconds=60, task_types=["travel_orchestrator"])
        assert self.task.id == self.id

    def handle(self):
        context = self.env.context(
            self.task, settings=self.settings, services=self.services, output_dir=self.settings.output_dir
        )
        return handle_travel_orchestrator(context)

    def segment_prompts(self) -> list[str]:
        segments = sorted(
            (c for c in self.env.queue.children(self.id) if c.role == "segment"), key=lambda c: c.segment_index
        )
        return [segment.params["base_prompt"] for segment in segments]


def test_prompts_are_written_for_blank_pairs_and_stored_in_the_segment_rows(worker_env, monkeypatch) -> None:
    shared: list[tuple[str, str, list[str]]] = []
    monkeypatch.setattr(worker_env.queue, "share_prompts", lambda *args: shared.append(args) or False)
    run = Run(worker_env, _payload(enhanced_prompts_expanded=["", "the sun sets over the sea"], shot_id="shot-1"))
    outcome = run.handle()

    # Only segment 0 asked for a prompt: its keyframes 0 -> 1, its base prompt, its frame count and the run's fps.
    assert len(run.requests) == 1
    request = run.requests[0]
    assert (Path(request.start_image).read_bytes(), Path(request.end_image).read_bytes()) == (
        Path(KEYFRAMES[0]).read_bytes(),
        Path(KEYFRAMES[1]).read_bytes(),
    )
    assert (request.base_prompt, request.frames, request.fps) == ("the camera glides", 17, 16)

    prompts = run.segment_prompts()
    assert prompts[1] == "the sun sets over the sea"  # enhanced_prompts_expanded wins over the model
    assert prompts[0] and prompts[0] not in ("the camera glides", "a quiet street")
    assert outcome.result["prompt_enhancement"] == {"written": [0], "not_enhanced": {}}
    assert shared == [(run.id, "shot-1", [prompts[0], ""])]  # the app's copy: "" where the model wrote nothing
    seen = run.settings.output_dir / "prompt_enhancement" / run.id / "segment_00.jpg"
    assert seen.is_file()  # the picture the model saw, kept beside the outputs

    # The orchestrator runs again (a crash after enqueueing): the rows keep their prompts, the model does not run.
    again = run.handle()
    assert len(run.requests) == 1
    assert again.result["child_ids"] == outcome.result["child_ids"]
    assert run.segment_prompts() == prompts


def test_unreadable_keyframe_keeps_that_segments_base_prompt_with_a_warning(worker_env) -> None:
    broken = worker_env.tmp / "broken.png"
    broken.write_bytes(b"this is not an image")
    images = [str(broken), *KEYFRAMES[1:]]
    run = Run(worker_env, _payload(input_image_paths_resolved=images))
    with captured_warnings() as warnings:
        outcome = run.handle()
    summary = outcome.result["prompt_enhancement"]
    assert summary["written"] == [1]
    assert summary["not_enhanced"]["0"].startswith("keyframe not readable: orchestrator_details.input_image_paths")
    assert run.segment_prompts()[0] == "the camera glides"
    assert any("segment 0 keeps its base prompt" in warning for warning in warnings)


def test_without_a_prompt_model_the_run_goes_on_with_base_prompts_unless_told_not_to(worker_env) -> None:
    no_model = worker_env.tmp / "no_model_here"
    no_model.mkdir()
    run = Run(
        worker_env,
        _payload(base_prompts_expanded=["", "the lights come on"], base_prompt=""),
        prompt_model=str(no_model),
    )
    outcome = run.handle()
    assert run.segment_prompts() == [DEFAULT_BASE_PROMPT, "the lights come on"]  # no base prompt: the default
    assert set(outcome.result["prompt_enhancement"]["not_enhanced"]) == {"0", "1"}
    assert "prompt model not available" in outcome.result["prompt_enhancement"]["not_enhanced"]["1"]

    strict = Run(worker_env, _payload(), prompt_model=str(no_model), prompt_fallback=False)
    with pytest.raises(TransientTaskError, match="enhance_prompt: the prompt model is not available"):
        strict.handle()
    assert strict.segment_prompts() == []  # nothing enqueued


def test_without_enhance_prompt_the_model_never_runs(worker_env) -> None:
    run = Run(worker_env, _payload(enhance_prompt=False))
    outcome = run.handle()
    assert run.requests == [] and "prompt_enhancement" not in outcome.result
    assert run.segment_prompts() == ["the camera glides", "the lights come on"]
