"""What the prompt writer shows the vision-language model: the instruction and the picture (no torch here).

A travel segment goes from a start keyframe to an end keyframe. The model sees both side by side (start on the left in
a green frame, end on the right in a red one) and is asked for exactly three sentences: the primary motion, the
elements that move, and the details of the motion, for a clip of the segment's duration, in the spirit of the user's
base prompt. A run with a single keyframe gets the one image and a three-sentence schema for a scene that comes to
life (scene and camera, subject motion, environmental dynamics). Upstream's structure and constraints
(upstream_worker_spec.md §3.6), in our own words.
"""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image, ImageOps

DEFAULT_PROMPT_MODEL = "Qwen/Qwen2.5-VL-7B-Instruct"

START_BORDER = (46, 139, 87)  # green: where the segment starts
END_BORDER = (178, 34, 34)  # red: where it ends
BACKGROUND = (40, 40, 40)
BORDER_PX = 6
GAP_PX = 4

# Without a base prompt from the user, the model still needs a direction to write towards.
DEFAULT_BASE_PROMPT = "the people and objects in the scene move naturally and expressively"

_PAIR_SYSTEM = """You are a video direction assistant. You are shown two keyframes side by side: the LEFT image \
(green frame) is the first frame of a short video clip and the RIGHT image (red frame) is its last frame. Describe \
how the clip gets from the first frame to the last.

Answer with EXACTLY THREE SENTENCES and nothing else:
1) PRIMARY MOTION: the main movement or change that carries the first frame into the last.
2) MOVING ELEMENTS: which subjects, objects or parts of the scene move, and how.
3) MOTION DETAILS: the speed, direction and quality of the motion, and what the camera does.

Describe motion, not a list of what is in the images. Do not mention frames, images, borders or colours of the \
frames. Keep it under 120 words.

Example answers:
- The woman turns from the window and walks towards the camera as the room brightens. Her coat swings with each \
step while the curtains behind her drift in the breeze. She moves at an unhurried pace and the camera slowly pulls \
back to keep her centred.
- The city street at dusk gives way to night as the lights come on one by one. Cars stream along the avenue and \
pedestrians hurry across the crossing. The camera tilts up gently from the traffic to the glowing skyline.
- The small boat drifts out from the shore towards the open sea. Waves lift and lower its hull while gulls circle \
above the mast. The motion is slow and rocking, and the camera holds still as the boat shrinks into the distance."""

_SINGLE_SYSTEM = """You are a video direction assistant. You are shown one image, the first frame of a short video \
clip. Describe how the scene comes to life.

Answer with EXACTLY THREE SENTENCES and nothing else:
1) SCENE & CAMERA: the setting and what the camera does.
2) SUBJECT MOTION: how the main subjects move.
3) ENVIRONMENTAL DYNAMICS: what else in the scene moves (light, weather, water, background).

Describe motion, not a list of what is in the image. Keep it under 120 words.

Example answers:
- A quiet forest clearing in the morning, with the camera gliding slowly forward between the trees. A deer lifts its \
head from the grass and steps cautiously towards the light. Leaves flutter overhead and shafts of sunlight shift \
across the ground.
- A rooftop terrace at sunset, seen in a slow orbit around the table. The two friends raise their glasses and laugh \
as one of them leans back in her chair. Clouds stream across the orange sky and string lights sway in the wind.
- A stormy coastline from a high cliff, the camera holding steady. A lone hiker pulls up his hood and strides along \
the path towards the edge. Waves crash against the rocks below and rain sweeps across the sea in grey curtains."""


@dataclass(frozen=True)
class Instruction:
    system: str
    user: str


def duration_text(frames: int, fps: float) -> str:
    """'approximately 5.1 seconds (81 frames at 16 FPS)'."""
    seconds = frames / fps if fps > 0 else 0.0
    fps_text = f"{fps:g}"
    return f"approximately {seconds:.1f} seconds ({frames} frames at {fps_text} FPS)"


def instruction(*, base_prompt: str, frames: int, fps: float, single_image: bool) -> Instruction:
    """The system text and the user's request for one segment."""
    direction = base_prompt.strip() or DEFAULT_BASE_PROMPT
    if single_image:
        user = (
            f"The video lasts {duration_text(frames, fps)}. The user wants: {direction}\n"
            "Write the three sentences for this video."
        )
        return Instruction(_SINGLE_SYSTEM, user)
    user = (
        f"The video lasts {duration_text(frames, fps)}. The user wants: {direction}\n"
        "Write the three sentences describing the motion from the left frame to the right frame."
    )
    return Instruction(_PAIR_SYSTEM, user)


def side_by_side(start: Image.Image, end: Image.Image) -> Image.Image:
    """Start (green frame) and end (red frame) on one canvas, the end image scaled to the start image's height."""
    start = start.convert("RGB")
    end = end.convert("RGB")
    if end.height != start.height:
        width = max(1, round(end.width * start.height / end.height))
        end = end.resize((width, start.height), Image.Resampling.LANCZOS)
    left = ImageOps.expand(start, border=BORDER_PX, fill=START_BORDER)
    right = ImageOps.expand(end, border=BORDER_PX, fill=END_BORDER)
    canvas = Image.new("RGB", (left.width + GAP_PX + right.width, left.height), BACKGROUND)
    canvas.paste(left, (0, 0))
    canvas.paste(right, (left.width + GAP_PX, 0))
    return canvas
