"""The prompt writer: a Qwen2.5-VL model that writes a travel segment's prompt from its start and end keyframes.

It knows nothing of queues or tasks: given keyframe images, a base prompt, a frame count and an fps it returns the
prompt (Wan2GP.prompt_text holds what the model is shown). The model is `Qwen/Qwen2.5-VL-7B-Instruct` by default; any
Qwen2.5-VL repo id or local folder works, and "tiny" (or "tiny:SEED") is a random-weight model built from a seed for
the CPU (Wan2GP.tiny_vlm). Repo weights come through huggingface_hub (its cache, resumable, auth from the
environment), like the Wan models. Decoding is greedy with a bounded `max_new_tokens`: the same images and text give
the same prompt. bf16 on CUDA, fp32 on the CPU.

transformers' Qwen2_5_VLProcessor is not used as a whole: in transformers 5 it requires its video processor, which
needs torchvision, and no torchvision build matches the pinned CPU torch. The writer uses the processor's two other
parts, the repo's tokenizer and its image processor (the PIL one, Qwen2VLImageProcessorPil), and expands the image placeholder the way the processor does
(one <|image_pad|> per merged patch: grid t*h*w / merge_size^2), in Qwen's ChatML format.
"""

from __future__ import annotations

import gc
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from loguru import logger
from PIL import Image, UnidentifiedImageError
from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration, Qwen2VLImageProcessorPil

from Wan2GP.prompt_text import DEFAULT_PROMPT_MODEL, instruction, side_by_side
from Wan2GP.tiny_vlm import ensure_tiny_vlm

__all__ = ["DEFAULT_PROMPT_MODEL", "PromptRequest", "PromptWriter", "PromptWriterUnavailable", "resolve_prompt_model"]
# Upstream's image size bounds for the VLM (256 to 1280 merged 28x28 tiles), narrowed to what the model's own
# processor allows (the tiny model's are smaller).
MIN_PIXELS = 256 * 28 * 28
MAX_PIXELS = 1280 * 28 * 28
MAX_NEW_TOKENS = 512
MAX_NEW_TOKENS_LIMIT = 2048
_TINY = re.compile(r"^tiny(?::(?P<seed>\d{1,9}))?$")
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_TINY_DEFAULT_SEED = 4242


class PromptWriterUnavailable(RuntimeError):
    """The VLM cannot be used on this worker (no weights, a bad folder, out of memory)."""


@dataclass(frozen=True)
class PromptRequest:
    """One segment's prompt to write. `end_image` None: a single-keyframe run."""

    start_image: Path
    end_image: Path | None
    base_prompt: str
    frames: int
    fps: float
    debug_image: Path | None = None  # where to save the picture the model is shown, as a JPEG


def resolve_prompt_model(source: str, cache_dir: Path) -> Path:
    """The local folder of the VLM named by `source`: "tiny[:SEED]" (built into the cache), a local folder, or a
    Hugging Face repo id (downloaded into huggingface_hub's cache)."""
    tiny = _TINY.match(source)
    if tiny:
        seed = int(tiny["seed"] or _TINY_DEFAULT_SEED)
        return ensure_tiny_vlm(Path(cache_dir) / "tiny" / f"qwen2_5_vl-{seed}", seed)
    folder = Path(source).expanduser()
    if folder.is_dir():
        return folder
    if not _REPO_ID.match(source):
        raise PromptWriterUnavailable(
            f"prompt model: expected a Hugging Face repo id (owner/name), a local folder or 'tiny', got {source!r}"
        )
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id=source, allow_patterns=["*.json", "*.safetensors", "*.txt"]))
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError) as error:
        raise PromptWriterUnavailable(f"prompt model {source!r} could not be fetched ({error})") from error


def weights_bytes(folder: Path) -> int:
    """The size of the model's weights on disk: what it takes on the device in the same dtype."""
    return sum(path.stat().st_size for path in Path(folder).glob("*.safetensors"))


