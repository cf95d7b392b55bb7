"""Video files in and out: probe, decode to RGB frames, encode RGB frames, first-frame thumbnails.

Everything runs the ffmpeg binary that imageio-ffmpeg ships, so the result does not depend on which ffmpeg a pod
happens to have on PATH. ffprobe is used only for probing, when it exists, because `-count_frames` is the most direct
way to get an exact decoded frame count.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from types import TracebackType
from typing import IO

import ffmpeg
import imageio_ffmpeg
import numpy as np
from loguru import logger

# How much of ffmpeg's stderr an error message quotes: enough for the reason, not a wall of text.
_STDERR_TAIL_CHARS = 800


class MediaError(RuntimeError):
    """A video or image could not be read, written or combined; the message names the file and the reason."""


@dataclass(frozen=True)
class VideoInfo:
    frames: int
    width: int
    height: int
    fps: float
    codec: str
    pix_fmt: str


def ffmpeg_exe() -> str:
    """Path of the ffmpeg binary bundled with imageio-ffmpeg."""
    return imageio_ffmpeg.get_ffmpeg_exe()


def _tail(text: str | bytes) -> str:
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    text = text.strip()
    return text[-_STDERR_TAIL_CHARS:]


# How every video we deliver is encoded (the CRF is the caller's): what players expect, streamable from the start.
DELIVERY_ENCODING = {
    "format": "mp4",
    "vcodec": "libx264",
    "pix_fmt": "yuv420p",
    "preset": "medium",
    "movflags": "+faststart",
}


def encode_stream(stream: ffmpeg.nodes.FilterableStream, out: Path, *, crf: int, what: str) -> None:
    """Run an ffmpeg-python filter graph into `out` as every video we deliver is encoded (libx264 yuv420p at `crf`,
    faststart, one frame out per frame in). A failure is a MediaError: `what`, then the tail of ffmpeg's stderr."""
    command = (
        stream.output(
            str(out),
            **DELIVERY_ENCODING,
            crf=crf,
            fps_mode="passthrough",  # frame counts are part of every contract: no frame dropped or doubled
        )
        .global_args("-loglevel", "error")
        .overwrite_output()
    )
    try:
        command.run(cmd=ffmpeg_exe(), capture_stdout=True, capture_stderr=True)
    except ffmpeg.Error as error:
        raise MediaError(f"{what}: {_tail(error.stderr or b'') or 'ffmpeg failed'}") from None


def _parse_rate(rate: str | None) -> float:
    """'16/1' or '24000/1001' -> float; '0/0' or missing -> 0.0."""
    if not rate:
        return 0.0
    try:
        value = Fraction(rate)
    except (ValueError, ZeroDivisionError):
        return 0.0
    return float(value)


def ffmpeg_rate(fps: float) -> str:
    """An exact rational for ffmpeg, so 23.976 stays 24000/1001 instead of drifting."""
    rate = Fraction(fps).limit_denominator(1001)
    return f"{rate.numerator}/{rate.denominator}"


def _require_file(path: Path) -> None:
    if not path.is_file():
        raise MediaError(f"video not found: {path}")


def _probe_with_ffprobe(path: Path, ffprobe: str) -> VideoInfo:
    command = [
        ffprobe,
        "-v",
        "error",
        "-select_streams",
        "v:0",
        "-count_frames",
        "-show_entries",
        "stream=codec_name,pix_fmt,width,height,r_frame_rate,avg_frame_rate,nb_read_frames",
        "-of",
        "json",
        str(path),
    ]
    completed = subprocess.run(command, capture_output=True, check=False)
    if completed.returncode != 0:
        raise MediaError(f"cannot read video {path}: {_tail(completed.stderr) or 'ffprobe failed'}")
    try:
        streams = json.loads(completed.stdout)["streams"]
    except (ValueError, KeyError) as error:
        raise MediaError(f"cannot read video {path}: unexpected ffprobe output ({error})") from None
    if not streams:
        raise MediaError(f"cannot read video {path}: it has no video stream")
    stream = streams[0]
    frames_text = stream.get("nb_read_frames")
    if frames_text is None or not str(frames_text).isdigit():
        raise MediaError(f"cannot read video {path}: ffprobe could not count its frames")
    fps = _parse_rate(stream.get("r_frame_rate")) or _parse_rate(stream.get("avg_frame_rate"))
    return VideoInfo(
        frames=int(frames_text),
        width=int(stream["width"]),
        height=int(stream["height"]),
        fps=fps,
        codec=str(stream.get("codec_name", "")),
        pix_fmt=str(stream.get("pix_fmt", "")),
    )


