"""ffmpeg and frame work: probe, decode, encode, cross-fade stitch, VACE guide/mask videos, colour adjustment.

Knows nothing about tasks or the queue, and imports neither torch nor the engine.
"""

from source.media.colour import adjust_colour
from source.media.guide import GuideVideos, adjust_carried_frames, build_vace_guide
from source.media.images import image_to_frame, load_image, resize_frames
from source.media.stitch import StitchResult, crossfade, stitch_videos
from source.media.video import (
    MediaError,
    VideoInfo,
    VideoWriter,
    ffmpeg_exe,
    probe_video,
    read_frame,
    read_frames,
    write_frames,
    write_thumbnail,
)

__all__ = [
    "GuideVideos",
    "MediaError",
    "StitchResult",
    "VideoInfo",
    "VideoWriter",
    "adjust_carried_frames",
    "adjust_colour",
    "build_vace_guide",
    "crossfade",
    "ffmpeg_exe",
    "image_to_frame",
    "load_image",
    "probe_video",
    "read_frame",
    "read_frames",
    "resize_frames",
    "stitch_videos",
    "write_frames",
    "write_thumbnail",
]
