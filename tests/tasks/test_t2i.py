"""`wan_2_2_t2i` through the real worker loop on the tiny text-to-video model: one PNG at the requested size, holding
exactly the engine's first decoded frame (no video encode in between)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from source.queue import TaskStatus
from source.tasks import default_registry
from source.tasks.context import TaskInputError
from source.tasks.generation import parse_generation
from Wan2GP.catalog import load_catalog
from Wan2GP.engine import WanEngine

# What Reigh's image generation sends for a Wan model (model name, prompt, resolution, seed, steps, a flag we keep but
# do not use), with the tiny model standing in for optimised-t2i.
REIGH_PAYLOAD = {
    "task_id": "wan_2_2_t2i_abc",
    "model": "wan_tiny_t2v",
    "prompt": "a lighthouse at dawn",
    "resolution": "96x64",
    "seed": 11,
    "steps": 3,
    "add_in_position": False,
}


def test_png_is_the_engines_first_frame_at_the_requested_size(worker_env, model_cache):
    task_id = worker_env.queue.enqueue("wan_2_2_t2i", REIGH_PAYLOAD, project_id="p")
    assert worker_env.drain() == 0
    task = worker_env.queue.get(task_id)

    assert task.status == TaskStatus.COMPLETE, task.error_message
    location = Path(task.output_location)
    assert location.parent == worker_env.settings.output_dir / "wan_2_2_t2i" and location.suffix == ".png"
    with Image.open(location) as image:
        assert (image.format, image.mode, image.size) == ("PNG", "RGB", (96, 64))
        png = np.asarray(image)
    assert (task.result["width"], task.result["height"], task.result["frames"]) == (96, 64, 1)
    assert task.result["seed"] == 11 and task.result["model"] == "wan_tiny_t2v"

    # The same request straight to the engine: the PNG is its frame 0, bit for bit, and not any later frame.
    engine = WanEngine(device="cpu", cache_dir=model_cache)
    request = {"model": "wan_tiny_t2v", "prompt": REIGH_PAYLOAD["prompt"], "resolution": "96x64", "seed": 11}
    frames = engine.render(engine.resolve({**request, "num_inference_steps": 3, "video_length": 1})).frames
    assert task.result["generated_frames"] == len(frames) == 5  # the engine's minimum; upstream's WGP did the same
    assert np.array_equal(png, frames[0])
    assert not np.array_equal(png, frames[1])


def test_t2i_defaults_to_upstreams_model_and_refuses_image_or_vace_models():
    _params, model = parse_generation({"prompt": "a cat"}, "wan_2_2_t2i", catalog=load_catalog())
    assert model.id == "t2v_2_2"
    for model_id in ("wan_tiny_i2v_2_2", "wan_tiny_vace"):
        with pytest.raises(
            TaskInputError, match=f"^model: expected a text-to-video model for wan_2_2_t2i, got '{model_id}'"
        ):
            default_registry().check("wan_2_2_t2i", {"model": model_id, "prompt": "x"})
