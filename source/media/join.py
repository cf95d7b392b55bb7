"""Frame spans of videos, and splicing spans into one video with cross-faded seams.

A join run keeps parts of its input videos (a clip without the frames a bridge replaces, the kept stretch of an
edited video) and puts generated bridges between them. Each part is a `FrameSpan`: frames [start, stop) of a file,
optionally of the file played backwards. Spans are read from the decoded frames, so nothing is cut and re-encoded
before the one final encode.

Frame contract of `splice_spans`: spans S_0..S_n with overlaps O_0..O_{n-1} (O_i frames at the end of S_i and at the
start of S_{i+1} show the same moments) give exactly  Σ len(S_i) − Σ O_i  frames:

    S_0[: -O_0], blend(S_0[-O_0:], S_1[:O_0]), S_1[O_0 : -O_1], blend(...), ..., S_n[O_{n-1}:]

A blend is `stitch.crossfade` without sharpening: its last frame is the next span's frame itself, so a span's frames
after its leading overlap reach the output unchanged (up to the encode).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from loguru import logger

from source.media.images import resize_frames
from source.media.stitch import crossfade
from source.media.video import MediaError, VideoInfo, VideoWriter, read_frames


@dataclass(frozen=True)
class FrameSpan:
    """Frames [start, stop) of `path`; counted on the video played backwards when `reverse`."""

    path: Path
    start: int
    stop: int
    reverse: bool = False

    @property
    def frames(self) -> int:
        return self.stop - self.start


def read_span(span: FrameSpan) -> np.ndarray:
    """The span's frames as (stop - start, H, W, 3) uint8; MediaError when the video is shorter than the span."""
    if not 0 <= span.start < span.stop:
        raise MediaError(f"a span needs 0 <= start < stop; got [{span.start}, {span.stop}) of {span.path}")
    frames = read_frames(span.path)
    if span.stop > len(frames):
        raise MediaError(
            f"{span.path} has {len(frames)} frames; the span [{span.start}, {span.stop}) runs past its end"
        )
    if span.reverse:
        frames = frames[::-1]
    return frames[span.start : span.stop]


def splice_spans(
    spans: Sequence[FrameSpan],
    overlaps: Sequence[int],
    out_path: Path,
    *,
    width: int,
    height: int,
    fps: float,
    expected_frames: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> VideoInfo:
    """Write the spans in order into `out_path` (width x height, `fps`), cross-fading each overlap (see the module
    docstring). MediaError, before anything is written, when an overlap does not fit its spans or the total is not
    `expected_frames`."""
    if not spans:
        raise MediaError("splice needs at least one span; got none")
    if len(overlaps) != len(spans) - 1:
        raise MediaError(
            f"splice needs one overlap per seam: {len(spans)} spans need {len(spans) - 1}, got {len(overlaps)}"
        )
    for index, span in enumerate(spans):
        head = overlaps[index - 1] if index > 0 else 0
        tail = overlaps[index] if index < len(overlaps) else 0
        if min(head, tail) < 0 or head + tail > span.frames:
            raise MediaError(
                f"span {index} ({span.frames} frames of {span.path}) cannot share {head} frames with the span before "
                f"and {tail} with the span after"
            )
    total = sum(span.frames for span in spans) - sum(overlaps)
    if expected_frames is not None and total != expected_frames:
        raise MediaError(
            f"splicing {'+'.join(str(span.frames) for span in spans)} frames with overlaps {list(overlaps)} gives "
            f"{total} frames, but {expected_frames} were expected"
        )
    logger.info(f"splice: {len(spans)} spans, overlaps {list(overlaps)}, {total} frames {width}x{height} -> {out_path}")
    with VideoWriter(out_path, width=width, height=height, fps=fps) as writer:
        carried: np.ndarray | None = None  # the previous span's trailing overlap, waiting for the next span's head
        for index, span in enumerate(spans):
            frames = resize_frames(read_span(span), (width, height))
            head = overlaps[index - 1] if index > 0 else 0
            tail = overlaps[index] if index < len(overlaps) else 0
            if head:
                assert carried is not None
                # No sharpening: kept frames are meant to stay as they were.
                writer.write(crossfade(carried, frames[:head], sharp_amount=0.0))
            writer.write(frames[head : len(frames) - tail])
            carried = frames[len(frames) - tail :] if tail else None
            if progress is not None:
                progress(index + 1, len(spans))
        info = writer.close()
    if info.frames != total:
        raise MediaError(f"spliced video {out_path} has {info.frames} frames; expected {total}")
    return info
