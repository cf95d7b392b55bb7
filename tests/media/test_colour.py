"""`adjust_colour` measured on real encoded video: saturation and brightness move the decoded pixels the way upstream's
`eq=saturation=S` and RGB x (1 + b) did, grey stays grey, and the frames, size and rate are kept."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from source.media import adjust_colour, read_frame, read_frames, write_frames

FRAMES, HEIGHT, WIDTH = 9, 64, 96
GREY = 100  # the top rows of every frame: a neutral patch that must stay neutral


@pytest.fixture(scope="module")
def colourful_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A hue sweep at moderate saturation and mid brightness (so x1.5 saturation and x1.2 brightness barely clip),
    shifting hue per frame, with a grey band on top."""
    ys, xs = np.mgrid[0:HEIGHT, 0:WIDTH]
    frames = []
    for index in range(FRAMES):
        hsv = np.stack(
            [(xs * 255 / WIDTH + 12 * index) % 256, np.full_like(xs, 110), 70 + ys * 100 / HEIGHT], axis=-1
        ).astype(np.uint8)
        frame = np.array(Image.fromarray(hsv, "HSV").convert("RGB"))
        frame[:8] = GREY
        frames.append(frame)
    path = tmp_path_factory.mktemp("colour") / "colourful.mp4"
    write_frames(np.stack(frames), path, fps=16)
    return path


def _luma_and_chroma(path: Path) -> tuple[float, float]:
    """Mean BT.601 luma, and mean chroma magnitude sqrt(Cb^2 + Cr^2), of every decoded frame below the grey band."""
    rgb = read_frames(path)[:, 8:].astype(np.float64)
    luma = rgb @ np.array([0.299, 0.587, 0.114])
    cb = 0.564 * (rgb[..., 2] - luma)
    cr = 0.713 * (rgb[..., 0] - luma)
    return float(luma.mean()), float(np.hypot(cb, cr).mean())


def _hsv_saturation(path: Path) -> float:
    return float(np.mean([np.asarray(Image.fromarray(frame).convert("HSV"))[8:, :, 1] for frame in read_frames(path)]))


@pytest.mark.parametrize(("saturation", "low", "high"), [(0.5, 0.45, 0.55), (1.5, 1.4, 1.6)])
def test_saturation_scales_chroma_and_keeps_luma(colourful_clip, tmp_path, ffprobe, saturation, low, high):
    out = tmp_path / "saturated.mp4"
    info = adjust_colour(colourful_clip, out, saturation=saturation, brightness=0.0)

    luma, chroma = _luma_and_chroma(colourful_clip)
    new_luma, new_chroma = _luma_and_chroma(out)
    assert low < new_chroma / chroma < high
    assert new_luma / luma == pytest.approx(1.0, abs=0.02)
    moved = _hsv_saturation(out) - _hsv_saturation(colourful_clip)
    assert moved < -20 if saturation < 1 else moved > 20
    probe = ffprobe(str(out))
    assert (int(probe["nb_read_frames"]), probe["width"], probe["height"]) == (FRAMES, WIDTH, HEIGHT)
    assert (probe["codec_name"], probe["pix_fmt"]) == ("h264", "yuv420p")
    assert (info.frames, info.width, info.height, info.fps) == (FRAMES, WIDTH, HEIGHT, 16.0)


@pytest.mark.parametrize("brightness", [0.2, -0.3])
def test_brightness_multiplies_rgb_by_one_plus_b(colourful_clip, tmp_path, ffprobe, brightness):
    out = tmp_path / "bright.mp4"
    adjust_colour(colourful_clip, out, saturation=1.0, brightness=brightness)

    luma, chroma = _luma_and_chroma(colourful_clip)
    new_luma, new_chroma = _luma_and_chroma(out)
    assert new_luma / luma == pytest.approx(1 + brightness, abs=0.03)
    assert new_chroma / chroma == pytest.approx(1 + brightness, abs=0.05)  # RGB x k scales chroma as well
    assert int(ffprobe(str(out))["nb_read_frames"]) == FRAMES


def test_grey_stays_grey_and_black_stays_black(tmp_path, colourful_clip):
    # eq's saturation moves neutral chroma 128 -> 127 (a green cast), and eq's additive brightness lifts black.
    frame = np.zeros((4, 32, 32, 3), np.uint8)
    frame[:, :, :16] = GREY
    clip = tmp_path / "grey_black.mp4"
    write_frames(frame, clip, fps=16)
    out = tmp_path / "adjusted.mp4"
    adjust_colour(clip, out, saturation=0.5, brightness=0.2)

    adjusted = read_frames(out).astype(int)
    grey = adjusted[:, 4:12, 4:12].reshape(-1, 3)
    assert np.ptp(grey, axis=1).max() <= 1  # R, G, B still equal
    assert abs(grey.mean() - GREY * 1.2) <= 2
    assert adjusted[:, 4:12, 20:28].max() <= 1


def test_each_frame_is_adjusted_in_place_not_reordered(colourful_clip, tmp_path):
    out = tmp_path / "same_order.mp4"
    adjust_colour(colourful_clip, out, saturation=1.0, brightness=0.1)
    for index in (0, FRAMES // 2, FRAMES - 1):
        before = read_frame(colourful_clip, index)[8:].astype(float)
        after = read_frame(out, index)[8:].astype(float)
        assert np.abs(after - np.clip(before * 1.1, 0, 255)).mean() < 3


def test_no_change_asked_copies_the_video(colourful_clip, tmp_path):
    out = tmp_path / "nested" / "copy.mp4"
    info = adjust_colour(colourful_clip, out, saturation=1, brightness=0)
    assert out.read_bytes() == colourful_clip.read_bytes()
    assert info.frames == FRAMES


@pytest.mark.parametrize(
    ("saturation", "brightness", "named"),
    [
        (math.nan, 0.0, "saturation"),
        (-0.5, 0.0, "saturation"),
        (3.5, 0.0, "saturation"),
        (True, 0.0, "saturation"),
        (1.0, math.inf, "brightness"),
        (1.0, -1.0, "brightness"),
        (1.0, 1.5, "brightness"),
    ],
)
def test_out_of_range_values_are_refused_naming_the_parameter(colourful_clip, tmp_path, saturation, brightness, named):
    out = tmp_path / "never.mp4"
    with pytest.raises(ValueError, match=f"^{named}: expected"):
        adjust_colour(colourful_clip, out, saturation=saturation, brightness=brightness)
    assert not out.exists()
