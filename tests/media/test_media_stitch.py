"""Cross-fade math on synthetic frames and stitching of real mp4 clips (crossfade path and concat path)."""

from __future__ import annotations

import math
import subprocess
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import source.media.stitch as stitch_module
import source.media.video as video_module
from source.media import MediaError, crossfade, read_frames, stitch_videos
from source.media.images import resize_frames
from source.media.stitch import gaussian_blur
from source.media.video import write_frames


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
    assert np.count_nonzero(response) == 25 * 25  # truncated at 4 sigma: nothing beyond 12 pixels
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
    with pytest.raises(
        MediaError, match=r"stitching 2 videos \(13\+13 frames, overlaps \[6\]\) gives 20 frames, but 22 "
    ):
        stitch_videos(clips, [6], out, fps=16, expected_frames=22)
    assert not out.exists()
    assert stitch_videos(clips, [6], out, fps=16, expected_frames=20).frames == 20


def test_bad_stitch_plans_are_rejected(make_clip, tmp_path: Path) -> None:
    clips = [make_clip(5, (200, 0, 0)), make_clip(5, (0, 200, 0)), make_clip(5, (0, 0, 200))]
    with pytest.raises(MediaError, match="3 videos need 2 overlaps, got 1"):
        stitch_videos(clips, [2], tmp_path / "x.mp4", fps=16)
    with pytest.raises(MediaError, match=r"video 1 .* has 5 frames, fewer than the 3 \+ 3"):
        stitch_videos(clips, [3, 3], tmp_path / "x.mp4", fps=16)
    # The middle video's first overlap is the previous join's, its second the next join's.
    with pytest.raises(MediaError, match=rf"video 1 \({clips[1]}\) has 5 frames, fewer than the 4 \+ 2 frames"):
        stitch_videos(clips, [4, 2], tmp_path / "x.mp4", fps=16)
    with pytest.raises(MediaError, match=r"overlaps\[0\] must be >= 0"):
        stitch_videos(clips, [-1, 0], tmp_path / "x.mp4", fps=16)
    with pytest.raises(MediaError) as error:
        stitch_videos([], [], tmp_path / "x.mp4", fps=16)
    assert str(error.value) == "stitch needs at least one video; got none"
    with pytest.raises(MediaError, match=r"^fps must be positive; got 0$"):
        stitch_videos(clips, [0, 0], tmp_path / "x.mp4", fps=0)
    with pytest.raises(MediaError, match=r"^sharp_amount must be >= 0; got -0.5$"):
        stitch_videos(clips, [0, 0], tmp_path / "x.mp4", fps=16, sharp_amount=-0.5)
    assert not (tmp_path / "x.mp4").exists()