class PromptWriter:
    """A loaded VLM. Use it for a batch of prompts, then `close()` it (or use `with`) to free its memory."""

    def __init__(self, folder: Path, *, device: torch.device, max_new_tokens: int = MAX_NEW_TOKENS) -> None:
        if not 1 <= max_new_tokens <= MAX_NEW_TOKENS_LIMIT:
            raise ValueError(f"max_new_tokens: expected 1..{MAX_NEW_TOKENS_LIMIT}, got {max_new_tokens}")
        self.device = torch.device(device)
        self.max_new_tokens = max_new_tokens
        self.tokens_read = 0  # prompt tokens (image placeholders included) of the last prompt written
        self.tokens_written = 0  # new tokens of the last prompt written
        dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(folder)
            self.image_processor = Qwen2VLImageProcessorPil.from_pretrained(folder)
            self.model = Qwen2_5_VLForConditionalGeneration.from_pretrained(folder, dtype=dtype).to(self.device).eval()
        except (OSError, ValueError, KeyError) as error:
            raise PromptWriterUnavailable(f"prompt model in {folder} could not be loaded ({error})") from error
        # The processor's own bounds (pixel counts) are "shortest_edge"/"longest_edge" in its size.
        size = self.image_processor.size
        self.max_pixels = min(getattr(size, "longest_edge", None) or MAX_PIXELS, MAX_PIXELS)
        self.min_pixels = min(max(getattr(size, "shortest_edge", None) or 0, MIN_PIXELS), self.max_pixels)
        self._image_pad = self._special("<|image_pad|>")
        self._special("<|vision_start|>")
        self._special("<|vision_end|>")
        logger.info(
            "Loaded the prompt model from {} on {} ({:.2f} GB of weights)",
            folder,
            self.device,
            weights_bytes(folder) / 1e9,
        )

    def __enter__(self) -> PromptWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Free the model: its memory goes back before the next Wan generation."""
        if getattr(self, "model", None) is None:
            return
        self.model = None
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _special(self, token: str) -> int:
        index = self.tokenizer.convert_tokens_to_ids(token)
        if index is None or index == self.tokenizer.unk_token_id:
            raise PromptWriterUnavailable(f"the prompt model's tokenizer has no {token} token: not a Qwen2.5-VL")
        return index

    def picture(self, request: PromptRequest) -> Image.Image:
        """What the model is shown: the two keyframes side by side, or the single one."""
        try:
            start = _open_image(request.start_image)
            return start if request.end_image is None else side_by_side(start, _open_image(request.end_image))
        except (OSError, UnidentifiedImageError) as error:
            raise ValueError(f"keyframe could not be read ({error})") from error

    @torch.inference_mode()
    def write(self, request: PromptRequest) -> str:
        """The prompt for one segment (ValueError when an image cannot be read or the model writes nothing)."""
        if self.model is None:
            raise RuntimeError("write: this PromptWriter is closed")
        picture = self.picture(request)
        if request.debug_image is not None:
            request.debug_image.parent.mkdir(parents=True, exist_ok=True)
            picture.save(request.debug_image, format="JPEG", quality=90)
        text = instruction(
            base_prompt=request.base_prompt,
            frames=request.frames,
            fps=request.fps,
            single_image=request.end_image is None,
        )
        bounds = {"shortest_edge": self.min_pixels, "longest_edge": self.max_pixels}
        vision = self.image_processor(images=[picture], size=bounds, return_tensors="pt")
        grid = vision["image_grid_thw"]
        image_tokens = int(grid.prod().item()) // self.image_processor.merge_size**2
        chat = (
            f"<|im_start|>system\n{text.system}<|im_end|>\n"
            f"<|im_start|>user\n<|vision_start|>{'<|image_pad|>' * image_tokens}<|vision_end|>{text.user}<|im_end|>\n"
            "<|im_start|>assistant\n"
        )
        tokens = self.tokenizer(chat, return_tensors="pt", add_special_tokens=False)
        if int((tokens["input_ids"] == self._image_pad).sum()) != image_tokens:
            raise RuntimeError("the tokenizer split the image placeholder: not a Qwen2.5-VL tokenizer")
        self.tokens_read = int(tokens["input_ids"].shape[1])
        generated = self.model.generate(
            input_ids=tokens["input_ids"].to(self.device),
            attention_mask=tokens["attention_mask"].to(self.device),
            pixel_values=vision["pixel_values"].to(self.device, self.model.dtype),
            image_grid_thw=grid.to(self.device),
            max_new_tokens=self.max_new_tokens,
            do_sample=False,
            temperature=None,
            top_p=None,
            top_k=None,
        )
        new_tokens = generated[0, tokens["input_ids"].shape[1] :]
        self.tokens_written = int(new_tokens.numel())
        prompt = " ".join(self.tokenizer.decode(new_tokens, skip_special_tokens=True).split())
        if not prompt:
            raise ValueError("the model wrote an empty prompt")
        return prompt


def _open_image(path: Path) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB")
