"""Encoding, decoding, probing and thumbnails with the real bundled ffmpeg, checked with Debian's ffprobe."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from source.media import (
    MediaError,
    VideoWriter,
    image_to_frame,
    load_image,
    probe_video,
    read_frames,
    write_frames,
    write_thumbnail,
)


def _gradient_frames(count: int, height: int, width: int) -> np.ndarray:
    """Smooth frames (lossy h264 keeps them close), each a little brighter than the last."""
    xs = np.linspace(0, 200, width, dtype=np.float32)[np.newaxis, :, np.newaxis]
    frames = [np.broadcast_to(xs + 5 * index, (height, width, 3)) for index in range(count)]
    return np.clip(np.stack(frames), 0, 255).astype(np.uint8)


def test_write_read_round_trip_keeps_frame_count_size_and_content(tmp_path: Path, ffprobe_stream) -> None:
    frames = _gradient_frames(17, 48, 80)
    path = tmp_path / "out" / "round.mp4"

    info = write_frames(frames, path, fps=16)

    assert (info.frames, info.width, info.height, info.fps) == (17, 80, 48, 16.0)
    assert (info.codec, info.pix_fmt) == ("h264", "yuv420p")
    probed = ffprobe_stream(path)
    assert probed["nb_read_frames"] == "17"
    assert (probed["width"], probed["height"], probed["r_frame_rate"]) == ("80", "48", "16/1")
    decoded = read_frames(path)
    assert decoded.shape == (17, 48, 80, 3) and decoded.dtype == np.uint8
    assert np.abs(decoded.astype(int) - frames.astype(int)).mean() < 3.0
    assert not [leftover for leftover in path.parent.iterdir() if leftover.name.endswith(".part")]


def test_write_accepts_a_list_of_frames_and_keeps_fractional_fps(tmp_path: Path, ffprobe_stream) -> None:
    frames = list(_gradient_frames(5, 32, 32))
    info = write_frames(frames, tmp_path / "ntsc.mp4", fps=24000 / 1001)
    assert info.frames == 5
    assert ffprobe_stream(tmp_path / "ntsc.mp4")["r_frame_rate"] == "24000/1001"


def test_lossless_rgb_is_bit_exact_even_at_odd_sizes(tmp_path: Path, ffprobe_stream) -> None:
    rng = np.random.default_rng(7)
    frames = rng.integers(0, 256, size=(6, 33, 47, 3), dtype=np.uint8)
    info = write_frames(frames, tmp_path / "exact.mp4", fps=16, lossless_rgb=True)
    assert (info.frames, info.width, info.height) == (6, 47, 33)
    assert ffprobe_stream(tmp_path / "exact.mp4")["pix_fmt"] == "gbrp"
    np.testing.assert_array_equal(read_frames(tmp_path / "exact.mp4"), frames)


def test_probe_without_ffprobe_on_path_counts_with_the_bundled_ffmpeg(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "count.mp4"
    write_frames(_gradient_frames(11, 48, 64), path, fps=16)
    with_ffprobe = probe_video(path)
    empty_bin = tmp_path / "empty-bin"
    empty_bin.mkdir()
    monkeypatch.setenv("PATH", str(empty_bin))

    without_ffprobe = probe_video(path)

    assert without_ffprobe.frames == with_ffprobe.frames == 11
    assert (without_ffprobe.width, without_ffprobe.height) == (64, 48)
    assert without_ffprobe.codec == "h264" and without_ffprobe.pix_fmt == "yuv420p"
    assert without_ffprobe.fps == pytest.approx(16.0)


def test_unreadable_and_missing_videos_raise_media_error_naming_the_file(tmp_path: Path) -> None:
    not_a_video = tmp_path / "notes.mp4"
    not_a_video.write_text("this is text, not a video")
    with pytest.raises(MediaError, match="notes.mp4"):
        probe_video(not_a_video)
    with pytest.raises(MediaError, match="notes.mp4"):
        read_frames(not_a_video)
    with pytest.raises(MediaError, match="missing.mp4"):
        probe_video(tmp_path / "missing.mp4")


def test_bad_frames_are_rejected_before_ffmpeg_runs(tmp_path: Path) -> None:
    with pytest.raises(MediaError, match="even width and height"):
        write_frames(np.zeros((3, 33, 48, 3), np.uint8), tmp_path / "odd.mp4", fps=16)
    with pytest.raises(MediaError, match="uint8"):
        write_frames(np.zeros((3, 32, 48, 3), np.float32), tmp_path / "float.mp4", fps=16)
    with pytest.raises(MediaError, match=r"\(N, H, W, 3\)"):
        write_frames(np.zeros((3, 32, 48), np.uint8), tmp_path / "gray.mp4", fps=16)
    assert list(tmp_path.iterdir()) == []


def test_writer_that_fails_midway_leaves_no_file_behind(tmp_path: Path) -> None:
    path = tmp_path / "partial.mp4"
    with pytest.raises(MediaError, match="does not match"):
        with VideoWriter(path, width=32, height=32, fps=16) as writer:
            writer.write(np.zeros((4, 32, 32, 3), np.uint8))
            writer.write(np.zeros((1, 16, 16, 3), np.uint8))
    assert list(tmp_path.iterdir()) == []


def test_thumbnail_is_the_first_frame_as_jpeg_beside_the_video(tmp_path: Path) -> None:
    frames = np.zeros((4, 48, 64, 3), np.uint8)
    frames[0] = (220, 30, 30)
    frames[1:] = (30, 30, 220)
    video = tmp_path / "clip.mp4"
    write_frames(frames, video, fps=16)

    thumbnail = write_thumbnail(video)

    assert thumbnail == tmp_path / "clip_thumb.jpg"
    with Image.open(thumbnail) as image:
        assert image.format == "JPEG" and image.size == (64, 48)
        red, green, blue = np.asarray(image.convert("RGB"), dtype=int).reshape(-1, 3).mean(axis=0)
    assert red > 180 and green < 70 and blue < 70


def test_load_image_converts_to_rgb_and_resizes(tmp_path: Path) -> None:
    rgba = np.zeros((20, 30, 4), np.uint8)
    rgba[..., 1] = 200
    rgba[..., 3] = 255
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "key.png")

    image = load_image(tmp_path / "key.png", (64, 48))

    assert image.mode == "RGB" and image.size == (64, 48)
    assert image_to_frame(image)[10, 10].tolist() == [0, 200, 0]
    assert load_image(tmp_path / "key.png").size == (30, 20)
    with pytest.raises(MediaError, match="nope.png"):
        load_image(tmp_path / "nope.png")
