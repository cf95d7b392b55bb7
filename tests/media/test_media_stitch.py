"""Cross-fade math on synthetic frames and stitching of real mp4 clips (crossfade path and concat path)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from source.media import MediaError, crossfade, read_frames, stitch_videos
from source.media.stitch import gaussian_blur


def _solid(count: int, value: int, height: int = 40, width: int = 40) -> np.ndarray:
    return np.full((count, height, width, 3), value, dtype=np.uint8)


def _alpha(k: int, n: int) -> float:
    return (1 - math.cos(math.pi * (k + 1) / n)) / 2


def test_crossfade_without_sharpening_is_a_cosine_blend_ending_exactly_on_b() -> None:
    rng = np.random.default_rng(3)
    first = rng.integers(0, 256, size=(5, 24, 24, 3), dtype=np.uint8)
    second = rng.integers(0, 256, size=(5, 24, 24, 3), dtype=np.uint8)

    blended = crossfade(first, second, sharp_amount=0.0)

    assert blended.shape == (5, 24, 24, 3) and blended.dtype == np.uint8
    for k in range(5):
        alpha = _alpha(k, 5)
        expected = np.rint((1 - alpha) * first[k].astype(np.float64) + alpha * second[k].astype(np.float64))
        assert np.abs(blended[k].astype(int) - expected.astype(int)).max() <= 1
    # First overlap frame: mostly the previous segment (alpha = 0.095); last: exactly the next segment.
    assert np.abs(blended[0].astype(int) - first[0]).mean() < np.abs(blended[0].astype(int) - second[0]).mean()
    np.testing.assert_array_equal(blended[-1], second[-1])


def test_crossfade_uses_the_shorter_side_and_resizes_a_to_b() -> None:
    blended = crossfade(_solid(6, 0, 20, 30), _solid(3, 200, 40, 60), sharp_amount=0.0)
    assert blended.shape == (3, 40, 60, 3)
    assert [int(frame[0, 0, 0]) for frame in blended] == [round(200 * _alpha(k, 3)) for k in range(3)]


def test_sharpening_follows_the_unsharp_mask_formula() -> None:
    # A vertical edge: sharpening overshoots beside it and leaves flat areas alone.
    edge = np.zeros((1, 32, 64, 3), np.uint8)
    edge[:, :, 32:] = 200
    previous = np.full((2, 32, 64, 3), 100, np.uint8)
    sharp_amount = 0.3

    blended = crossfade(previous, np.repeat(edge, 2, axis=0), sharp_amount=sharp_amount)

    last = blended[-1].astype(np.float32)
    base = edge.astype(np.float32)
    expected = np.clip(base * (1 + sharp_amount) - gaussian_blur(base) * sharp_amount, 0, 255)[0]
    assert np.abs(last - np.rint(expected)).max() <= 1
    assert last[16, 33, 0] > 200 and last[16, 30, 0] == 0  # overshoot on the bright side, clipped on the dark side
    assert last[16, 60, 0] == 200 and last[16, 2, 0] == 0  # far from the edge: unchanged
    unsharpened = crossfade(previous, np.repeat(edge, 2, axis=0), sharp_amount=0.0)
    np.testing.assert_array_equal(unsharpened[-1], edge[0])


def test_gaussian_blur_is_a_normalised_sigma_3_gaussian() -> None:
    impulse = np.zeros((1, 41, 41, 1), np.float32)
    impulse[0, 20, 20, 0] = 1.0
    flat = np.full((1, 9, 9, 3), 77.0, np.float32)

    response = gaussian_blur(impulse)[0, :, :, 0]

    assert response.sum() == pytest.approx(1.0, abs=1e-5)
    weights = np.exp(-(np.arange(-12, 13) ** 2) / 18.0)
    weights /= weights.sum()
    np.testing.assert_allclose(response[8:33, 8:33], np.outer(weights, weights), atol=1e-6)
    np.testing.assert_allclose(gaussian_blur(flat), flat, atol=1e-3)


def test_stitch_two_clips_with_overlap(make_clip, tmp_path: Path, ffprobe_stream) -> None:
    first = make_clip(13, (200, 40, 40))
    second = make_clip(11, (40, 40, 200))
    seen: list[tuple[int, int]] = []

    result = stitch_videos(
        [first, second], [4], tmp_path / "joined.mp4", fps=16, progress=lambda done, total: seen.append((done, total))
    )

    assert (result.frames, result.width, result.height, result.fps) == (20, 64, 48, 16.0)
    assert ffprobe_stream(result.path)["nb_read_frames"] == "20"
    red = read_frames(result.path)[:, 24, 32, 0].astype(int)
    assert all(abs(value - 200) <= 4 for value in red[:9])  # first clip's body
    assert red[9] > red[10] > red[11]  # the blend moves from red towards blue
    assert all(abs(value - 40) <= 4 for value in red[12:])  # last blend frame is the second clip; then its body
    assert seen == [(1, 2), (2, 2)]


def test_stitch_three_clips_resizes_to_the_first(make_clip, tmp_path: Path, ffprobe_stream) -> None:
    clips = [
        make_clip(13, (250, 0, 0)),
        make_clip(13, (0, 250, 0), width=32, height=24),
        make_clip(9, (0, 0, 250), width=96, height=64),
    ]

    result = stitch_videos(clips, [5, 3], tmp_path / "three.mp4", fps=16, sharp_amount=0.3)

    assert result.frames == 13 + 13 + 9 - 5 - 3
    probed = ffprobe_stream(result.path)
    assert (probed["nb_read_frames"], probed["width"], probed["height"]) == ("27", "64", "48")
    middle = read_frames(result.path)[:, 24, 32].astype(int)
    assert middle[0].argmax() == 0 and middle[14].argmax() == 1 and middle[-1].argmax() == 2


def test_stitch_with_zero_overlaps_concatenates(make_clip, tmp_path: Path, ffprobe_stream) -> None:
    clips = [
        make_clip(5, (250, 0, 0)),
        make_clip(7, (0, 250, 0), fps=24),
        make_clip(6, (0, 0, 250), width=32, height=24),
    ]

    result = stitch_videos(clips, [0, 0], tmp_path / "concat.mp4", fps=16)

    assert (result.frames, result.width, result.height) == (18, 64, 48)
    probed = ffprobe_stream(result.path)
    assert (probed["nb_read_frames"], probed["r_frame_rate"]) == ("18", "16/1")
    dominant = read_frames(result.path)[:, 24, 32].argmax(axis=1).tolist()
    assert dominant == [0] * 5 + [1] * 7 + [2] * 6


def test_regenerate_anchors_keeps_the_next_segments_anchor_frame_unblended(make_clip, tmp_path: Path) -> None:
    first = make_clip(10, (60, 60, 60))
    ramp = [(value, value, value) for value in range(120, 240, 12)]  # each frame of the second clip is distinct
    second = make_clip(10, ramp)
    overlap = 4
    anchor_index = (10 - overlap) + (overlap - 2)  # output position of the blend's next-to-last frame

    regenerated = stitch_videos(
        [first, second], [overlap], tmp_path / "anchors.mp4", fps=16, sharp_amount=0.0, regenerate_anchors=True
    )
    plain = stitch_videos([first, second], [overlap], tmp_path / "plain.mp4", fps=16, sharp_amount=0.0)

    assert regenerated.frames == plain.frames == 16
    regenerated_values = read_frames(regenerated.path)[:, 24, 32, 0].astype(int)
    plain_values = read_frames(plain.path)[:, 24, 32, 0].astype(int)
    # With anchors regenerated, O-1 frames are blended, so frame O-2 of the overlap is already all second clip.
    assert abs(regenerated_values[anchor_index] - ramp[overlap - 2][0]) <= 3
    assert abs(regenerated_values[anchor_index + 1] - ramp[overlap - 1][0]) <= 3
    assert plain_values[anchor_index] < ramp[overlap - 2][0] - 10


def test_expected_frames_mismatch_names_both_numbers_and_writes_nothing(make_clip, tmp_path: Path) -> None:
    clips = [make_clip(13, (200, 0, 0)), make_clip(13, (0, 200, 0))]
    out = tmp_path / "never.mp4"
    with pytest.raises(MediaError, match=r"gives 20 frames, but 22 were expected"):
        stitch_videos(clips, [6], out, fps=16, expected_frames=22)
    assert not out.exists()
    assert stitch_videos(clips, [6], out, fps=16, expected_frames=20).frames == 20


def test_bad_stitch_plans_are_rejected(make_clip, tmp_path: Path) -> None:
    clips = [make_clip(5, (200, 0, 0)), make_clip(5, (0, 200, 0)), make_clip(5, (0, 0, 200))]
    with pytest.raises(MediaError, match="3 videos need 2 overlaps, got 1"):
        stitch_videos(clips, [2], tmp_path / "x.mp4", fps=16)
    with pytest.raises(MediaError, match=r"video 1 .* has 5 frames, fewer than the 3 \+ 3"):
        stitch_videos(clips, [3, 3], tmp_path / "x.mp4", fps=16)
    with pytest.raises(MediaError, match=r"overlaps\[0\] must be >= 0"):
        stitch_videos(clips, [-1, 0], tmp_path / "x.mp4", fps=16)
    with pytest.raises(MediaError, match="at least one video"):
        stitch_videos([], [], tmp_path / "x.mp4", fps=16)
