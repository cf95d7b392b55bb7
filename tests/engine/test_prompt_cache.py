"""The engine's prompt-embedding cache (Wan2GP.text.PromptEmbeddingCache): a prompt seen before is not encoded again,
gives the same video as encoding it, and a different prompt, a bounded cache or another model never reuses stale
embeddings."""

from __future__ import annotations

import torch

from Wan2GP.engine import WanEngine
from Wan2GP.text import PromptEmbeddingCache


def render(engine: WanEngine, prompt: str, **params: object) -> torch.Tensor:
    request = engine.resolve({"model": "wan_tiny_t2v", "prompt": prompt, "seed": 3, "num_inference_steps": 2, **params})
    return engine.render(request).latents


def count_encoder_runs(engine: WanEngine, model: str = "wan_tiny_t2v") -> list[int]:
    runs = [0]
    engine.load(model).text_encoder.register_forward_hook(lambda *_: runs.__setitem__(0, runs[0] + 1))
    return runs


def test_a_prompt_seen_before_is_not_encoded_again_and_gives_the_same_video(cache_dir, catalog) -> None:  # noqa: ANN001
    engine = WanEngine(device="cpu", cache_dir=cache_dir, catalog=catalog)
    runs = count_encoder_runs(engine)
    first = render(engine, "a red kite over the dunes", guidance_scale=3.0)
    assert runs[0] == 2  # the prompt and the negative prompt (guidance 3: CFG)
    again = render(engine, "a red  kite over the dunes ", guidance_scale=3.0)  # the same prompt once cleaned
    assert runs[0] == 2
    assert torch.equal(again, first)

    other = render(engine, "a blue kite over the sea", guidance_scale=3.0)
    assert runs[0] == 3  # only the new prompt: the negative prompt came from the cache
    assert not torch.allclose(other, first)
    engine.unload()


def test_a_fresh_engine_gives_what_the_cached_one_gave(cache_dir, catalog) -> None:  # noqa: ANN001
    warm = WanEngine(device="cpu", cache_dir=cache_dir, catalog=catalog)
    render(warm, "a red kite over the dunes")
    cached = render(warm, "a red kite over the dunes")
    cold = WanEngine(device="cpu", cache_dir=cache_dir, catalog=catalog)
    assert torch.equal(render(cold, "a red kite over the dunes"), cached)
    warm.unload()
    cold.unload()


def test_another_model_starts_with_an_empty_cache(cache_dir, catalog) -> None:  # noqa: ANN001
    engine = WanEngine(device="cpu", cache_dir=cache_dir, catalog=catalog)
    render(engine, "a red kite over the dunes")
    assert len(engine._prompt_cache) > 0
    engine.load("wan_tiny_t2v_2_2")  # another model (its own text encoder) replaces the first
    assert len(engine._prompt_cache) == 0
    engine.unload()


def test_the_cache_keeps_the_most_recently_used_prompts() -> None:
    cache = PromptEmbeddingCache(capacity=2)
    key = lambda text: (text, 512, torch.float32)  # noqa: E731
    cache.put(key("a"), torch.zeros(1))
    cache.put(key("b"), torch.ones(1))
    assert cache.get(key("a")) is not None  # "a" used: "b" is now the oldest
    cache.put(key("c"), torch.full((1,), 2.0))
    assert cache.get(key("b")) is None
    assert torch.equal(cache.get(key("a")), torch.zeros(1)) and torch.equal(cache.get(key("c")), torch.full((1,), 2.0))
    assert len(cache) == 2
