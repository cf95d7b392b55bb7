"""Plain generation tasks (t2v, i2v, vace, ...) go straight to the engine: one row in, one mp4 out."""

from __future__ import annotations

from pathlib import Path

import pytest

from source.queue import TaskStatus
from source.tasks.generation import DEFAULT_MODEL_BY_TASK_TYPE
from Wan2GP.catalog import load_catalog

KEYFRAME = str(sorted((Path(__file__).resolve().parents[2] / "source" / "assets" / "keyframes").glob("*.png"))[0])


def test_every_default_model_is_in_the_catalog():
    # Upstream mapped `i2v` to a model with no definition (spec §10.21).
    catalog = load_catalog()
    for task_type, model in DEFAULT_MODEL_BY_TASK_TYPE.items():
        assert catalog.get(model).id == model, task_type


@pytest.mark.parametrize(
    ("task_type", "params", "expected"),
    [
        ("t2v", {"model": "wan_tiny_t2v", "prompt": "a red cat", "video_length": 13, "seed": 3}, (13, 64, 64)),
        (
            "i2v_22",
            {
                "model": "wan_tiny_i2v_2_2",
                "prompt": "dawn",
                "video_length": 10,
                "resolution": "70x50",
                "image_start": KEYFRAME,
            },
            (9, 64, 48),  # 10 frames -> 4n+1 = 9; 70x50 -> multiples of 16
        ),
    ],
)
def test_generation_task_writes_its_video_under_outputs(worker_env, ffprobe, task_type, params, expected):
    task_id = worker_env.queue.enqueue(task_type, params)
    assert worker_env.drain() == 0
    task = worker_env.queue.get(task_id)
    assert task.status == TaskStatus.COMPLETE, task.error_message
    location = Path(task.output_location)
    assert location.parent == worker_env.settings.output_dir / task_type
    assert location.name.startswith(task_id)
    probe = ffprobe(str(location))
    assert (int(probe["nb_read_frames"]), probe["width"], probe["height"]) == expected
    assert task.result["frames"] == expected[0]
    assert Path(task.result["thumbnail"]).is_file()


def test_unknown_engine_parameter_fails_the_task_naming_it(worker_env):
    task_id = worker_env.queue.enqueue("t2v", {"model": "wan_tiny_t2v", "prompt": "x", "guidance_scale": "loud"})
    assert worker_env.drain() == 0
    task = worker_env.queue.get(task_id)
    assert task.status == TaskStatus.FAILED
    assert "guidance_scale" in task.error_message


def test_vace_reference_images_are_fetched_like_every_input(worker_env, ffprobe, tmp_path):
    params = {"model": "wan_tiny_vace", "prompt": "a lighthouse", "video_length": 9, "video_prompt_type": "I"}
    with_refs = worker_env.queue.enqueue("vace", {**params, "image_refs": [KEYFRAME]})
    outside = tmp_path.parent / "not_an_input_root.png"
    outside.write_bytes(Path(KEYFRAME).read_bytes())
    refused = worker_env.queue.enqueue("vace", {**params, "image_refs": [KEYFRAME, str(outside)]})
    assert worker_env.drain() == 0
    task = worker_env.queue.get(with_refs)
    assert task.status == TaskStatus.COMPLETE, task.error_message
    assert int(ffprobe(task.output_location)["nb_read_frames"]) == 9  # the reference frame is not in the video
    failed = worker_env.queue.get(refused)
    assert failed.status == TaskStatus.FAILED and failed.error_message.startswith("image_refs[1]"), failed.error_message


@pytest.mark.parametrize(
    ("task_type", "params", "two_experts"),
    [
        ("t2v", {"model": "wan_tiny_t2v", "prompt": "x", "video_length": 5}, False),
        ("i2v_22", {"model": "wan_tiny_i2v_2_2", "prompt": "x", "video_length": 5, "image_start": KEYFRAME}, True),
    ],
)
def test_the_row_hears_every_stage_on_one_total(worker_env, monkeypatch, task_type, params, two_experts):
    # Every progress write the worker makes for one generation: a stage message before step 1 and after the last, and
    # one total throughout (a reader never sees the bar jump back or a silent stretch); the expert is named only for
    # a model that has two.
    from source.queue.core import SqlTaskQueue

    written: list[tuple[int, int, str]] = []
    real = SqlTaskQueue.report_progress

    def recording(self, task_id, worker_id, *, step, total, message=""):
        written.append((step, total, message))
        return real(self, task_id, worker_id, step=step, total=total, message=message)

    monkeypatch.setattr(SqlTaskQueue, "report_progress", recording)
    task_id = worker_env.queue.enqueue(task_type, params)
    assert worker_env.drain() == 0
    task = worker_env.queue.get(task_id)
    assert task.status == TaskStatus.COMPLETE and task.progress["message"] == "Complete"
    totals = [total for _, total, _ in written]
    # 0 means "not known yet" (fetching inputs before the plan exists); once known the total never changes.
    assert set(totals[totals.index(4) :]) == {4} and set(totals) <= {0, 4}
    messages = [message for _, _, message in written]
    assert "loading the model" in messages and messages[-2:] == ["writing the video", "storing the output"]
    assert "decoding the frames" in messages
    assert ("fetching image_start" in messages) == (task_type == "i2v_22")
    assert [step for step, _, _ in written] == sorted(step for step, _, _ in written)  # never backwards
    assert any("noise expert" in message for message in messages) == two_experts, messages
