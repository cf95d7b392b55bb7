"""Colour adjustment of a finished video: the saturation and brightness Reigh asks for on every travel segment after
the first (`after_first_post_generation_saturation` / `_brightness`), in one ffmpeg pass.

Upstream's meaning: saturation S as ffmpeg's `eq=saturation=S` (chroma scaled by S: 1 keeps it, 0 is grey), then
brightness b as every RGB value times (1 + b), clipped (positive is brighter). Both are linear in YCbCr, so one
`lutyuv` does them exactly on the decoded yuv420p planes, with no RGB round trip:
    Y' = 16 + (Y - 16)(1 + b)        Cb', Cr' = 128 + (C - 128) S (1 + b)
(RGB x k is (Y - 16, Cb - 128, Cr - 128) x k in limited range, which is what every video we write uses.)
Why not `eq` itself: its `brightness` ADDS to luma (black would turn grey, not stay black), and its saturation moves
neutral chroma 128 to 127 in the ffmpeg we ship, a green cast of 2-3 levels on grey (measured; tests/media/test_colour.py).

The result is re-encoded like every video we write (libx264 yuv420p, CRF 10), same frames, size and frame rate.
"""

from __future__ import annotations

import math
import os
import shutil
import uuid
from pathlib import Path

import ffmpeg

from source.media.video import MediaError, VideoInfo, encode_stream, probe_video

# Saturation within eq's own range; brightness -1 would make every frame black, and doubling (b = 1) is already extreme.
SATURATION_RANGE = (0.0, 3.0)
BRIGHTNESS_RANGE = (-1.0, 1.0)  # the low end excluded
_STDERR_TAIL_CHARS = 800


def _checked(name: str, value: float, low: float, high: float, *, low_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name}: expected a finite number, got {value!r}")
    if value > high or value < low or (low_open and value == low):
        bracket = "(" if low_open else "["
        raise ValueError(f"{name}: expected a number in {bracket}{low:g}, {high:g}], got {value!r}")
    return float(value)


def adjust_colour(src: Path, dst: Path, *, saturation: float = 1.0, brightness: float = 0.0) -> VideoInfo:
    """Write `src` to `dst` with its saturation scaled by `saturation` and its RGB values by (1 + `brightness`).

    saturation 1 and brightness 0 change nothing: `dst` is then a plain copy of `src`. Raises ValueError naming the
    parameter when a value is NaN or out of range, MediaError when the video cannot be read or written (dst is then
    left untouched). Returns the probed `dst`, whose frame count and size are checked to equal `src`'s.
    """
    saturation = _checked("saturation", saturation, *SATURATION_RANGE)
    brightness = _checked("brightness", brightness, *BRIGHTNESS_RANGE, low_open=True)
    src, dst = Path(src), Path(dst)
    source_info = probe_video(src)
    dst.parent.mkdir(parents=True, exist_ok=True)
    partial = dst.with_name(f".{dst.name}.{uuid.uuid4().hex[:8]}.part")
    try:
        if saturation == 1.0 and brightness == 0.0:
            shutil.copyfile(src, partial)
        else:
            _run_filters(src, partial, saturation=saturation, brightness=brightness)
        info = probe_video(partial)
        if (info.frames, info.width, info.height) != (source_info.frames, source_info.width, source_info.height):
            raise MediaError(
                f"colour adjustment of {src} gave {info.frames} frames of {info.width}x{info.height}, expected "
                f"{source_info.frames} frames of {source_info.width}x{source_info.height}"
            )
        os.replace(partial, dst)
    finally:
        partial.unlink(missing_ok=True)
    return info


def _run_filters(src: Path, out: Path, *, saturation: float, brightness: float) -> None:
    luma_gain = 1.0 + brightness
    chroma_gain = saturation * luma_gain
    stream = ffmpeg.input(str(src)).video.filter(
        "lutyuv",
        y=f"round(16+(val-16)*{luma_gain!r})",
        u=f"round(128+(val-128)*{chroma_gain!r})",
        v=f"round(128+(val-128)*{chroma_gain!r})",
    )
    encode_stream(stream, out, crf=10, what=f"cannot adjust the colour of {src}")
