"""Planning a travel run: how many frames each segment generates, what it overlaps, which keyframes and prompts it
gets, and the exact length of the final video. Pure functions, no I/O: the orchestrator handler parses the payload,
calls `plan_travel`, and enqueues one task per `SegmentPlan`.

The frame-count contract (README "Frame counts"): every segment generates exactly its quantised `frames`
(4n+1), neighbouring segments share `overlap` frames that the stitch cross-fades, so the final video has
    Σ frames − Σ overlaps
frames. Upstream instead added the overlap to the next segment and re-quantised it down, silently losing two frames
per join whenever the overlap was not a multiple of 4 (upstream_worker_spec §5.4, §10.1); here the number the
orchestrator reports up front is the number the stitch asserts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

TravelMode = Literal["vace", "i2v"]


class TravelPlanError(ValueError):
    """A travel payload that cannot be planned; the message names the field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


def quantize_frames(frames: int) -> int:
    """Wan generates 4n+1 frames: 4n+1 stays, 4n rounds up to 4n+1, 4n+2 and 4n+3 round down (as upstream)."""
    return (frames // 4) * 4 + 1


def quantize_overlaps(frames: list[int], overlaps: list[int]) -> list[int]:
    """Overlaps become even (rounded down) and never longer than either neighbour. Upstream clamped after rounding,
    which could hand back an odd overlap (a 4n+1 neighbour); here the clamp comes first so the result stays even.
    A segment's two overlaps together never exceed its frames either (the stitch keeps frames[O_prev : L - O_next] of
    it), so an overlap is also clamped to what the previous join left of its first segment."""
    quantized: list[int] = []
    for i, overlap in enumerate(overlaps):
        left_free = frames[i] - (quantized[i - 1] if i > 0 else 0)
        quantized.append(max(0, (min(overlap, left_free, frames[i + 1]) // 2) * 2))
    return quantized


@dataclass(frozen=True)
class SegmentPlan:
    index: int
    frames: int  # frames this segment generates (4n+1)
    overlap_from_previous: int  # leading frames shared with the previous segment (cross-faded by the stitch)
    overlap_with_next: int
    start_image: str | None  # keyframe path/URL pinned at frame 0 (None when carried frames replace it)
    end_image: str | None  # keyframe pinned at the last frame
    prompt: str
    negative_prompt: str
    seed: int
    depends_on_previous: bool  # VACE chaining: this segment reads the previous segment's tail frames
    timeline_start: int  # the index, in the stitched video, of this segment's first frame

    @property
    def is_first(self) -> bool:
        return self.index == 0


@dataclass(frozen=True)
class TravelPlan:
    mode: TravelMode
    segments: tuple[SegmentPlan, ...]
    overlaps: tuple[int, ...]

    @property
    def final_frames(self) -> int:
        """The contracted length of the stitched video."""
        return sum(s.frames for s in self.segments) - sum(self.overlaps)


def expand_per_segment(values: list[int] | int | None, count: int, field: str) -> list[int]:
    """An int means "the same for every join/segment" (upstream accepts both shapes)."""
    if values is None:
        return [0] * count
    if isinstance(values, int):
        return [values] * count
    if len(values) == 1 and count > 1:
        return list(values) * count
    if len(values) != count:
        raise TravelPlanError(field, f"expected {count} values, got {len(values)}")
    return list(values)


def pick_text(per_segment: list[str], index: int, fallback: str) -> str:
    """Segment `index`'s entry of a per-segment text list, or `fallback` where it is missing or blank."""
    text = per_segment[index] if index < len(per_segment) else ""
    return text if text and text.strip() else fallback


def plan_travel(
    *,
    mode: TravelMode,
    chain_segments: bool,
    images: list[str],
    segment_frames: list[int],
    overlaps: list[int] | int | None,
    base_prompt: str,
    base_prompts: list[str],
    enhanced_prompts: list[str],
    negative_prompt: str,
    negative_prompts: list[str],
    text_before: str,
    text_after: str,
    seed: int,
) -> TravelPlan:
    """Plan every segment of a travel run. Segment i travels from keyframe i to keyframe i+1."""
    count = len(segment_frames)
    if count < 1:
        raise TravelPlanError("orchestrator_details.segment_frames_expanded", "expected at least one segment")
    if len(images) < count + 1 and not (count == 1 and len(images) == 1):
        raise TravelPlanError(
            "orchestrator_details.input_image_paths_resolved",
            f"expected {count + 1} keyframes for {count} segments, got {len(images)}",
        )
    for i, value in enumerate(segment_frames):
        if value < 1:
            raise TravelPlanError(f"orchestrator_details.segment_frames_expanded[{i}]", f"expected >= 1, got {value}")
    frames = [quantize_frames(f) for f in segment_frames]
    raw_overlaps = expand_per_segment(overlaps, count - 1, "orchestrator_details.frame_overlap_expanded")
    for i, value in enumerate(raw_overlaps):
        if value < 0:
            raise TravelPlanError(f"orchestrator_details.frame_overlap_expanded[{i}]", f"expected >= 0, got {value}")
    quantized_overlaps = quantize_overlaps(frames, raw_overlaps)
    chained = mode == "vace" and chain_segments

    segments = []
    timeline_start = 0
    for i in range(count):
        overlap_prev = quantized_overlaps[i - 1] if i > 0 else 0
        overlap_next = quantized_overlaps[i] if i < count - 1 else 0
        carries_tail = chained and i > 0 and overlap_prev > 0
        prompt = pick_text(enhanced_prompts, i, pick_text(base_prompts, i, base_prompt))
        prompt = " ".join(part for part in (text_before.strip(), prompt.strip(), text_after.strip()) if part)
        segments.append(
            SegmentPlan(
                index=i,
                frames=frames[i],
                overlap_from_previous=overlap_prev,
                overlap_with_next=overlap_next,
                # Each segment starts at ITS keyframe (upstream's independent mode always used image 0, §10.29).
                start_image=None if carries_tail else images[i],
                end_image=images[i + 1] if len(images) > i + 1 else None,
                prompt=prompt,
                negative_prompt=pick_text(negative_prompts, i, negative_prompt),
                seed=seed,
                depends_on_previous=carries_tail,
                timeline_start=timeline_start,
            )
        )
        timeline_start += frames[i] - overlap_next
    return TravelPlan(mode=mode, segments=tuple(segments), overlaps=tuple(quantized_overlaps))


def guidance_source_frames(
    videos: Sequence[Any], source_lengths: Sequence[int], *, timeline_start: int, frames: int
) -> list[tuple[int, int] | None]:
    """Which structure-video frame guides each of a segment's frames: (video index, source frame), or None.

    Each video (a travel_guidance video: start_frame, end_frame, treatment, source_start_frame, source_end_frame)
    covers frames [start_frame, end_frame) of the run's timeline; the segment's frame k sits at timeline_start + k.
    `clip` maps one source frame per frame from source_start_frame (past the source's end there is no guidance);
    `adjust` stretches or squeezes the source range over the whole span. An end_frame of None means "as long as the
    source range" (the orchestrator sets it to the run's end for `adjust`). A later video wins where two overlap."""
    mapping: list[tuple[int, int] | None] = [None] * frames
    for index, (video, length) in enumerate(zip(videos, source_lengths, strict=True)):
        source_start = video.source_start_frame
        source_end = min(video.source_end_frame or length, length)
        if source_end <= source_start:
            continue
        span_start = video.start_frame
        span_end = video.end_frame if video.end_frame is not None else span_start + (source_end - source_start)
        for k in range(frames):
            t = timeline_start + k
            if not span_start <= t < span_end:
                continue
            if video.treatment == "clip":
                source = source_start + (t - span_start)
                if source >= source_end:
                    continue
            else:
                source = source_start + (t - span_start) * (source_end - source_start) // (span_end - span_start)
            mapping[k] = (index, source)
    return mapping
