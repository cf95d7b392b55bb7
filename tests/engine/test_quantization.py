"""8-bit transformer weights (Wan2GP.quantization): what the engine quantizes, that videos stay close to the 16-bit
ones under every placement with LoRAs still applied, that the engine falls back to them when host memory is short,
and the model-definition setting that asks for them.

The error and speed against 16 bits at real size come from bench/memory_profiles.py on an H200 (bench/README.md);
here the tiny models run the same code on the CPU (torchao's weight-only int8 and float8 layouts work there).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from log_capture import captured_messages
from test_generate_with_lora import write_lora

from Wan2GP.catalog import Catalog, default_catalog_dir, load_catalog
from Wan2GP.engine import WanEngine
from Wan2GP.offload import consolidate
from Wan2GP.placement import host_bytes, needed_bytes
from Wan2GP.quantization import (
    fp8_matmuls_available,
    inner_tensors,
    is_quantized,
    quantize_transformer,
    tensor_bytes,
    torchao_config,
    transformer_blocks,
)


def render_latents(engine: WanEngine, **params: object) -> torch.Tensor:
    base = dict(prompt="a bird flies over the sea", seed=5, num_inference_steps=4)
    return engine.render(engine.resolve({**base, **params})).latents


def relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    return float((value - reference).norm() / reference.norm())


@pytest.fixture(scope="module")
def loras(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    folder = tmp_path_factory.mktemp("quantized_loras")
    return [str(write_lora(folder / f"lora{seed}.safetensors", seed=seed)) for seed in (1, 2)]


def two_phase_lora_params(loras: list[str]) -> dict[str, object]:
    return dict(model="wan_tiny_t2v_2_2", guidance_phases=2, activated_loras=loras, loras_multipliers="0.8;0 0;1.1")


def test_only_the_blocks_linear_weights_are_quantized(engine: WanEngine) -> None:
    transformer = copy.deepcopy(engine.load("wan_tiny_vace_2_2").transformers["high"])
    quantize_transformer(transformer, "int8", work_device=torch.device("cpu"), keep_on=torch.device("cpu"))
    blocks = transformer_blocks(transformer)
    assert len(blocks) == len(transformer.blocks) + len(transformer.vace_blocks)  # VACE's blocks as well
    for block in blocks:
        linears = [module for module in block.modules() if isinstance(module, torch.nn.Linear)]
        assert linears and all(is_quantized(linear.weight) for linear in linears)
        assert all(not is_quantized(linear.bias) for linear in linears if linear.bias is not None)
    block_ids = {id(module) for block in blocks for module in block.modules()}
    rest = [module for module in transformer.modules() if isinstance(module, torch.nn.Linear)]
    rest = [module for module in rest if id(module) not in block_ids]
    assert rest and not any(is_quantized(linear.weight) for linear in rest)  # embedders and head keep float32
    # an int8 weight holds one byte per element plus a float32 scale and an int8 zero point per output row
    linear = blocks[0].attn1.to_q
    assert tensor_bytes(linear.weight) == linear.out_features * (linear.in_features + 4 + 1)


def test_consolidation_moves_an_8_bit_weights_inner_tensors_and_keeps_its_output(engine: WanEngine) -> None:
    transformer = copy.deepcopy(engine.load("wan_tiny_t2v").transformers["high"])
    quantize_transformer(transformer, "int8", work_device=torch.device("cpu"), keep_on=torch.device("cpu"))
    block = transformer.blocks[0]
    linear = block.attn1.to_q
    x = torch.randn(1, 5, linear.in_features, generator=torch.Generator().manual_seed(0))
    before = linear(x)
    wrapper = linear.weight

    buffer = consolidate([block])

    assert buffer is not None
    start, end = buffer.data_ptr(), buffer.data_ptr() + buffer.numel()
    assert linear.weight is wrapper and is_quantized(linear.weight)  # the parameter stays the module's
    for name, inner in inner_tensors(linear.weight):
        assert start <= inner.data_ptr() < end, name
    assert buffer.numel() >= sum(tensor_bytes(t) for t in block.parameters())
    assert torch.equal(linear(x), before)


@pytest.mark.parametrize("placement", ["resident", "stream_blocks"])
def test_int8_weights_render_close_to_16_bit_with_their_loras_under_each_placement(
    engine: WanEngine, cache_dir: Path, catalog: Catalog, loras: list[str], placement: str
) -> None:
    params = two_phase_lora_params(loras)
    reference = render_latents(engine, **params)
    quantized = WanEngine(
        device="cpu", cache_dir=cache_dir, catalog=catalog, placement=placement, transformer_weights="int8"
    )
    with_loras = render_latents(quantized, **params)
    without = render_latents(quantized, model="wan_tiny_t2v_2_2", guidance_phases=2)
    model = quantized.load("wan_tiny_t2v_2_2")
    assert quantized.placement is not None and quantized.placement.weights == "int8"
    assert all(is_quantized(t.blocks[0].ffn.net[2].weight) for t in model.transformers.values())

    # close to the 16-bit video, but not equal to it: the weights really were quantized
    assert 1e-4 < relative_error(with_loras, reference) < 3e-2
    # the LoRAs still apply on top of the 8-bit Linear layers (unmerged), and leave nothing behind
    assert relative_error(with_loras, without) > 0.1
    for transformer in model.transformers.values():
        assert not getattr(transformer, "peft_config", None)
    quantized.unload()


def test_int8_streamed_blocks_render_what_int8_resident_ones_do(
    cache_dir: Path, catalog: Catalog, loras: list[str]
) -> None:
    params = two_phase_lora_params(loras)
    videos = {}
    for placement in ("resident", "stream_blocks"):
        engine = WanEngine(
            device="cpu", cache_dir=cache_dir, catalog=catalog, placement=placement, transformer_weights="int8"
        )
        videos[placement] = render_latents(engine, **params)
        engine.unload()
    assert torch.allclose(videos["stream_blocks"], videos["resident"], atol=1e-4, rtol=0)


def test_short_host_memory_makes_the_engine_choose_8_bit_weights(cache_dir: Path, catalog: Catalog) -> None:
    probe = WanEngine(device="cpu", cache_dir=cache_dir, catalog=catalog)
    probe.load("wan_tiny_t2v_2_2", width=64, height=64, num_frames=9)
    native = probe._sizes
    assert native is not None
    probe.unload()
    probe = WanEngine(device="cpu", cache_dir=cache_dir, catalog=catalog, transformer_weights="int8")
    probe.load("wan_tiny_t2v_2_2", width=64, height=64, num_frames=9)
    int8 = probe._sizes
    assert int8 is not None
    probe.unload()
    work = native.work_for(latent_frames=3, width=64, height=64)
    # a budget where only streaming fits, and host memory for the 8-bit streamed blocks but not the 16-bit ones
    budget = needed_bytes("stream_blocks", native, work, vae_tiling=False)
    host = host_bytes("stream_blocks", int8)
    assert host_bytes("stream_blocks", native) > host
    engine = WanEngine(device="cpu", cache_dir=cache_dir, catalog=catalog, vram_budget=budget, host_budget=host)

    with captured_messages("INFO") as logs:
        model = engine.load("wan_tiny_t2v_2_2", width=64, height=64, num_frames=9)

    assert engine.placement is not None
    assert (engine.placement.kind, engine.placement.weights) == ("stream_blocks", "int8")
    assert is_quantized(model.transformers["high"].blocks[0].attn1.to_q.weight)
    assert any("stream_blocks, int8 transformer weights" in line for line in logs)
    engine.unload()

    # with the host memory 16 bits need, 16 bits it is
    enough = host_bytes("stream_blocks", native)
    roomy = WanEngine(device="cpu", cache_dir=cache_dir, catalog=catalog, vram_budget=budget, host_budget=enough)
    model = roomy.load("wan_tiny_t2v_2_2", width=64, height=64, num_frames=9)
    assert roomy.placement is not None and roomy.placement.weights == "native"
    assert not is_quantized(model.transformers["high"].blocks[0].attn1.to_q.weight)
    roomy.unload()


def _definition_with(folder: Path, **model_keys: object) -> Path:
    data = json.loads((default_catalog_dir() / "wan_tiny_t2v.json").read_text())
    data["model"].update(model_keys)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "wan_tiny_t2v_8bit.json").write_text(json.dumps(data))
    return folder


def test_the_model_definition_can_ask_for_fp8_weights(tmp_path: Path, cache_dir: Path) -> None:
    catalog = load_catalog(extra_dirs=[_definition_with(tmp_path / "defaults", transformer_weights="fp8")])
    assert catalog.get("wan_tiny_t2v_8bit").transformer_weights == "fp8"
    engine = WanEngine(device="cpu", cache_dir=cache_dir, catalog=catalog)
    model = engine.load("wan_tiny_t2v_8bit")
    assert engine.placement is not None and engine.placement.weights == "fp8"
    weight = model.transformers["high"].blocks[0].attn1.to_q.weight
    assert dict(inner_tensors(weight))["qdata"].dtype == torch.float8_e4m3fn
    # the engine's own setting wins over the definition's
    engine = WanEngine(device="cpu", cache_dir=cache_dir, catalog=catalog, transformer_weights="native")
    assert not is_quantized(engine.load("wan_tiny_t2v_8bit").transformers["high"].blocks[0].attn1.to_q.weight)
    engine.unload()


def test_fp8_activations_fall_back_to_auto_where_no_fp8_matmul_runs(tmp_path: Path, cache_dir: Path) -> None:
    """The fast path's format on this CPU (torchao refuses fp8 x fp8 matmuls below CUDA compute capability 8.9): the
    weights are what "auto" gives, native here; asked for by the definition or by the engine (the worker's --fast)."""
    assert not fp8_matmuls_available(torch.device("cpu"))
    assert type(torchao_config("fp8_dynamic")).__name__ == "Float8DynamicActivationFloat8WeightConfig"
    catalog = load_catalog(extra_dirs=[_definition_with(tmp_path / "defaults", transformer_weights="fp8_dynamic")])
    for engine in (
        WanEngine(device="cpu", cache_dir=cache_dir, catalog=catalog),
        WanEngine(device="cpu", cache_dir=cache_dir, catalog=load_catalog(), transformer_weights="fp8_dynamic"),
    ):
        model_id = "wan_tiny_t2v_8bit" if "wan_tiny_t2v_8bit" in engine.catalog else "wan_tiny_t2v"
        with captured_messages("INFO") as logs:
            transformer = engine.load(model_id).transformers["high"]
        assert engine.placement is not None and engine.placement.weights == "native"
        assert not is_quantized(transformer.blocks[0].attn1.to_q.weight)
        assert f"{model_id} asks for fp8 activations, which cpu cannot run: its weights as 'auto'" in logs
        engine.unload()


def test_the_engines_vae_dtype_overrides_the_definitions(cache_dir: Path) -> None:
    """The worker's --vae-dtype: the loader (which keeps float32 on a CPU, component_dtypes) gets the definition with
    it; a dtype that is not one is refused naming the option."""
    from Wan2GP.loading import load_components_of

    seen = []

    def loader(definition, *args):  # noqa: ANN001, ANN002, ANN202
        seen.append(definition.vae_dtype)
        return load_components_of(definition, *args)

    for vae_dtype, expected in ((None, "float32"), ("bfloat16", "bfloat16")):
        engine = WanEngine(device="cpu", cache_dir=cache_dir, vae_dtype=vae_dtype, component_loader=loader)
        engine.load("wan_tiny_t2v")
        engine.unload()
        assert seen[-1] == expected
    with pytest.raises(ValueError, match=r"vae_dtype: expected one of bfloat16, float16, float32, got 'fp8'"):
        WanEngine(device="cpu", cache_dir=cache_dir, vae_dtype="fp8")


def test_an_unknown_weight_format_is_refused_naming_the_field(tmp_path: Path, cache_dir: Path) -> None:
    # a user's definition file (an extra folder) is set aside with the field named; the others load
    with captured_messages("WARNING") as logs:
        catalog = load_catalog(extra_dirs=[_definition_with(tmp_path / "defaults", transformer_weights="int4")])
    assert "wan_tiny_t2v_8bit" not in catalog and "wan_tiny_t2v" in catalog
    assert any("model.transformer_weights" in line and "'int4'" in line for line in logs)
    with pytest.raises(
        ValueError, match=r"transformer weights: expected one of native, int8, fp8, fp8_dynamic, got 'int4'"
    ):
        WanEngine(device="cpu", cache_dir=cache_dir, transformer_weights="int4")


def test_a_streamed_8_bit_weight_keeps_its_own_host_copy_and_says_where_its_data_is(engine: WanEngine) -> None:
    """What diffusers' group offloading does to a torchao weight on a GPU, replayed on the CPU with the meta device as
    "the GPU": the host copy it records is the weight itself, and after a forward it puts the host copy's inner
    tensors back into a wrapper that still says it is on the device (Wan2GP.offload._keep_quantized_host_copy)."""
    from Wan2GP.offload import _keep_quantized_host_copy

    transformer = copy.deepcopy(engine.load("wan_tiny_t2v").transformers["high"])
    quantize_transformer(transformer, "int8", work_device=torch.device("cpu"), keep_on=torch.device("cpu"))
    linear = transformer.blocks[0].attn1.to_q
    weight = linear.weight
    x = torch.randn(1, 3, linear.in_features, generator=torch.Generator().manual_seed(1))
    before = linear(x)
    host_copies = {weight: weight}  # what `.cpu()` of a weight already on the host gives diffusers

    _keep_quantized_host_copy(weight, host_copies)
    host = host_copies[weight]
    assert host is not weight  # an onload swapping the device copy into the weight leaves the host copy alone
    assert dict(inner_tensors(host))["qdata"].data_ptr() == dict(inner_tensors(weight))["qdata"].data_ptr()

    torch.utils.swap_tensors(weight, host.to("meta"))  # the onload: the weight now lives on "the device"
    for name, inner in inner_tensors(host):  # the offload: diffusers' _restore_torchao_tensor
        setattr(weight, name, inner)
    assert weight.device.type == "meta"  # the wrapper still says "device" though its data is on the host

    _keep_quantized_host_copy(weight, host_copies)

    assert linear.weight is weight and weight.device.type == "cpu"
    assert torch.equal(linear(x), before)


def test_the_host_budget_is_the_containers_limit_when_it_has_one(tmp_path: Path) -> None:
    import psutil

    from Wan2GP.engine import HOST_MEMORY_MARGIN_BYTES, default_host_budget

    gib = 2**30
    (tmp_path / "memory.max").write_text(f"{8 * gib}\n")
    (tmp_path / "memory.current").write_text(f"{3 * gib}\n")
    assert default_host_budget(tmp_path) == 5 * gib - HOST_MEMORY_MARGIN_BYTES  # what the pod may still take
    (tmp_path / "memory.max").write_text("max\n")  # no limit: the machine's available memory
    unlimited = default_host_budget(tmp_path)
    assert abs(unlimited - (psutil.virtual_memory().available - HOST_MEMORY_MARGIN_BYTES)) < gib
    assert default_host_budget(tmp_path / "no_cgroup") == pytest.approx(unlimited, abs=gib)
