"""Wan2GP.feed_forward: the feed-forward's first Linear with its tanh GELU in cuBLASLt's epilogue. The fused GEMM is
CUDA's (bench/block_fusions.py measures its time and error on the H200); here: where it is taken, that the modules it
replaces keep their names and, off the GPU, diffusers' output bit for bit, and its reshaping around the GEMM, through
torch's CPU kernel of the same op (which applies the exact GELU instead of the tanh one)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from diffusers import WanTransformer3DModel
from diffusers.models.activations import GELU
from peft import LoraConfig, inject_adapter_in_model
from test_attention import tiny_inputs, tiny_transformer

from Wan2GP.feed_forward import EpilogueGelu, gelu_epilogue_applies, install_gelu_epilogue
from Wan2GP.quantization import quantize_transformer


def _transformer(dtype: torch.dtype = torch.float32) -> WanTransformer3DModel:
    return tiny_transformer(image_context=False, dtype=dtype).eval()


def _inputs(dtype: torch.dtype = torch.float32) -> dict:
    return tiny_inputs(image_context=False, dtype=dtype) | {"return_dict": False}


def test_installing_keeps_the_names_and_off_the_gpu_the_output() -> None:
    transformer = _transformer()
    names = list(transformer.state_dict())
    with torch.inference_mode():
        before = transformer(**_inputs())[0]
    assert install_gelu_epilogue(transformer) == 2
    assert all(isinstance(block.ffn.net[0], EpilogueGelu) for block in transformer.blocks)
    assert install_gelu_epilogue(transformer) == 0, "an installed module is not wrapped again"
    # the same parameter names: LoRA targets (blocks.N.ffn.net.0.proj), quantization and state dicts see no change
    assert list(transformer.state_dict()) == names
    with torch.inference_mode():
        assert torch.equal(transformer(**_inputs())[0], before)


def test_the_fused_gemm_is_taken_only_where_it_computes_diffusers_gelu() -> None:
    linear = torch.nn.Linear(8, 12).to(torch.bfloat16)
    assert gelu_epilogue_applies(linear, "cuda", torch.bfloat16)
    assert gelu_epilogue_applies(linear.half(), "cuda", torch.float16)
    linear = linear.to(torch.bfloat16)
    assert not gelu_epilogue_applies(linear, "cpu", torch.bfloat16), "torch's CPU kernel applies the exact GELU"
    assert not gelu_epilogue_applies(linear, "cuda", torch.float32), "the input's dtype is not the weight's"
    assert not gelu_epilogue_applies(linear.float(), "cuda", torch.float32), "cuBLASLt's GELU epilogue is 16-bit here"
    assert not gelu_epilogue_applies(torch.nn.Linear(8, 12, bias=False).to(torch.bfloat16), "cuda", torch.bfloat16)

    # peft's unmerged adapters replace the Linear: their term must be added before the GELU
    transformer = _transformer(torch.bfloat16)
    install_gelu_epilogue(transformer)
    inject_adapter_in_model(LoraConfig(r=2, target_modules=["ffn.net.0.proj"]), transformer)
    proj = transformer.blocks[0].ffn.net[0].proj
    assert type(proj) is not torch.nn.Linear
    assert not gelu_epilogue_applies(proj, "cuda", torch.bfloat16)

    # 8-bit weights are torchao tensor subclasses, which the fused GEMM cannot take
    transformer = _transformer(torch.bfloat16)
    quantize_transformer(transformer, "int8", work_device=torch.device("cpu"), keep_on=torch.device("cpu"))
    proj = transformer.blocks[0].ffn.net[0].proj
    assert type(proj) is torch.nn.Linear and proj.weight.dtype == torch.bfloat16
    assert not gelu_epilogue_applies(proj, "cuda", torch.bfloat16)


def test_the_fused_path_reshapes_around_the_gemm(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fused branch forced on a CPU, where torch's kernel of the same op applies the exact GELU: against
    gelu(linear(x)) with the exact GELU, tokens in two leading dimensions."""
    import Wan2GP.feed_forward as feed_forward

    monkeypatch.setattr(feed_forward, "gelu_epilogue_applies", lambda proj, device_type, dtype: True)
    activation = GELU(8, 12, approximate="tanh")
    fused = EpilogueGelu(activation.proj)
    x = torch.randn((2, 5, 8), generator=torch.Generator().manual_seed(6))
    expected = F.gelu(F.linear(x, activation.proj.weight, activation.proj.bias))
    with torch.inference_mode():
        torch.testing.assert_close(fused(x), expected, rtol=1e-6, atol=1e-6)


def test_compiled_blocks_trace_the_checks_on_8bit_weights() -> None:
    """A full-graph compile (dynamo's eager backend) of blocks whose Linear weights are torchao's 8-bit subclasses, as
    the engine compiles them: the checks in the forward trace, the fallback is taken, the output is the uncompiled
    one's."""
    transformer = _transformer(torch.bfloat16)
    quantize_transformer(transformer, "int8", work_device=torch.device("cpu"), keep_on=torch.device("cpu"))
    install_gelu_epilogue(transformer)
    inputs = _inputs(torch.bfloat16)
    with torch.inference_mode():
        expected = transformer(**inputs)[0]
        transformer.compile_repeated_blocks(fullgraph=True, backend="eager")
        assert torch.equal(transformer(**inputs)[0], expected)
