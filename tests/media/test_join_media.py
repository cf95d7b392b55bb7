"""The media side of joins: a VACE guide and mask built from a list of frames (None = generate), and splicing frame
spans of videos into one with cross-faded seams; frame counts checked with Debian's ffprobe."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from source.media.guide import write_vace_guide
from source.media.join import FrameSpan, read_span, splice_spans
from source.media.stitch import crossfade
from source.media.video import MediaError, read_frames, write_frames


def ramp(frames: int, channel: int, *, width: int = 64, height: int = 48) -> np.ndarray:
    """Solid frames whose `channel` grows by 8 per frame (so each frame can be recognised after encoding)."""
    colours = np.full((frames, 3), 40, dtype=np.uint8)
    colours[:, channel] = 60 + 8 * np.arange(frames)
    return np.broadcast_to(colours[:, None, None, :], (frames, height, width, 3)).copy()


TOLERANCE = 3  # codec error on a channel mean; neighbouring ramp frames differ by 8


def means(frames: np.ndarray) -> np.ndarray:
    return frames.reshape(len(frames), -1, 3).mean(axis=1)


def test_guide_from_slots_keeps_given_frames_exactly_and_marks_the_rest_to_generate(tmp_path, ffprobe_stream):
    rng = np.random.default_rng(5)
    before = rng.integers(0, 256, size=(2, 48, 64, 3), dtype=np.uint8)
    small = rng.integers(0, 256, size=(24, 32, 3), dtype=np.uint8)  # another size: resized into the guide
    slots = [before[0], before[1], None, None, small, None, None, None, before[0]]

    videos = write_vace_guide(slots, width=64, height=48, out_dir=tmp_path, fps=16, name="bridge00")

    assert videos.fixed_frames == (0, 1, 4, 8) and videos.frames == 9
    guide, mask = read_frames(videos.guide), read_frames(videos.mask)
    np.testing.assert_array_equal(guide[[0, 1, 8]], before[[0, 1, 0]])
    assert guide[4].shape == (48, 64, 3) and np.abs(guide[4].astype(int).mean() - small.mean()) < 3
    assert np.all(guide[[2, 3, 5, 6, 7]] == 128)
    assert mask[:, 0, 0, 0].tolist() == [0, 0, 255, 255, 0, 255, 255, 255, 0]
    assert ffprobe_stream(videos.mask)["nb_read_frames"] == "9"


def test_guide_refuses_an_empty_slot_list_and_a_non_frame(tmp_path):
    with pytest.raises(MediaError, match="at least one frame"):
        write_vace_guide([], width=64, height=48, out_dir=tmp_path, fps=16, name="empty")
    with pytest.raises(MediaError, match="slot 1 must be a uint8 frame"):
        write_vace_guide([None, np.zeros((4, 4), np.uint8)], width=64, height=48, out_dir=tmp_path, fps=16, name="x")


@pytest.fixture
def videos(tmp_path) -> tuple[Path, Path, Path]:
    paths = (tmp_path / "a.mp4", tmp_path / "bridge.mp4", tmp_path / "b.mp4")
    for path, frames in zip(paths, (ramp(12, 0), ramp(9, 2), ramp(10, 1)), strict=True):
        write_frames(frames, path, fps=16)
    return paths


def test_splice_keeps_span_frames_and_fades_only_the_overlaps(videos, tmp_path, ffprobe_stream):
    a, bridge, b = videos
    spans = [FrameSpan(a, 0, 10), FrameSpan(bridge, 0, 9), FrameSpan(b, 2, 10)]
    out = tmp_path / "joined.mp4"

    info = splice_spans(spans, [2, 3], out, width=64, height=48, fps=16, expected_frames=10 + 9 + 8 - 5)

    assert info.frames == 22 and ffprobe_stream(out)["nb_read_frames"] == "22"
    output = means(read_frames(out))
    source_a, source_bridge, source_b = (means(read_frames(path)) for path in videos)
    np.testing.assert_allclose(output[:8], source_a[:8], atol=TOLERANCE)  # a[0:8] untouched
    # The fade from a[8:10] into bridge[0:2] ends on the bridge's own frame; the bridge's middle is untouched.
    np.testing.assert_allclose(output[9], source_bridge[1], atol=TOLERANCE)
    np.testing.assert_allclose(output[10:14], source_bridge[2:6], atol=TOLERANCE)
    expected_fade = means(crossfade(read_frames(bridge)[6:9], read_frames(b)[2:5], sharp_amount=0.0))
    np.testing.assert_allclose(output[14:17], expected_fade, atol=TOLERANCE)
    np.testing.assert_allclose(output[16:], source_b[4:], atol=TOLERANCE)  # from the fade's last frame: b[4:10]


def test_spans_of_a_reversed_video_count_from_its_last_frame(videos):
    a = videos[0]
    forward = read_frames(a)
    np.testing.assert_array_equal(read_span(FrameSpan(a, 0, 3, reverse=True)), forward[[11, 10, 9]])
    with pytest.raises(MediaError, match="runs past its end"):
        read_span(FrameSpan(a, 10, 13))


def test_splice_refuses_a_wrong_contract_or_overlap_before_writing(videos, tmp_path):
    a, bridge, b = videos
    spans = [FrameSpan(a, 0, 10), FrameSpan(bridge, 0, 9), FrameSpan(b, 0, 10)]
    out = tmp_path / "never.mp4"
    with pytest.raises(MediaError, match="gives 24 frames, but 25 were expected"):
        splice_spans(spans, [2, 3], out, width=64, height=48, fps=16, expected_frames=25)
    with pytest.raises(MediaError, match="span 1 .* cannot share 5 frames with the span before and 5"):
        splice_spans(spans, [5, 5], out, width=64, height=48, fps=16)
    assert not out.exists()
