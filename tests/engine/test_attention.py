"""Wan2GP.attention: the processor that lets a kernel other than diffusers' dispatch compute the transformers'
attention. With torch's SDPA as its product it must give exactly diffusers' own `WanAttnProcessor` output (its
projections, norms, rotary embedding and image cross-attention are ours to get right); FlashAttention-4 itself needs a
Hopper GPU (bench/segment_vs_stock.py measures it against SDPA there), so here its operator is checked through its
fake, which is what torch.compile sees, on the meta device. cuDNN's fp8 attention needs one too; its operator's CPU
kernel is the fp32 emulation of the same quantization (Wan2GP.attention), which lets the scaling around it be tested
here against exact attention, eagerly and compiled."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from diffusers import WanTransformer3DModel
from diffusers.models.transformers.transformer_wan import WanAttention, WanAttnProcessor
from log_capture import captured_messages

from Wan2GP.attention import (
    FP8_MAX,
    TEXT_CONTEXT_TOKENS,
    AttentionKernels,
    KernelAttnProcessor,
    choose_attention_kernel,
    cudnn_fp8_refusal,
    flash3_attention,
    flash3_installed,
    flash3_refusal,
    flash4_attention,
    flash4_installed,
    flash4_refusal,
    fp8_attention,
    install_attention_kernel,
    pick_attention_kernel,
    scaled_fp8_attention,
    sdpa_attention,
    to_fp8,
)
from Wan2GP.catalog import Catalog, check_attention_kernel
from Wan2GP.engine import WanEngine
from Wan2GP.loading import ModelLoadError

IMAGE_DIM = 24
IMAGE_TOKENS = 5


def tiny_transformer(*, image_context: bool, dtype: torch.dtype) -> WanTransformer3DModel:
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


def tiny_inputs(*, image_context: bool, dtype: torch.dtype, device: str = "cpu") -> dict:
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
    transformer = tiny_transformer(image_context=image_context, dtype=dtype)
    inputs = tiny_inputs(image_context=image_context, dtype=dtype)
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
    transformer = tiny_transformer(image_context=True, dtype=torch.float32)
    calls: list[tuple[int, int]] = []

    def counting(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        calls.append((query.shape[1], key.shape[1]))
        return sdpa_attention(query, key, value)

    for module in transformer.modules():
        if isinstance(module, WanAttention):
            module.set_processor(KernelAttnProcessor(counting))
    with torch.inference_mode():
        transformer(**tiny_inputs(image_context=True, dtype=torch.float32), return_dict=False)
    tokens = 3 * 4 * 3  # latent frames x (height / 2) x (width / 2)
    assert calls == [(tokens, tokens), (tokens, TEXT_CONTEXT_TOKENS), (tokens, IMAGE_TOKENS)] * 2


@pytest.mark.parametrize(("kernel", "product"), [("flash3", flash3_attention), ("flash4", flash4_attention)])
def test_a_flash_kernel_is_installed_on_every_attention_and_traced_through_its_fake(kernel: str, product) -> None:
    """The FlashAttention-3/4 operator on the meta device runs its fake: the output shape a full-graph compile needs,
    here for a whole forward of a transformer whose every attention module was given the kernel."""
    transformer = tiny_transformer(image_context=True, dtype=torch.bfloat16)
    # self- and cross-attention in each of 2 blocks
    assert install_attention_kernel(transformer, AttentionKernels(kernel, kernel)) == 2 * 2
    assert all(
        isinstance(module.processor, KernelAttnProcessor)
        and module.processor.product is product
        and module.processor.cross_product is product
        for module in transformer.modules()
        if isinstance(module, WanAttention)
    )
    query = torch.empty((1, 36, 2, 16), device="meta", dtype=torch.bfloat16)
    value = torch.empty((1, 7, 2, 8), device="meta", dtype=torch.bfloat16)
    assert product(query, value.new_empty((1, 7, 2, 16)), value).shape == (1, 36, 2, 8)
    with torch.inference_mode():
        out = transformer.to("meta")(
            **tiny_inputs(image_context=True, dtype=torch.bfloat16, device="meta"), return_dict=False
        )[0]
    assert out.shape == (1, 4, 3, 8, 6) and out.device.type == "meta"


def test_sdpa_leaves_diffusers_processor() -> None:
    transformer = tiny_transformer(image_context=False, dtype=torch.float32)
    assert install_attention_kernel(transformer, AttentionKernels("sdpa", "sdpa")) == 0
    assert all(
        isinstance(module.processor, WanAttnProcessor)
        for module in transformer.modules()
        if isinstance(module, WanAttention)
    )


def test_choosing_the_kernel() -> None:
    cpu = torch.device("cpu")
    with captured_messages("INFO") as messages:
        assert choose_attention_kernel("auto", cpu, torch.bfloat16, context_parallel=False, fp8_activations=False) == (
            "sdpa",
            "sdpa",
        )
        assert choose_attention_kernel("auto", cpu, torch.bfloat16, context_parallel=False, fp8_activations=True) == (
            "sdpa",
            "sdpa",
        )
    assert messages == [
        "attention by SDPA: flash3: cpu is not a CUDA GPU; flash4: cpu is not a CUDA GPU",
        "attention by SDPA: cudnn_fp8: cpu is not a CUDA GPU; flash3: cpu is not a CUDA GPU; "
        "flash4: cpu is not a CUDA GPU",
    ]
    split = "context-parallel ranks keep diffusers' processor, whose hooks split the sequence"
    with captured_messages("INFO") as messages:
        assert choose_attention_kernel("auto", cpu, torch.bfloat16, context_parallel=True, fp8_activations=True) == (
            "sdpa",
            "sdpa",
        )
    assert messages == [f"attention by SDPA: cudnn_fp8: {split}; flash3: {split}; flash4: {split}"]
    assert choose_attention_kernel("sdpa", cpu, torch.bfloat16, context_parallel=False, fp8_activations=True) == (
        "sdpa",
        "sdpa",
    )
    for kernel in ("flash3", "flash4", "cudnn_fp8"):
        with pytest.raises(ValueError, match=rf"^attention: '{kernel}' cannot run here: cpu is not a CUDA GPU$"):
            choose_attention_kernel(kernel, cpu, torch.bfloat16, context_parallel=False, fp8_activations=False)
    with pytest.raises(
        ValueError, match=r"^attention: expected one of auto, sdpa, flash3, flash4, cudnn_fp8, got 'flash2'$"
    ):
        check_attention_kernel("flash2")


def test_picking_the_kernel_where_the_gpu_kernels_can_run() -> None:
    """auto takes the fastest bf16 kernel that runs, FlashAttention-3 before 4 (the H200's figures in
    bench/README.md); one asked for by name is kept."""
    every = {"flash3": None, "flash4": None, "cudnn_fp8": None}
    no_flash3 = every | {"flash3": "not installed"}
    with captured_messages("INFO") as messages:
        assert pick_attention_kernel("auto", every, fp8_activations=False, device="cuda:0") == ("flash3", "flash3")
        assert pick_attention_kernel("auto", no_flash3, fp8_activations=False, device="cuda:0") == ("flash4", "flash4")
        assert pick_attention_kernel("flash4", every, fp8_activations=True, device="cuda:0") == ("flash4", "flash4")
        # asked for: kept, whatever runs here
        assert pick_attention_kernel("sdpa", every, fp8_activations=True, device="cuda:0") == ("sdpa", "sdpa")
    assert messages == [
        "attention by flash3 on cuda:0 (cross-attention by flash3)",
        "attention by flash4 on cuda:0 (cross-attention by flash4)",
        "attention by flash4 on cuda:0 (cross-attention by flash4)",
    ]
    with captured_messages("INFO") as messages:
        assert pick_attention_kernel(
            "auto", no_flash3 | {"flash4": "it cannot"}, fp8_activations=False, device="cuda:0"
        ) == ("sdpa", "sdpa")
    assert messages == ["attention by SDPA: flash3: not installed; flash4: it cannot"]
    with pytest.raises(ValueError, match=r"^attention: 'flash3' cannot run here: not installed$"):
        pick_attention_kernel("flash3", no_flash3, fp8_activations=False, device="cuda:0")


def test_the_fast_path_takes_fp8_attention_for_the_self_attention_only() -> None:
    """fp8 attention rounds far beyond bf16: "auto" takes it only where the blocks' activations are fp8 already, and
    only for the self-attention; the cross-attention keeps the fastest bf16 kernel that runs."""
    no_flash3 = {"flash3": "not installed"}
    with captured_messages("INFO") as messages:
        assert pick_attention_kernel(
            "auto", no_flash3 | {"flash4": None, "cudnn_fp8": None}, fp8_activations=True, device="cuda:0"
        ) == ("cudnn_fp8", "flash4")
        assert pick_attention_kernel(
            "auto", {"flash3": None, "flash4": None, "cudnn_fp8": None}, fp8_activations=True, device="cuda:0"
        ) == ("cudnn_fp8", "flash3")
        assert pick_attention_kernel(
            "auto", no_flash3 | {"flash4": "not installed", "cudnn_fp8": None}, fp8_activations=True, device="cuda:1"
        ) == ("cudnn_fp8", "sdpa")
        assert pick_attention_kernel(
            "auto", no_flash3 | {"flash4": None, "cudnn_fp8": "too old"}, fp8_activations=True, device="cuda:0"
        ) == ("flash4", "flash4")
        # asked for by name, it runs without the fast path too
        assert pick_attention_kernel(
            "cudnn_fp8",
            no_flash3 | {"flash4": "not installed", "cudnn_fp8": None},
            fp8_activations=False,
            device="cuda:0",
        ) == ("cudnn_fp8", "sdpa")
    assert messages == [
        "attention by cudnn_fp8 on cuda:0 (cross-attention by flash4)",
        "attention by cudnn_fp8 on cuda:0 (cross-attention by flash3)",
        "attention by cudnn_fp8 on cuda:1 (cross-attention by sdpa)",
        "attention by flash4 on cuda:0 (cross-attention by flash4)",
        "attention by cudnn_fp8 on cuda:0 (cross-attention by sdpa)",
    ]
    with pytest.raises(ValueError, match=r"^attention: 'cudnn_fp8' cannot run here: too old$"):
        pick_attention_kernel(
            "cudnn_fp8", no_flash3 | {"flash4": None, "cudnn_fp8": "too old"}, fp8_activations=True, device="cuda:0"
        )


def test_what_a_cuda_device_reports_reaches_the_refusals(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a CUDA device the refusals get its compute capability, the transformer's dtype and what is installed. There
    is no GPU here: torch's capability query, FA4's import check and cuDNN's version are replaced by stand-ins that
    answer as a 9.0 GPU would, with and without the packages."""
    import Wan2GP.attention as attention

    asked: list[torch.device] = []

    def capability(device: torch.device) -> tuple[int, int]:
        asked.append(device)
        return (9, 0)

    monkeypatch.setattr(torch.cuda, "get_device_capability", capability)
    monkeypatch.setattr(attention, "flash3_installed", lambda: False)
    monkeypatch.setattr(attention, "flash4_installed", lambda: False)
    monkeypatch.setattr(attention, "cudnn_frontend_backend_version", lambda: None)
    gpu = torch.device("cuda:1")
    install = "(pip install -r requirements-hopper.txt)"
    assert attention.flash4_unavailable(gpu, torch.bfloat16) == f"flash-attn-4 is not installed {install}"
    assert attention.cudnn_fp8_unavailable(gpu, torch.bfloat16) == f"nvidia-cudnn-frontend is not installed {install}"
    assert attention.flash4_unavailable(gpu, torch.float32) == (
        "the transformer computes in torch.float32 (FlashAttention-4 takes bf16 and fp16)"
    )
    assert attention.cudnn_fp8_unavailable(gpu, torch.float32) == (
        "the transformer computes in torch.float32 (cuDNN's fp8 attention takes bf16 and fp16)"
    )
    assert attention.flash3_unavailable(gpu, torch.bfloat16) == (
        "flash-attn-3 is not installed (it is built from source: bench/README.md)"
    )
    assert asked == [gpu] * 5
    monkeypatch.setattr(attention, "flash4_installed", lambda: True)
    monkeypatch.setattr(attention, "cudnn_frontend_backend_version", lambda: 91000)
    assert attention.flash4_unavailable(gpu, torch.bfloat16) is None
    assert attention.cudnn_fp8_unavailable(gpu, torch.bfloat16) is None
    assert choose_attention_kernel("auto", gpu, torch.bfloat16, context_parallel=False, fp8_activations=True) == (
        "cudnn_fp8",
        "flash4",
    )
    # off the fast path cuDNN's frontend is not even imported (importing it loads cuDNN's library)
    monkeypatch.setattr(attention, "cudnn_frontend_backend_version", lambda: pytest.fail("cuDNN's version was read"))
    assert choose_attention_kernel("auto", gpu, torch.bfloat16, context_parallel=False, fp8_activations=False) == (
        "flash4",
        "flash4",
    )
    monkeypatch.setattr(attention, "flash3_installed", lambda: True)
    assert attention.flash3_unavailable(gpu, torch.bfloat16) is None
    assert choose_attention_kernel("auto", gpu, torch.bfloat16, context_parallel=False, fp8_activations=False) == (
        "flash3",
        "flash3",
    )


