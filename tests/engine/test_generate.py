"""End-to-end generations with the tiny models: files, determinism, scheduling, conditioning, progress, cancel."""

from __future__ import annotations

import threading
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch
from engine_helpers import constant_video, ffprobe, forward_log, frames_video, gradient_image

from Wan2GP.conditioning import VaeCodec, image_to_pixels
from Wan2GP.engine import GenerationCancelled, ProgressEvent, WanEngine
from Wan2GP.schedule import phase_thresholds
from Wan2GP.text import WAN_DEFAULT_NEGATIVE_PROMPT
from Wan2GP.video_io import pixels_to_uint8, read_video
from Wan2GP.wgp import generate_video

PROMPT = "a red cat walks on the beach"


def render(engine: WanEngine, **params: object):
    return engine.render(engine.resolve({"prompt": PROMPT, **params}))


# -- files -----------------------------------------------------------------------------------------------------------


def test_mp4_has_exact_frames_size_and_codec(engine: WanEngine, tmp_path: Path) -> None:
    result = generate_video(
        model="wan_tiny_t2v", prompt=PROMPT, resolution="48x32", video_length=14, output_dir=tmp_path, engine=engine
    )
    assert result.path.parent == tmp_path and result.path.suffix == ".mp4"
    assert (result.frames, result.width, result.height, result.fps) == (13, 48, 32, 16)
    stream = ffprobe(result.path)
    assert stream["codec_name"] == "h264" and stream["pix_fmt"] == "yuv420p"
    assert (stream["width"], stream["height"], int(stream["nb_read_frames"])) == (48, 32, 13)
    assert stream["r_frame_rate"] == "16/1"
    assert result.model == "wan_tiny_t2v"
    assert set(result.timings) >= {"load", "encode", "denoise", "decode", "write", "total"}


def test_output_filename_is_used_and_never_overwrites(engine: WanEngine, tmp_path: Path) -> None:
    first = generate_video(model="wan_tiny_t2v", output_filename="clip", output_dir=tmp_path, engine=engine)
    second = generate_video(model="wan_tiny_t2v", output_filename="clip.mp4", output_dir=tmp_path, engine=engine)
    assert first.path.name == "clip.mp4"
    assert second.path.name == "clip(2).mp4"


# -- determinism -----------------------------------------------------------------------------------------------------


def test_same_seed_same_video_different_seed_differs(engine: WanEngine, tmp_path: Path) -> None:
    first = generate_video(model="wan_tiny_t2v", prompt=PROMPT, seed=42, output_dir=tmp_path / "a", engine=engine)
    again = generate_video(model="wan_tiny_t2v", prompt=PROMPT, seed=42, output_dir=tmp_path / "b", engine=engine)
    other = generate_video(model="wan_tiny_t2v", prompt=PROMPT, seed=43, output_dir=tmp_path / "c", engine=engine)
    assert first.seed == again.seed == 42
    assert np.array_equal(read_video(first.path).frames, read_video(again.path).frames)
    assert not np.array_equal(read_video(first.path).frames, read_video(other.path).frames)

    latents = render(engine, model="wan_tiny_t2v", seed=42).latents
    assert torch.equal(latents, render(engine, model="wan_tiny_t2v", seed=42).latents)
    assert (latents - render(engine, model="wan_tiny_t2v", seed=43).latents).abs().max() > 0.1


def test_random_seed_is_reported_and_reproduces(engine: WanEngine) -> None:
    drawn = render(engine, model="wan_tiny_t2v", seed=-1)
    assert 0 <= drawn.request.seed <= 999_999_999
    replay = render(engine, model="wan_tiny_t2v", seed=drawn.request.seed)
    assert torch.equal(drawn.latents, replay.latents)


# -- scheduling ------------------------------------------------------------------------------------------------------


def test_two_phase_forward_counts_and_expert_switch(engine: WanEngine, tmp_path: Path) -> None:
    threshold, _ = phase_thresholds("euler", 6, 5.0, [3, 3])
    transformers = engine.load("wan_tiny_i2v_2_2").transformers
    with forward_log(transformers) as log:
        result = generate_video(
            model="wan_tiny_i2v_2_2",
            prompt=PROMPT,
            num_inference_steps=6,
            sample_solver="euler",
            flow_shift=5,
            guidance_phases=2,
            guidance_scale=3,
            guidance2_scale=1,
            switch_threshold=threshold,
            model_switch_phase=1,
            output_dir=tmp_path,
            engine=engine,
        )
    # 3 steps x (cond + uncond) on the high expert, then 3 x cond only on the low expert
    assert log.calls == ["high"] * 6 + ["low"] * 3
    assert result.forward_passes == {"high": 6, "low": 3}
    assert [step.expert for step in result.plan.steps] == ["high"] * 3 + ["low"] * 3


