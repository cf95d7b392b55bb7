"""Payloads of the VACE video-editing task types: `join_clips_orchestrator`, `edit_video_orchestrator`, the two
children they enqueue (`join_clips_segment`: one generated bridge; `join_final_stitch`: clips and bridges spliced
into one video) and the single-task `inpaint_frames`.

The orchestrator payloads are what Reigh's app enqueues (reigh-app `supabase/functions/create-task/resolvers/
joinClips.ts`, `src/tools/edit-video/hooks/useReplaceMode.ts`): the settings live in `params.orchestrator_details`;
joinClips.ts also repeats them at the top level of `params`, where they are kept unread (a second copy of the same
values is not a second level of precedence). Reigh writes `resolution` as a `[width, height]` pair; it is read as the
"WxH" text every other payload uses. The child payloads are written by our orchestrators only.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Annotated, Any, ClassVar

from pydantic import BeforeValidator, Field, ValidationInfo, field_validator, model_validator

from source.params.base import (
    Integer,
    Location,
    Number,
    Overlap,
    PayloadModel,
    Resolution,
    Seed,
    within,
)
from source.params.errors import Expected
from source.params.payloads import (
    MAX_LORAS,
    REIGH_ENVELOPE,
    UI_STATE,
    GenerationSpec,
    GenerationTaskParams,
    PathLora,
    WgpGenerationFields,
)
from source.params.resolve import PayloadLevels, checked_generation
from Wan2GP import limits
from Wan2GP.catalog import ModelDefinition
from Wan2GP.limits import Bound

__all__ = [
    "DEFAULT_VACE_MODEL",
    "BridgeSeam",
    "BridgeTaskParams",
    "ClipRef",
    "ClipSpan",
    "EditVideoDetails",
    "EditVideoOrchestratorParams",
    "InpaintFramesParams",
    "JoinClipsDetails",
    "JoinClipsOrchestratorParams",
    "JoinFinalParams",
    "JoinOverrides",
    "JoinRunSettings",
    "Portion",
    "join_generation",
]

# The model these task types use when a payload names none (Reigh's default for joins and edits).
DEFAULT_VACE_MODEL = "wan_2_2_vace_lightning_baseline_2_2_2"

# A frame index on a video's timeline (a whole run can be as long as MAX_SEGMENTS generations).
_FRAME_INDEX = Bound(0, limits.MAX_FRAMES * limits.MAX_SEGMENTS, "an integer")
FrameIndex = Annotated[Integer, within(_FRAME_INDEX)]
GapFrames = Annotated[Integer, within(limits.FRAMES)]
FramesPerSecond = Annotated[Number, within(limits.FPS)]  # a probed rate such as 29.97 is not an integer
MAX_CLIPS = limits.MAX_SEGMENTS + 1


def _resolution_pair(value: Any) -> Any:
    """Reigh's `[902, 508]` -> "902x508" (then checked like any resolution)."""
    if isinstance(value, list | tuple):
        if len(value) != 2 or not all(isinstance(side, int) and not isinstance(side, bool) for side in value):
            raise Expected('a resolution [width, height] or "WIDTHxHEIGHT"')
        return f"{value[0]}x{value[1]}"
    return value


ResolutionOrPair = Annotated[Resolution, BeforeValidator(_resolution_pair)]


class JoinOverrides(WgpGenerationFields):
    """One entry of `per_join_settings`: what one join changes of the run's settings (joinClips.ts
    buildJoinOverrideRecord: prompt, gap/context counts, replace_mode, model, steps, guidance, seed, negative prompt,
    priority, resolution, fps, additional_loras)."""

    NOT_USED: ClassVar[Mapping[str, str]] = MappingProxyType(
        {
            **WgpGenerationFields.NOT_USED,
            "priority": "child tasks keep the queue's default priority",
            "fps": "one output video has one frame rate: the run's",
        }
    )

    resolution: ResolutionOrPair | None = None
    context_frame_count: Overlap | None = None
    gap_frame_count: GapFrames | None = None
    replace_mode: bool | None = None
    priority: Integer | None = None
    fps: FramesPerSecond | None = None


class ClipRef(PayloadModel):
    """One entry of `clip_list`."""

    url: Location
    name: str | None = None


