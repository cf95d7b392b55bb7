"""Memory placements: which one a VRAM budget gets (planned from the real A14B configs), and the same video from every
placement on the tiny models (diffusers' group-offloading hooks run on the CPU too, without a stream).

The GPU figures (time against resident, peak memory, host memory over three segments) come from
bench/memory_profiles.py on an H200 (bench/README.md); here: the planning, the hooks' plumbing, LoRAs under
offloading, the re-plan when a bigger generation arrives, the budget-too-small error and the out-of-memory log.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from engine_helpers import gradient_image
from log_capture import captured_messages
from test_generate_with_lora import write_lora
from transformers import UMT5Config

from Wan2GP.catalog import Catalog
from Wan2GP.engine import InvalidGenerationParams, WanEngine
from Wan2GP.loading import component_dtypes
from Wan2GP.offload import model_sizes
from Wan2GP.placement import (
    GiB,
    HostMemoryTooSmall,
    ModelSizes,
    VramBudgetTooSmall,
    block_cost,
    host_bytes,
    needed_bytes,
    parse_budget_gb,
    plan_placement,
)

# Wan 2.2 I2V A14B as its diffusers repo configures it (bench/random_models.py A14B_CONFIG, 36 input channels).
A14B_I2V = dict(
    _class_name="WanTransformer3DModel",
    patch_size=[1, 2, 2],
    num_attention_heads=40,
    attention_head_dim=128,
    in_channels=36,
    out_channels=16,
    text_dim=4096,
    freq_dim=256,
    ffn_dim=13824,
    num_layers=40,
    cross_attn_norm=True,
    qk_norm="rms_norm_across_heads",
    eps=1e-6,
    rope_max_seq_len=1024,
)
UMT5_XXL = dict(
    d_model=4096, d_ff=10240, num_layers=24, num_heads=64, d_kv=64, vocab_size=256384, feed_forward_proj="gated-gelu"
)
# Parameter counts measured on the H200 (bench/README.md, "Real-size denoising step"): one expert, and the UMT5
# encoder with its token table tied (transformers 5.23, as pinned).
A14B_EXPERT_PARAMS = 14.289e9
UMT5_XXL_PARAMS = 5.681e9


@pytest.fixture(scope="module")
def a14b_formats(tmp_path_factory: pytest.TempPathFactory, catalog: Catalog) -> dict[str, ModelSizes]:
    """The component sizes of Wan 2.2 I2V A14B, from its configs alone (nothing is allocated), with 16-bit and with
    8-bit transformer block weights."""
    folder = tmp_path_factory.mktemp("a14b_configs")
    for subfolder in ("transformer", "transformer_2"):
        (folder / subfolder).mkdir()
        (folder / subfolder / "config.json").write_text(json.dumps(A14B_I2V))
    (folder / "vae").mkdir()
    (folder / "vae" / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKLWan"}))
    UMT5Config(**UMT5_XXL).save_pretrained(folder / "text_encoder")
    definition = catalog.get("i2v_2_2")
    transformer, vae, text = component_dtypes(definition, torch.device("cuda"))  # the GPU dtypes: bf16, fp16, bf16
    return model_sizes(
        definition,
        folder,
        transformer_dtype=transformer,
        vae_dtype=vae,
        text_dtype=text,
        weights=("native", "int8", "fp8"),
    )


@pytest.fixture(scope="module")
def a14b_sizes(a14b_formats: dict[str, ModelSizes]) -> ModelSizes:
    return a14b_formats["native"]


def seed_segment(sizes: ModelSizes):  # noqa: ANN201
    """The issue's seed segment: 768x576, 53 frames (14 latent frames)."""
    return sizes.work_for(latent_frames=14, width=768, height=576)