def test_guidance_one_skips_uncond_and_negative_prompt(engine: WanEngine) -> None:
    model = engine.load("wan_tiny_t2v")
    modules = {"transformer": model.transformers["high"], "text_encoder": model.text_encoder}
    with forward_log(modules) as log:
        rendered = render(engine, model="wan_tiny_t2v", num_inference_steps=3, guidance_scale=1)
    assert log.count("transformer") == 3 and rendered.forward_passes == {"high": 3, "low": 0}
    assert log.count("text_encoder") == 1  # the prompt only: the negative prompt is never encoded

    with forward_log(modules) as log:
        rendered = render(engine, model="wan_tiny_t2v", num_inference_steps=3, guidance_scale=4)
    assert log.count("transformer") == 6 and rendered.forward_passes == {"high": 6, "low": 0}
    assert log.count("text_encoder") == 1  # the negative prompt now; the prompt comes from the engine's cache


def test_empty_negative_prompt_means_wan_default(engine: WanEngine) -> None:
    empty = render(engine, model="wan_tiny_t2v", negative_prompt="").latents
    default = render(engine, model="wan_tiny_t2v", negative_prompt=WAN_DEFAULT_NEGATIVE_PROMPT).latents
    other = render(engine, model="wan_tiny_t2v", negative_prompt="blurry noise").latents
    assert torch.equal(empty, default)
    assert (empty - other).abs().max() > 1e-4


def test_guidance_scale_changes_the_result(engine: WanEngine) -> None:
    weak = render(engine, model="wan_tiny_t2v", guidance_scale=1.5).latents
    strong = render(engine, model="wan_tiny_t2v", guidance_scale=6).latents
    assert (weak - strong).abs().max() > 1e-3


@pytest.mark.parametrize("solver", ["unipc", "dpm++", "dpm++_sde"])
def test_other_solvers_run_and_differ_from_euler(engine: WanEngine, solver: str) -> None:
    euler = render(engine, model="wan_tiny_t2v", sample_solver="euler").latents
    other = render(engine, model="wan_tiny_t2v", sample_solver=solver)
    assert torch.isfinite(other.latents).all()
    assert (other.latents - euler).abs().max() > 1e-3
    again = render(engine, model="wan_tiny_t2v", sample_solver=solver)
    assert torch.equal(other.latents, again.latents)  # the SDE noise comes from the seeded generator too


# -- progress and cancellation ---------------------------------------------------------------------------------------


def test_progress_events_cover_stages_and_steps(engine: WanEngine, tmp_path: Path) -> None:
    events: list[ProgressEvent] = []
    generate_video(model="wan_tiny_i2v_2_2", output_dir=tmp_path, engine=engine, progress_callback=events.append)
    stages = [event.stage for event in events if event.phase == 0]
    assert stages == ["load", "encode", "denoise", "decode", "write"]
    # One total for the whole generation: stages before denoising at 0 steps, after it at all of them.
    assert {event.total for event in events} == {4}
    assert [(e.stage, e.step) for e in events if e.phase == 0] == [
        ("load", 0), ("encode", 0), ("denoise", 0), ("decode", 4), ("write", 4)
    ]  # fmt: skip
    steps = [(e.step, e.total, e.phase, e.expert) for e in events if e.stage == "denoise" and e.step > 0]
    assert steps == [(1, 4, 1, "high"), (2, 4, 1, "high"), (3, 4, 2, "low"), (4, 4, 2, "low")]


def test_cancel_stops_between_steps(engine: WanEngine, tmp_path: Path) -> None:
    cancel = threading.Event()

    def cancel_after_second_step(event: ProgressEvent) -> None:
        if event.stage == "denoise" and event.step == 2:
            cancel.set()

    transformers = engine.load("wan_tiny_t2v").transformers
    with forward_log(transformers) as log, pytest.raises(GenerationCancelled):
        generate_video(
            model="wan_tiny_t2v",
            guidance_scale=1,
            output_dir=tmp_path,
            engine=engine,
            progress_callback=cancel_after_second_step,
            cancel_event=cancel,
        )
    assert log.count("high") == 2
    assert list(tmp_path.iterdir()) == []

    cancel.set()
    with pytest.raises(GenerationCancelled):
        generate_video(model="wan_tiny_t2v", output_dir=tmp_path, engine=engine, cancel_event=cancel)


# -- image-to-video --------------------------------------------------------------------------------------------------


def test_i2v_start_frame_is_the_vae_round_trip_of_the_image(engine: WanEngine, tmp_path: Path) -> None:
    start = gradient_image(64, 64)
    start_path = tmp_path / "start.png"
    start.save(start_path)
    with_start = render(engine, model="wan_tiny_i2v_2_2", image_start=str(start_path), seed=5)

    codec = VaeCodec(engine.load("wan_tiny_i2v_2_2").vae)
    with torch.inference_mode():
        round_trip = pixels_to_uint8(codec.decode(codec.encode(image_to_pixels(start, 64, 64))))[0]
    assert np.abs(with_start.frames[0].astype(int) - round_trip.astype(int)).max() <= 1

    # Without a start image the first frame is the round trip of a black frame instead (upstream behaviour).
    without = render(engine, model="wan_tiny_i2v_2_2", seed=5)
    assert np.abs(without.frames[0].astype(int) - round_trip.astype(int)).max() > 5