class JoinRunSettings(JoinOverrides):
    """Settings shared by join and edit runs (orchestrator_details level)."""

    NOT_USED: ClassVar[Mapping[str, str]] = MappingProxyType(
        {  # fps is used at this level: it is the output's frame rate
            **{key: reason for key, reason in JoinOverrides.NOT_USED.items() if key != "fps"},
            "audio_url": "this worker writes video only",
            "vid2vid_init_strength": "the engine starts every bridge from noise",
            "enhance_prompt": "the prompt model writes travel segments' prompts only; join prompts are used as given",
        }
    )

    context_frame_count: Overlap = 8
    keep_bridging_images: bool = False
    use_input_video_resolution: bool = False
    use_input_video_fps: bool = False
    enhance_prompt: bool = False
    run_id: str | None = None
    audio_url: Location | None = None
    vid2vid_init_strength: Number | None = None
    loras: Annotated[list[PathLora], Field(max_length=MAX_LORAS)] | None = None

    @model_validator(mode="before")
    @classmethod
    def _app_loras_are_listed_loras(cls, data: Any) -> Any:
        # The edit tools send the user's LoRAs as `loras: [{path, strength}]` (the lightbox puts them nowhere else);
        # they are this level's listed LoRAs, as additional_loras would be. A malformed list is reported at `loras`.
        if isinstance(data, dict) and isinstance(data.get("loras"), list) and not data.get("additional_loras"):
            entries = data["loras"]
            if all(isinstance(item, dict) and isinstance(item.get("path"), str) for item in entries):
                data = {**data, "additional_loras": {item["path"]: item.get("strength", 1.0) for item in entries}}
        return data


# What Reigh's join and edit payloads carry for the app itself (resolvers/joinClips.ts, editVideoOrchestrator.ts).
_APP_BOOKKEEPING = {
    "orchestrator_task_id": "the row's own id is used",
    "shot_id": "the app's link, read back by the app from the orchestrator row",
    "parent_generation_id": "the app's link, read back by the app from the orchestrator row",
    "based_on": "the app's link, read back by the app from the orchestrator row",
    "tool_type": "the app's tool name",
    **{key: UI_STATE[key] for key in ("advanced_mode", "motion_mode", "selected_phase_preset_id")},
}
# A video-edit join (mode "video_edit"): the app has already cut the kept stretches into clip_list.
_VIDEO_EDIT_RECORD = "a video-edit join's record of its source; the app already cut the kept stretches into clip_list"


class JoinClipsDetails(JoinRunSettings):
    """`orchestrator_details` of a join_clips_orchestrator task."""

    NOT_USED: ClassVar[Mapping[str, str]] = MappingProxyType(
        {
            **JoinRunSettings.NOT_USED,
            **_APP_BOOKKEEPING,
            **dict.fromkeys(
                (
                    "video_edit_mode",
                    "source_video_url",
                    "source_video_fps",
                    "source_video_duration",
                    "source_video_total_frames",
                    "portions_to_regenerate",
                ),
                _VIDEO_EDIT_RECORD,
            ),
        }
    )

    gap_frame_count: GapFrames = 53  # upstream's default; Reigh sends 23
    replace_mode: bool = True  # Reigh's default: bridges replace boundary frames, the length is kept
    loop_first_clip: bool = False  # join clip_list[0] to itself played backwards (any other clip is not read)
    clip_list: Annotated[list[ClipRef], Field(max_length=MAX_CLIPS)] = Field(
        default_factory=list, validate_default=True
    )
    per_join_settings: Annotated[list[JoinOverrides], Field(max_length=MAX_CLIPS)] = Field(default_factory=list)

    @field_validator("clip_list")
    @classmethod
    def _enough_clips(cls, value: list[ClipRef], info: ValidationInfo) -> list[ClipRef]:
        if info.data.get("loop_first_clip"):
            if not value:  # the app's loop sends its clip twice; only the first is read
                raise Expected("a clip to loop (loop_first_clip joins clip_list[0] to itself played backwards)")
        elif len(value) < 2:
            raise Expected("at least 2 clips to join")
        return value

    @field_validator("per_join_settings")
    @classmethod
    def _one_per_join(cls, value: list[JoinOverrides], info: ValidationInfo) -> list[JoinOverrides]:
        clips = info.data.get("clip_list")
        joins = 1 if info.data.get("loop_first_clip") else len(clips) - 1 if isinstance(clips, list) else None
        if joins is not None and len(value) > joins:
            raise Expected(f"at most {joins} entries, one per join")
        return value


