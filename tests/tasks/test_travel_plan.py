"""The travel planner: quantisation, the frame-count contract, keyframes, prompts and chaining."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from source.params.payloads import GuidanceVideo
from source.tasks.travel_plan import (
    TravelPlanError,
    expand_per_segment,
    guidance_source_frames,
    plan_travel,
    quantize_frames,
    quantize_overlaps,
)

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
    assert quantize_overlaps([4, 9], [6]) == [4]  # an even first segment may be shared whole
    # A segment shares with its successor only what its predecessor left: 9 - 6 leaves 3, so 2 at the last join.
    assert quantize_overlaps([9, 9, 9, 9], [2, 8, 8]) == [2, 6, 2]


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
    ("overrides", "field", "expected"),
    [
        (
            {"images": ["a.png", "b.png"]},
            "orchestrator_details.input_image_paths_resolved",
            "expected 3 keyframes for 2 segments, got 2",
        ),
        (
            {"images": ["a.png"], "segment_frames": [61, 61]},
            "orchestrator_details.input_image_paths_resolved",
            "expected 3 keyframes for 2 segments, got 1",
        ),
        (
            {"images": [], "segment_frames": [61], "overlaps": []},
            "orchestrator_details.input_image_paths_resolved",
            "expected 2 keyframes for 1 segments, got 0",
        ),
        ({"overlaps": [6, 6]}, "orchestrator_details.frame_overlap_expanded", "expected 1 values, got 2"),
        ({"segment_frames": [61, 0]}, "orchestrator_details.segment_frames_expanded[1]", "expected >= 1, got 0"),
        ({"segment_frames": []}, "orchestrator_details.segment_frames_expanded", "expected at least one segment"),
        ({"overlaps": [-2]}, "orchestrator_details.frame_overlap_expanded[0]", "expected >= 0, got -2"),
    ],
)
def test_bad_payload_names_the_field(overrides, field, expected):
    with pytest.raises(TravelPlanError) as error:
        _plan(**overrides)
    assert error.value.field == field
    assert str(error.value) == f"{field}: {expected}"


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


def test_segment_fields_along_the_timeline():
    plan = _plan(segment_frames=[61, 45, 53], overlaps=[6, 10], images=["a", "b", "c", "d"])
    assert plan.mode == "vace"
    assert [(s.index, s.is_first) for s in plan.segments] == [(0, True), (1, False), (2, False)]
    assert [(s.overlap_from_previous, s.overlap_with_next) for s in plan.segments] == [(0, 6), (6, 10), (10, 0)]
    # Where each segment's first frame lands in the stitched video: after the previous ones minus their overlaps.
    assert [s.timeline_start for s in plan.segments] == [0, 55, 90]
    assert plan.final_frames == 90 + 53


def test_one_segment_may_travel_from_a_single_keyframe():
    plan = _plan(segment_frames=[1], overlaps=None, images=["a.png"])
    (segment,) = plan.segments
    assert (segment.frames, segment.start_image, segment.end_image) == (1, "a.png", None)
    assert plan.overlaps == () and plan.final_frames == 1


def test_overlaps_given_once_or_not_at_all_apply_to_every_join():
    images = ["a", "b", "c", "d"]
    assert _plan(segment_frames=[61, 61, 61], overlaps=[6], images=images).overlaps == (6, 6)
    assert _plan(segment_frames=[61, 61, 61], overlaps=None, images=images).overlaps == (0, 0)
    assert expand_per_segment(None, 3, "f") == [0, 0, 0]
    assert expand_per_segment([4], 2, "f") == [4, 4]


def test_vace_chaining_needs_an_overlap_to_carry():
    # Nothing to carry over a join without overlap: the segment starts at its own keyframe.
    _, second = _plan(overlaps=[0]).segments
    assert (second.start_image, second.depends_on_previous) == ("b.png", False)
    assert _plan(overlaps=[2]).segments[1].depends_on_previous


def test_missing_or_blank_prompts_fall_back_to_the_base_prompt():
    plan = _plan(base_prompts=["   "], negative_prompts=[" "], enhanced_prompts=["\t"])
    assert [(s.prompt, s.negative_prompt) for s in plan.segments] == [("base", "neg"), ("base", "neg")]


def _guide(**fields):
    return GuidanceVideo(path="guide.mp4", **fields)


def test_clip_guidance_maps_one_source_frame_per_frame_within_its_span():
    # Timeline frames 2..9; the video covers [3, 9) from source frame 1 up to (not including) source frame 5.
    video = _guide(start_frame=3, end_frame=9, treatment="clip", source_start_frame=1, source_end_frame=5)
    assert guidance_source_frames([video], [10], timeline_start=2, frames=8) == [
        None,
        (0, 1),
        (0, 2),
        (0, 3),
        (0, 4),
        None,
        None,
        None,
    ]
    # The span's end is exclusive even while the source has frames left.
    video = _guide(start_frame=3, end_frame=6, treatment="clip")
    assert guidance_source_frames([video], [10], timeline_start=0, frames=8) == [
        None,
        None,
        None,
        (0, 0),
        (0, 1),
        (0, 2),
        None,
        None,
    ]


def test_adjust_guidance_squeezes_or_stretches_the_source_over_its_span():
    squeezed = _guide(start_frame=4, end_frame=8, source_start_frame=2)  # 8 source frames over 4
    assert guidance_source_frames([squeezed], [10], timeline_start=2, frames=8) == [
        None,
        None,
        (0, 2),
        (0, 4),
        (0, 6),
        (0, 8),
        None,
        None,
    ]
    stretched = _guide(start_frame=0, end_frame=6, source_end_frame=3)  # 3 source frames over 6
    assert guidance_source_frames([stretched], [10], timeline_start=0, frames=7) == [
        (0, 0),
        (0, 0),
        (0, 1),
        (0, 1),
        (0, 2),
        (0, 2),
        None,
    ]


def test_guidance_without_an_end_frame_lasts_as_long_as_its_source_range():
    adjusted = _guide(start_frame=2, source_start_frame=1, source_end_frame=4)
    assert guidance_source_frames([adjusted], [10], timeline_start=0, frames=6) == [
        None,
        None,
        (0, 1),
        (0, 2),
        (0, 3),
        None,
    ]
    # A source_end_frame past the video's end means its end.
    clipped = _guide(treatment="clip", source_end_frame=20)
    assert guidance_source_frames([clipped], [4], timeline_start=0, frames=6) == [
        (0, 0),
        (0, 1),
        (0, 2),
        (0, 3),
        None,
        None,
    ]


def test_later_guidance_videos_win_and_empty_source_ranges_guide_nothing():
    base = _guide(start_frame=0, end_frame=6, treatment="clip")
    inset = _guide(start_frame=2, end_frame=4, treatment="clip", source_start_frame=5)
    assert guidance_source_frames([base, inset], [10, 10], timeline_start=0, frames=7) == [
        (0, 0),
        (0, 1),
        (1, 5),
        (1, 6),
        (0, 4),
        (0, 5),
        None,
    ]
    past_the_end = _guide(start_frame=0, end_frame=4, source_start_frame=5)
    assert guidance_source_frames([past_the_end], [5], timeline_start=0, frames=4) == [None] * 4
    assert guidance_source_frames([past_the_end, base], [5, 10], timeline_start=0, frames=2) == [(1, 0), (1, 1)]
    with pytest.raises(ValueError):
        guidance_source_frames([base], [], timeline_start=0, frames=4)