def test_which_gpus_get_cudnn_fp8() -> None:
    for capability in ((9, 0), (10, 0)):
        for dtype in (torch.bfloat16, torch.float16):
            assert cudnn_fp8_refusal("cuda:0", capability, dtype, cudnn_version=90100) is None
    refusals = {
        (
            "cuda:1",
            (8, 9),
            torch.bfloat16,
            91000,
        ): "cuda:1 has compute capability 8.9 (cuDNN's fp8 attention runs on 9.x and 10.x)",
        (
            "cuda:0",
            (12, 0),
            torch.bfloat16,
            91000,
        ): "cuda:0 has compute capability 12.0 (cuDNN's fp8 attention runs on 9.x and 10.x)",
        (
            "cuda:0",
            (9, 0),
            torch.float32,
            91000,
        ): "the transformer computes in torch.float32 (cuDNN's fp8 attention takes bf16 and fp16)",
        (
            "cuda:0",
            (9, 0),
            torch.bfloat16,
            None,
        ): "nvidia-cudnn-frontend is not installed (pip install -r requirements-hopper.txt)",
        ("cuda:0", (9, 0), torch.bfloat16, 90099): "cuDNN 90099 is older than 9.1 (its first fp8 attention forward)",
        ("cpu", None, torch.bfloat16, 91000): "cpu is not a CUDA GPU",
    }
    for (device, capability, dtype, version), reason in refusals.items():
        assert cudnn_fp8_refusal(device, capability, dtype, cudnn_version=version) == reason


