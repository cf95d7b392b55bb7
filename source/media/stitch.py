"""Join segment videos into one, cross-fading where consecutive segments overlap.

Frame contract: with K videos of lengths L_0..L_{K-1} and overlaps O_0..O_{K-2} (O_i frames at the end of video i show
the same moments as the first O_i frames of video i+1), the output has exactly  sum(L) - sum(O)  frames:

    body_0, blend_0, body_1, blend_1, ..., body_{K-1}
    body_i  = video_i[O_{i-1} : L_i - O_i]          (O_{-1} = O_{K-1} = 0)
    blend_i = crossfade(video_i[-O_i:], video_{i+1}[:O_i])

When every overlap is 0 the videos are joined by ffmpeg's concat filter; no frame passes through Python.
"""

from __future__ import annotations

import math
import shutil
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import ffmpeg
import numpy as np
from loguru import logger

from source.media.images import resize_frames
from source.media.video import (
    MediaError,
    VideoInfo,
    VideoWriter,
    encode_stream,
    ffmpeg_rate,
    probe_video,
    read_frames,
)

# The unsharp mask of the blend uses a Gaussian of sigma 3 (as the upstream stitch did) truncated at 4 sigma, which is
# the 25-tap kernel OpenCV derives for float images from sigma 3.
_BLUR_SIGMA = 3.0
_BLUR_RADIUS = math.ceil(4 * _BLUR_SIGMA)


@dataclass(frozen=True)
class StitchResult:
    path: Path
    frames: int
    width: int
    height: int
    fps: float


def _gaussian_kernel(sigma: float, radius: int) -> np.ndarray:
    offsets = np.arange(-radius, radius + 1, dtype=np.float64)
    weights = np.exp(-(offsets**2) / (2.0 * sigma * sigma))
    return (weights / weights.sum()).astype(np.float32)


def _blur_axis(images: np.ndarray, kernel: np.ndarray, axis: int) -> np.ndarray:
    radius = len(kernel) // 2
    pad = [(0, 0)] * images.ndim
    pad[axis] = (radius, radius)
    # numpy's "reflect" mirrors without repeating the edge pixel (OpenCV's default BORDER_REFLECT_101).
    padded = np.pad(images, pad, mode="reflect")
    length = images.shape[axis]
    blurred = np.zeros_like(images)
    for offset, weight in enumerate(kernel):
        window = [slice(None)] * images.ndim
        window[axis] = slice(offset, offset + length)
        blurred += weight * padded[tuple(window)]
    return blurred


def gaussian_blur(images: np.ndarray, sigma: float = _BLUR_SIGMA) -> np.ndarray:
    """Separable Gaussian blur of float32 (N, H, W, C) images over H and W, mirrored borders."""
    kernel = _gaussian_kernel(sigma, math.ceil(4 * sigma))
    return _blur_axis(_blur_axis(images, kernel, axis=1), kernel, axis=2)


def crossfade(prev_tail: np.ndarray, next_head: np.ndarray, *, sharp_amount: float) -> np.ndarray:
    """Blend the overlapping frames of two segments, then sharpen more as the blend moves towards the new segment.

    For overlap frame k of n = min(len(prev_tail), len(next_head)):
        t = (k + 1) / n,  alpha = (1 - cos(pi * t)) / 2          (cosine ease; the last frame is all `next_head`)
        base = (1 - alpha) * A + alpha * B
        out  = base * (1 + s * alpha) - GaussianBlur(base, sigma=3) * (s * alpha)     (unsharp mask, s = sharp_amount)
    clipped to 0..255. `prev_tail` is resized to `next_head`'s size if they differ. Returns (n, H, W, 3) uint8.
    """
    if prev_tail.ndim != 4 or next_head.ndim != 4:
        raise MediaError(f"crossfade needs (N, H, W, 3) frame arrays; got {prev_tail.shape} and {next_head.shape}")
    if sharp_amount < 0:
        raise MediaError(f"sharp_amount must be >= 0; got {sharp_amount}")
    count = min(len(prev_tail), len(next_head))
    if count == 0:
        return np.empty((0, *next_head.shape[1:]), dtype=np.uint8)
    height, width = next_head.shape[1:3]
    prev_tail = resize_frames(prev_tail[:count], (width, height))
    first = prev_tail.astype(np.float32)
    second = next_head[:count].astype(np.float32)
    steps = (np.arange(count, dtype=np.float64) + 1.0) / count
    alpha = ((1.0 - np.cos(np.pi * steps)) / 2.0).astype(np.float32).reshape(count, 1, 1, 1)
    base = (1.0 - alpha) * first + alpha * second
    if sharp_amount > 0:
        strength = np.float32(sharp_amount) * alpha
        base = base * (1.0 + strength) - gaussian_blur(base) * strength
    return np.clip(np.rint(base), 0, 255).astype(np.uint8)


def _blend_join(
    prev_tail: np.ndarray, next_head: np.ndarray, *, sharp_amount: float, regenerate_anchors: bool
) -> np.ndarray:
    """The O output frames that replace both segments' overlap."""
    overlap = len(next_head)
    if regenerate_anchors:
        # The last overlap frame of the next segment is its regenerated anchor: keep it exact (unsharpened, even when it
        # is the only overlap frame), blend the rest.
        blended = crossfade(prev_tail[: overlap - 1], next_head[: overlap - 1], sharp_amount=sharp_amount)
        return np.concatenate([blended, next_head[overlap - 1 :]])
    return crossfade(prev_tail, next_head, sharp_amount=sharp_amount)


