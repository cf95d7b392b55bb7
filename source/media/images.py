"""Still images: load keyframes as RGB at the generation size, resize decoded frames."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps, UnidentifiedImageError

from source.media.video import MediaError

MAX_IMAGE_PIXELS = 64_000_000  # a keyframe is at most a few megapixels; this is far above any real one


def check_image(path: Path) -> tuple[int, int]:
    """(width, height) of an image file, read from its header and checked by decoding it; MediaError when the file
    is not an image this worker can read, or is larger than MAX_IMAGE_PIXELS (a decompression bomb)."""
    try:
        with Image.open(path) as opened:
            width, height = opened.size
            if width * height > MAX_IMAGE_PIXELS:
                raise MediaError(f"image is {width}x{height}; at most {MAX_IMAGE_PIXELS} pixels are accepted")
            opened.load()
    except (UnidentifiedImageError, Image.DecompressionBombError):
        raise MediaError("not an image file this worker can read (PNG, JPEG, WebP, ...)") from None
    except OSError as error:
        raise MediaError(f"image file is damaged or truncated ({error})") from None
    return width, height


def load_image(path: Path, size: tuple[int, int] | None = None) -> Image.Image:
    """Open an image as RGB, upright per its EXIF orientation, LANCZOS-resized to `size` = (width, height) if given."""
    path = Path(path)
    if not path.is_file():
        raise MediaError(f"image not found: {path}")
    try:
        with Image.open(path) as opened:
            # Phone photos store rotation in EXIF; without this a portrait keyframe arrives sideways.
            image = ImageOps.exif_transpose(opened).convert("RGB")
    except (UnidentifiedImageError, OSError) as error:
        raise MediaError(f"cannot read image {path}: {error}") from None
    if size is not None:
        width, height = size
        if width <= 0 or height <= 0:
            raise MediaError(f"image size must be positive; got {width}x{height}")
        if image.size != (width, height):
            image = image.resize((width, height), Image.Resampling.LANCZOS)
    return image


def image_to_frame(image: Image.Image) -> np.ndarray:
    """A PIL image as an (H, W, 3) uint8 RGB array."""
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def resize_frames(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(N, H, W, 3) uint8 frames LANCZOS-resized to `size` = (width, height); returned unchanged if already that size."""
    width, height = size
    if frames.shape[1:3] == (height, width):
        return frames
    resized = [np.asarray(Image.fromarray(frame).resize((width, height), Image.Resampling.LANCZOS)) for frame in frames]
    return np.stack(resized).astype(np.uint8, copy=False)


def evenly_spaced(frames: np.ndarray, count: int) -> list[np.ndarray]:
    """`count` frames spread over the clip, first and last included (all of them when it has fewer)."""
    total = len(frames)
    return [frames[round(i * (total - 1) / max(1, count - 1))] for i in range(min(count, total))]


def contact_sheet(
    rows: list[list[Image.Image]], out: Path, *, height: int = 128, labels: list[str] | None = None
) -> Path:
    """A PNG of images in rows, each scaled to `height` pixels, a row's label (if given) written at its left: what
    went in and what came out, at a glance."""
    scaled = [[image.resize((max(1, image.width * height // image.height), height)) for image in row] for row in rows]
    label_width = 0
    if labels:
        font = ImageFont.load_default()
        label_width = 12 + max(
            int(ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(text, font=font)) for text in labels
        )
    width = label_width + max((sum(image.width for image in row) for row in scaled), default=1)
    sheet = Image.new("RGB", (width, height * len(scaled)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for row_index, row in enumerate(scaled):
        if labels:
            draw.text((6, row_index * height + height // 2 - 6), labels[row_index], fill=(0, 0, 0))
        left = label_width
        for image in row:
            sheet.paste(image, (left, row_index * height))
            left += image.width
    sheet.save(out)
    return out