def _probe_with_bundled_ffmpeg(path: Path) -> VideoInfo:
    reader = imageio_ffmpeg.read_frames(str(path))
    try:
        meta = next(reader)
        frames, _seconds = imageio_ffmpeg.count_frames_and_secs(str(path))
    except (OSError, RuntimeError, StopIteration) as error:
        raise MediaError(f"cannot read video {path}: {_tail(str(error))}") from None
    finally:
        reader.close()
    width, height = meta["size"]
    # imageio reports e.g. "yuv420p(progressive)"; keep the bare format name like ffprobe does.
    pix_fmt = str(meta.get("pix_fmt", "")).split("(", 1)[0]
    return VideoInfo(
        frames=int(frames),
        width=int(width),
        height=int(height),
        fps=float(meta.get("fps", 0.0)),
        codec=str(meta.get("codec", "")),
        pix_fmt=pix_fmt,
    )


def probe_video(path: Path) -> VideoInfo:
    """Exact decoded frame count, size, frame rate, codec and pixel format of the first video stream."""
    path = Path(path)
    _require_file(path)
    ffprobe = shutil.which("ffprobe")
    if ffprobe is not None:
        return _probe_with_ffprobe(path, ffprobe)
    return _probe_with_bundled_ffmpeg(path)


def read_frames(path: Path) -> np.ndarray:
    """Decode every frame of the first video stream as an (N, H, W, 3) uint8 RGB array."""
    path = Path(path)
    _require_file(path)
    reader = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24")
    try:
        meta = next(reader)
        width, height = meta["size"]
        frames = [np.frombuffer(raw, dtype=np.uint8).reshape(height, width, 3) for raw in reader]
    except (OSError, RuntimeError, StopIteration) as error:
        raise MediaError(f"cannot decode video {path}: {_tail(str(error))}") from None
    finally:
        reader.close()
    if not frames:
        raise MediaError(f"cannot decode video {path}: it has no frames")
    return np.stack(frames)


def read_frame(path: Path, index: int) -> np.ndarray:
    """Decode frame `index` (0-based, counted like `read_frames`) as an (H, W, 3) uint8 RGB array.

    ffmpeg's `select` filter keeps only that frame, so the frames before it are decoded (inter-coded video needs them)
    but never converted to RGB or piped here, and ffmpeg stops right after it; `passthrough` keeps ffmpeg from
    duplicating or dropping frames, so `n` is the decoded frame number.
    """
    path = Path(path)
    _require_file(path)
    if index < 0:
        raise MediaError(f"frame index must be >= 0; got {index}")
    reader = imageio_ffmpeg.read_frames(
        str(path),
        pix_fmt="rgb24",
        output_params=["-vf", f"select=eq(n\\,{index})", "-fps_mode", "passthrough", "-frames:v", "1"],
    )
    try:
        meta = next(reader)
        width, height = meta["size"]
        raw = next(reader, None)
    except (OSError, RuntimeError, StopIteration) as error:
        raise MediaError(f"cannot decode video {path}: {_tail(str(error))}") from None
    finally:
        reader.close()
    if raw is None:
        raise MediaError(f"video {path} has no frame {index} (it is shorter)")
    return np.frombuffer(raw, dtype=np.uint8).reshape(height, width, 3).copy()


