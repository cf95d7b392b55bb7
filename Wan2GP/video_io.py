"""Video files in and out, through the ffmpeg binary that imageio-ffmpeg ships (never the system ffmpeg).

Output matches upstream's default codec ``libx264_8``: H.264, yuv420p, CRF 10, no audio, exact frame count and size.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import torch

OUTPUT_CRF = 10


class VideoReadError(ValueError):
    """A guide or mask video that cannot be decoded."""


@dataclass(frozen=True)
class DecodedVideo:
    frames: np.ndarray  # (F, H, W, 3) uint8 RGB
    fps: float

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def width(self) -> int:
        return int(self.frames.shape[2])

    @property
    def height(self) -> int:
        return int(self.frames.shape[1])


def pixels_to_uint8(video: torch.Tensor) -> np.ndarray:
    """(C, F, H, W) float in [-1, 1] -> (F, H, W, C) uint8, by rounding as upstream does (not truncation)."""
    scaled = (video.float().clamp(-1.0, 1.0) + 1.0) * 127.5
    return scaled.round().to(torch.uint8).permute(1, 2, 3, 0).contiguous().cpu().numpy()


def write_mp4(frames: np.ndarray, path: Path, fps: int) -> Path:
    """Write (F, H, W, 3) uint8 RGB frames to an H.264 yuv420p CRF-10 mp4 with exactly F frames of W x H."""
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames: expected a (F, H, W, 3) uint8 array, got {frames.dtype} {tuple(frames.shape)}")
    num_frames, height, width, _ = frames.shape
    if num_frames < 1:
        raise ValueError("frames: expected at least one frame, got 0")
    if width % 2 or height % 2:
        # yuv420p halves the chroma planes; an odd size would make ffmpeg pad or fail.
        raise ValueError(f"frames: width and height must be even for yuv420p, got {width}x{height}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = imageio_ffmpeg.write_frames(
        str(path),
        (width, height),
        pix_fmt_in="rgb24",
        pix_fmt_out="yuv420p",
        fps=fps,
        codec="libx264",
        quality=None,  # CRF given explicitly below instead of imageio's 0-10 quality scale
        output_params=["-crf", str(OUTPUT_CRF)],
        macro_block_size=1,
        ffmpeg_log_level="error",
    )
    writer.send(None)  # start the generator (it launches ffmpeg)
    try:
        for frame in frames:
            writer.send(np.ascontiguousarray(frame))
    finally:
        writer.close()
    return path


def read_video(path: Path) -> DecodedVideo:
    """Decode every frame of a video file as RGB uint8."""
    path = Path(path)
    if not path.is_file():
        raise VideoReadError(f"{path}: file not found")
    try:
        reader = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24")
        meta = reader.__next__()
        width, height = meta["size"]
        fps = float(meta.get("fps") or 0.0)
        frames = [np.frombuffer(raw, dtype=np.uint8).reshape(height, width, 3) for raw in reader]
    except (OSError, RuntimeError, StopIteration) as error:
        raise VideoReadError(f"{path}: cannot decode video ({error})") from error
    if not frames:
        raise VideoReadError(f"{path}: video has no frames")
    return DecodedVideo(frames=np.stack(frames), fps=fps)