def _exact_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    return sdpa_attention(query.double(), key.double(), value.double())


def _relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual.double() - expected).norm() / expected.norm())


def test_fp8_scaling_maps_each_tensor_onto_e4m3() -> None:
    generator = torch.Generator().manual_seed(5)
    tensor = torch.randn((1, 64, 2, 16), generator=generator) * 37.0
    tensor[0, 3, 1, 7] = -150.0  # the largest magnitude: it must land exactly on -FP8_MAX
    quantized, descale = to_fp8(tensor.bfloat16())
    assert quantized.dtype == torch.float8_e4m3fn and descale.shape == (1, 1, 1, 1)
    assert descale.dtype == torch.float32 and float(descale) == pytest.approx(150.0 / FP8_MAX)
    assert float(quantized.float()[0, 3, 1, 7]) == -FP8_MAX
    restored = quantized.float() * descale
    # e4m3 keeps 3 mantissa bits: half a step is 2^-4 of the magnitude, in its normal range
    normal = tensor.abs() > 2**-6 * float(descale)
    assert ((restored - tensor).abs()[normal] <= tensor.abs()[normal] * 2**-4 * 1.01).all()
    zeros, zero_descale = to_fp8(torch.zeros((1, 4, 1, 8)))
    assert not zeros.float().any() and torch.isfinite(zero_descale).all()


