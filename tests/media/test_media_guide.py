"""VACE guide and mask videos: the fixed frames and mask values are exact after reading the files back."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from source.media import (
    MediaError,
    adjust_carried_frames,
    build_vace_guide,
    image_to_frame,
    load_image,
    read_frames,
    resize_frames,
)


def test_first_segment_guide_has_start_and_end_images_and_grey_between(
    make_image, tmp_path: Path, ffprobe_stream
) -> None:
    start = make_image("start.png", 100, 80)
    end = make_image("end.png", 50, 30)

    videos = build_vace_guide(
        frames=17,
        width=64,
        height=48,
        start_image=start,
        end_image=end,
        previous_tail=None,
        out_dir=tmp_path / "seg00",
        fps=16,
        name="seg00",
    )

    assert videos.fixed_frames == (0, 16) and videos.frames == 17
    assert videos.guide == tmp_path / "seg00" / "seg00_guide.mp4"
    guide = read_frames(videos.guide)
    mask = read_frames(videos.mask)
    assert guide.shape == mask.shape == (17, 48, 64, 3)
    np.testing.assert_array_equal(guide[0], image_to_frame(load_image(start, (64, 48))))
    np.testing.assert_array_equal(guide[16], image_to_frame(load_image(end, (64, 48))))
    assert np.all(guide[1:16] == 128)
    assert np.all(mask[[0, 16]] == 0) and np.all(mask[1:16] == 255)
    for path in (videos.guide, videos.mask):
        probed = ffprobe_stream(path)
        assert (probed["nb_read_frames"], probed["pix_fmt"], probed["codec_name"]) == ("17", "gbrp", "h264")


def test_chained_segment_carries_the_previous_tail_resized(make_image, tmp_path: Path) -> None:
    rng = np.random.default_rng(11)
    tail = rng.integers(0, 256, size=(5, 24, 32, 3), dtype=np.uint8)
    end = make_image("end.png", 64, 48)
    ignored_start = make_image("start.png", 64, 48)

    videos = build_vace_guide(
        frames=13,
        width=64,
        height=48,
        start_image=ignored_start,
        end_image=end,
        previous_tail=tail,
        out_dir=tmp_path,
        fps=16,
        name="seg01",
    )

    assert videos.fixed_frames == (0, 1, 2, 3, 4, 12)
    guide = read_frames(videos.guide)
    mask = read_frames(videos.mask)
    np.testing.assert_array_equal(guide[:5], resize_frames(tail, (64, 48)))
    np.testing.assert_array_equal(guide[12], image_to_frame(load_image(end)))
    assert np.all(guide[5:12] == 128)
    assert np.all(mask[:5] == 0) and np.all(mask[5:12] == 255) and np.all(mask[12] == 0)


def test_carried_frames_adjustments_are_applied_to_the_tail_only(make_image, tmp_path: Path) -> None:
    tail = np.full((2, 48, 64, 3), (200, 100, 40), dtype=np.uint8)
    end = make_image("end.png", 64, 48)

    videos = build_vace_guide(
        frames=9,
        width=64,
        height=48,
        start_image=None,
        end_image=end,
        previous_tail=tail,
        out_dir=tmp_path,
        fps=16,
        name="adjusted",
        strength_adjustment=-0.5,
    )

    guide = read_frames(videos.guide)
    # strength s = clip(1 - 0.5) = 0.5: half way to the guide grey.
    assert guide[0, 10, 10].tolist() == [164, 114, 84]
    np.testing.assert_array_equal(guide[8], image_to_frame(load_image(end)))


def test_adjust_carried_frames_desaturate_and_brightness() -> None:
    frame = np.full((1, 2, 2, 3), (200, 100, 0), dtype=np.uint8)
    np.testing.assert_array_equal(adjust_carried_frames(frame), frame)
    grey = adjust_carried_frames(frame, desaturate=1.0)
    luma = round(0.299 * 200 + 0.587 * 100)
    assert grey[0, 0, 0].tolist() == [luma, luma, luma]
    assert adjust_carried_frames(frame, brightness=0.1)[0, 0, 0].tolist() == [220, 110, 0]
    assert adjust_carried_frames(frame, brightness=-0.5)[0, 0, 0].tolist() == [100, 50, 0]


def test_single_image_segment_leaves_the_last_frame_free(make_image, tmp_path: Path) -> None:
    videos = build_vace_guide(
        frames=5,
        width=32,
        height=32,
        start_image=make_image("only.png", 32, 32),
        end_image=None,
        previous_tail=None,
        out_dir=tmp_path,
        fps=16,
        name="single",
    )
    assert videos.fixed_frames == (0,)
    assert read_frames(videos.mask)[:, 0, 0, 0].tolist() == [0, 255, 255, 255, 255]


def test_a_tail_that_leaves_no_room_for_the_end_image_is_rejected(make_image, tmp_path: Path) -> None:
    with pytest.raises(MediaError, match="previous_tail has 5 frames but a 5-frame segment with an end image"):
        build_vace_guide(
            frames=5,
            width=32,
            height=32,
            start_image=None,
            end_image=make_image("end.png", 32, 32),
            previous_tail=np.zeros((5, 32, 32, 3), np.uint8),
            out_dir=tmp_path / "out",
            fps=16,
            name="full",
        )
    assert not (tmp_path / "out").exists()