def test_the_bundled_wan_models_run_their_vae_in_float16_on_a_gpu(catalog: Catalog) -> None:
    """fp16 decodes the seed segment as fast as bf16, 1.8e-3 from fp32 where bf16 is 1.5e-2 away (bench/README.md);
    a CPU runs everything in float32."""
    for model_id in ("i2v_2_2", "wan_2_2_i2v_lightning_baseline_3_3", "t2v_2_2", "vace_14B"):
        definition = catalog.get(model_id)
        assert component_dtypes(definition, torch.device("cuda")) == (torch.bfloat16, torch.float16, torch.bfloat16)
        assert component_dtypes(definition, torch.device("cpu")) == (torch.float32,) * 3


def test_a14b_component_sizes_come_from_the_configs(a14b_sizes: ModelSizes) -> None:
    assert set(a14b_sizes.experts) == {"high", "low"}
    for size in a14b_sizes.experts.values():
        assert size == pytest.approx(2 * A14B_EXPERT_PARAMS, rel=2e-3)
    assert a14b_sizes.text_encoder == pytest.approx(2 * UMT5_XXL_PARAMS, rel=2e-3)
    assert a14b_sizes.text_encoder_largest_layer == 256384 * 4096 * 2  # the token table, bf16
    # 40 equal blocks plus the embedders and head make up an expert
    assert 39 * a14b_sizes.largest_block < a14b_sizes.experts["high"] - a14b_sizes.transformer_rest
    assert 40 * a14b_sizes.largest_block == a14b_sizes.experts["high"] - a14b_sizes.transformer_rest
    assert a14b_sizes.model_dim == 5120 and a14b_sizes.spatial_factor == 8 and a14b_sizes.patch_size == (1, 2, 2)
    assert seed_segment(a14b_sizes).tokens == 14 * (576 // 16) * (768 // 16)


@pytest.mark.parametrize(
    ("budget_gib", "kind", "tiled", "resident_blocks"),
    [
        (139.8, "resident", False, 0),  # an H200: as today (measured peak 74.2 GiB with an fp32 VAE)
        (80, "resident", False, 0),  # an H100: everything still fits
        (68, "resident", True, 0),  # all weights fit, a whole 768x576 frame's ~5 GiB fp16 decode beside them does not
        (58, "offload_encoders", True, 0),  # both experts fit, the 10.6 GiB text encoder does not fit beside them
        (48, "stream_blocks", False, 29),  # L40S / A6000: one expert alone is 26.6 GiB; 29 of 40 blocks stay
        (24, "stream_blocks", False, 11),  # RTX 4090 / 3090, L4
        (6, "stream_blocks", True, 0),  # too little for a whole frame's decode: tiles, every block streamed
    ],
)
def test_the_fastest_placement_that_fits_the_budget(
    a14b_sizes: ModelSizes, budget_gib: float, kind: str, tiled: bool, resident_blocks: int
) -> None:
    budget = int(budget_gib * GiB)
    placement = plan_placement(a14b_sizes, seed_segment(a14b_sizes), budget, model="i2v_2_2")
    assert (placement.kind, placement.vae_tiling, placement.resident_blocks) == (kind, tiled, resident_blocks)
    assert placement.needed <= budget
    if kind == "stream_blocks":  # the spare room went into resident blocks: one more would not fit
        assert placement.needed + block_cost(a14b_sizes) > budget
    assert kind in placement.describe() and f"{budget_gib:.1f} GiB" in placement.describe()


def test_a_16_bit_vae_leaves_half_the_decode_room_of_a_float32_one(a14b_sizes: ModelSizes) -> None:
    """The decode's peak scales with the VAE's element size (4.32 GiB in fp16 against 8.29 in fp32 on the H200): at
    72 GiB the A14B stays resident with either VAE, but only the fp16 one decodes whole frames beside it."""
    work = seed_segment(a14b_sizes)
    fp32 = dataclasses.replace(a14b_sizes, vae_element_bytes=4)
    assert a14b_sizes.vae_element_bytes == 2
    assert 2 * work.decode_bytes(a14b_sizes, tiled=False) == work.decode_bytes(fp32, tiled=False)
    assert 2 * work.decode_bytes(a14b_sizes, tiled=True) == work.decode_bytes(fp32, tiled=True)
    fp16_plan, fp32_plan = (plan_placement(sizes, work, 72 * GiB, model="i2v_2_2") for sizes in (a14b_sizes, fp32))
    assert (fp16_plan.kind, fp16_plan.vae_tiling) == ("resident", False)
    assert (fp32_plan.kind, fp32_plan.vae_tiling) == ("resident", True)


def test_the_24_gb_placement_leaves_the_activations_room(a14b_sizes: ModelSizes) -> None:
    needed = needed_bytes("stream_blocks", a14b_sizes, seed_segment(a14b_sizes), vae_tiling=False)
    # what streaming keeps on the device: the non-block layers and two of the 0.66 GiB blocks, not an expert
    assert needed < 14 * GiB
    assert needed > a14b_sizes.transformer_rest + 2 * a14b_sizes.largest_block + a14b_sizes.vae


def test_a_budget_below_the_leanest_placement_names_the_minimum(a14b_sizes: ModelSizes) -> None:
    work = seed_segment(a14b_sizes)
    minimum = needed_bytes("stream_blocks", a14b_sizes, work, vae_tiling=True)
    assert plan_placement(a14b_sizes, work, minimum, model="i2v_2_2").kind == "stream_blocks"
    with pytest.raises(VramBudgetTooSmall, match=rf"i2v_2_2.*at least {minimum / GiB:.1f} GiB") as caught:
        plan_placement(a14b_sizes, work, minimum - 1, model="i2v_2_2")
    assert caught.value.minimum == minimum


def test_8_bit_block_weights_halve_each_transformer_and_leave_the_rest(a14b_formats: dict[str, ModelSizes]) -> None:
    native, int8, fp8 = (a14b_formats[name] for name in ("native", "int8", "fp8"))
    native_blocks = native.experts["high"] - native.transformer_rest
    int8_blocks = int8.experts["high"] - int8.transformer_rest
    # one byte per Linear weight instead of two, plus a float32 scale (and int8's zero point) per output row
    assert int8_blocks == pytest.approx(native_blocks / 2, rel=0.01)
    assert fp8.experts["high"] < int8.experts["high"] < native.experts["high"]
    assert int8.largest_block == pytest.approx(native.largest_block / 2, rel=0.01)
    # the embedders and head keep their precision; the encoders and the VAE are not quantized
    assert int8.transformer_rest == native.transformer_rest
    assert (int8.text_encoder, int8.vae, int8.blocks) == (native.text_encoder, native.vae, native.blocks)


def test_offloaded_parts_need_host_memory_and_resident_blocks_leave_it(a14b_sizes: ModelSizes) -> None:
    encoders = a14b_sizes.text_encoder + a14b_sizes.image_encoder
    streamed_all = sum(a14b_sizes.experts.values()) - 2 * a14b_sizes.transformer_rest
    assert host_bytes("resident", a14b_sizes) == 0
    assert host_bytes("offload_encoders", a14b_sizes) == encoders
    assert host_bytes("stream_blocks", a14b_sizes) == encoders + streamed_all
    # each resident block of each expert is on the device only
    assert host_bytes("stream_blocks", a14b_sizes, resident_blocks=7) == encoders + streamed_all - 2 * 7 * (
        a14b_sizes.largest_block
    )


@pytest.mark.parametrize(
    ("budget_gib", "host_gib", "kind", "weights"),
    [
        (24, None, "stream_blocks", "native"),  # no host limit: 16 bits, as before
        (24, 128, "stream_blocks", "native"),  # a host with room for both 16-bit experts' streamed blocks
        (24, 40, "stream_blocks", "int8"),  # a 64 GB host: 16-bit streaming needs ~52 GiB of it, 8-bit ~26
        (48, 40, "stream_blocks", "native"),  # 25 resident blocks per expert leave ~30 GiB to stream from the host
        (48, 20, "resident", "int8"),  # 8-bit: both experts and the text encoder fit a 48 GB card whole
        (80, 0, "resident", "native"),  # resident needs no host memory at all
    ],
)
def test_8_bit_weights_when_the_16_bit_placements_do_not_fit_host_memory(
    a14b_formats: dict[str, ModelSizes], budget_gib: float, host_gib: float | None, kind: str, weights: str
) -> None:
    native = a14b_formats["native"]
    work = seed_segment(native)
    host_budget = None if host_gib is None else int(host_gib * GiB)
    placement = plan_placement(
        native,
        work,
        int(budget_gib * GiB),
        model="i2v_2_2",
        host_budget=host_budget,
        fallback=("int8", a14b_formats["int8"]),
    )
    assert (placement.kind, placement.weights) == (kind, weights)
    assert placement.needed <= budget_gib * GiB
    assert host_budget is None or placement.host_needed <= host_budget
    if weights == "int8":
        assert "int8 transformer weights" in placement.describe()
        # what the 16-bit weights would have needed did not fit
        sixteen_bit = plan_placement(native, work, int(budget_gib * GiB), model="i2v_2_2")
        assert sixteen_bit.host_needed > host_budget


def test_too_little_host_memory_for_any_placement_names_the_minimum(a14b_formats: dict[str, ModelSizes]) -> None:
    native = a14b_formats["native"]
    with pytest.raises(HostMemoryTooSmall, match=r"host memory: 8\.0 GiB available .* needs \d+\.\d GiB") as caught:
        plan_placement(
            native,
            seed_segment(native),
            24 * GiB,
            model="i2v_2_2",
            host_budget=8 * GiB,
            fallback=("int8", a14b_formats["int8"]),
        )
    # the leanest in host memory: 8-bit streaming with the most resident blocks, the text encoder still offloaded
    assert native.text_encoder < caught.value.minimum < 20 * GiB


def test_budget_flag_values_are_checked() -> None:
    assert parse_budget_gb("24") == 24 * GiB
    assert parse_budget_gb(None) is None
    for bad in ("0", "-3", "lots", "5000"):
        with pytest.raises(ValueError, match="vram budget"):
            parse_budget_gb(bad)


# ---------------------------------------------------------------------------------------------------------------------
# The tiny models under each placement


def offload_hooked(module: torch.nn.Module) -> bool:
    registry = getattr(module, "_diffusers_hook", None)
    return registry is not None and registry.get_hook("group_offloading") is not None


def render_latents(engine: WanEngine, **params: object) -> torch.Tensor:
    base = dict(prompt="a bird flies over the sea", seed=5, num_inference_steps=4)
    return engine.render(engine.resolve({**base, **params})).latents


@pytest.fixture(scope="module")
def loras(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    folder = tmp_path_factory.mktemp("placement_loras")
    return [str(write_lora(folder / f"lora{seed}.safetensors", seed=seed)) for seed in (1, 2)]


def two_phase_lora_params(loras: list[str]) -> dict[str, object]:
    # 2 phases on two experts, each LoRA with its own strength per phase
    return dict(
        model="wan_tiny_t2v_2_2",
        guidance_phases=2,
        activated_loras=loras,
        loras_multipliers="0.8;0 0;1.1",
    )


CASES = {
    "two experts, two LoRAs per phase": lambda loras, tmp: two_phase_lora_params(loras),
    "Wan 2.1 i2v with its CLIP tower": lambda loras, tmp: dict(model="wan_tiny_i2v", image_start=_image(tmp)),
    "VACE 2.2 (vace_blocks)": lambda loras, tmp: dict(model="wan_tiny_vace_2_2", video_length=9),
}


def _image(folder: Path) -> str:
    path = folder / "start.png"
    gradient_image(64, 64).save(path)
    return str(path)


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("placement", ["offload_encoders", "stream_blocks"])
def test_every_placement_renders_the_resident_video(
    engine: WanEngine, cache_dir: Path, catalog: Catalog, loras: list[str], tmp_path: Path, case: str, placement: str
) -> None:
    params = CASES[case](loras, tmp_path)
    resident = render_latents(engine, **params)
    offloaded_engine = WanEngine(device="cpu", cache_dir=cache_dir, catalog=catalog, placement=placement)
    offloaded = render_latents(offloaded_engine, **params)
    model = offloaded_engine.load(str(params["model"]))
    assert offloaded_engine.placement is not None and offloaded_engine.placement.kind == placement

    # the hooks are really there: encoders always, the transformers' blocks only when streaming
    assert offload_hooked(model.text_encoder.get_submodule("shared"))
    if model.image_encoder is not None:
        assert any(offload_hooked(module) for module in model.image_encoder.modules())
    for transformer in model.transformers.values():
        blocks = list(transformer.blocks) + list(getattr(transformer, "vace_blocks", None) or [])
        assert all(offload_hooked(block) for block in blocks) == (placement == "stream_blocks")
    # and what comes out is the resident model's video (LoRAs unmerged under streaming: fp32 rounding apart)
    assert torch.allclose(offloaded, resident, atol=1e-4, rtol=0), (offloaded - resident).abs().max()
    offloaded_engine.unload()


def test_loras_under_streaming_change_the_video_and_leave_no_adapter(
    cache_dir: Path, catalog: Catalog, loras: list[str]
) -> None:
    engine = WanEngine(device="cpu", cache_dir=cache_dir, catalog=catalog, placement="stream_blocks")
    with_loras = render_latents(engine, **two_phase_lora_params(loras))
    without = render_latents(engine, model="wan_tiny_t2v_2_2", guidance_phases=2)
    assert (with_loras - without).abs().max() > 1e-2
    again = render_latents(engine, **two_phase_lora_params(loras))
    assert torch.equal(again, with_loras)
    transformers = engine.load("wan_tiny_t2v_2_2").transformers.values()
    for transformer in transformers:  # kept attached for a next generation with the same LoRAs
        assert getattr(transformer, "peft_config", None)
        assert all(offload_hooked(block) for block in transformer.blocks)
    assert torch.equal(render_latents(engine, model="wan_tiny_t2v_2_2", guidance_phases=2), without)
    for transformer in transformers:  # a generation without LoRAs gave the base weights back, hooks in place
        assert not getattr(transformer, "peft_config", None)
        assert all(offload_hooked(block) for block in transformer.blocks)
    engine.unload()


def test_a_budget_picks_the_placement_and_a_bigger_generation_gets_a_leaner_one(
    cache_dir: Path, catalog: Catalog
) -> None:
    probe = WanEngine(device="cpu", cache_dir=cache_dir, catalog=catalog)
    probe.load("wan_tiny_t2v_2_2", width=64, height=64, num_frames=9)
    sizes = probe._sizes
    assert sizes is not None
    small = sizes.work_for(latent_frames=3, width=64, height=64)
    large = sizes.work_for(latent_frames=3, width=640, height=640)
    # the tiny weights are kilobytes: at 640x640 only the leanest placement, with tiles, fits this budget exactly
    budget = needed_bytes("stream_blocks", sizes, large, vae_tiling=True)
    assert needed_bytes("offload_encoders", sizes, large, vae_tiling=True) > budget
    assert needed_bytes("resident", sizes, small, vae_tiling=False) <= budget
    engine = WanEngine(device="cpu", cache_dir=cache_dir, catalog=catalog, vram_budget=budget)

    render_latents(engine, model="wan_tiny_t2v_2_2", resolution="64x64", video_length=9, num_inference_steps=1)
    assert engine.placement is not None and (engine.placement.kind, engine.placement.vae_tiling) == ("resident", False)
    first = engine.load("wan_tiny_t2v_2_2", width=64, height=64, num_frames=9)
    assert engine.load("wan_tiny_t2v_2_2", width=64, height=64, num_frames=9) is first  # fits: nothing reloaded

    with captured_messages("INFO") as logs:
        engine.load("wan_tiny_t2v_2_2", width=640, height=640, num_frames=9)
    assert (engine.placement.kind, engine.placement.vae_tiling) == ("stream_blocks", True)
    assert engine.load("wan_tiny_t2v_2_2", width=640, height=640, num_frames=9).vae.use_tiling
    assert any("needs a leaner placement than resident" in line for line in logs)
    # a smaller generation afterwards keeps the leaner placement (no reload back and forth)
    lean = engine.load("wan_tiny_t2v_2_2", width=64, height=64, num_frames=9)
    assert engine.load("wan_tiny_t2v_2_2", width=64, height=64, num_frames=9) is lean
    engine.unload()
    probe.unload()


def test_a_budget_too_small_for_any_placement_fails_before_loading(cache_dir: Path, catalog: Catalog) -> None:
    engine = WanEngine(device="cpu", cache_dir=cache_dir, catalog=catalog, vram_budget=1000)
    with pytest.raises(InvalidGenerationParams, match=r"resolution: 64x64x9: .*needs at least \d+\.\d GiB"):
        render_latents(engine, model="wan_tiny_t2v", resolution="64x64", video_length=9)
    assert engine.loaded_model() is None


def test_out_of_memory_stays_an_out_of_memory_error_and_the_log_names_the_placement(
    cache_dir: Path, catalog: Catalog
) -> None:
    engine = WanEngine(device="cpu", cache_dir=cache_dir, catalog=catalog, placement="stream_blocks")
    transformer = engine.load("wan_tiny_t2v").transformers["high"]

    def out_of_memory(*_: object) -> None:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    handle = transformer.register_forward_pre_hook(out_of_memory)
    try:
        with captured_messages("ERROR") as logs, pytest.raises(torch.OutOfMemoryError):
            render_latents(engine, model="wan_tiny_t2v")
    finally:
        handle.remove()
    assert any("out of device memory under placement stream_blocks" in line for line in logs)
    engine.unload()


def test_tiled_vae_decode_stays_close_to_the_whole_frame_decode(engine: WanEngine) -> None:
    """Where both fit, tiles blend back into the whole-frame decode's picture: with random weights the two differ by a
    small fraction of the signal (a misplaced or dropped tile would differ by the signal's own size)."""
    from Wan2GP.conditioning import VaeCodec

    vae = engine.load("wan_tiny_t2v").vae
    codec = VaeCodec(vae)
    latents = torch.randn(1, 16, 2, 24, 24, generator=torch.Generator().manual_seed(0))
    try:
        vae.disable_tiling()
        whole = codec.decode(latents)
        vae.enable_tiling(
            tile_sample_min_height=96,
            tile_sample_min_width=96,
            tile_sample_stride_height=64,
            tile_sample_stride_width=64,
        )
        tiled = codec.decode(latents)
    finally:
        vae.disable_tiling()
    assert tiled.shape == whole.shape == (3, 5, 192, 192)
    difference = (tiled - whole).abs()
    assert difference.max() > 0  # the tiled path ran
    assert difference.mean() < 0.25 * whole.abs().mean()


def test_consolidated_host_tensors_keep_their_values_and_ties_in_one_aligned_buffer(engine: WanEngine) -> None:
    """What the engine page-locks on a GPU: every host tensor of a module moved into one buffer (tested here without
    the registration, which needs CUDA)."""
    import copy

    from Wan2GP.offload import consolidate

    text_encoder = copy.deepcopy(engine.load("wan_tiny_t2v").text_encoder)
    # 12 bytes, first in parameter order: every tensor after it must still start on a 64-byte boundary
    text_encoder.register_parameter("odd_sized", torch.nn.Parameter(torch.tensor([1.0, 2.0, 3.0]), requires_grad=False))
    tokens = torch.tensor([[5, 9, 2, 0]])
    before = text_encoder(tokens).last_hidden_state
    values = {name: tensor.clone() for name, tensor in text_encoder.state_dict().items()}
    buffer = consolidate([text_encoder], alignment=64)

    assert buffer is not None and buffer.dtype == torch.uint8
    unique = {id(t): t for t in (*text_encoder.parameters(), *text_encoder.buffers())}.values()
    assert buffer.numel() >= sum(t.numel() * t.element_size() for t in unique)
    start, end = buffer.data_ptr(), buffer.data_ptr() + buffer.numel()
    for name, tensor in text_encoder.state_dict().items():
        assert start <= tensor.data_ptr() < end and (tensor.data_ptr() - start) % 64 == 0, name
        assert torch.equal(tensor, values[name]), name
    assert text_encoder.shared.weight is text_encoder.encoder.embed_tokens.weight  # still one tensor
    assert torch.equal(text_encoder(tokens).last_hidden_state, before)


def test_blocks_the_budget_has_room_for_stay_resident_and_the_video_is_the_same(
    engine: WanEngine, cache_dir: Path, catalog: Catalog, loras: list[str]
) -> None:
    params = two_phase_lora_params(loras)
    resident_video = render_latents(engine, **params)
    probe = WanEngine(device="cpu", cache_dir=cache_dir, catalog=catalog, placement="stream_blocks")
    probe.load("wan_tiny_t2v_2_2")
    sizes = probe._sizes
    assert sizes is not None and sizes.blocks == 2
    work = sizes.work_for(latent_frames=3, width=832, height=480)  # load()'s default size
    budget = needed_bytes("stream_blocks", sizes, work, vae_tiling=False) + block_cost(sizes)  # room for one block
    probe.unload()

    streaming = WanEngine(
        device="cpu", cache_dir=cache_dir, catalog=catalog, placement="stream_blocks", vram_budget=budget
    )
    model = streaming.load("wan_tiny_t2v_2_2")
    assert streaming.placement is not None and streaming.placement.resident_blocks == 1
    for transformer in model.transformers.values():
        assert [offload_hooked(block) for block in transformer.blocks] == [False, True]  # block 0 stays, 1 streams
    assert torch.allclose(render_latents(streaming, **params), resident_video, atol=1e-4, rtol=0)
    render_latents(streaming, model="wan_tiny_t2v_2_2", guidance_phases=2)  # without LoRAs: they are dropped
    for transformer in model.transformers.values():  # after the LoRAs came and went: still the same arrangement
        assert [offload_hooked(block) for block in transformer.blocks] == [False, True]
        assert not getattr(transformer, "peft_config", None)
    streaming.unload()


def test_the_gpu_benchmark_script_runs_in_tiny_mode(tmp_path: Path) -> None:
    """bench/memory_profiles.py (bench/README.md) through WanEngine's placements at tiny size on the CPU: it cannot rot,
    and every placement reproduces the resident run's latents segment after segment."""
    import os
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[2]
    out = tmp_path / "memory.json"
    command = [sys.executable, "bench/memory_profiles.py", "--tiny", "--segments", "2", "--resident-segments", "1"]
    env = {**os.environ, "PYTHONPATH": str(repo)}
    subprocess.run(
        [*command, "--json", str(out), "--workdir", str(tmp_path / "work")],
        cwd=repo,
        env=env,
        check=True,
        capture_output=True,
        timeout=300,
    )
    report = json.loads(out.read_text())
    placements = [(profile["placement"], profile["weights"]) for profile in report["profiles"]]
    assert placements == [
        ("resident", "native"),
        ("offload_encoders", "native"),
        ("stream_blocks", "native"),
        ("stream_blocks", "int8"),
    ]
    for profile in report["profiles"][1:]:
        assert len(profile["segments"]) == 2
        for segment in profile["segments"]:
            assert segment["forward_passes"] == {"high": 6, "low": 2}  # 3 phases, CFG in the first: the seed's plan
            assert segment["latents_rel_error_vs_first_segment"] == 0.0
            if profile["weights"] == "native":
                assert segment["latents_rel_error"] < 1e-5
            else:  # 8-bit weights: close to the 16-bit run's latents, and not the same (they were quantized)
                assert 1e-4 < segment["latents_rel_error"] < 3e-2
    assert report["vae_tiling"]["shape"] == [3, 9, 64, 64]
    forward = report["forward_check"]
    assert 0 < forward["int8"]["rel_error"] < forward["fp8"]["rel_error"] < 5e-2