def test_fp8_attention_is_attention_to_fp8_precision() -> None:
    """Through the operator's CPU kernel (the emulation of cuDNN's steps): a few percent from exact attention on
    random inputs (fp8 keeps 3 mantissa bits; bf16 SDPA is 0.4% there), whatever the inputs' scale."""
    generator = torch.Generator().manual_seed(2)
    query, key, value = (torch.randn((1, 96, 2, 32), generator=generator) for _ in range(3))
    for scale in (1.0, 3.0, 1e-3):  # flat, peaked, tiny: the per-tensor scales must follow the inputs
        expected = _exact_attention(query * scale, key, value * scale)
        out = fp8_attention((query * scale).bfloat16(), key.bfloat16(), (value * scale).bfloat16())
        assert out.dtype == torch.bfloat16 and out.shape == query.shape
        assert 0.005 < _relative_error(out, expected) < 0.1, scale


def test_fp8_attention_compiled_is_fp8_attention() -> None:
    """A full-graph compile traces the scaling around the opaque operator and takes the output's layout from its
    fake: the same values as eager. (scripts/mutation.py leaves this test out: dynamo cannot trace mutmut's
    trampolines.)"""
    generator = torch.Generator().manual_seed(2)
    query, key, value = (torch.randn((1, 96, 2, 32), generator=generator).bfloat16() for _ in range(3))
    compiled = torch.compile(fp8_attention, fullgraph=True, backend="aot_eager")
    assert torch.equal(compiled(query, key, value), fp8_attention(query, key, value))


