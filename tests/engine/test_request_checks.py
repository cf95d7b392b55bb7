"""The engine's input boundary, value by value (`resolve_request`, no model loaded): what a resolved request carries,
where each default comes from, and for every refusal the field it names and what its message says was expected."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import PIL.Image
import pytest

from Wan2GP.catalog import Catalog, ModelDefinition
from Wan2GP.request import (
    ACCEPTED_PARAMS,
    MAX_SEED,
    GenerationRequest,
    InvalidGenerationParams,
    check_param_names,
    resolve_request,
)

Resolve = Callable[..., GenerationRequest]
LORA_MESSAGE = (
    "and the engine fetches no LoRA URLs: it takes local LoRA files or names in its LoRA folder. The caller must "
    "download it first (the worker's LoRA store does, within its size and time caps) and "
)


@pytest.fixture
def resolve(catalog: Catalog) -> Resolve:
    """The parameters as the engine hands them over (the model id among them), resolved against its definition."""

    def run(model: str | ModelDefinition, rng: random.Random | None = None, **params: Any) -> GenerationRequest:
        definition = catalog.get(model) if isinstance(model, str) else model
        return resolve_request({"model": definition.id, **params}, definition, rng=rng)

    return run


def refusal(resolve: Resolve, model: str | ModelDefinition, **params: Any) -> InvalidGenerationParams:
    with pytest.raises(InvalidGenerationParams) as caught:
        resolve(model, **params)
    return caught.value


def file(folder: Path, name: str) -> Path:
    path = folder / name
    path.write_bytes(b"not decoded here")
    return path


IMAGE = PIL.Image.new("RGB", (8, 8))


# ---------------------------------------------------------------------------------------------- what comes through


def test_every_value_of_a_vace_request_comes_through(resolve: Resolve, tmp_path: Path) -> None:
    guide, mask, ref = file(tmp_path, "guide.mp4"), file(tmp_path, "mask.mp4"), file(tmp_path, "ref.png")
    request = resolve(
        "wan_tiny_vace",
        prompt="a fox",
        negative_prompt="blur",
        seed=7,
        video_guide=str(guide),
        video_mask=mask,
        image_refs=[str(ref), IMAGE],
        video_prompt_type="VMI",
        control_net_weight=0.5,
        output_dir=str(tmp_path),
        output_filename="clip",
    )
    assert (request.model, request.definition.id, request.prompt, request.negative_prompt) == (
        "wan_tiny_vace",
        "wan_tiny_vace",
        "a fox",
        "blur",
    )
    assert (request.width, request.height, request.num_frames, request.fps, request.seed) == (64, 64, 9, 16, 7)
    assert (request.video_guide, request.video_mask, request.image_refs) == (guide, mask, (ref, IMAGE))
    assert (request.video_prompt_type, request.control_net_weight) == ("VMI", 0.5)
    assert (request.output_dir, request.output_filename) == (tmp_path, "clip")
    assert (request.image_start, request.image_end, request.lora_sources, request.lora_fields) == (None, None, (), ())
    assert request.uses_guide_video and request.grey_masked_pixels and not request.negate_mask
    assert request.plan.num_inference_steps == 4
    negated = resolve("wan_tiny_vace", video_mask=mask, video_prompt_type="AN")
    assert negated.negate_mask and not negated.grey_masked_pixels and not negated.uses_guide_video


def test_start_and_end_images_come_through_as_paths_or_images(resolve: Resolve, tmp_path: Path) -> None:
    start = file(tmp_path, "start.png")
    request = resolve("wan_tiny_i2v", image_start=str(start), image_end=IMAGE)
    assert (request.image_start, request.image_end) == (start, IMAGE)


def test_what_nobody_gives_comes_from_the_definition_then_the_system(resolve: Resolve) -> None:
    request = resolve("wan_tiny_t2v", prompt=None, negative_prompt=None)
    assert (request.prompt, request.negative_prompt, request.seed) == ("", "", 12345)
    assert (request.video_prompt_type, request.control_net_weight) == ("", 1.0)
    assert (request.output_dir, request.output_filename, request.lora_sources) == (None, None, ())
    assert request.plan.sample_solver == "euler"
    assert resolve("wan_tiny_t2v", sample_solver="").plan.sample_solver == "unipc"  # WGP: "" means unipc


def test_a_definition_without_guidance_phases_runs_one_phase_per_expert(resolve: Resolve, catalog: Catalog) -> None:
    two_experts = catalog.get("wan_tiny_i2v_2_2")
    settings = {name: value for name, value in two_experts.settings.items() if name != "guidance_phases"}
    assert resolve(two_experts.model_copy(update={"settings": settings})).plan.guidance_phases == 2


def test_settings_the_engine_does_not_use_are_ignored_even_a_model_name(resolve: Resolve, catalog: Catalog) -> None:
    flf2v = catalog.get("wan_tiny_flf2v")  # its settings carry image_prompt_type, which the engine does not use
    assert resolve(flf2v, image_end=IMAGE).num_frames == 9
    other = flf2v.model_copy(update={"settings": {**flf2v.settings, "model": "wan_tiny_t2v"}})
    assert resolve(other, image_end=IMAGE).model == "wan_tiny_flf2v"


# ---------------------------------------------------------------------------------------------- names


def test_not_implemented_settings_are_named_with_it_or_them() -> None:
    with pytest.raises(InvalidGenerationParams) as caught:
        check_param_names({"prompt": "", "tea_cache_setting": 2, "bogus": 1})
    assert caught.value.fields == ("tea_cache_setting",)
    assert str(caught.value) == (
        "tea_cache_setting: not implemented by this engine (upstream Wan2GP has it); leave it out of the request"
    )
    with pytest.raises(InvalidGenerationParams) as caught:
        check_param_names({"slg_switch": 1, "NAG_scale": 2})
    assert caught.value.fields == ("NAG_scale", "slg_switch")
    assert str(caught.value) == (
        "NAG_scale, slg_switch: not implemented by this engine (upstream Wan2GP has them); leave them out of the request"
    )


def test_unknown_names_are_listed_with_every_accepted_one() -> None:
    check_param_names({"prompt": "", "builtin_lora_files": ["a.safetensors"]})
    with pytest.raises(InvalidGenerationParams) as caught:
        check_param_names({"zoom": 1, "prompt": "", "blur": 2})
    assert caught.value.fields == ("blur", "zoom")
    assert (
        str(caught.value)
        == f"unknown parameter(s): blur, zoom. Accepted: {', '.join(ACCEPTED_PARAMS)}, builtin_lora_files"
    )


# ---------------------------------------------------------------------------------------------- types and ranges


def test_a_type_error_names_the_field_and_shows_the_value(resolve: Resolve) -> None:
    error = refusal(resolve, "wan_tiny_t2v", num_inference_steps="many", guidance_scale=float("nan"))
    assert error.fields == ("num_inference_steps", "guidance_scale")
    steps, guidance = str(error).split("; ")
    assert steps.startswith("num_inference_steps: ") and steps.endswith(" (got 'many')")
    assert guidance == "guidance_scale: expected a finite number (got nan)"


def test_a_long_value_is_shown_cut_to_120_characters(resolve: Resolve) -> None:
    fits = ["p" * 116]  # its repr is 120 characters: shown whole
    assert str(refusal(resolve, "wan_tiny_t2v", prompt=fits)).endswith(f"(got {fits!r})")
    longer = ["p" * 117]  # 121: cut to 117 and "..."
    assert str(refusal(resolve, "wan_tiny_t2v", prompt=longer)).endswith(f"(got {repr(longer)[:117]}...)")


def test_an_item_error_names_the_list_and_its_position(resolve: Resolve) -> None:
    error = refusal(resolve, "wan_tiny_vace", image_refs=[IMAGE, 3], video_prompt_type="I")
    assert set(error.fields) == {"image_refs"}
    assert str(error).startswith("image_refs.1")


@pytest.mark.parametrize(
    ("name", "bad", "good"),
    [
        ("video_length", 0, 1),
        ("video_length", 1026, 1025),
        ("num_inference_steps", 201, 200),
        ("seed", 2**63, 2**63 - 1),
        ("guidance_phases", 0, 1),
        ("flow_shift", 0, 0.001),
        ("control_net_weight", 10.5, 10.0),
        ("control_net_weight", -0.1, 0.0),
    ],
)
def test_range_limits(resolve: Resolve, name: str, bad: object, good: object) -> None:
    assert refusal(resolve, "wan_tiny_vace", **{name: bad}).fields == (name,)
    resolve("wan_tiny_vace", **{name: good})


# ---------------------------------------------------------------------------------------------- geometry


def test_the_size_is_floored_to_the_models_block(resolve: Resolve) -> None:
    assert (
        resolve("wan_tiny_t2v", resolution="120x90").width,
        resolve("wan_tiny_t2v", resolution="120x90").height,
    ) == (
        112,
        80,
    )
    ti2v = resolve("wan_tiny_ti2v", resolution="120x90")
    assert (ti2v.width, ti2v.height, ti2v.fps) == (96, 64, 24)
    error = refusal(resolve, "wan_tiny_ti2v", resolution="20x40")
    assert error.fields == ("resolution",)
    assert str(error) == "resolution: expected width and height of at least 32 pixels, got 20x40"


@pytest.mark.parametrize(("requested", "frames"), [(1, 5), (5, 5), (8, 5), (9, 9), (12, 9), (13, 13), (82, 81)])
def test_frames_are_4n_plus_1_floored_at_least_5(resolve: Resolve, requested: int, frames: int) -> None:
    assert resolve("wan_tiny_t2v", video_length=requested).num_frames == frames


def test_a_real_vace_model_needs_17_frames(resolve: Resolve) -> None:
    error = refusal(resolve, "vace_14B", video_length=16)
    assert error.fields == ("video_length",)
    assert str(error) == "video_length: VACE models need at least 17 frames, got 16"
    assert resolve("vace_14B", video_length=20).num_frames == 17
    assert resolve("wan_tiny_vace", video_length=5).num_frames == 5


@pytest.mark.parametrize(
    ("resolution", "length", "expected"),
    [
        ("4096x4096", 5, "resolution: 4096x4096 is 16777216 pixels per frame; at most 4194304 (2048x2048)"),
        ("2048x2048", 1025, "resolution: 2048x2048 x 1025 frames is 4299161600 pixels; at most 1073741824 in one"),
        ("64x8192", 5, "resolution: height must be from 1 to 4096 pixels, got 8192"),
    ],
)
def test_a_generation_too_big_is_refused_naming_resolution(resolve: Resolve, resolution, length, expected) -> None:
    error = refusal(resolve, "wan_tiny_t2v", resolution=resolution, video_length=length)
    assert error.fields == ("resolution",)
    assert str(error).startswith(expected)


# ---------------------------------------------------------------------------------------------- seed


def test_a_seed_of_zero_is_kept_and_a_negative_one_is_drawn_from_the_given_rng(resolve: Resolve) -> None:
    assert resolve("wan_tiny_t2v", seed=0).seed == 0
    assert resolve("wan_tiny_t2v", seed=-1, rng=random.Random(5)).seed == random.Random(5).randint(0, MAX_SEED)
    assert resolve("wan_tiny_t2v", seed=-5, rng=random.Random(6)).seed == random.Random(6).randint(0, MAX_SEED)


# ---------------------------------------------------------------------------------------------- inputs per model


def test_images_a_model_cannot_take_are_named(resolve: Resolve) -> None:
    error = refusal(resolve, "wan_tiny_t2v", image_start=IMAGE)
    assert (error.fields, str(error)) == (
        ("image_start",),
        "image_start: model wan_tiny_t2v (t2v) takes no start image",
    )
    error = refusal(resolve, "wan_tiny_ti2v", image_end=IMAGE)
    assert (error.fields, str(error)) == (
        ("image_end",),
        "image_end: model wan_tiny_ti2v (ti2v_2_2) takes no end image",
    )
    assert resolve("wan_tiny_ti2v", image_start=IMAGE).image_start is IMAGE


def test_a_first_last_frame_model_needs_its_end_image(resolve: Resolve) -> None:
    error = refusal(resolve, "wan_tiny_flf2v", image_start=IMAGE)
    assert error.fields == ("image_end",)
    assert str(error) == (
        "image_end: model wan_tiny_flf2v (flf2v_720p) generates from a first to a last frame: expected an end image, "
        "got none"
    )
    assert resolve("wan_tiny_i2v", image_start=IMAGE).image_end is None  # other i2v models do without


@pytest.mark.parametrize("field", ["video_guide", "video_mask"])
def test_guide_and_mask_videos_need_a_vace_model(resolve: Resolve, tmp_path: Path, field: str) -> None:
    error = refusal(resolve, "wan_tiny_i2v", **{field: file(tmp_path, "v.mp4")})
    assert (error.fields, str(error)) == ((field,), f"{field}: model wan_tiny_i2v (i2v) is not a VACE model")


def test_unsupported_video_prompt_letters_are_listed(resolve: Resolve) -> None:
    error = refusal(resolve, "wan_tiny_vace", video_prompt_type="VPXi")
    assert error.fields == ("video_prompt_type",)
    assert str(error) == "video_prompt_type: letters 'PXi' are not supported; expected letters from 'AIMNUV'"


def test_reference_images_and_the_letter_i_go_together(resolve: Resolve) -> None:
    error = refusal(resolve, "wan_tiny_vace", image_refs=[IMAGE], video_prompt_type="VM")
    assert error.fields == ("image_refs",)
    assert str(error) == (
        "image_refs: reference images go with an 'I' in video_prompt_type, and 'I' needs at least one; got 1 image(s) "
        "and video_prompt_type 'VM'"
    )
    assert str(refusal(resolve, "wan_tiny_vace", video_prompt_type="I")).endswith(
        "got 0 image(s) and video_prompt_type 'I'"
    )
    error = refusal(resolve, "wan_tiny_t2v", image_refs=[IMAGE], video_prompt_type="I")
    assert (error.fields, str(error)) == (("image_refs",), "image_refs: model wan_tiny_t2v (t2v) is not a VACE model")


def test_a_missing_input_file_is_named_with_its_position(resolve: Resolve, tmp_path: Path) -> None:
    missing = tmp_path / "missing.png"
    error = refusal(resolve, "wan_tiny_vace", image_refs=[IMAGE, missing], video_prompt_type="I")
    assert (error.fields, str(error)) == (("image_refs",), f"image_refs[1]: file not found: {missing}")
    error = refusal(resolve, "wan_tiny_i2v", image_start=IMAGE, image_end=missing)
    assert (error.fields, str(error)) == (("image_end",), f"image_end: file not found: {missing}")
    for field in ("video_guide", "video_mask"):
        error = refusal(resolve, "wan_tiny_vace", **{field: missing})
        assert (error.fields, str(error)) == ((field,), f"{field}: file not found: {missing}")


@pytest.mark.parametrize("name", ["", "   ", "a/b", "x" * 201, "é" * 101])
def test_an_output_filename_must_be_a_plain_name_of_at_most_200_bytes(resolve: Resolve, name: str) -> None:
    error = refusal(resolve, "wan_tiny_t2v", output_filename=name)
    assert error.fields == ("output_filename",)
    assert str(error) == f"output_filename: expected a plain file name of at most 200 bytes, got {name[:60]!r}"


@pytest.mark.parametrize("name", ["x" * 200, "é" * 100, "clip.mp4"])
def test_output_filenames_up_to_200_bytes_are_kept(resolve: Resolve, name: str) -> None:
    assert resolve("wan_tiny_t2v", output_filename=name).output_filename == name


# ---------------------------------------------------------------------------------------------- LoRAs


def test_a_lora_url_is_refused_showing_only_its_host(resolve: Resolve) -> None:
    url = "https://user:secret@host.example/path/x.safetensors?token=abc"
    error = refusal(resolve, "wan_tiny_t2v", activated_loras=["a.safetensors", url])
    assert error.fields == ("activated_loras",)
    assert (
        str(error)
        == f"activated_loras[1]: the LoRA is a URL (https://host.example/…), {LORA_MESSAGE}pass the local file"
    )
    assert "(file:///…)" in str(refusal(resolve, "wan_tiny_t2v", activated_loras=["file:///tmp/x.safetensors"]))
    assert "(unparsable)" in str(refusal(resolve, "wan_tiny_t2v", activated_loras=["http://[::1/x.safetensors"]))


def test_a_models_builtin_lora_urls_must_be_handed_over_as_files(resolve: Resolve) -> None:
    error = refusal(resolve, "optimised-t2i")
    assert error.fields == ("builtin_lora_files",)
    assert str(error) == (
        "builtin_lora_files: model optimised-t2i's built-in LoRA loras[0] is a URL (https://huggingface.co/…), "
        f"{LORA_MESSAGE}pass the local files in builtin_lora_files, one per built-in LoRA in its definition's order"
    )
    error = refusal(resolve, "optimised-t2i", builtin_lora_files=["a.safetensors"])
    assert error.fields == ("builtin_lora_files",)
    assert str(error) == (
        "builtin_lora_files: expected 4 file(s), one per built-in LoRA of model optimised-t2i in its definition's "
        "order, got 1"
    )
    files = ["a.safetensors", "b.safetensors", "https://host.example/c.safetensors", "d.safetensors"]
    error = refusal(resolve, "optimised-t2i", builtin_lora_files=files)
    assert error.fields == ("builtin_lora_files",)
    assert str(error).startswith("builtin_lora_files[2]: the LoRA is a URL (https://host.example/…)")


def test_builtin_loras_come_first_with_their_multipliers(resolve: Resolve) -> None:
    files = [f"{name}.safetensors" for name in "abcd"]
    request = resolve(
        "optimised-t2i", builtin_lora_files=files, activated_loras=["mine.safetensors"], loras_multipliers="0.7"
    )
    assert request.lora_sources == (*files, "mine.safetensors")
    assert request.lora_fields == (
        "builtin_lora_files[0]",
        "builtin_lora_files[1]",
        "builtin_lora_files[2]",
        "builtin_lora_files[3]",
        "activated_loras[0]",
    )
    assert request.plan.lora_multipliers == ("1.0", "0.2", "0.5", "0.5", "0.7")


def test_builtin_loras_without_a_multiplier_run_at_1(resolve: Resolve, catalog: Catalog) -> None:
    definition = catalog.get("wan_tiny_t2v").model_copy(
        update={"loras": ("a.safetensors", "b.safetensors", "c.safetensors"), "loras_multipliers": ("0.3",)}
    )
    request = resolve(definition, activated_loras=["mine.safetensors"], loras_multipliers=["0.5"])
    assert request.lora_sources == ("a.safetensors", "b.safetensors", "c.safetensors", "mine.safetensors")
    assert request.plan.lora_multipliers == ("0.3", "1.0", "1.0", "0.5")


@pytest.mark.parametrize("multipliers", ["0.5 0.25", ["0.5", 0.25]])
def test_the_callers_multipliers_as_text_or_list(resolve: Resolve, multipliers: object) -> None:
    request = resolve("wan_tiny_t2v", activated_loras=["a.safetensors", "b.safetensors"], loras_multipliers=multipliers)
    assert request.plan.lora_multipliers == ("0.5", "0.25")


def test_a_bad_multiplier_names_the_lora_it_belongs_to(resolve: Resolve) -> None:
    error = refusal(resolve, "wan_tiny_i2v_2_2", activated_loras=["a.safetensors"], loras_multipliers="1;0;1")
    assert error.fields == ("loras_multipliers",)
    assert str(error).startswith("loras_multipliers[0]: '1;0;1' has 3 phase values but guidance_phases is 2")


def test_the_callers_phase_settings_reach_the_plan(resolve: Resolve) -> None:
    request = resolve(
        "wan_tiny_i2v_2_2",
        num_inference_steps=6,
        guidance_phases=3,
        guidance_scale=4.0,
        guidance2_scale=2.0,
        guidance3_scale=1.5,
        switch_threshold=900,
        switch_threshold2=600,
        model_switch_phase=3,  # the default for three phases is 2
    )
    plan = request.plan
    assert (plan.guidance_phases, plan.guidance_scales) == (3, (4.0, 2.0, 1.5))
    assert (plan.switch_threshold, plan.switch_threshold2, plan.model_switch_phase) == (900, 600, 3)


def test_the_plan_names_every_lora_it_runs(resolve: Resolve) -> None:
    request = resolve("wan_tiny_t2v", activated_loras=["a.safetensors", Path("b.safetensors")])
    assert request.plan.lora_names == request.lora_sources == ("a.safetensors", "b.safetensors")
    assert request.plan.lora_multipliers == ("1.0", "1.0")
