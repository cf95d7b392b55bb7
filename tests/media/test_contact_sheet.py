"""The demo's contact sheet: the keyframes on top, evenly spaced frames of the real mp4 below."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import PIL.Image

from source.demo import keyframe_paths, keyframes_and_video_sheet
from source.media.video import write_frames


def test_the_contact_sheet_shows_the_keyframes_above_evenly_spaced_frames(tmp_path: Path) -> None:
    frames = np.stack([np.full((48, 64, 3), 20 * index, dtype=np.uint8) for index in range(10)])
    video = tmp_path / "final.mp4"
    write_frames(frames, video, fps=16, lossless_rgb=True)

    sheet_path = keyframes_and_video_sheet(keyframe_paths(), video, samples=4, height=32)
    assert sheet_path == tmp_path / "final_contact.png"
    sheet = PIL.Image.open(sheet_path).convert("RGB")
    assert sheet.size == (4 * (64 * 32 // 48), 2 * 32)  # 4 frames of 42 px are wider than 3 keyframes of 32 px

    # Bottom row: frames 0, 3, 6, 9 of the video (uniform grey levels 0, 60, 120, 180), in order.
    tile = 64 * 32 // 48
    assert [sheet.getpixel((tile * k + tile // 2, 48))[0] for k in range(4)] == [0, 60, 120, 180]
    # Top row: the bundled keyframes, each scaled to 32 px high, left to right.
    for index, path in enumerate(keyframe_paths()):
        keyframe = PIL.Image.open(path).convert("RGB").resize((32, 32))
        assert (
            np.abs(
                np.asarray(sheet.crop((32 * index, 0, 32 * index + 32, 32)), dtype=int)
                - np.asarray(keyframe, dtype=int)
            ).max()
            <= 1
        )