def _softmax_weighted(scores: list[float], values: list[float], *, round_probabilities: bool) -> float:
    """One output of the emulated kernel, by hand: the weights relative to the row's maximum score, optionally rounded
    to fp8 at 448, average the values; the result rounded to fp8."""
    weights = (torch.tensor(scores) - max(scores)).exp()
    used = (weights * 448).to(torch.float8_e4m3fn).float() / 448 if round_probabilities else weights
    return float(((used * torch.tensor(values)).sum() / weights.sum()).to(torch.float8_e4m3fn))


def test_the_fp8_operator_rounds_its_probabilities_and_output_to_fp8() -> None:
    """Two queries over three keys whose scores are known (every operand exact in fp8): each output is the weighted
    mean of the values, with the softmax weights taken against its own row's maximum and rounded to fp8 at 448, then
    itself rounded to fp8 in value's scale. The first row's numbers are chosen so that leaving the weights unrounded
    changes its output; the second row's maximum is far above the first's."""
    key = torch.zeros((1, 3, 1, 4))
    key[0, :, 0, 0] = torch.tensor([0.75, 0.375, 0.0])
    query = torch.zeros((1, 2, 1, 4))
    query[0, :, 0, 0] = torch.tensor([0.25, 8.0])  # scores 0.09375, 0.046875, 0 and 3, 1.5, 0 (1/sqrt(4) scale)
    value = torch.zeros((1, 3, 1, 4))
    value[0, :, 0, 0] = torch.tensor([448.0, 448.0, 0.0])
    value[0, :, 0, 1] = torch.tensor([0.0, 0.0, 448.0])
    unit = torch.ones((1, 1, 1, 1))
    out = scaled_fp8_attention(*(t.to(torch.float8_e4m3fn) for t in (query, key, value)), unit, unit, unit)
    assert out.dtype == torch.float8_e4m3fn
    for row, scores in enumerate(([0.09375, 0.046875, 0.0], [3.0, 1.5, 0.0])):
        expected = [
            _softmax_weighted(scores, list(value[0, :, 0, channel]), round_probabilities=True) for channel in (0, 1)
        ]
        assert out.float()[0, row, 0, :2].tolist() == expected, row
        assert out.float()[0, row, 0, 2:].tolist() == [0.0, 0.0]
    unrounded = _softmax_weighted([0.09375, 0.046875, 0.0], [448.0, 448.0, 0.0], round_probabilities=False)
    assert float(out.float()[0, 0, 0, 0]) != unrounded, "the test must tell rounded weights from exact ones"
    # the fake agrees with the kernel on shape, dtype and strides (torch's schema checks do arithmetic fp8 lacks)
    operands = (*(t.to(torch.float8_e4m3fn) for t in (query, key, value)), unit, unit, unit)
    torch.library.opcheck(scaled_fp8_attention, operands, test_utils=("test_faketensor",))


def test_the_fast_paths_kernels_in_a_whole_transformer() -> None:
    """cudnn_fp8 for the self-attention and sdpa for the text and image cross-attention, installed on a bf16
    transformer: its output stays within fp8's rounding of the sdpa transformer's, and differs from it."""
    transformer = tiny_transformer(image_context=True, dtype=torch.bfloat16)
    inputs = tiny_inputs(image_context=True, dtype=torch.bfloat16)
    with torch.inference_mode():
        expected = transformer(**inputs, return_dict=False)[0]
        assert install_attention_kernel(transformer, AttentionKernels("cudnn_fp8", "sdpa")) == 4
        actual = transformer(**inputs, return_dict=False)[0]
    processors = {m.processor for m in transformer.modules() if isinstance(m, WanAttention)}
    assert all(isinstance(processor, KernelAttnProcessor) for processor in processors)
    assert {(processor.product, processor.cross_product) for processor in processors} == {
        (fp8_attention, sdpa_attention)
    }
    error = float((actual.float() - expected.float()).norm() / expected.float().norm())
    assert 1e-3 < error < 0.05


