"""Payload models, the task row, error messages and redaction."""

from __future__ import annotations

import pytest

from source.params import (
    GenerationTaskParams,
    OrchestratorDetails,
    PayloadError,
    TravelOrchestratorParams,
    TravelSegmentParams,
    TravelStitchParams,
    parse_model,
    redact,
)


def details(**overrides) -> dict:
    data = {
        "num_new_segments_to_generate": 2,
        "segment_frames_expanded": [61, 61],
        "frame_overlap_expanded": [6],
        "model_name": "wan_2_2_vace_lightning_baseline_2_2_2",
        "parsed_resolution_wh": "902x508",
        "input_image_paths_resolved": ["a.png", "b.png", "c.png"],
        "base_prompts_expanded": ["one", None],
    }
    data.update(overrides)
    return data


def test_the_issue_example_message():
    with pytest.raises(PayloadError) as error:
        parse_model(
            TravelOrchestratorParams,
            {"orchestrator_details": details(segment_frames_expanded=[61, "sixty"])},
        )
    assert str(error.value) == 'orchestrator_details.segment_frames_expanded[1]: expected an integer, got "sixty"'
    assert error.value.path == "orchestrator_details.segment_frames_expanded[1]"


def test_known_keys_typed_unknown_kept_nulls_not_given():
    parsed = parse_model(
        OrchestratorDetails,
        details(seed_base=None, new_reigh_field={"x": 1}, fps_helpers="24", shot_id=None),
    )
    assert parsed.seed_base == 12345  # null == not given -> default
    assert parsed.fps_helpers == 24
    assert parsed.model_extra == {"new_reigh_field": {"x": 1}}
    assert parsed.base_prompts_expanded == ["one", ""]
    assert "seed_base" not in parsed.model_fields_set
    assert parsed.given()["new_reigh_field"] == {"x": 1}


def test_a_required_field_sent_as_null_is_reported_as_required():
    with pytest.raises(PayloadError) as error:
        parse_model(OrchestratorDetails, details(model_name=None), "orchestrator_details")
    assert str(error.value) == "orchestrator_details.model_name: expected a value (required field), got nothing"


def test_single_overlap_int_is_expanded_and_legacy_independent_segments():
    parsed = parse_model(
        OrchestratorDetails,
        details(
            num_new_segments_to_generate=3,
            segment_frames_expanded=[61] * 3,
            base_prompts_expanded=[],
            frame_overlap_expanded=6,
            independent_segments=True,
        ),
    )
    assert parsed.frame_overlap_expanded == [6, 6]
    assert parsed.chain_segments is False


@pytest.mark.parametrize(
    ("overrides", "path", "expected"),
    [
        ({"segment_frames_expanded": [61]}, "segment_frames_expanded", "at least 2 entries"),
        ({"frame_overlap_expanded": []}, "frame_overlap_expanded", "at least 1 entries"),
        ({"frame_overlap_expanded": [-2]}, "frame_overlap_expanded[0]", "an integer from 0 to 1025"),
        ({"parsed_resolution_wh": "big"}, "parsed_resolution_wh", "WIDTHxHEIGHT"),
        ({"model_type": "t2v"}, "model_type", "one of 'vace' or 'i2v'"),
        ({"phase_config": {"phases": [{"guidance_scale": "x"}]}}, "phase_config.phases[0].guidance_scale", "a number"),
        ({"guidance_scale": True}, "guidance_scale", "a number, not true/false"),
        ({"loras_multipliers": "1.0;x"}, "loras_multipliers", "multiplier"),
        ({"sample_solver": "lcm"}, "sample_solver", "euler"),
    ],
)
def test_orchestrator_details_errors(overrides, path, expected):
    with pytest.raises(PayloadError) as error:
        parse_model(OrchestratorDetails, details(**overrides), "orchestrator_details")
    assert error.value.path == f"orchestrator_details.{path}"
    assert expected in str(error.value)


def test_zero_segments_is_valid():
    parsed = parse_model(OrchestratorDetails, details(num_new_segments_to_generate=0, segment_frames_expanded=[]))
    assert parsed.num_new_segments_to_generate == 0


