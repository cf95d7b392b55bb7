"""Guide and mask videos for VACE generations.

A VACE model is told what to keep and what to invent by two videos of the generation's length T:

- the guide holds the fixed content; every other frame is plain grey (128), "nothing here";
- the mask marks each frame black (0) = keep the guide frame, or white (255) = generate it.

`write_vace_guide` writes both from a list of T slots, a frame to keep or None to generate (join bridges and inpainting
build that list from video frames). `build_vace_guide` is the travel segment's layout on top of it: frames 0..O-1
carried over from the previous segment (chained travel) or the start keyframe at frame 0, and the end keyframe at T-1.

Both are written with libx264rgb at QP 0 (lossless RGB in an .mp4): any ffmpeg-based reader gets back exactly 0, 128
and 255 where they were written, and the keyframes bit for bit, so the engine never sees a "fixed" frame that drifted.

The start keyframe is whatever the caller passes: there is no image list here to index wrongly (upstream's
independent-travel bug, where every segment's frame 0 was image 0, cannot happen in this function).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from loguru import logger

from source.media.images import image_to_frame, load_image, resize_frames
from source.media.video import MediaError, write_frames

GUIDE_GREY = 128
MASK_KEEP = 0
MASK_GENERATE = 255

# ITU-R BT.601 luma weights: the grey a colour frame desaturates towards.
_LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float32)


@dataclass(frozen=True)
class GuideVideos:
    guide: Path
    mask: Path
    fixed_frames: tuple[int, ...]
    frames: int


def adjust_carried_frames(
    frames: np.ndarray, *, strength_adjustment: float = 0.0, desaturate: float = 0.0, brightness: float = 0.0
) -> np.ndarray:
    """Soften frames carried over from the previous segment before they anchor the next one.

    - strength: frame = grey*(1-s) + frame*s with s = clip(1 + strength_adjustment, 0, 1); negative values fade the
      carried frames towards the guide's grey so the model holds on to them less.
    - desaturate in 0..1: blend towards the frame's own luma (1 = black and white).
    - brightness: frame * (1 + brightness); positive = brighter. (Upstream's guide helper used the opposite sign; the
      caller maps the payload field, this function has one convention.)
    All zero returns the frames unchanged.
    """
    if strength_adjustment == 0.0 and desaturate == 0.0 and brightness == 0.0:
        return frames
    if not 0.0 <= desaturate <= 1.0:
        raise MediaError(f"desaturate must be within 0..1; got {desaturate}")
    if brightness <= -1.0:
        raise MediaError(f"brightness must be > -1 (which would make every frame black); got {brightness}")
    adjusted = frames.astype(np.float32)
    strength = float(np.clip(1.0 + strength_adjustment, 0.0, 1.0))
    adjusted = GUIDE_GREY * (1.0 - strength) + adjusted * strength
    if desaturate > 0.0:
        luma = (adjusted @ _LUMA_WEIGHTS)[..., np.newaxis]
        adjusted = adjusted * (1.0 - desaturate) + luma * desaturate
    adjusted = adjusted * (1.0 + brightness)
    return np.clip(np.rint(adjusted), 0, 255).astype(np.uint8)


def build_vace_guide(
    *,
    frames: int,
    width: int,
    height: int,
    start_image: Path | None,
    end_image: Path | None,
    previous_tail: np.ndarray | None,
    out_dir: Path,
    fps: float,
    name: str,
    strength_adjustment: float = 0.0,
    desaturate: float = 0.0,
    brightness: float = 0.0,
    structure: Sequence[np.ndarray | None] | None = None,
) -> GuideVideos:
    """Write `<name>_guide.mp4` and `<name>_mask.mp4` (T = `frames`, width x height) into `out_dir`.

    - `previous_tail` (O, h, w, 3) uint8, if given and not empty: guide frames 0..O-1 (resized, then adjusted by
      strength_adjustment / desaturate / brightness, see `adjust_carried_frames`); `start_image` is then not used.
    - else `start_image`: guide frame 0.
    - `end_image`: guide frame T-1.
    Fixed frames are black in the mask, all others white and grey in the guide (or, where `structure` has a frame,
    that structure-guidance frame).
    """
    if frames < 1:
        raise MediaError(f"frames must be >= 1; got {frames}")
    if width < 1 or height < 1:
        raise MediaError(f"width and height must be >= 1; got {width}x{height}")
    if not name or "/" in name or "\\" in name:
        raise MediaError(f"name must be a plain file-name stem; got {name!r}")

    guide = np.full((frames, height, width, 3), GUIDE_GREY, dtype=np.uint8)
    fixed: set[int] = set()

    if previous_tail is not None and len(previous_tail) > 0:
        if previous_tail.ndim != 4 or previous_tail.shape[-1] != 3 or previous_tail.dtype != np.uint8:
            raise MediaError(
                f"previous_tail must be uint8 frames of shape (O, H, W, 3); got {previous_tail.shape} "
                f"{previous_tail.dtype}"
            )
        overlap = len(previous_tail)
        room = frames - 1 if end_image is not None else frames
        if overlap > room:
            raise MediaError(
                f"previous_tail has {overlap} frames but a {frames}-frame segment"
                f"{' with an end image' if end_image is not None else ''} has room for at most {room}"
            )
        carried = resize_frames(previous_tail, (width, height))
        guide[:overlap] = adjust_carried_frames(
            carried, strength_adjustment=strength_adjustment, desaturate=desaturate, brightness=brightness
        )
        fixed.update(range(overlap))
        if start_image is not None:
            logger.debug(f"guide {name}: {overlap} carried frames replace the start image {start_image}")
    elif start_image is not None:
        guide[0] = image_to_frame(load_image(start_image, (width, height)))
        fixed.add(0)

    if end_image is not None:
        if frames - 1 in fixed:
            raise MediaError(f"a {frames}-frame segment cannot hold both a start frame and an end image at frame 0")
        guide[frames - 1] = image_to_frame(load_image(end_image, (width, height)))
        fixed.add(frames - 1)

    slots = [guide[index] if index in fixed else None for index in range(frames)]
    return write_vace_guide(slots, width=width, height=height, out_dir=out_dir, fps=fps, name=name, structure=structure)


def write_vace_guide(
    slots: Sequence[np.ndarray | None],
    *,
    width: int,
    height: int,
    out_dir: Path,
    fps: float,
    name: str,
    structure: Sequence[np.ndarray | None] | None = None,
) -> GuideVideos:
    """Write `<name>_guide.mp4` and `<name>_mask.mp4` into `out_dir`, one frame per slot.

    A slot holding an (h, w, 3) uint8 frame is kept: the frame (LANCZOS-resized to width x height when its size
    differs) in the guide, black in the mask. A None slot is generated: grey in the guide, white in the mask, unless
    `structure` (one entry per slot) has a frame there: a structure-guidance frame VACE follows while it generates."""
    if not slots:
        raise MediaError("a guide needs at least one frame; got no slots")
    if width < 1 or height < 1:
        raise MediaError(f"width and height must be >= 1; got {width}x{height}")
    if not name or "/" in name or "\\" in name:
        raise MediaError(f"name must be a plain file-name stem; got {name!r}")
    frames = len(slots)
    guide = np.full((frames, height, width, 3), GUIDE_GREY, dtype=np.uint8)
    mask = np.full((frames, height, width, 3), MASK_GENERATE, dtype=np.uint8)
    fixed_frames = tuple(index for index, slot in enumerate(slots) if slot is not None)
    if structure is not None:
        if len(structure) != frames:
            raise MediaError(f"structure must have one entry per slot ({frames}); got {len(structure)}")
        for index, frame in enumerate(structure):
            if frame is not None and slots[index] is None:
                guide[index] = resize_frames(np.asarray(frame, dtype=np.uint8)[np.newaxis], (width, height))[0]
    for index in fixed_frames:
        frame = np.asarray(slots[index])
        if frame.ndim != 3 or frame.shape[-1] != 3 or frame.dtype != np.uint8:
            raise MediaError(f"slot {index} must be a uint8 frame of shape (H, W, 3); got {frame.shape} {frame.dtype}")
        guide[index] = resize_frames(frame[np.newaxis], (width, height))[0]
        mask[index] = MASK_KEEP

    out_dir = Path(out_dir)
    guide_path = out_dir / f"{name}_guide.mp4"
    mask_path = out_dir / f"{name}_mask.mp4"
    write_frames(guide, guide_path, fps=fps, lossless_rgb=True)
    write_frames(mask, mask_path, fps=fps, lossless_rgb=True)
    logger.info(f"guide {name}: {frames} frames {width}x{height}, fixed frames {list(fixed_frames)} -> {guide_path}")
    return GuideVideos(guide=guide_path, mask=mask_path, fixed_frames=fixed_frames, frames=frames)