def test_the_processor_gives_the_cross_attention_its_own_kernel() -> None:
    """Self-attention through `product`, the text and image cross-attention through `cross_product`."""
    transformer = tiny_transformer(image_context=True, dtype=torch.float32)
    calls: list[tuple[str, int]] = []

    def counting(name: str):
        def product(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
            calls.append((name, key.shape[1]))
            return sdpa_attention(query, key, value)

        return product

    for module in transformer.modules():
        if isinstance(module, WanAttention):
            module.set_processor(KernelAttnProcessor(counting("self"), counting("cross")))
    with torch.inference_mode():
        transformer(**tiny_inputs(image_context=True, dtype=torch.float32), return_dict=False)
    tokens = 3 * 4 * 3
    assert calls == [("self", tokens), ("cross", TEXT_CONTEXT_TOKENS), ("cross", IMAGE_TOKENS)] * 2


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


def test_which_gpus_get_flash3() -> None:
    """FlashAttention-3's kernels are Hopper's (9.x) only, in bf16 or fp16, once built and installed."""
    for dtype in (torch.bfloat16, torch.float16):
        assert flash3_refusal("cuda:0", (9, 0), dtype, installed=True) is None
    refusals = {
        ("cuda:1", (8, 9), torch.bfloat16, True): "cuda:1 has compute capability 8.9 (FlashAttention-3 runs on 9.x)",
        ("cuda:0", (10, 0), torch.bfloat16, True): "cuda:0 has compute capability 10.0 (FlashAttention-3 runs on 9.x)",
        ("cuda:0", (9, 0), torch.float32, True): (
            "the transformer computes in torch.float32 (FlashAttention-3 takes bf16 and fp16)"
        ),
        ("cuda:0", (9, 0), torch.bfloat16, False): (
            "flash-attn-3 is not installed (it is built from source: bench/README.md)"
        ),
        ("cpu", None, torch.bfloat16, True): "cpu is not a CUDA GPU",
    }
    for (device, capability, dtype, installed), reason in refusals.items():
        assert flash3_refusal(device, capability, dtype, installed=installed) == reason


def test_flash3_counts_as_installed_only_with_its_interface_and_its_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FlashAttention-3 installs the module `flash_attn_interface` beside its compiled package `flash_attn_3`; both
    are written here as empty stand-ins on the import path (the tests install neither)."""
    assert not flash3_installed()
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "flash_attn_interface.py").write_text("")
    assert not flash3_installed(), "the interface without its compiled package cannot run"
    (tmp_path / "flash_attn_3").mkdir()
    (tmp_path / "flash_attn_3" / "__init__.py").write_text("")
    assert flash3_installed()


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
    transformer = tiny_transformer(image_context=False, dtype=torch.float32)
    attention = next(module for module in transformer.modules() if isinstance(module, WanAttention))
    states = torch.zeros((1, 4, attention.heads * 16))
    with pytest.raises(ValueError, match=r"^KernelAttnProcessor: attention masks are not supported$"):
        KernelAttnProcessor(sdpa_attention)(attention, states, attention_mask=torch.ones((1, 1, 4, 4)))


@pytest.mark.parametrize("kernel", ["flash3", "flash4", "cudnn_fp8"])
def test_the_engine_refuses_a_gpu_kernel_where_it_cannot_run(cache_dir: Path, catalog: Catalog, kernel: str) -> None:
    engine = WanEngine(device="cpu", cache_dir=cache_dir, catalog=catalog, attention=kernel)
    with pytest.raises(ModelLoadError, match=rf"^model wan_tiny_t2v: attention: '{kernel}' cannot run here: cpu is"):
        engine.load("wan_tiny_t2v")
    assert engine.loaded_model() is None
    with pytest.raises(ValueError, match=r"^attention: expected one of"):
        WanEngine(device="cpu", cache_dir=cache_dir, catalog=catalog, attention="fa3")
