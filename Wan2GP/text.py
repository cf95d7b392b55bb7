"""UMT5 prompt encoding as Wan does it: clean, tokenize to 512, encode, cut to the true length, zero-pad back to 512.

There is no attention mask in Wan's cross-attention, so the zero padding is part of the model input: it must be
exactly what the model was trained with (diffusers' ``WanPipeline._get_t5_prompt_embeds`` does the same).
"""

from __future__ import annotations

import html
import re
from collections import OrderedDict

import ftfy
import torch
from transformers import PreTrainedTokenizerBase, UMT5EncoderModel

TEXT_LENGTH = 512

# Wan's default negative prompt (``sample_neg_prompt`` of the original Wan configs), used for an empty negative prompt.
WAN_DEFAULT_NEGATIVE_PROMPT = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，JPEG压缩残留，"
    "丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，手指融合，"
    "静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走"
)


def clean_prompt(text: str) -> str:
    """ftfy + double html unescape + whitespace collapse (Wan's ``whitespace_clean(basic_clean(text))``)."""
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return re.sub(r"\s+", " ", text).strip()


def first_prompt_line(prompt: str) -> str:
    """A single-window generation uses only the first line of a multi-line prompt (as upstream does)."""
    return prompt.split("\n", 1)[0]


class PromptEmbeddingCache:
    """The embeddings of recent prompts, so the text encoder runs once per distinct prompt: a travel run's segments
    share their negative prompt and often their prompt, and with the encoder offloaded each encode streams 11 GB of
    UMT5-XXL weights over the bus. Kept in host memory (4 MB per prompt at 512 x 4096 bf16), the least recently
    used dropped beyond `capacity`; the owner empties it when the text encoder changes (another model)."""

    def __init__(self, capacity: int = 32) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[tuple[str, int, torch.dtype], torch.Tensor] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: tuple[str, int, torch.dtype]) -> torch.Tensor | None:
        embeddings = self._entries.get(key)
        if embeddings is not None:
            self._entries.move_to_end(key)
        return embeddings

    def put(self, key: tuple[str, int, torch.dtype], embeddings: torch.Tensor) -> None:
        self._entries[key] = embeddings.to("cpu")
        self._entries.move_to_end(key)
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()


class PromptEncoder:
    """Turns prompts into padded UMT5 embeddings of shape (1, 512, text_dim) on the transformer's device and dtype;
    with a `cache`, a prompt seen before comes from it without running the encoder."""

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        text_encoder: UMT5EncoderModel,
        *,
        output_dtype: torch.dtype,
        text_length: int = TEXT_LENGTH,
        cache: PromptEmbeddingCache | None = None,
        device: torch.device | None = None,
    ) -> None:
        self._tokenizer = tokenizer
        self._text_encoder = text_encoder
        self._output_dtype = output_dtype
        self._text_length = text_length
        self._cache = cache
        self._device = device  # where the embeddings are wanted; default: the text encoder's device

    def encode(self, prompt: str) -> torch.Tensor:
        cleaned = clean_prompt(prompt)
        key = (cleaned, self._text_length, self._output_dtype)
        cached = self._cache.get(key) if self._cache is not None else None
        if cached is None:
            cached = self._encode(cleaned)
            if self._cache is not None:
                self._cache.put(key, cached)
        return cached.to(self._device if self._device is not None else self._text_encoder.device)

    @torch.no_grad()
    def _encode(self, cleaned: str) -> torch.Tensor:
        tokens = self._tokenizer(
            [cleaned],
            padding="max_length",
            max_length=self._text_length,
            truncation=True,
            add_special_tokens=True,
            return_attention_mask=True,
            return_tensors="pt",
        )
        device = self._text_encoder.device
        input_ids = tokens.input_ids.to(device)
        attention_mask = tokens.attention_mask.to(device)
        true_length = int(attention_mask.sum().item())
        hidden = self._text_encoder(input_ids, attention_mask).last_hidden_state[0, :true_length]
        padded = hidden.new_zeros(self._text_length, hidden.shape[-1])
        padded[:true_length] = hidden
        return padded.unsqueeze(0).to(self._output_dtype)
