"""The travel planner: quantisation, the frame-count contract, keyframes, prompts and chaining."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from source.tasks.travel_plan import TravelPlanError, plan_travel, quantize_frames, quantize_overlaps

IMAGES = ["a.png", "b.png", "c.png"]


def _plan(**overrides):
    args = dict(
        mode="vace",
        chain_segments=True,
        images=IMAGES,
        segment_frames=[61, 61],
        overlaps=[6],
        base_prompt="base",
        base_prompts=["", ""],
        enhanced_prompts=[],
        negative_prompt="neg",
        negative_prompts=["", ""],
        text_before="",
        text_after="",
        seed=789,
    )
    args.update(overrides)
    return plan_travel(**args)


def test_quantize_frames_follows_upstream_rounding():
    assert [quantize_frames(f) for f in (61, 60, 62, 63, 64, 45, 53)] == [61, 61, 61, 61, 65, 45, 53]


def test_quantize_overlaps_even_and_bounded_by_neighbours():
    assert quantize_overlaps([61, 61], [7]) == [6]
    assert quantize_overlaps([9, 5], [8]) == [4]


@pytest.mark.parametrize(
    ("frames", "overlaps", "expected"),
    [([61, 61], [6], 116), ([53, 45], [6], 92), ([61, 61, 61], [6, 6], 171), ([17, 17], [0], 34)],
)
def test_final_frames_is_sum_minus_overlaps(frames, overlaps, expected):
    # The seed 001 shapes: upstream produced 120 and 96 frames while logging 116 and 92 (spec §5.4).
    plan = _plan(segment_frames=frames, overlaps=overlaps, images=["i"] * (len(frames) + 1))
    assert plan.final_frames == expected
    assert [s.frames for s in plan.segments] == [quantize_frames(f) for f in frames]


def test_vace_chain_carries_previous_tail_instead_of_start_image():
    plan = _plan()
    first, second = plan.segments
    assert (first.start_image, first.end_image, first.depends_on_previous) == ("a.png", "b.png", False)
    assert (second.start_image, second.end_image, second.depends_on_previous) == (None, "c.png", True)
    assert second.overlap_from_previous == 6 and first.overlap_with_next == 6


def test_independent_segments_start_at_their_own_keyframe():
    # Upstream's independent mode pinned image 0 at frame 0 of every segment (spec §10.29).
    for plan in (_plan(chain_segments=False), _plan(mode="i2v")):
        assert [(s.start_image, s.end_image) for s in plan.segments] == [("a.png", "b.png"), ("b.png", "c.png")]
        assert not any(s.depends_on_previous for s in plan.segments)


def test_per_segment_prompts_win_and_negative_prompts_are_not_clobbered():
    plan = _plan(
        base_prompts=["walk", ""],
        enhanced_prompts=["", "run fast"],
        negative_prompts=["blurry", ""],
        text_before="cinematic,",
        text_after="4k",
    )
    assert [s.prompt for s in plan.segments] == ["cinematic, walk 4k", "cinematic, run fast 4k"]
    assert [s.negative_prompt for s in plan.segments] == ["blurry", "neg"]


def test_overlaps_of_a_middle_segment_never_exceed_its_frames():
    # [9, 9, 9] with overlap 8 passed the planner, generated every segment, then failed the stitch (8 + 8 > 9).
    plan = _plan(segment_frames=[9, 9, 9], overlaps=[8, 8], images=["a", "b", "c", "d"])
    assert plan.overlaps == (8, 0) and plan.final_frames == 19
    for index, segment in enumerate(plan.segments):
        assert segment.overlap_from_previous + segment.overlap_with_next <= segment.frames, index


def test_longest_overlap_leaves_only_the_end_keyframe():
    # Even overlaps never exceed a 4n+1 neighbour, so at least the end keyframe of the next segment stays its own.
    plan = _plan(segment_frames=[9, 9], overlaps=[9])
    assert plan.overlaps == (8,) and plan.final_frames == 10


def test_same_seed_for_every_segment():
    assert {s.seed for s in _plan().segments} == {789}


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"images": ["a.png", "b.png"]}, "orchestrator_details.input_image_paths_resolved"),
        ({"overlaps": [6, 6]}, "orchestrator_details.frame_overlap_expanded"),
        ({"segment_frames": [61, 0]}, "orchestrator_details.segment_frames_expanded[1]"),
        ({"overlaps": [-2]}, "orchestrator_details.frame_overlap_expanded[0]"),
    ],
)
def test_bad_payload_names_the_field(overrides, field):
    with pytest.raises(TravelPlanError) as error:
        _plan(**overrides)
    assert error.value.field == field
    assert str(error.value).startswith(field)


@given(
    frames=st.lists(st.integers(min_value=5, max_value=200), min_size=1, max_size=6),
    overlap=st.integers(min_value=0, max_value=12),
)
def test_contract_holds_for_any_valid_shape(frames, overlap):
    images = [f"{i}.png" for i in range(len(frames) + 1)]
    plan = _plan(segment_frames=frames, overlaps=overlap, images=images, base_prompts=[], negative_prompts=[])
    assert all((s.frames - 1) % 4 == 0 for s in plan.segments)
    assert all(o % 2 == 0 for o in plan.overlaps)
    assert plan.final_frames == sum(s.frames for s in plan.segments) - sum(plan.overlaps)
    assert all(o < s.frames for o, s in zip(plan.overlaps, plan.segments[1:], strict=True))
    assert all(s.overlap_from_previous + s.overlap_with_next <= s.frames for s in plan.segments)
    assert plan.final_frames > 0
