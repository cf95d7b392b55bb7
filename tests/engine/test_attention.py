"""Wan2GP.attention: the processor that lets a kernel other than diffusers' dispatch compute the transformers'
attention. With torch's SDPA as its product it must give exactly diffusers' own `WanAttnProcessor` output (its
projections, norms, rotary embedding and image cross-attention are ours to get right); FlashAttention-4 itself needs a
Hopper GPU (bench/segment_vs_stock.py measures it against SDPA there), so here its operator is checked through its
fake, which is what torch.compile sees, on the meta device."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from diffusers import WanTransformer3DModel
from diffusers.models.transformers.transformer_wan import WanAttention, WanAttnProcessor
from log_capture import captured_messages

from Wan2GP.attention import (
    TEXT_CONTEXT_TOKENS,
    KernelAttnProcessor,
    choose_attention_kernel,
    flash4_attention,
    flash4_installed,
    flash4_refusal,
    install_attention_kernel,
    pick_attention_kernel,
    sdpa_attention,
)
from Wan2GP.catalog import Catalog, check_attention_kernel
from Wan2GP.engine import WanEngine
from Wan2GP.loading import ModelLoadError

IMAGE_DIM = 24
IMAGE_TOKENS = 5


def _transformer(*, image_context: bool, dtype: torch.dtype) -> WanTransformer3DModel:
    torch.manual_seed(11)
    heads, head_dim = 2, 16
    extra = dict(image_dim=IMAGE_DIM, added_kv_proj_dim=heads * head_dim) if image_context else {}
    return (
        WanTransformer3DModel(
            patch_size=(1, 2, 2),
            num_attention_heads=heads,
            attention_head_dim=head_dim,
            in_channels=4,
            out_channels=4,
            text_dim=16,
            freq_dim=32,
            ffn_dim=48,
            num_layers=2,
            cross_attn_norm=True,
            qk_norm="rms_norm_across_heads",
            rope_max_seq_len=32,
            **extra,
        )
        .eval()
        .to(dtype)
    )


def _inputs(*, image_context: bool, dtype: torch.dtype, device: str = "cpu") -> dict:
    generator = torch.Generator().manual_seed(3)
    inputs = dict(
        hidden_states=torch.randn((1, 4, 3, 8, 6), generator=generator),
        timestep=torch.tensor([700.0]),
        encoder_hidden_states=torch.randn((1, TEXT_CONTEXT_TOKENS, 16), generator=generator),
    )
    if image_context:
        inputs["encoder_hidden_states_image"] = torch.randn((1, IMAGE_TOKENS, IMAGE_DIM), generator=generator)
    return {
        name: tensor.to(device, dtype if tensor.is_floating_point() and name != "timestep" else tensor.dtype)
        for name, tensor in inputs.items()
    }


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("image_context", [False, True], ids=["text", "text+image"])
def test_the_kernel_processor_with_sdpa_is_diffusers_processor(image_context: bool, dtype: torch.dtype) -> None:
    transformer = _transformer(image_context=image_context, dtype=dtype)
    inputs = _inputs(image_context=image_context, dtype=dtype)
    with torch.inference_mode():
        expected = transformer(**inputs, return_dict=False)[0]
        for module in transformer.modules():
            if isinstance(module, WanAttention):
                assert isinstance(module.processor, WanAttnProcessor)
                module.set_processor(KernelAttnProcessor(sdpa_attention))
        actual = transformer(**inputs, return_dict=False)[0]
    assert torch.equal(actual, expected)


def test_every_product_goes_through_the_kernel() -> None:
    """Self-attention, text and image cross-attention: three products per block, each by the installed kernel."""
    transformer = _transformer(image_context=True, dtype=torch.float32)
    calls: list[tuple[int, int]] = []

    def counting(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        calls.append((query.shape[1], key.shape[1]))
        return sdpa_attention(query, key, value)

    for module in transformer.modules():
        if isinstance(module, WanAttention):
            module.set_processor(KernelAttnProcessor(counting))
    with torch.inference_mode():
        transformer(**_inputs(image_context=True, dtype=torch.float32), return_dict=False)
    tokens = 3 * 4 * 3  # latent frames x (height / 2) x (width / 2)
    assert calls == [(tokens, tokens), (tokens, TEXT_CONTEXT_TOKENS), (tokens, IMAGE_TOKENS)] * 2


def test_flash4_is_installed_on_every_attention_and_traced_through_its_fake() -> None:
    """The FlashAttention-4 operator on the meta device runs its fake: the output shape a full-graph compile needs,
    here for a whole forward of a transformer whose every attention module was given the kernel."""
    transformer = _transformer(image_context=True, dtype=torch.bfloat16)
    assert install_attention_kernel(transformer, "flash4") == 2 * 2  # self- and cross-attention in each of 2 blocks
    assert all(
        isinstance(module.processor, KernelAttnProcessor) and module.processor.product is flash4_attention
        for module in transformer.modules()
        if isinstance(module, WanAttention)
    )
    query = torch.empty((1, 36, 2, 16), device="meta", dtype=torch.bfloat16)
    value = torch.empty((1, 7, 2, 8), device="meta", dtype=torch.bfloat16)
    assert flash4_attention(query, value.new_empty((1, 7, 2, 16)), value).shape == (1, 36, 2, 8)
    with torch.inference_mode():
        out = transformer.to("meta")(
            **_inputs(image_context=True, dtype=torch.bfloat16, device="meta"), return_dict=False
        )[0]
    assert out.shape == (1, 4, 3, 8, 6) and out.device.type == "meta"


def test_sdpa_leaves_diffusers_processor() -> None:
    transformer = _transformer(image_context=False, dtype=torch.float32)
    assert install_attention_kernel(transformer, "sdpa") == 0
    assert all(
        isinstance(module.processor, WanAttnProcessor)
        for module in transformer.modules()
        if isinstance(module, WanAttention)
    )


def test_choosing_the_kernel() -> None:
    cpu = torch.device("cpu")
    with captured_messages("INFO") as messages:
        assert choose_attention_kernel("auto", cpu, torch.bfloat16, context_parallel=False) == "sdpa"
    assert messages == ["attention by SDPA: cpu is not a CUDA GPU"]
    with captured_messages("INFO") as messages:
        assert choose_attention_kernel("auto", cpu, torch.bfloat16, context_parallel=True) == "sdpa"
    assert messages == [
        "attention by SDPA: context-parallel ranks keep diffusers' processor, whose hooks split the sequence"
    ]
    assert choose_attention_kernel("sdpa", cpu, torch.bfloat16, context_parallel=False) == "sdpa"
    with pytest.raises(ValueError, match=r"^attention: 'flash4' cannot run here: cpu is not a CUDA GPU$"):
        choose_attention_kernel("flash4", cpu, torch.bfloat16, context_parallel=False)
    with pytest.raises(ValueError, match=r"^attention: expected one of auto, sdpa, flash4, got 'flash3'$"):
        check_attention_kernel("flash3")


def test_picking_the_kernel_where_flash4_can_run() -> None:
    with captured_messages("INFO") as messages:
        assert pick_attention_kernel("auto", None, device="cuda:0") == "flash4"
        assert pick_attention_kernel("flash4", None, device="cuda:0") == "flash4"
        assert pick_attention_kernel("sdpa", None, device="cuda:0") == "sdpa"  # asked for: kept, whatever runs here
    assert messages == ["attention by FlashAttention-4 on cuda:0"] * 2
    with captured_messages("INFO") as messages:
        assert pick_attention_kernel("auto", "it cannot", device="cuda:0") == "sdpa"
    assert messages == ["attention by SDPA: it cannot"]


def test_which_gpus_get_flash4() -> None:
    """FlashAttention-4 runs on Hopper (9.x) and Blackwell (10.x) in bf16 or fp16, once installed; everything else is
    refused with the reason the log (auto) or the error (flash4) shows."""
    for capability in ((9, 0), (10, 0), (10, 3)):
        for dtype in (torch.bfloat16, torch.float16):
            assert flash4_refusal("cuda:1", capability, dtype, installed=True) is None
    refusals = {
        (
            "cuda:1",
            (8, 9),
            torch.bfloat16,
            True,
        ): "cuda:1 has compute capability 8.9 (FlashAttention-4 runs on 9.x and 10.x)",
        (
            "cuda:0",
            (12, 0),
            torch.bfloat16,
            True,
        ): "cuda:0 has compute capability 12.0 (FlashAttention-4 runs on 9.x and 10.x)",
        (
            "cuda:0",
            (9, 0),
            torch.float32,
            True,
        ): "the transformer computes in torch.float32 (FlashAttention-4 takes bf16 and fp16)",
        (
            "cuda:0",
            (9, 0),
            torch.bfloat16,
            False,
        ): "flash-attn-4 is not installed (pip install -r requirements-hopper.txt)",
        ("mps", None, torch.bfloat16, True): "mps is not a CUDA GPU",
    }
    for (device, capability, dtype, installed), reason in refusals.items():
        assert flash4_refusal(device, capability, dtype, installed=installed) == reason


def test_flash4_counts_as_installed_only_with_its_cute_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """FlashAttention-2 installs a `flash_attn` package too; FlashAttention-4 is its `cute` subpackage. Neither is
    installed by the tests, so each is written here as an empty package on the import path."""
    assert not flash4_installed()
    package = tmp_path / "flash_attn"
    package.mkdir()
    (package / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "flash_attn", raising=False)
    assert not flash4_installed(), "FlashAttention-2's package alone is not FlashAttention-4"
    (package / "cute").mkdir()
    (package / "cute" / "__init__.py").write_text("")
    assert flash4_installed()


def test_the_processor_refuses_an_attention_mask() -> None:
    transformer = _transformer(image_context=False, dtype=torch.float32)
    attention = next(module for module in transformer.modules() if isinstance(module, WanAttention))
    states = torch.zeros((1, 4, attention.heads * 16))
    with pytest.raises(ValueError, match=r"^KernelAttnProcessor: attention masks are not supported$"):
        KernelAttnProcessor(sdpa_attention)(attention, states, attention_mask=torch.ones((1, 1, 4, 4)))


def test_the_engine_refuses_flash4_where_it_cannot_run(cache_dir: Path, catalog: Catalog) -> None:
    engine = WanEngine(device="cpu", cache_dir=cache_dir, catalog=catalog, attention="flash4")
    with pytest.raises(ModelLoadError, match=r"^model wan_tiny_t2v: attention: 'flash4' cannot run here: cpu is"):
        engine.load("wan_tiny_t2v")
    assert engine.loaded_model() is None
    with pytest.raises(ValueError, match=r"^attention: expected one of"):
        WanEngine(device="cpu", cache_dir=cache_dir, catalog=catalog, attention="fa3")