def test_segment_with_nested_orchestrator_and_individual_params():
    segment = parse_model(
        TravelSegmentParams,
        {
            "segment_index": 1,
            "segment_frames_target": 65,
            "orchestrator_details": details(),
            "individual_segment_params": {"num_frames": 33, "phase_config": None, "seed_to_use": 7},
            "lora_multipliers": ["1.0;0", 0.5],
        },
    )
    assert segment.orchestrator is not None and segment.orchestrator.segment_frames_expanded == [61, 61]
    assert segment.individual_segment_params.num_frames == 33
    assert segment.individual_segment_params.phase_config is None
    assert segment.lora_multipliers == ["1.0;0", "0.5"]
    with pytest.raises(PayloadError) as error:
        parse_model(TravelSegmentParams, {"individual_segment_params": {"num_frames": 0}})
    assert error.value.path == "individual_segment_params.num_frames"


def test_stitch_and_generation_params():
    stitch = parse_model(
        TravelStitchParams, {"num_total_segments_generated": 3, "frame_overlap_settings_expanded": [6, 6]}
    )
    assert stitch.crossfade_sharp_amt == 0.3
    with pytest.raises(PayloadError) as error:
        parse_model(TravelStitchParams, {"num_total_segments_generated": 3, "frame_overlap_settings_expanded": [6]})
    assert error.value.path == "frame_overlap_settings_expanded"
    generation = parse_model(GenerationTaskParams, {"model_name": "t2v", "loras_multipliers": [1, "0.5;1"], "steps": 8})
    assert generation.model_id == "t2v" and generation.loras_multipliers == "1 0.5;1"


def test_not_an_object():
    with pytest.raises(PayloadError) as error:
        parse_model(OrchestratorDetails, ["a"], "orchestrator_details")
    assert str(error.value) == 'orchestrator_details: expected an object, got ["a"]'


def test_secret_values_never_appear_in_errors():
    with pytest.raises(PayloadError) as error:
        parse_model(OrchestratorDetails, details(openai_api_key=["sk-live-123"]))
    assert "sk-live-123" not in str(error.value) and "***" in str(error.value)


def test_task_status_reads_the_spellings_rows_and_people_use():
    from source.queue import TaskStatus

    assert TaskStatus("canceled") is TaskStatus.CANCELLED and TaskStatus.CANCELLED.is_terminal
    assert TaskStatus("in progress") is TaskStatus.IN_PROGRESS and TaskStatus("Queued") is TaskStatus.QUEUED
    assert TaskStatus("error") is TaskStatus.FAILED and TaskStatus.parse("in-progress") is TaskStatus.IN_PROGRESS
    with pytest.raises(ValueError, match="status: expected one of Queued"):
        TaskStatus.parse("sleeping")


def test_redact_is_deep_and_does_not_modify_the_input():
    original = {
        "openai_api_key": "sk-1",
        "orchestrator_details": {"service_role_key": "k", "nested": [{"access_token": "t", "keep": 1}]},
        "Authorization": "Bearer x",
        "password": "p",
        "secret": "s",
        "prompt": "a cat",
        "key_frames": [1, 2],
    }
    cleaned = redact(original)
    assert cleaned == {
        "openai_api_key": "***",
        "orchestrator_details": {"service_role_key": "***", "nested": [{"access_token": "***", "keep": 1}]},
        "Authorization": "***",
        "password": "***",
        "secret": "***",
        "prompt": "a cat",
        "key_frames": [1, 2],
    }
    assert original["openai_api_key"] == "sk-1"
    assert original["orchestrator_details"]["nested"][0]["access_token"] == "t"


def test_one_resolution_parser_for_every_layer():
    from Wan2GP import limits

    assert limits.parse_resolution(" 902X508 ") == (902, 508)
    assert limits.snap_resolution(902, 508) == (896, 496)
    for bad in ("902x", "x508", "902x508x3", "-16x16", "0x16", "1234567x16", 902, None, "9O2x508"):
        with pytest.raises(ValueError, match='expected "WIDTHxHEIGHT"'):
            limits.parse_resolution(bad)
    with pytest.raises(ValueError, match="at least 16 pixels"):
        limits.snap_resolution(15, 480)