def _check_plan(videos: Sequence[Path], overlaps: Sequence[int], infos: Sequence[VideoInfo]) -> None:
    for index, overlap in enumerate(overlaps):
        if overlap < 0:
            raise MediaError(f"overlaps[{index}] must be >= 0; got {overlap}")
    for index, info in enumerate(infos):
        head = overlaps[index - 1] if index > 0 else 0
        tail = overlaps[index] if index < len(overlaps) else 0
        if head + tail > info.frames:
            raise MediaError(
                f"video {index} ({videos[index]}) has {info.frames} frames, fewer than the {head} + {tail} "
                f"frames it must share with its neighbours"
            )


def _concat_videos(videos: Sequence[Path], out_path: Path, *, width: int, height: int, fps: float, crf: int) -> None:
    """Join whole videos with ffmpeg's concat filter, each scaled to width x height, re-timed to `fps`."""
    scaled = [
        ffmpeg.input(str(video)).video.filter("scale", width, height, flags="lanczos").filter("setsar", 1)
        for video in videos
    ]
    # Re-number timestamps after the join: inputs with other frame rates keep every frame, none dropped or doubled.
    joined = ffmpeg.concat(*scaled, v=1, a=0).filter("setpts", f"N/({ffmpeg_rate(fps)})/TB")
    partial = out_path.with_name(f".{out_path.name}.{uuid.uuid4().hex[:8]}.part")
    try:
        encode_stream(joined, partial, crf=crf, what=f"ffmpeg concat of {len(videos)} videos into {out_path} failed")
        partial.replace(out_path)
    finally:
        partial.unlink(missing_ok=True)


def stitch_videos(
    videos: Sequence[Path],
    overlaps: Sequence[int],
    out_path: Path,
    *,
    fps: float,
    sharp_amount: float = 0.3,
    regenerate_anchors: bool = False,
    expected_frames: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    crf: int = 18,
) -> StitchResult:
    """Join `videos` in order into `out_path` (size of the first video, `fps`), cross-fading each overlap.

    `overlaps[i]` is the number of frames video i and video i+1 share. The output has sum(frames) - sum(overlaps)
    frames; if `expected_frames` is given and differs, MediaError names both numbers before anything is encoded.
    `regenerate_anchors=True` blends only the first O-1 frames of each overlap and keeps the next segment's frame O-1
    unblended. `progress(done, total)` is called after each video is consumed.
    """
    videos = [Path(video) for video in videos]
    out_path = Path(out_path)
    if not videos:
        raise MediaError("stitch needs at least one video; got none")
    if len(overlaps) != len(videos) - 1:
        raise MediaError(
            f"stitch needs one overlap per join: {len(videos)} videos need {len(videos) - 1} overlaps, "
            f"got {len(overlaps)}"
        )
    if fps <= 0:
        raise MediaError(f"fps must be positive; got {fps}")
    if sharp_amount < 0:
        raise MediaError(f"sharp_amount must be >= 0; got {sharp_amount}")
    overlaps = [int(overlap) for overlap in overlaps]

    infos = [probe_video(video) for video in videos]
    _check_plan(videos, overlaps, infos)
    total_frames = sum(info.frames for info in infos) - sum(overlaps)
    if expected_frames is not None and expected_frames != total_frames:
        raise MediaError(
            f"stitching {len(videos)} videos ({'+'.join(str(info.frames) for info in infos)} frames, overlaps "
            f"{overlaps}) gives {total_frames} frames, but {expected_frames} were expected"
        )
    width, height = infos[0].width, infos[0].height
    for index, info in enumerate(infos[1:], start=1):
        if (info.width, info.height) != (width, height):
            logger.warning(
                f"stitch: video {index} is {info.width}x{info.height}; resizing it to the first video's {width}x{height}"
            )
    out_path.parent.mkdir(parents=True, exist_ok=True)
    logger.info(
        f"stitch: {len(videos)} videos, overlaps {overlaps}, {total_frames} frames {width}x{height} @ {fps} fps "
        f"-> {out_path}"
    )

    if all(overlap == 0 for overlap in overlaps):
        first = infos[0]
        if len(videos) == 1 and math.isclose(first.fps, fps) and (first.codec, first.pix_fmt) == ("h264", "yuv420p"):
            shutil.copyfile(videos[0], out_path)
        else:
            _concat_videos(videos, out_path, width=width, height=height, fps=fps, crf=crf)
        result_info = probe_video(out_path)
        if progress is not None:
            progress(len(videos), len(videos))
    else:
        with VideoWriter(out_path, width=width, height=height, fps=fps, crf=crf) as writer:
            carried_tail: np.ndarray | None = None
            for index, (video, info) in enumerate(zip(videos, infos, strict=True)):
                frames = read_frames(video)
                if len(frames) != info.frames:
                    raise MediaError(f"{video} decoded to {len(frames)} frames but was probed as {info.frames}")
                frames = resize_frames(frames, (width, height))
                head = overlaps[index - 1] if index > 0 else 0
                tail = overlaps[index] if index < len(overlaps) else 0
                if head > 0:
                    assert carried_tail is not None
                    writer.write(
                        _blend_join(
                            carried_tail,
                            frames[:head],
                            sharp_amount=sharp_amount,
                            regenerate_anchors=regenerate_anchors,
                        )
                    )
                writer.write(frames[head : len(frames) - tail])
                carried_tail = frames[len(frames) - tail :] if tail > 0 else None
                if progress is not None:
                    progress(index + 1, len(videos))
            result_info = writer.close()

    if result_info.frames != total_frames:
        raise MediaError(f"stitched video {out_path} has {result_info.frames} frames; expected {total_frames}")
    logger.info(f"stitch: wrote {result_info.frames} frames to {out_path}")
    return StitchResult(
        path=out_path, frames=result_info.frames, width=result_info.width, height=result_info.height, fps=float(fps)
    )