def test_i2v_end_image_changes_the_last_frames(engine: WanEngine) -> None:
    start, end = gradient_image(64, 64), gradient_image(64, 64, phase=2.0)
    without_end = render(engine, model="wan_tiny_i2v_2_2", image_start=start, seed=9)
    with_end = render(engine, model="wan_tiny_i2v_2_2", image_start=start, image_end=end, seed=9)
    assert np.array_equal(with_end.frames[0], without_end.frames[0])  # the start frame stays the clean start
    # Per latent frame: (the tiny VAE's pixels barely move, so compare latents) the end image acts on the last one.
    difference = (with_end.latents - without_end.latents).abs().amax(dim=(0, 1, 3, 4))
    assert difference[0] == 0
    assert difference[-1] > 0.1
    assert difference[-1] > 5 * difference[1:-1].max()


# -- VACE ------------------------------------------------------------------------------------------------------------


def _guide_frames(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = np.asarray(gradient_image(64, 64), dtype=np.float32)
    frames = [np.clip(base + rng.normal(0, 30, size=base.shape), 0, 255) for _ in range(9)]
    return np.stack(frames).astype(np.uint8)


def test_vace_kept_frames_steer_and_generated_frames_are_greyed(engine: WanEngine, tmp_path: Path) -> None:
    mask = constant_video(tmp_path / "mask.mp4", [0, 0, 255, 255, 255, 255, 255, 255, 0], 64, 64)  # black = keep
    guide_frames = _guide_frames(0)
    guide = frames_video(tmp_path / "guide.mp4", guide_frames)

    changed_kept = guide_frames.copy()
    changed_kept[0] = 255 - changed_kept[0]  # frame 0 is kept (mask black)
    guide_kept = frames_video(tmp_path / "guide_kept.mp4", changed_kept)

    changed_generated = guide_frames.copy()
    changed_generated[4] = 255 - changed_generated[4]  # frame 4 is generated (mask white)
    guide_generated = frames_video(tmp_path / "guide_generated.mp4", changed_generated)

    def run(guide_path: Path, **extra: object) -> torch.Tensor:
        params = dict(model="wan_tiny_vace", video_guide=str(guide_path), video_mask=str(mask), video_prompt_type="VAM")
        return render(engine, **params, **extra).latents

    reference = run(guide)
    assert (run(guide_kept) - reference).abs().max() > 1e-3
    # "M": pixels under a white mask are replaced by grey before encoding, so their content cannot matter.
    assert torch.equal(run(guide_generated), reference)
    # control_net_weight 0 switches the control hints off entirely.
    assert torch.equal(run(guide, control_net_weight=0), run(guide_kept, control_net_weight=0))


def test_vace_mask_decides_what_is_kept(engine: WanEngine, tmp_path: Path) -> None:
    guide = frames_video(tmp_path / "guide.mp4", _guide_frames(1))
    keep_all = constant_video(tmp_path / "black.mp4", [0] * 9, 64, 64)
    generate_all = constant_video(tmp_path / "white.mp4", [255] * 9, 64, 64)
    params = dict(model="wan_tiny_vace", video_guide=str(guide), video_prompt_type="VA")
    kept = render(engine, **params, video_mask=str(keep_all)).latents
    generated = render(engine, **params, video_mask=str(generate_all)).latents
    negated = render(engine, **{**params, "video_prompt_type": "VAN"}, video_mask=str(generate_all)).latents
    assert (kept - generated).abs().max() > 1e-3
    assert torch.equal(negated, kept)  # "N" negates the mask: white becomes keep


def test_vace_guide_shorter_than_the_video_is_rejected(engine: WanEngine, tmp_path: Path) -> None:
    from Wan2GP.engine import InvalidGenerationParams

    short = constant_video(tmp_path / "short.mp4", [10, 20, 30], 64, 64)
    with pytest.raises(InvalidGenerationParams) as caught:
        render(engine, model="wan_tiny_vace", video_guide=str(short))
    assert caught.value.fields == ("video_guide",)


# -- model lifetime --------------------------------------------------------------------------------------------------


def test_switching_models_frees_the_previous_one(engine: WanEngine) -> None:
    first = engine.load("wan_tiny_t2v")
    assert engine.load("wan_tiny_t2v") is first  # kept between calls
    first_transformer = weakref.ref(first.transformers["high"])
    del first
    engine.load("wan_tiny_vace")
    assert engine.loaded_model() == "wan_tiny_vace"
    assert first_transformer() is None
    engine.unload()
    assert engine.loaded_model() is None
