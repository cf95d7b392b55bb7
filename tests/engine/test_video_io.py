"""mp4 writing and reading with imageio-ffmpeg's bundled ffmpeg."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from engine_helpers import ffprobe

from Wan2GP.video_io import VideoReadError, pixels_to_uint8, read_video, write_mp4


def test_write_then_read_keeps_count_size_and_content(tmp_path: Path) -> None:
    ys, xs = np.mgrid[0:32, 0:48]
    frames = np.stack([np.stack([xs * 5 + i * 10, ys * 7, np.full_like(xs, 128)], -1) for i in range(7)])
    frames = frames.clip(0, 255).astype(np.uint8)
    path = write_mp4(frames, tmp_path / "clip.mp4", fps=16)
    stream = ffprobe(path)
    assert (stream["codec_name"], stream["pix_fmt"]) == ("h264", "yuv420p")
    assert (stream["width"], stream["height"], int(stream["nb_read_frames"])) == (48, 32, 7)
    decoded = read_video(path)
    assert decoded.frames.shape == frames.shape and decoded.fps == 16
    # CRF 10 on smooth content: close to the input (yuv420p chroma subsampling aside)
    assert np.abs(decoded.frames.astype(int) - frames.astype(int)).mean() < 3


def test_pixels_to_uint8_rounds_and_clamps() -> None:
    pixels = torch.tensor([-2.0, -1.0, 0.0, 0.003, 1.0, 3.0]).view(1, 1, 1, 6).repeat(3, 1, 1, 1)
    out = pixels_to_uint8(pixels)
    assert out.shape == (1, 1, 6, 3)
    # (x + 1) * 127.5 rounded: 0 -> 127.5 -> 128 (round half to even gives 128), 0.003 -> 127.88 -> 128
    assert out[0, 0, :, 0].tolist() == [0, 0, 128, 128, 255, 255]


def test_bad_frames_and_bad_files_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="even"):
        write_mp4(np.zeros((2, 31, 32, 3), np.uint8), tmp_path / "odd.mp4", fps=16)
    with pytest.raises(ValueError, match="uint8"):
        write_mp4(np.zeros((2, 32, 32, 3), np.float32), tmp_path / "float.mp4", fps=16)
    with pytest.raises(VideoReadError):
        read_video(tmp_path / "missing.mp4")
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"not a video at all")
    with pytest.raises(VideoReadError):
        read_video(garbage)
