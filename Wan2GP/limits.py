"""The bounds on every number a generation takes, in one place (pure Python: the payload models, the plan explainer
and the engine's request boundary all import it, none of them needs torch for it).

A payload is hostile until checked: a bound is what stops `steps_per_phase: [100000, 1, 1]` from holding a GPU for
a day, a resolution of 16x1000000 from allocating a terabyte, or a seed of 2**70 from overflowing the generator. The
values are generous for real use (Wan 2.1/2.2 run 4 to 50 steps, 480p to 1080p, 81 to a few hundred frames).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Bound:
    """An inclusive numeric range, with the words an error message uses for it."""

    low: float
    high: float
    what: str  # "an integer" / "a number"

    @property
    def span(self) -> str:
        """ "from -10 to 10": the range alone, for messages that already say what kind of value it is."""
        return f"from {_show(self.low)} to {_show(self.high)}"

    @property
    def expected(self) -> str:
        return f"{self.what} {self.span}"

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high


def _show(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


MAX_STEPS = 200  # num_inference_steps, and the sum of a phase_config's steps_per_phase
MAX_FRAMES = 1025  # frames in one generation (4n+1); a travel run stitches many of these
MAX_SIDE = 4096  # pixels, width or height
MAX_FRAME_PIXELS = 2048 * 2048  # width x height of one frame (1080p is 2.1 M)
MAX_VIDEO_PIXELS = 1 << 30  # width x height x frames of one generation (1280x720x1025 fits)
MAX_SEED = (1 << 63) - 1  # fits the generator's int64; -1 means "draw one"
MAX_SEGMENTS = 256  # segments in one travel run
MAX_PHASES = 3
MAX_IMAGE_REFS = 4  # VACE reference images in one generation (each adds a latent frame)

STEPS = Bound(1, MAX_STEPS, "an integer")
FRAMES = Bound(1, MAX_FRAMES, "an integer")
STITCHED_FRAMES = Bound(1, MAX_FRAMES * MAX_SEGMENTS, "an integer")
TIMELINE_FRAME = Bound(0, MAX_FRAMES * MAX_SEGMENTS, "an integer")  # a frame index in a stitched run
OVERLAP = Bound(0, MAX_FRAMES, "an integer")
SEED = Bound(-1, MAX_SEED, "an integer")
FPS = Bound(1, 120, "an integer")
GUIDANCE = Bound(0.0, 50.0, "a number")
FLOW_SHIFT = Bound(0.001, 100.0, "a number")
SWITCH_THRESHOLD = Bound(0.0, 1000.0, "a number")  # a timestep: Wan's run from 1000 down to 0
CONTROL_NET_WEIGHT = Bound(0.0, 10.0, "a number")
LORA_MULTIPLIER = Bound(-10.0, 10.0, "a number")
PHASES = Bound(1, MAX_PHASES, "an integer")
SEGMENTS = Bound(0, MAX_SEGMENTS, "an integer")
SEGMENT_INDEX = Bound(0, MAX_SEGMENTS - 1, "an integer")
STRENGTH = Bound(-10.0, 10.0, "a number")  # post-processing adjustments (saturation, brightness, crossfade sharpness)
# The after-first colour change of travel segments: saturation x S (a negative S means "off", as upstream), RGB x (1 + B);
# B = -1 would turn every frame black.
POST_SATURATION = Bound(-10.0, 3.0, "a number")
POST_BRIGHTNESS = Bound(-0.99, 1.0, "a number")


def check_geometry(width: int, height: int, frames: int) -> str | None:
    """What is wrong with a width x height x frames generation, or None. The sides are checked one by one first, so
    the message names the one that is out of range."""
    for name, side in (("width", width), ("height", height)):
        if not 1 <= side <= MAX_SIDE:
            return f"{name} must be from 1 to {MAX_SIDE} pixels, got {side}"
    if width * height > MAX_FRAME_PIXELS:
        return f"{width}x{height} is {width * height} pixels per frame; at most {MAX_FRAME_PIXELS} (2048x2048)"
    if width * height * frames > MAX_VIDEO_PIXELS:
        return (
            f"{width}x{height} x {frames} frames is {width * height * frames} pixels; at most {MAX_VIDEO_PIXELS} in "
            f"one generation"
        )
    return None


SIZE_BLOCK = 16  # Wan 2.1/2.2: VAE stride 8 x patch 2; generated sides are multiples of this
TI2V_SIZE_BLOCK = 32  # Wan 2.2 5B (ti2v): its VAE's stride is 16, x patch 2 (upstream's vae_block_size 32)
DEFAULT_RESOLUTION = "832x480"  # WGP's default where neither the request nor the model definition gives one
RESOLUTION_FORM = '"WIDTHxHEIGHT" such as "832x480"'


def parse_resolution(text: object) -> tuple[int, int]:
    """ "832x480" -> (832, 480): two positive integers of at most 6 digits around an "x" (spaces and case ignored);
    ValueError naming the expected form otherwise. The one parser of resolutions: payloads, model definitions, the
    engine's requests and the travel planner all read "WxH" through it."""
    parts = text.lower().replace(" ", "").split("x") if isinstance(text, str) else []
    if len(parts) != 2 or not all(part.isdigit() and len(part) <= 6 and int(part) > 0 for part in parts):
        shown = text[:40] if isinstance(text, str) else text
        raise ValueError(f"expected {RESOLUTION_FORM}, got {shown!r}")
    return int(parts[0]), int(parts[1])


def snap_resolution(width: int, height: int, block: int = SIZE_BLOCK) -> tuple[int, int]:
    """The size Wan generates for a requested one: each side floored to a multiple of `block` (SIZE_BLOCK, or
    TI2V_SIZE_BLOCK for Wan 2.2 5B: upstream's rule); ValueError when a side would be smaller than one block."""
    snapped = (width // block * block, height // block * block)
    if min(snapped) < block:
        raise ValueError(f"expected width and height of at least {block} pixels, got {width}x{height}")
    return snapped
