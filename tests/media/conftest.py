"""Fixtures for the media tests: small real mp4 files and PNG keyframes written with the bundled ffmpeg."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from source.media.video import write_frames

ClipFactory = Callable[..., Path]


@pytest.fixture
def make_clip(tmp_path: Path) -> ClipFactory:
    """Write an mp4 of solid-colour frames: one colour for all frames, or one colour per frame."""
    counter = iter(range(1_000_000))

    def make(
        frames: int,
        color: Sequence[int] | Sequence[Sequence[int]],
        *,
        width: int = 64,
        height: int = 48,
        fps: float = 16.0,
        name: str | None = None,
    ) -> Path:
        colors = np.asarray(color, dtype=np.uint8)
        if colors.ndim == 1:
            colors = np.repeat(colors[np.newaxis], frames, axis=0)
        assert colors.shape == (frames, 3)
        pixels = np.broadcast_to(colors[:, np.newaxis, np.newaxis, :], (frames, height, width, 3)).copy()
        path = tmp_path / (name or f"clip_{next(counter)}.mp4")
        write_frames(pixels, path, fps=fps)
        return path

    return make


@pytest.fixture
def make_image(tmp_path: Path) -> Callable[[str, int, int], Path]:
    """Write a PNG with a horizontal/vertical gradient (so resizing and exactness are visible)."""

    def make(name: str, width: int, height: int) -> Path:
        xs = np.linspace(0, 255, width, dtype=np.float32)[np.newaxis, :]
        ys = np.linspace(0, 255, height, dtype=np.float32)[:, np.newaxis]
        pixels = np.stack(
            [np.broadcast_to(xs, (height, width)), np.broadcast_to(ys, (height, width)), np.full((height, width), 90)],
            axis=-1,
        ).astype(np.uint8)
        path = tmp_path / name
        Image.fromarray(pixels).save(path)
        return path

    return make


def _ffprobe_stream(path: Path) -> dict[str, str]:
    ffprobe = shutil.which("ffprobe")
    assert ffprobe is not None, "ffprobe is required for the media tests (apt-get install -y ffmpeg)"
    output = subprocess.run(
        [
            ffprobe,
            "-v",
            "error",
            "-select_streams",
            "v:0",
            "-count_frames",
            "-show_entries",
            "stream=nb_read_frames,width,height,codec_name,pix_fmt,r_frame_rate",
            "-of",
            "json",
            str(path),
        ],
        capture_output=True,
        check=True,
    ).stdout
    return {key: str(value) for key, value in json.loads(output)["streams"][0].items()}


@pytest.fixture
def ffprobe_stream() -> Callable[[Path], dict[str, str]]:
    """Independent check with Debian's ffprobe (CI installs it): counted frames, size, codec, pix_fmt, rate."""
    return _ffprobe_stream