class JoinClipsOrchestratorParams(PayloadModel):
    """`params` of a join_clips_orchestrator task (the top-level copies of the details are kept unread)."""

    orchestrator_details: JoinClipsDetails
    parent_generation_id: str | None = None

    # composeTaskFamilyPayload spreads the details at the top level too; orchestrator_details is what is read.
    NOT_USED: ClassVar[Mapping[str, str]] = MappingProxyType(
        {
            **dict.fromkeys(
                (*JoinClipsDetails.model_fields, *JoinClipsDetails.NOT_USED),
                "a top-level copy of orchestrator_details, which is what is read",
            ),
            **REIGH_ENVELOPE,
            "tool_type": "the app's tool name",
        }
    )


class Portion(PayloadModel):
    """One entry of `portions_to_regenerate`: frames [start_frame, end_frame) are regenerated. Reigh's app sends
    frame_count = end_frame - start_frame, so end_frame is exclusive (upstream's worker read it as inclusive)."""

    start_frame: FrameIndex
    end_frame: FrameIndex
    frame_count: Integer | None = None
    gap_frame_count: GapFrames | None = None  # frames generated in its place (default: the portion's length)
    prompt: str | None = None
    name: str | None = None
    start_time: Number | None = None
    end_time: Number | None = None
    start_time_seconds: Number | None = None
    end_time_seconds: Number | None = None

    NOT_USED: ClassVar[Mapping[str, str]] = MappingProxyType(
        {
            **dict.fromkeys(
                ("frame_count", "start_time", "end_time", "start_time_seconds", "end_time_seconds"),
                "the same range as start_frame / end_frame, which is what is read",
            ),
            "name": "the app's label for the portion",
        }
    )

    @field_validator("end_frame")
    @classmethod
    def _after_start(cls, value: int, info: ValidationInfo) -> int:
        start = info.data.get("start_frame")
        if isinstance(start, int) and value <= start:
            raise Expected(f"more than start_frame ({start}): the portion is frames [start_frame, end_frame)")
        return value


class EditVideoDetails(JoinRunSettings):
    """`orchestrator_details` of an edit_video_orchestrator task."""

    NOT_USED: ClassVar[Mapping[str, str]] = MappingProxyType(
        {
            **JoinRunSettings.NOT_USED,
            **_APP_BOOKKEEPING,
            "replace_mode": "a regenerated portion always replaces its frames",
            "source_video_fps": "the source video's own frame rate is used",
            "source_video_total_frames": "the source video's frames are counted",
        }
    )

    source_video_url: Location
    source_video_fps: Number | None = None
    source_video_total_frames: Integer | None = None
    source_video_duration: Number | None = None
    portions_to_regenerate: Annotated[list[Portion], Field(min_length=1, max_length=limits.MAX_SEGMENTS)]
    gap_frame_count: GapFrames | None = None
    replace_mode: bool = True
    per_join_settings: Annotated[list[JoinOverrides], Field(max_length=MAX_CLIPS)] = Field(default_factory=list)

    @field_validator("per_join_settings")
    @classmethod
    def _one_per_portion(cls, value: list[JoinOverrides], info: ValidationInfo) -> list[JoinOverrides]:
        portions = info.data.get("portions_to_regenerate")
        if isinstance(portions, list) and len(value) > len(portions):
            raise Expected(f"at most {len(portions)} entries, one per portion")
        return value


class EditVideoOrchestratorParams(PayloadModel):
    """`params` of an edit_video_orchestrator task."""

    orchestrator_details: EditVideoDetails

    NOT_USED: ClassVar[Mapping[str, str]] = MappingProxyType(
        {key: _APP_BOOKKEEPING[key] for key in ("parent_generation_id", "tool_type", "based_on")}
    )


# ---------------------------------------------------------------------------------------------------------------------
# Child payloads, written by our orchestrators.


class ClipSpan(PayloadModel):
    """Frames [start, stop) of the video at `url` (counted on the video played backwards when `reverse`)."""

    url: Location
    start: FrameIndex
    stop: FrameIndex
    reverse: bool = False

    @field_validator("stop")
    @classmethod
    def _after_start(cls, value: int, info: ValidationInfo) -> int:
        start = info.data.get("start")
        if isinstance(start, int) and value <= start:
            raise Expected(f"more than start ({start})")
        return value

    @property
    def frames(self) -> int:
        return self.stop - self.start