def _edge_frames(count: int, dark: int, bright: int, height: int = 48, width: int = 64) -> np.ndarray:
    """Frames with one vertical edge in the middle: what sharpening and resampling visibly change."""
    frames = np.full((count, height, width, 3), dark, np.uint8)
    frames[:, :, width // 2 :] = bright
    return frames


def _exact_clip(path: Path, frames: np.ndarray) -> Path:
    write_frames(frames, path, fps=16, lossless_rgb=True)
    return path


def _sample_aspect_ratio(path: Path) -> str:
    command = ["ffprobe", "-v", "error", "-show_entries", "stream=sample_aspect_ratio", "-of", "csv=p=0", str(path)]
    return subprocess.run(command, capture_output=True, check=True, text=True).stdout.strip()


def test_crossfade_rejects_arrays_that_are_not_frame_batches() -> None:
    frames, frame = _solid(2, 10, 8, 8), _solid(1, 10, 8, 8)[0]
    for first, second in ((frames, frame), (frame, frames)):
        with pytest.raises(MediaError, match=r"crossfade needs \(N, H, W, 3\) frame arrays; got \(.*\) and \(.*\)"):
            crossfade(first, second, sharp_amount=0.0)
    with pytest.raises(MediaError, match=r"^sharp_amount must be >= 0; got -0.1$"):
        crossfade(frames, frames, sharp_amount=-0.1)


def test_crossfade_of_no_frames_is_empty_and_of_one_frame_is_the_next_frame() -> None:
    empty = crossfade(_solid(0, 0, 20, 30), _solid(3, 200, 40, 60), sharp_amount=0.3)
    assert empty.shape == (0, 40, 60, 3) and empty.dtype == np.uint8
    single = crossfade(_solid(1, 0, 40, 60), _solid(1, 200, 40, 60), sharp_amount=0.0)
    assert single.shape == (1, 40, 60, 3)
    np.testing.assert_array_equal(single, _solid(1, 200, 40, 60))


def test_sharpening_grows_with_the_blend_weight() -> None:
    # Both sides show the same edge, so the blend is the edge itself and only the sharpening strength s * alpha_k varies.
    edge = _edge_frames(4, 20, 120, 32, 64)
    sharp_amount = 0.3

    blended = crossfade(edge, edge, sharp_amount=sharp_amount).astype(np.float32)

    base = edge[:1].astype(np.float32)
    blur = gaussian_blur(base)
    overshoots = []
    for k in range(4):
        strength = sharp_amount * _alpha(k, 4)
        expected = np.clip(np.rint(base * (1 + strength) - blur * strength), 0, 255)[0]
        assert np.abs(blended[k] - expected).max() <= 1, k
        overshoots.append(blended[k, 16, 32, 0] - 120)
    assert 0 < overshoots[0] < overshoots[1] < overshoots[2] < overshoots[3]


def test_sharpened_highlights_saturate_at_255_instead_of_wrapping() -> None:
    edge = _edge_frames(1, 0, 250, 32, 64)
    blended = crossfade(edge, edge, sharp_amount=0.5)
    bright_side = blended[0, :, 32:, 0]
    assert bright_side[16, 0] == 255 and bright_side.min() >= 250


@pytest.mark.parametrize(("overlap", "regenerate_anchors"), [(1, False), (2, True)])
def test_a_join_without_in_between_frames_hands_straight_over_to_the_next_clip(
    make_clip, tmp_path: Path, overlap: int, regenerate_anchors: bool
) -> None:
    # One overlap frame is all next clip (alpha = 1); with anchors regenerated two overlap frames blend only one.
    first = make_clip(13, (60, 60, 60))
    ramp = [(value, value, value) for value in range(120, 230, 10)]
    second = make_clip(11, ramp)

    result = stitch_videos(
        [first, second],
        [overlap],
        tmp_path / "joined.mp4",
        fps=16,
        sharp_amount=0.0,
        regenerate_anchors=regenerate_anchors,
    )

    assert result.frames == 24 - overlap
    values = read_frames(result.path)[:, 24, 32, 0].astype(int)
    expected = [60] * (13 - overlap) + [value for value, _, _ in ramp]
    assert np.abs(values - expected).max() <= 3


def test_regenerated_anchor_of_a_one_frame_overlap_is_not_sharpened(tmp_path: Path) -> None:
    first = _exact_clip(tmp_path / "first.mp4", np.full((9, 48, 64, 3), 60, np.uint8))
    second = _exact_clip(tmp_path / "second.mp4", _edge_frames(5, 40, 200))

    regenerated = stitch_videos([first, second], [1], tmp_path / "anchor.mp4", fps=16, regenerate_anchors=True, crf=0)
    plain = stitch_videos([first, second], [1], tmp_path / "plain.mp4", fps=16, crf=0)

    anchor = read_frames(regenerated.path)[8].astype(int)
    np.testing.assert_allclose(anchor, _edge_frames(1, 40, 200)[0], atol=2)
    assert read_frames(plain.path)[8, 24, 32, 0] > 215  # the plain join sharpens it (overshoot beside the edge)


def test_clips_may_be_shared_entirely_with_their_neighbours(make_clip, tmp_path: Path) -> None:
    # Each clip's overlaps add up to exactly its length: every output frame is a blend, none is a body frame.
    clips = [
        make_clip(4, (50, 50, 50)),
        make_clip(6, [(value, value, value) for value in (100, 110, 120, 130, 140, 150)]),
        make_clip(2, [(200, 200, 200), (220, 220, 220)]),
    ]

    result = stitch_videos(clips, [4, 2], tmp_path / "shared.mp4", fps=16, sharp_amount=0.0)

    assert result.frames == 4 + 6 + 2 - 4 - 2
    values = read_frames(result.path)[:, 24, 32, 0].astype(int)
    assert abs(values[3] - 130) <= 3 and abs(values[5] - 220) <= 3  # each blend ends on the next clip


def test_a_single_h264_clip_at_the_same_rate_is_copied_unchanged(make_clip, tmp_path: Path) -> None:
    clip = make_clip(5, (30, 90, 150))
    seen: list[tuple[int, int]] = []

    result = stitch_videos([clip], [], tmp_path / "copy.mp4", fps=16, progress=lambda *done: seen.append(done))

    assert result.path.read_bytes() == clip.read_bytes()
    assert (result.frames, result.width, result.height, result.fps) == (5, 64, 48, 16.0)
    assert seen == [(1, 1)]


def test_a_single_clip_is_re_encoded_when_its_rate_or_format_differs(make_clip, tmp_path: Path, ffprobe_stream) -> None:
    retimed = stitch_videos([make_clip(3, (30, 90, 150))], [], tmp_path / "one_fps.mp4", fps=1)
    probed = ffprobe_stream(retimed.path)
    assert (retimed.fps, probed["r_frame_rate"], probed["nb_read_frames"]) == (1.0, "1/1", "3")

    rgb = _exact_clip(tmp_path / "rgb.mp4", np.full((3, 48, 64, 3), 90, np.uint8))
    delivered = stitch_videos([rgb], [], tmp_path / "delivered.mp4", fps=16)
    probed = ffprobe_stream(delivered.path)
    assert (probed["codec_name"], probed["pix_fmt"], probed["nb_read_frames"]) == ("h264", "yuv420p", "3")


def test_zero_overlap_join_resizes_like_the_crossfade_path_with_square_pixels(make_clip, tmp_path: Path) -> None:
    small_edge = _edge_frames(3, 0, 255, 24, 32)
    clips = [
        make_clip(2, (90, 90, 90)),
        _exact_clip(tmp_path / "edge.mp4", small_edge),
        make_clip(2, (0, 0, 250), width=32, height=32),  # another aspect ratio, stretched to 64x48
    ]
    seen: list[tuple[int, int]] = []

    result = stitch_videos(
        clips, [0, 0], tmp_path / "joined.mp4", fps=16, crf=0, progress=lambda *done: seen.append(done)
    )

    assert result.frames == 7 and seen == [(3, 3)]
    assert _sample_aspect_ratio(result.path) == "1:1"
    # Lanczos (as resize_frames) rings beside the edge; another filter would differ by several levels there.
    upscaled = read_frames(result.path)[2:5].astype(int)
    assert np.abs(upscaled - resize_frames(small_edge, (64, 48)).astype(int)).max() <= 3


def test_default_encoding_is_crf_18_with_0_3_sharpening(tmp_path: Path) -> None:
    first = _exact_clip(tmp_path / "first.mp4", _edge_frames(9, 30, 90))
    second = _exact_clip(tmp_path / "second.mp4", _edge_frames(9, 60, 200))

    # The output folder need not exist yet.
    default = stitch_videos([first, second], [4], tmp_path / "new" / "folder" / "default.mp4", fps=16)
    explicit = stitch_videos([first, second], [4], tmp_path / "explicit.mp4", fps=16, sharp_amount=0.3, crf=18)
    concat = stitch_videos([first, second], [0], tmp_path / "concat.mp4", fps=16)

    assert default.path.read_bytes() == explicit.path.read_bytes()
    # x264 records its settings in the stream.
    assert b" crf=18.0 " in default.path.read_bytes() and b" crf=18.0 " in concat.path.read_bytes()
    other = stitch_videos([first, second], [4], tmp_path / "crf30.mp4", fps=16, crf=30)
    assert b" crf=30.0 " in other.path.read_bytes()


def test_a_failed_concat_names_the_join_and_leaves_no_file(
    make_clip, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clips = [make_clip(3, (200, 0, 0)), make_clip(3, (0, 200, 0))]
    failing = tmp_path / "bin" / "ffmpeg"
    failing.parent.mkdir()
    failing.write_text("#!/bin/sh\necho 'Invalid argument' >&2\nexit 1\n")
    failing.chmod(0o755)
    monkeypatch.setattr(video_module, "ffmpeg_exe", lambda: str(failing))
    out = tmp_path / "out" / "joined.mp4"

    with pytest.raises(MediaError, match=rf"^ffmpeg concat of 2 videos into {out} failed: Invalid argument$"):
        stitch_videos(clips, [0], out, fps=16)
    assert list(out.parent.iterdir()) == []


def test_frame_count_surprises_are_errors(make_clip, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clips = [make_clip(5, (200, 0, 0)), make_clip(4, (0, 200, 0))]
    real_read, real_probe = stitch_module.read_frames, stitch_module.probe_video

    # A decoder that stops one frame early.
    monkeypatch.setattr(stitch_module, "read_frames", lambda path: real_read(path)[:-1])
    with pytest.raises(MediaError, match=rf"^{clips[0]} decoded to 4 frames but was probed as 5$"):
        stitch_videos(clips, [2], tmp_path / "a.mp4", fps=16)
    monkeypatch.setattr(stitch_module, "read_frames", real_read)

    out = tmp_path / "b.mp4"
    # ffmpeg losing a frame of the join: the output is probed one frame short.
    monkeypatch.setattr(
        stitch_module,
        "probe_video",
        lambda path: replace(real_probe(path), frames=8) if path == out else real_probe(path),
    )
    with pytest.raises(MediaError, match=rf"^stitched video {out} has 8 frames; expected 9$"):
        stitch_videos(clips, [0], out, fps=16)