def _as_frame_batch(frames: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
    """One frame (H,W,3) or many (N,H,W,3) as a contiguous uint8 (N,H,W,3) array."""
    batch = np.asarray(frames)
    if batch.ndim == 3:
        batch = batch[np.newaxis]
    if batch.ndim != 4 or batch.shape[-1] != 3:
        raise MediaError(f"frames must have shape (N, H, W, 3) or (H, W, 3); got {batch.shape}")
    if batch.dtype != np.uint8:
        raise MediaError(f"frames must be uint8 RGB; got dtype {batch.dtype}")
    return np.ascontiguousarray(batch)


class VideoWriter:
    """Streams RGB frames into one ffmpeg process.

    The file appears at `path` only when `close()` succeeds (ffmpeg writes a hidden temporary beside it, renamed at the
    end), so a crash never leaves a truncated mp4 that a later step would mistake for a finished one.

    Default encoding is libx264 yuv420p at the given CRF (what players expect). `lossless_rgb=True` switches to
    libx264rgb at QP 0: bit-exact RGB, used for guide and mask videos whose grey/black/white values must survive.
    """

    def __init__(
        self,
        path: Path,
        *,
        width: int,
        height: int,
        fps: float,
        crf: int = 10,
        lossless_rgb: bool = False,
    ) -> None:
        if width <= 0 or height <= 0:
            raise MediaError(f"video size must be positive; got {width}x{height}")
        if fps <= 0:
            raise MediaError(f"fps must be positive; got {fps}")
        if not lossless_rgb and (width % 2 or height % 2):
            raise MediaError(f"yuv420p needs an even width and height; got {width}x{height} for {path}")
        if not 0 <= crf <= 51:
            raise MediaError(f"crf must be within 0..51; got {crf}")
        self.path = Path(path)
        self.width = width
        self.height = height
        self.frames_written = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._partial_path = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex[:8]}.part")
        source = ffmpeg.input(
            "pipe:", format="rawvideo", pix_fmt="rgb24", s=f"{width}x{height}", framerate=ffmpeg_rate(fps)
        )
        if lossless_rgb:
            encoded = source.output(
                str(self._partial_path), format="mp4", vcodec="libx264rgb", pix_fmt="rgb24", qp=0, preset="veryfast"
            )
        else:
            encoded = source.output(str(self._partial_path), **DELIVERY_ENCODING, crf=crf)
        command = encoded.global_args("-loglevel", "error").overwrite_output().compile(cmd=ffmpeg_exe())
        # stderr goes to a file, not a pipe: a pipe nobody drains can fill up and stall ffmpeg while we write stdin.
        self._stderr: IO[bytes] = tempfile.TemporaryFile()
        self._process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=self._stderr)
        self._closed = False

    def write(self, frames: np.ndarray | Sequence[np.ndarray]) -> None:
        if self._closed:
            raise MediaError(f"writer for {self.path} is already closed")
        batch = _as_frame_batch(frames)
        if batch.shape[0] == 0:
            return
        if batch.shape[1:3] != (self.height, self.width):
            raise MediaError(
                f"frame size {batch.shape[2]}x{batch.shape[1]} does not match the video size "
                f"{self.width}x{self.height} of {self.path}"
            )
        assert self._process.stdin is not None
        try:
            self._process.stdin.write(batch.tobytes())
        except BrokenPipeError:
            self.abort()
            raise MediaError(f"ffmpeg stopped while writing {self.path}: {self._stderr_text()}") from None
        self.frames_written += batch.shape[0]

    def _stderr_text(self) -> str:
        self._stderr.seek(0)
        return _tail(self._stderr.read()) or "no message"

    def close(self) -> VideoInfo:
        """Finish the file, move it into place and return its probed info (frame count checked)."""
        if self._closed:
            raise MediaError(f"writer for {self.path} is already closed")
        self._closed = True
        assert self._process.stdin is not None
        try:
            self._process.stdin.close()
        except BrokenPipeError:
            pass
        return_code = self._process.wait()
        try:
            if return_code != 0:
                raise MediaError(f"ffmpeg failed writing {self.path} (exit {return_code}): {self._stderr_text()}")
            if self.frames_written == 0:
                raise MediaError(f"no frames were written to {self.path}")
            info = probe_video(self._partial_path)
            if info.frames != self.frames_written or (info.width, info.height) != (self.width, self.height):
                raise MediaError(
                    f"{self.path} would hold {info.frames} frames of {info.width}x{info.height} but "
                    f"{self.frames_written} frames of {self.width}x{self.height} were written"
                )
            os.replace(self._partial_path, self.path)
        finally:
            self._stderr.close()
            self._partial_path.unlink(missing_ok=True)
        return info

    def abort(self) -> None:
        """Stop ffmpeg and remove the partial file; the destination is left untouched."""
        if self._process.poll() is None:
            self._process.kill()
        self._process.wait()
        self._closed = True
        if not self._stderr.closed:
            self._stderr.close()
        self._partial_path.unlink(missing_ok=True)

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc_type is not None:
            self.abort()
        elif not self._closed:
            self.close()


def write_frames(
    frames: np.ndarray | Sequence[np.ndarray],
    path: Path,
    *,
    fps: float,
    crf: int = 10,
    lossless_rgb: bool = False,
) -> VideoInfo:
    """Encode RGB uint8 frames (N,H,W,3) to an mp4 with exactly N frames of that size.

    libx264 yuv420p at `crf` by default; `lossless_rgb=True` writes bit-exact libx264rgb (see VideoWriter).
    """
    batch = _as_frame_batch(frames)
    if batch.shape[0] == 0:
        raise MediaError(f"no frames to write to {path}")
    _count, height, width, _channels = batch.shape
    with VideoWriter(path, width=width, height=height, fps=fps, crf=crf, lossless_rgb=lossless_rgb) as writer:
        writer.write(batch)
        info = writer.close()
    logger.debug(f"wrote {info.frames} frames {info.width}x{info.height} @ {fps} fps to {path}")
    return info


def write_thumbnail(video: Path, out: Path | None = None) -> Path:
    """Write the first frame of `video` as a JPEG (default: `<stem>_thumb.jpg` beside the video)."""
    video = Path(video)
    _require_file(video)
    target = Path(out) if out is not None else video.with_name(f"{video.stem}_thumb.jpg")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.part")
    command = (
        ffmpeg.input(str(video))
        .output(str(partial), vframes=1, format="image2", vcodec="mjpeg", **{"q:v": 2})
        .global_args("-loglevel", "error")
        .overwrite_output()
    )
    try:
        command.run(cmd=ffmpeg_exe(), capture_stdout=True, capture_stderr=True)
        if not partial.is_file() or partial.stat().st_size == 0:
            raise MediaError(f"cannot write a thumbnail of {video}: it has no decodable frame")
        os.replace(partial, target)
    except ffmpeg.Error as error:
        raise MediaError(f"cannot write a thumbnail of {video}: {_tail(error.stderr or b'')}") from None
    finally:
        partial.unlink(missing_ok=True)
    return target