class BridgeTaskParams(PayloadModel):
    """`params` of a join_clips_segment task: one bridge of (context_before | gap_frames generated | context_after)."""

    orchestrator_task_id_ref: str | None = None
    orchestrator_run_id: str | None = None
    project_id: str | None = None
    join_index: Annotated[Integer, within(limits.SEGMENT_INDEX)] = 0
    context_before: ClipSpan | None = None  # None: no context (context_frame_count 0)
    context_after: ClipSpan | None = None
    gap_frames: GapFrames
    keep_bridging_images: bool = False
    model_name: str
    resolution: Resolution
    fps: FramesPerSecond = 16
    prompt: str = ""
    negative_prompt: str = ""
    seed: Seed
    generation: GenerationSpec = Field(default_factory=GenerationSpec)

    @field_validator("gap_frames")
    @classmethod
    def _four_n_plus_one(cls, value: int, info: ValidationInfo) -> int:
        context = sum(span.frames for span in (info.data.get("context_before"), info.data.get("context_after")) if span)
        if (context + value - 1) % 4:
            raise Expected(f"a count that makes the bridge 4n+1 frames long with its {context} context frames")
        return value

    @property
    def frames(self) -> int:
        before = self.context_before.frames if self.context_before else 0
        after = self.context_after.frames if self.context_after else 0
        return before + self.gap_frames + after


class BridgeSeam(PayloadModel):
    """How bridge j meets its clips: its length, and the frames it shares with the clip before and after it."""

    frames: GapFrames
    context_before: Overlap
    context_after: Overlap


class JoinFinalParams(PayloadModel):
    """`params` of a join_final_stitch task: the kept clip spans, the seams of the bridges between them, and the
    contracted length of the result (asserted before and after writing it)."""

    orchestrator_task_id_ref: str
    orchestrator_run_id: str
    project_id: str | None = None
    clips: Annotated[list[ClipSpan], Field(min_length=2, max_length=MAX_CLIPS)]
    bridges: Annotated[list[BridgeSeam], Field(min_length=1, max_length=limits.MAX_SEGMENTS)]
    expected_final_frames: Annotated[Integer, within(limits.STITCHED_FRAMES)]
    resolution: Resolution  # of the output video
    fps: FramesPerSecond

    @field_validator("bridges")
    @classmethod
    def _one_per_seam(cls, value: list[BridgeSeam], info: ValidationInfo) -> list[BridgeSeam]:
        clips = info.data.get("clips")
        if isinstance(clips, list) and len(value) != len(clips) - 1:
            raise Expected(f"{len(clips) - 1} bridges, one between each two clips")
        return value


class InpaintFramesParams(GenerationTaskParams):
    """`params` of an inpaint_frames task (upstream's fields): frames [inpaint_start_frame, inpaint_end_frame) of
    `video_path` are regenerated, `context_frame_count` kept frames on each side guide them."""

    NOT_USED: ClassVar[Mapping[str, str]] = MappingProxyType(
        {**GenerationTaskParams.NOT_USED, "fps": "the output keeps the source video's frame rate"}
    )

    video_path: Location
    inpaint_start_frame: FrameIndex
    inpaint_end_frame: FrameIndex
    context_frame_count: Overlap = 8
    resolution: ResolutionOrPair | None = None  # generation size (default: the video's), multiples of 16
    fps: FramesPerSecond | None = None

    @field_validator("inpaint_end_frame")
    @classmethod
    def _after_start(cls, value: int, info: ValidationInfo) -> int:
        start = info.data.get("inpaint_start_frame")
        if isinstance(start, int) and value <= start:
            raise Expected(f"more than inpaint_start_frame ({start}): frames [start, end) are regenerated")
        return value


def join_generation(
    details: WgpGenerationFields,
    override: WgpGenerationFields | None,
    model: ModelDefinition,
    *,
    root: str = "orchestrator_details",
    override_root: str = "",
) -> tuple[GenerationSpec, list[str]]:
    """What one bridge generates with: the run's details (plain keys, then their phase_config), then the join's
    per_join_settings entry on top, a level above as in every precedence here. The full plan is checked against the
    model now, so a bad combination fails the orchestrator, not the bridge. Returns the spec the bridge row carries
    (each value with the field it came from) and the plan's warnings. Raises PayloadError naming the field."""
    levels = PayloadLevels(orchestrator=details, orchestrator_root=root, segment=override, segment_root=override_root)  # type: ignore[arg-type]
    spec, _, plan = checked_generation(levels, model)
    return spec, list(plan.warnings)
