"""Wan2GP.loras: LoRA formats, per-step strengths on the right expert, merged == unmerged, exact restore on close.

The layouts of the tools that write Wan LoRAs, key by key, are in test_lora_layouts.py."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from diffusers import WanVACETransformer3DModel
from log_capture import captured_warnings
from lora_fixtures import (
    ATTENTION_MODULES,
    FFN_MODULES,
    LoraSpec,
    base_weights,
    make_lora_spec,
    patched_copy,
    run,
    tiny_transformer,
    transformer_inputs,
    write_diffusers,
    write_kohya,
    write_original,
)
from peft.tuners.lora import LoraLayer
from safetensors.torch import load_file, save_file

from Wan2GP.lora_formats import read_lora_file
from Wan2GP.loras import LoraError, LoraRuntime, ModeCosts, choose_mode

# fp32 tolerance for "the same linear map computed in another order" (merged vs unmerged vs patched reference)
RTOL = 1e-5


def assert_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    scale = expected.abs().max().item()
    difference = (actual - expected).abs().max().item()
    assert difference <= RTOL * scale, f"max difference {difference:.3e} vs allowed {RTOL * scale:.3e}"


@pytest.fixture(scope="module")
def transformer() -> torch.nn.Module:
    return tiny_transformer(seed=0)


@pytest.fixture(scope="module")
def inputs():
    return transformer_inputs(seed=1)


@pytest.fixture(scope="module")
def spec(transformer) -> LoraSpec:
    return make_lora_spec(transformer, seed=3)


@pytest.fixture(scope="module")
def spec_b(transformer) -> LoraSpec:
    return make_lora_spec(transformer, seed=4, rank=2, alpha=1.0, block_modules=["attn1.to_q", "ffn.net.2"])


# --- formats ------------------------------------------------------------------------------------------------------

FORMAT_WRITERS = {
    "diffusers, alpha folded": lambda spec, path: write_diffusers(spec, path),
    "diffusers, alpha keys": lambda spec, path: write_diffusers(spec, path, alpha_in="keys"),
    "diffusers, alpha in lora_adapter_metadata": lambda spec, path: write_diffusers(spec, path, alpha_in="metadata"),
    "original Wan / ComfyUI": write_original,
    "kohya / musubi with ffn": write_kohya,
}


@pytest.mark.parametrize("mode", ["unmerged", "merged"])
@pytest.mark.parametrize("lora_format", list(FORMAT_WRITERS))
def test_every_format_applies_alpha_over_rank_times_strength(
    lora_format: str, mode: str, transformer, inputs, spec, tmp_path: Path
) -> None:
    path = FORMAT_WRITERS[lora_format](spec, tmp_path / "lora.safetensors")
    weights = read_lora_file(path).for_expert("high")
    assert set(weights.low_rank) == set(spec.down) and not weights.full
    for module, pair in weights.low_rank.items():
        assert torch.allclose(pair.up @ pair.down, spec.delta(module), rtol=1e-6, atol=1e-7)

    expected = run(patched_copy(transformer, [(spec, 0.7)]), inputs)
    with LoraRuntime({"high": transformer}, [path], mode=mode) as runtime:
        assert runtime.mode == mode
        runtime.set_step_strengths("high", [0.7])
        assert_close(run(transformer, inputs), expected)


def test_kohya_without_ffn_keys_loads(transformer, inputs, tmp_path: Path) -> None:
    # diffusers' own musubi converter raises KeyError 'blocks_0_ffn_0.lora_down.weight' here; upstream loads it.
    attention_only = make_lora_spec(transformer, seed=5, block_modules=ATTENTION_MODULES)
    path = write_kohya(attention_only, tmp_path / "attention_only.safetensors")
    assert set(read_lora_file(path).for_expert("high").low_rank) == set(attention_only.down)
    expected = run(patched_copy(transformer, [(attention_only, 1.0)]), inputs)
    with LoraRuntime({"high": transformer}, [path]) as runtime:
        runtime.set_step_strengths("high", [1.0])
        assert_close(run(transformer, inputs), expected)


@pytest.mark.parametrize(
    ("tensors", "expected"),
    [
        (
            {"lora_unet_blocks_0_self_attn_q.lora_down.weight": torch.zeros(2, 24)},
            r"module blocks\.0\.self_attn\.q lacks its lora_down/lora_up",
        ),
        (
            {"lora_unet_blocks_0_self_attn_q.lora_down.weight": torch.zeros(2, 24), "other.weight": torch.zeros(1)},
            "mixes",
        ),
    ],
    ids=["kohya up matrix missing", "kohya mixed with other keys"],
)
def test_malformed_kohya_files_raise_lora_error(
    tensors: dict[str, torch.Tensor], expected: str, tmp_path: Path
) -> None:
    path = tmp_path / "bad_kohya.safetensors"
    save_file(tensors, str(path))
    with pytest.raises(LoraError, match=expected) as raised:
        read_lora_file(path)
    assert raised.value.path == path
    assert str(path) in str(raised.value)


def test_modulation_diff_is_the_modulation_table_and_image_keys_are_kept(spec, tmp_path: Path) -> None:
    extra = {
        "diffusion_model.blocks.0.modulation.diff": torch.ones(1, 6, 24),
        "diffusion_model.blocks.0.cross_attn.k_img.lora_down.weight": torch.ones(4, 24),
        "diffusion_model.blocks.0.cross_attn.k_img.lora_up.weight": torch.ones(24, 4),
        "diffusion_model.blocks.0.cross_attn.v_img.lora_down.weight": torch.ones(4, 24),
        "diffusion_model.blocks.0.cross_attn.v_img.lora_up.weight": torch.ones(24, 4),
    }
    weights = read_lora_file(write_original(spec, tmp_path / "i2v.safetensors", extra=extra)).for_expert("high")
    assert {"blocks.0.attn2.add_k_proj", "blocks.0.attn2.add_v_proj"} <= set(weights.low_rank)
    assert torch.equal(weights.full["blocks.0.scale_shift_table"].delta, torch.ones(1, 6, 24))


def test_i2v_lora_on_t2v_and_i2v_transformers(spec, tmp_path: Path) -> None:
    i2v = tiny_transformer(seed=7, in_channels=36, image_dim=4, added_kv_proj_dim=24)
    i2v_inputs = transformer_inputs(seed=2, in_channels=36, image_dim=4)
    generator = torch.Generator().manual_seed(9)
    image_down, image_up = torch.randn(4, 24, generator=generator), torch.randn(24, 4, generator=generator)
    extra = {
        f"diffusion_model.blocks.{block}.cross_attn.{name}.lora_{kind}.weight": tensor.clone()
        for block in range(2)
        for name in ("k_img", "v_img")
        for kind, tensor in (("down", image_down), ("up", image_up))
    }
    path = write_original(spec, tmp_path / "i2v.safetensors", extra=extra)

    with LoraRuntime({"high": i2v}, [path], mode="merged") as runtime:
        runtime.set_step_strengths("high", [0.5])
        added = dict(i2v.named_modules())["blocks.1.attn2.add_k_proj"].weight.detach().clone()
        with_lora = run(i2v, i2v_inputs)
    reference = patched_copy(i2v, [(spec, 0.5)])
    linears = dict(reference.named_modules())
    with torch.no_grad():
        for block in range(2):
            for name in ("add_k_proj", "add_v_proj"):
                linears[f"blocks.{block}.attn2.{name}"].weight += 0.5 * image_up @ image_down
    assert torch.allclose(added, linears["blocks.1.attn2.add_k_proj"].weight, atol=1e-6)
    assert_close(with_lora, run(reference, i2v_inputs))

    # A t2v transformer has no image cross-attention: the k_img/v_img part is reported, the rest applies.
    t2v = tiny_transformer(seed=0)
    t2v_inputs = transformer_inputs(seed=1)
    expected = run(patched_copy(t2v, [(spec, 0.5)]), t2v_inputs)
    with captured_warnings() as warnings, LoraRuntime({"low": t2v}, [path]) as runtime:
        runtime.set_step_strengths("low", [0.5])
        assert_close(run(t2v, t2v_inputs), expected)
    assert len(warnings) == 1
    assert "i2v.safetensors" in warnings[0] and "4 of its modules name nothing in this model" in warnings[0]
    assert "blocks.0.cross_attn.k_img" in warnings[0]


def test_bias_deltas_and_norm_diffs_of_original_files(transformer, inputs, tmp_path: Path) -> None:
    attention = make_lora_spec(transformer, seed=11, block_modules=["attn1.to_q", "attn2.to_v"])
    generator = torch.Generator().manual_seed(12)
    bias_delta = torch.randn(24, generator=generator)
    extra = {
        "diffusion_model.blocks.0.self_attn.q.diff_b": bias_delta,
        "diffusion_model.blocks.0.norm3.diff": torch.zeros(24),  # a zero norm delta: applied, changes nothing
    }
    path = write_original(attention, tmp_path / "with_bias.safetensors", extra=extra)
    assert torch.equal(read_lora_file(path).for_expert("high").full["blocks.0.attn1.to_q.bias"].delta, bias_delta)

    reference = patched_copy(transformer, [(attention, 0.8)])
    with torch.no_grad():
        reference.blocks[0].attn1.to_q.bias += 0.8 * bias_delta
    expected = run(reference, inputs)
    for mode in ("unmerged", "merged"):
        with LoraRuntime({"high": transformer}, [path], mode=mode) as runtime:
            runtime.set_step_strengths("high", [0.8])
            assert_close(run(transformer, inputs), expected)


def tiny_vace() -> WanVACETransformer3DModel:
    """A 3-block VACE transformer with VACE blocks after blocks 0 and 2 (seeded)."""
    torch.manual_seed(0)
    return WanVACETransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=12,
        in_channels=16,
        out_channels=16,
        text_dim=32,
        freq_dim=256,
        ffn_dim=32,
        num_layers=3,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        rope_max_seq_len=32,
        vace_layers=[0, 2],
        vace_in_channels=96,
    ).eval()


def test_vace_blocks_of_original_files_map_to_diffusers_vace_blocks(tmp_path: Path) -> None:
    vace = tiny_vace()
    generator = torch.Generator().manual_seed(13)
    down, up = torch.randn(2, 24, generator=generator), torch.randn(24, 2, generator=generator)
    tensors = {}
    for original, _diffusers_name in [
        ("vace_blocks.0.before_proj", "vace_blocks.0.proj_in"),
        ("vace_blocks.1.self_attn.q", "vace_blocks.1.attn1.to_q"),
        ("vace_blocks.1.after_proj", "vace_blocks.1.proj_out"),
        ("blocks.2.ffn.2", "blocks.2.ffn.net.2"),
    ]:
        tensors[f"diffusion_model.{original}.lora_down.weight"] = (
            down.clone() if "ffn" not in original else torch.randn(2, 32)
        )
        tensors[f"diffusion_model.{original}.lora_up.weight"] = up.clone()
        tensors[f"diffusion_model.{original}.alpha"] = torch.tensor(1.0)
    path = tmp_path / "vace.safetensors"
    save_file(tensors, str(path))
    weights = read_lora_file(path).for_expert("high")
    expected_modules = {
        "vace_blocks.0.proj_in",
        "vace_blocks.1.attn1.to_q",
        "vace_blocks.1.proj_out",
        "blocks.2.ffn.net.2",
    }
    assert set(weights.low_rank) == expected_modules

    original_weight = vace.vace_blocks[0].proj_in.weight.detach().clone()
    proj_out = vace.vace_blocks[0].proj_out.weight.detach().clone()
    with LoraRuntime({"high": vace}, [path], mode="merged") as runtime:
        runtime.set_step_strengths("high", [2.0])
        merged = vace.vace_blocks[0].proj_in.weight.detach().clone()
        # exact targets: the "proj_out" of vace_blocks.0 (only vace_blocks.1's is in the file) is untouched
        assert torch.equal(vace.vace_blocks[0].proj_out.weight, proj_out)
    with LoraRuntime({"high": vace}, [path], mode="unmerged"):
        assert not isinstance(vace.vace_blocks[0].proj_out, LoraLayer)
        assert isinstance(vace.vace_blocks[1].proj_out, LoraLayer)
    assert torch.allclose(merged, original_weight + 2.0 * 0.5 * up @ down, atol=1e-6)  # alpha/rank = 1/2
    assert torch.equal(vace.vace_blocks[0].proj_in.weight, original_weight)


# --- bad files ------------------------------------------------------------------------------------------------------


def test_lora_for_a_deeper_model_applies_what_matches_and_names_the_rest(transformer, inputs, tmp_path: Path) -> None:
    deeper = tiny_transformer(seed=0, num_layers=4)
    deeper_spec = make_lora_spec(deeper, seed=1)
    path = write_original(deeper_spec, tmp_path / "for_a_deeper_model.safetensors")
    matching = LoraSpec(
        down={m: t for m, t in deeper_spec.down.items() if m.startswith(("blocks.0.", "blocks.1."))},
        up={m: t for m, t in deeper_spec.up.items() if m.startswith(("blocks.0.", "blocks.1."))},
        alpha=deeper_spec.alpha,
        rank=deeper_spec.rank,
    )
    expected = run(patched_copy(transformer, [(matching, 1.0)]), inputs)
    with captured_warnings() as warnings, LoraRuntime({"high": transformer}, [path]) as runtime:
        runtime.set_step_strengths("high", [1.0])
        assert_close(run(transformer, inputs), expected)
    assert len(warnings) == 1
    assert "for_a_deeper_model.safetensors" in warnings[0] and "20 of its modules name nothing" in warnings[0]
    assert "blocks.2.cross_attn.k" in warnings[0]


def test_lora_of_which_nothing_applies_names_the_file_and_its_layout(transformer, tmp_path: Path) -> None:
    deeper = tiny_transformer(seed=0, num_layers=4)
    spec = make_lora_spec(deeper, seed=1)
    only_deep_blocks = LoraSpec(
        down={m: t for m, t in spec.down.items() if m.startswith(("blocks.2.", "blocks.3."))},
        up={m: t for m, t in spec.up.items() if m.startswith(("blocks.2.", "blocks.3."))},
        alpha=spec.alpha,
        rank=spec.rank,
    )
    path = write_kohya(only_deep_blocks, tmp_path / "deep_blocks_only.safetensors")
    before = base_weights(transformer)
    with pytest.raises(LoraError, match="nothing in it applies") as raised:
        LoraRuntime({"high": transformer}, [path])
    message = str(raised.value)
    assert "deep_blocks_only.safetensors" in message and "kohya/musubi-tuner names" in message
    assert "blocks.2." in message
    assert not hasattr(transformer, "peft_config") or not transformer.peft_config
    assert all(torch.equal(tensor, before[name]) for name, tensor in transformer.state_dict().items())


def test_lora_for_another_model_size_names_file_and_module(transformer, tmp_path: Path) -> None:
    wider = tiny_transformer(seed=0, attention_head_dim=16)
    path = write_diffusers(make_lora_spec(wider, seed=1), tmp_path / "wider.safetensors")
    with pytest.raises(
        LoraError,
        match=r"blocks\.0\.attn1\.to_\w+: the pair maps 32 inputs to 32 outputs, the layer 24 to 24 .*another",
    ) as raised:
        LoraRuntime({"high": transformer}, [path])
    assert "wider.safetensors" in str(raised.value)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "file not found"),
        (b"not a safetensors file", "not a readable .safetensors"),
        ({"diffusion_model.blocks.0.self_attn.q.weight": torch.zeros(24, 24)}, "is not a LoRA parameter"),
        ({"blocks.0.attn1.to_q.lora_A.weight": torch.zeros(2, 24)}, r"lacks its lora_down/lora_up \(lora_A/lora_B\)"),
        ({"blocks.0.attn1.to_q.lora_magnitude_vector": torch.zeros(24)}, "lacks its lora_down/lora_up"),
        ({"lora_unet_blocks_0_self_attn_q.lokr_w1": torch.zeros(2, 2)}, "LoKr"),
    ],
    ids=["missing", "not safetensors", "a checkpoint, not a LoRA", "half a pair", "magnitude without pair", "lokr"],
)
def test_unusable_files_raise_lora_error(content: object, expected: str, tmp_path: Path) -> None:
    path = tmp_path / "bad.safetensors"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, dict):
        save_file(content, str(path))
    with pytest.raises(LoraError, match=expected) as raised:
        read_lora_file(path)
    assert str(path) in str(raised.value)


def test_kohya_text_encoder_and_unknown_modules_are_reported_not_refused(transformer, inputs, tmp_path: Path) -> None:
    attention = make_lora_spec(transformer, seed=6, block_modules=["attn1.to_q"])
    path = write_kohya(attention, tmp_path / "with_te.safetensors")
    tensors = dict(load_file(str(path)))
    tensors["lora_te_encoder_block_0_layer_0_SelfAttention_q.lora_down.weight"] = torch.zeros(2, 8)
    tensors["lora_te_encoder_block_0_layer_0_SelfAttention_q.lora_up.weight"] = torch.zeros(8, 2)
    tensors["lora_unet_blocks_0_mystery_layer.lora_down.weight"] = torch.zeros(2, 24)
    save_file(tensors, str(path))
    expected = run(patched_copy(transformer, [(attention, 1.0)]), inputs)
    with captured_warnings() as warnings, LoraRuntime({"high": transformer}, [path]) as runtime:
        runtime.set_step_strengths("high", [1.0])
        assert_close(run(transformer, inputs), expected)
    assert len(warnings) == 1 and "2 of its modules name nothing in this model" in warnings[0]
    assert "lora_te_encoder_block_0_layer_0_SelfAttention_q" in warnings[0] and "blocks_0_mystery_layer" in warnings[0]


# --- strengths ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["unmerged", "merged"])
def test_strength_zero_is_exactly_base_and_strength_scales_delta(
    mode: str, transformer, inputs, spec, spec_b, tmp_path: Path
) -> None:
    path_a = write_original(spec, tmp_path / "a.safetensors")
    path_b = write_diffusers(spec_b, tmp_path / "b.safetensors")
    base = run(transformer, inputs)
    half_a_expected = run(patched_copy(transformer, [(spec, 0.5)]), inputs)
    full_a_expected = run(patched_copy(transformer, [(spec, 1.0)]), inputs)
    both_expected = run(patched_copy(transformer, [(spec, 1.0), (spec_b, -0.7)]), inputs)
    with LoraRuntime({"high": transformer}, [path_a, path_b], mode=mode) as runtime:
        assert torch.equal(run(transformer, inputs), base)  # before the first step: base model
        runtime.set_step_strengths("high", [0.0, 0.0])
        assert torch.equal(run(transformer, inputs), base)

        runtime.set_step_strengths("high", [0.5, 0.0])
        half_a = run(transformer, inputs)
        runtime.set_step_strengths("high", [1.0, 0.0])
        full_a = run(transformer, inputs)
        assert (half_a - base).abs().max() > 1e-2
        assert (full_a - half_a).abs().max() > 1e-2
        assert_close(half_a, half_a_expected)
        assert_close(full_a, full_a_expected)

        runtime.set_step_strengths("high", [1.0, -0.7])
        assert_close(run(transformer, inputs), both_expected)

        runtime.set_step_strengths("high", [0.0, 0.0])
        assert torch.equal(run(transformer, inputs), base)

    # A zero-strength LoRA contributes exactly nothing: same bits as attaching the other LoRA alone.
    with LoraRuntime({"high": transformer}, [path_a, path_b], mode=mode) as runtime:
        runtime.set_step_strengths("high", [0.6, 0.0])
        both_attached = run(transformer, inputs)
    with LoraRuntime({"high": transformer}, [path_a], mode=mode) as runtime:
        runtime.set_step_strengths("high", [0.6])
        alone = run(transformer, inputs)
    assert torch.equal(both_attached, alone)


def test_merged_matches_unmerged(transformer, inputs, spec, spec_b, tmp_path: Path) -> None:
    paths = [write_original(spec, tmp_path / "a.safetensors"), write_kohya(spec_b, tmp_path / "b.safetensors")]
    outputs = {}
    for mode in ("unmerged", "merged"):
        with LoraRuntime({"high": transformer}, paths, mode=mode) as runtime:
            # several switches first: the merged weights must not drift with the history of strengths
            for strengths in ([1.0, 1.0], [0.3, -2.0], [0.0, 0.5], [0.8, -0.4]):
                runtime.set_step_strengths("high", strengths)
            outputs[mode] = run(transformer, inputs)
    assert (outputs["unmerged"] - run(transformer, inputs)).abs().max() > 1e-2
    assert_close(outputs["merged"], outputs["unmerged"])


@pytest.mark.parametrize("mode", ["unmerged", "merged"])
def test_close_restores_base_weights_and_modules_exactly(mode: str, transformer, inputs, spec, spec_b, tmp_path: Path):
    paths = [write_original(spec, tmp_path / "a.safetensors"), write_diffusers(spec_b, tmp_path / "b.safetensors")]
    before = base_weights(transformer)
    base = run(transformer, inputs)
    linear_ids = {
        name: id(module) for name, module in transformer.named_modules() if isinstance(module, torch.nn.Linear)
    }

    runtime = LoraRuntime({"high": transformer}, paths, mode=mode)
    for strengths in ([1.0, 0.5], [0.25, 0.0], [2.0, -1.0]):
        runtime.set_step_strengths("high", strengths)
        run(transformer, inputs)
    runtime.close()
    runtime.close()  # idempotent

    after = transformer.state_dict()
    assert set(after) == set(before)
    assert all(torch.equal(after[name], before[name]) for name in before)
    assert {n: id(m) for n, m in transformer.named_modules() if isinstance(m, torch.nn.Linear)} == linear_ids
    assert not any(isinstance(module, LoraLayer) for module in transformer.modules())
    assert torch.equal(run(transformer, inputs), base)
    with pytest.raises(RuntimeError, match="closed"):
        runtime.set_step_strengths("high", [1.0, 1.0])


def test_unchanged_strengths_touch_nothing(transformer, spec, tmp_path: Path) -> None:
    path = write_original(spec, tmp_path / "a.safetensors")
    with LoraRuntime({"high": transformer}, [path], mode="merged") as runtime:
        runtime.set_step_strengths("high", [0.9])
        weight = transformer.blocks[0].attn1.to_q.weight  # merged: the layer stays a plain Linear
        version = weight._version  # bumped by every in-place write
        runtime.set_step_strengths("high", [0.9])
        assert weight._version == version
        runtime.set_step_strengths("high", [0.8])
        assert weight._version > version


# --- per-step schedule on two experts -------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["unmerged", "merged"])
def test_per_step_schedule_reaches_the_expert_that_runs(mode: str, spec, spec_b, tmp_path: Path) -> None:
    high, low = tiny_transformer(seed=0), tiny_transformer(seed=21)
    inputs = transformer_inputs(seed=1)
    paths = [write_original(spec, tmp_path / "a.safetensors"), write_diffusers(spec_b, tmp_path / "b.safetensors")]
    # (expert, strengths of LoRA a and b) per denoising step, as a sampler with a 2-phase plan would send them
    plan = [("high", (1.0, 0.0)), ("high", (0.5, 0.5)), ("low", (0.2, 0.8)), ("low", (0.2, 0.8)), ("low", (0.0, 1.0))]
    references = {
        (expert, strengths): run(
            patched_copy(high if expert == "high" else low, [(spec, strengths[0]), (spec_b, strengths[1])]), inputs
        )
        for expert, strengths in set(plan)
    }

    seen: list[tuple[str, dict[str, float]]] = []

    def record(expert: str):
        def hook(module: torch.nn.Module, args: tuple[object, ...]) -> None:
            if not isinstance(module, LoraLayer):  # merged mode: no adapter layer at all
                seen.append((expert, {}))
                return
            active = module.active_adapters if not module.disable_adapters else []
            seen.append((expert, {name: module.scaling[name] for name in active}))

        return hook

    with LoraRuntime({"high": high, "low": low}, paths, mode=mode) as runtime:
        handles = [
            expert_model.blocks[0].attn1.to_q.register_forward_pre_hook(record(expert))
            for expert, expert_model in (("high", high), ("low", low))
        ]
        for expert, strengths in plan:
            runtime.set_step_strengths(expert, strengths)
            for _ in range(2):  # cond and uncond passes of one CFG step
                assert_close(run(high if expert == "high" else low, inputs), references[(expert, strengths)])
        for handle in handles:
            handle.remove()

    assert [expert for expert, _ in seen] == [expert for expert, _ in plan for _ in range(2)]
    if mode == "unmerged":  # the effective per-layer scale: strength (alpha/rank is folded into the weights)
        expected = [
            (expert, {name: value for name, value in zip(("lora0", "lora1"), strengths, strict=True) if value})
            for expert, strengths in plan
            for _ in range(2)
        ]
        assert seen == expected
    else:  # merged: no adapter runs at forward time, the strengths are in the weights
        assert all(scales == {} for _, scales in seen)


def test_one_transformer_serving_both_experts_follows_the_last_call(spec, tmp_path: Path) -> None:
    shared = tiny_transformer(seed=0)
    inputs = transformer_inputs(seed=1)
    path = write_original(spec, tmp_path / "a.safetensors")
    with LoraRuntime({"high": shared, "low": shared}, [path], mode="merged") as runtime:
        runtime.set_step_strengths("high", [1.0])
        runtime.set_step_strengths("low", [0.0])
        low_output = run(shared, inputs)
        runtime.set_step_strengths("high", [1.0])  # must re-merge: the module now holds the "low" strengths
        high_output = run(shared, inputs)
    assert torch.equal(low_output, run(shared, inputs))
    assert_close(high_output, run(patched_copy(shared, [(spec, 1.0)]), inputs))


def test_modes_and_arguments_are_checked(transformer, spec, tmp_path: Path) -> None:
    path = write_original(spec, tmp_path / "a.safetensors")
    with LoraRuntime({"high": transformer}, [path]) as runtime:
        assert runtime.mode == "merged"  # auto on CPU: measured faster (see Wan2GP.loras.CPU_AUTO_MODE)
        with pytest.raises(ValueError, match="expert: expected one of \\['high'\\]"):
            runtime.set_step_strengths("low", [1.0])
        with pytest.raises(ValueError, match="strengths: expected 1 values"):
            runtime.set_step_strengths("high", [1.0, 2.0])
        with pytest.raises(ValueError, match=r"strengths\[0\]: expected a finite number"):
            runtime.set_step_strengths("high", [float("nan")])
        merged_message = (
            r"^transformer \['high'\] already carries LoRAs merged into its weights; close the previous LoraRuntime"
        )
        with pytest.raises(RuntimeError, match=merged_message):
            LoraRuntime({"high": transformer}, [path])
    with pytest.raises(ValueError, match="mode: expected"):
        LoraRuntime({"high": transformer}, [path], mode="fused")
    with LoraRuntime({"high": transformer}, []) as runtime:  # no LoRAs: a no-op runtime
        runtime.set_step_strengths("high", [])
        assert not any(isinstance(module, LoraLayer) for module in transformer.modules())


# ---------------------------------------------------------------------------------------------------------------------
# Choosing merged vs unmerged on a GPU from the measured costs (bench/README.md)

# The seed-001 run-2 plan as (expert, forwards, strengths) per step: 6 steps, CFG 3 on the first 2, high lora
# 0.75 -> 1.0 -> 0, expert switch at step 4 (the first 4 steps are the high expert's).
SEED_STEPS = [
    ("high", 2, (0.75, 0.0)),
    ("high", 2, (0.75, 0.0)),
    ("high", 1, (1.0, 0.0)),
    ("high", 1, (1.0, 0.0)),
    ("low", 1, (0.0, 1.0)),
    ("low", 1, (0.0, 1.0)),
]


def test_forward_spans_group_constant_strengths_per_expert() -> None:
    from Wan2GP.loras import forward_spans

    assert forward_spans(SEED_STEPS) == {"high": [4, 2], "low": [2]}
    # the same strengths on both sides of the expert switch are still two spans, one per expert
    assert forward_spans([("high", 2, (1.0,)), ("high", 1, (1.0,)), ("low", 2, (1.0,))]) == {"high": [3], "low": [2]}


def test_few_step_runs_stay_unmerged_and_long_constant_runs_merge() -> None:
    from Wan2GP.loras import CUDA_MODE_COSTS, choose_mode

    assert choose_mode({"high": [4, 2], "low": [2]}) == "unmerged"  # Lightning: 8 forwards in all
    long_constant = {"high": [200], "low": [200]}  # e.g. 100 CFG steps per expert at one strength
    assert choose_mode(long_constant) == "merged"
    # The break-even follows the costs: merging one expert pays first_merge + unmerge once.
    per_expert = CUDA_MODE_COSTS.first_merge + CUDA_MODE_COSTS.unmerge
    threshold = int(per_expert / CUDA_MODE_COSTS.unmerged_per_forward)
    assert choose_mode({"high": [threshold - 1]}) == "unmerged"
    assert choose_mode({"high": [threshold + 1]}) == "merged"


def test_device_copies_make_merging_pay_where_host_copies_do_not() -> None:
    """With the exact originals on the device a strength change costs a fraction of a forward, so the seed's Lightning
    run (4 + 2 forwards on the high expert, a change between, 2 on the low one) merges; with host copies it does not.
    Mixed: each expert is costed by where its copies live."""
    from Wan2GP.loras import CUDA_DEVICE_COPY_COSTS, CUDA_MODE_COSTS, choose_mode

    seed_run = {"high": [4, 2], "low": [2]}
    assert choose_mode(seed_run, CUDA_DEVICE_COPY_COSTS) == "merged"
    assert choose_mode(seed_run, CUDA_MODE_COSTS) == "unmerged"
    assert choose_mode(seed_run, {"high": CUDA_DEVICE_COPY_COSTS, "low": CUDA_MODE_COSTS}) == "unmerged"
    long_low = {"high": [4, 2], "low": [60]}  # low's 60 forwards pay for its host-copied merge, not for high's too
    assert choose_mode(long_low, {"high": CUDA_DEVICE_COPY_COSTS, "low": CUDA_MODE_COSTS}) == "merged"
    assert choose_mode(long_low, {"high": CUDA_MODE_COSTS, "low": CUDA_MODE_COSTS}) == "unmerged"


def test_auto_on_a_gpu_costs_each_transformer_by_its_own_experts_and_copies() -> None:
    """Mode 'auto' on a GPU, per transformer: the seed's Lightning steps (high: 4 forwards at 0.75, then 2 at 1.0; low:
    2 at 1.0) merge where the exact originals sit on the device and keep adapters where they would be read back from
    host memory (as on the H200 with room for one expert's copies: high merged, low unmerged); a long constant run
    pays for a host-copied merge; a transformer serving both experts is costed on both; no plan keeps adapters."""
    from Wan2GP.loras import auto_modes

    seed_steps, high_steps = SEED_STEPS, SEED_STEPS[:4]
    two = {1: ("high",), 2: ("low",)}
    assert auto_modes(seed_steps, two, copied_on_device={1, 2}) == {1: "merged", 2: "merged"}
    assert auto_modes(seed_steps, two, copied_on_device={1}) == {1: "merged", 2: "unmerged"}
    assert auto_modes(seed_steps, two, copied_on_device={2}) == {1: "unmerged", 2: "merged"}
    assert auto_modes(seed_steps, two, copied_on_device=set()) == {1: "unmerged", 2: "unmerged"}
    long_low = [*high_steps, ("low", 100, (0.0, 1.0))]  # 100 forwards at one strength on the low expert
    assert auto_modes(long_low, two, copied_on_device=set()) == {1: "unmerged", 2: "merged"}
    # one transformer for both experts: high's re-merge and low's span are one transformer's, copied or not
    assert auto_modes(seed_steps, {3: ("high", "low")}, copied_on_device={3}) == {3: "merged"}
    assert auto_modes(long_low, {3: ("high", "low")}, copied_on_device=set()) == {3: "merged"}
    assert auto_modes(high_steps, {3: ("high", "low")}, copied_on_device={3}) == {3: "merged"}
    assert auto_modes(None, two, copied_on_device={1, 2}) == {1: "unmerged", 2: "unmerged"}
    assert auto_modes([], two, copied_on_device={1, 2}) == {1: "unmerged", 2: "unmerged"}


def _targeted_bytes(transformer: torch.nn.Module, spec: LoraSpec) -> int:
    modules = dict(transformer.named_modules())
    return sum(modules[name].weight.numel() * modules[name].weight.element_size() for name in spec.down)


def test_device_copies_go_first_to_the_expert_whose_strengths_change(tmp_path: Path) -> None:
    """Room for one expert's exact originals: the high expert (0.75 then 1.0: a re-merge every segment) gets it, not
    the low one (1.0 throughout), even though the low one's LoRA targets more weights; merging stays exact either way
    and close() gives back the base weights bit for bit."""
    high, low = tiny_transformer(seed=0), tiny_transformer(seed=1)
    small = make_lora_spec(high, seed=5, block_modules=ATTENTION_MODULES)  # high's LoRA: attention only
    large = make_lora_spec(high, seed=6)  # low's LoRA: every module
    paths = [
        write_diffusers(small, tmp_path / "small.safetensors"),
        write_diffusers(large, tmp_path / "large.safetensors"),
    ]
    steps = [("high", 2, (0.75, 0.0)), ("high", 1, (1.0, 0.0)), ("low", 1, (0.0, 1.0))]
    small_bytes, large_bytes = _targeted_bytes(high, small), _targeted_bytes(low, large)
    assert small_bytes < large_bytes
    inputs = transformer_inputs(seed=2)
    originals = {name: base_weights(module) for name, module in (("high", high), ("low", low))}
    for room, expected_bytes in [
        (large_bytes, small_bytes),  # high first; then low's does not fit in what is left
        (small_bytes + large_bytes, small_bytes + large_bytes),
        (small_bytes - 1, 0),  # neither fits
    ]:
        expected_high = run(patched_copy(high, [(small, 1.0)]), inputs)
        # low listed first: only the strength changes can put high ahead of it
        with LoraRuntime(
            {"low": low, "high": high}, paths, mode="merged", steps=steps, device_copy_room=room
        ) as runtime:
            assert runtime.device_copy_bytes == expected_bytes
            for expert, _, strengths in steps:
                runtime.set_step_strengths(expert, strengths)
            assert_close(run(high, inputs), expected_high)
        for name, module in (("high", high), ("low", low)):
            assert all(torch.equal(value, base_weights(module)[key]) for key, value in originals[name].items())
    with LoraRuntime(
        {"high": high, "low": low}, paths, mode="unmerged", steps=steps, device_copy_room=10**12
    ) as runtime:
        assert runtime.device_copy_bytes == 0  # adapters copy nothing


def test_merged_weights_of_each_planned_strength_set_are_kept_and_returned_to_by_a_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With room to spare, a transformer whose strengths change (high: 0.75 then 1.0) keeps one merged copy of its
    weights per set of strengths in the step plan, and a later return to a set (the next segment of a travel run) copies
    it back instead of merging again; a set outside the plan is merged and not kept, the low expert (one set
    throughout) keeps nothing, and close() gives back the base weights bit for bit."""
    from Wan2GP import loras

    merges: list[tuple[str, tuple[float, ...]]] = []
    merge = loras._Write._merge

    def counted(self, parameter, wanted, requantize):
        merges.append((self.name, wanted))
        merge(self, parameter, wanted, requantize)

    monkeypatch.setattr(loras._Write, "_merge", counted)
    high, low = tiny_transformer(seed=0), tiny_transformer(seed=1)
    first, second = make_lora_spec(high, seed=5), make_lora_spec(high, seed=6, block_modules=ATTENTION_MODULES)
    paths = [write_diffusers(first, tmp_path / "a.safetensors"), write_diffusers(second, tmp_path / "b.safetensors")]
    steps = [("high", 2, (0.75, 0.0)), ("high", 1, (1.0, 0.0)), ("low", 1, (0.0, 1.0))]
    high_bytes, low_bytes = _targeted_bytes(high, first), _targeted_bytes(low, second)
    inputs = transformer_inputs(seed=2)
    originals = {name: base_weights(module) for name, module in (("high", high), ("low", low))}
    expected = {value: run(patched_copy(high, [(first, value)]), inputs) for value in (0.75, 1.0, 0.5)}
    with LoraRuntime({"high": high, "low": low}, paths, mode="merged", steps=steps, device_copy_room=10**9) as runtime:
        assert runtime.device_copy_bytes == high_bytes + low_bytes + 2 * high_bytes
        for expert, _, strengths in steps:  # the first segment merges every set once
            runtime.set_step_strengths(expert, strengths)
        high_writes = len(first.down)
        assert len(merges) == 2 * high_writes + len(second.down)
        after_first = len(merges)
        for expert, _, strengths in steps:  # the next segment only copies
            runtime.set_step_strengths(expert, strengths)
            if expert == "high":
                assert_close(run(high, inputs), expected[strengths[0]])
        assert len(merges) == after_first
        at_one = base_weights(high)
        runtime.set_step_strengths("high", (0.75, 0.0))
        runtime.set_step_strengths("high", (1.0, 0.0))
        assert all(torch.equal(value, at_one[key]) for key, value in base_weights(high).items())
        runtime.set_step_strengths("high", (0.5, 0.0))  # not in the plan: merged, and merged again next time
        runtime.set_step_strengths("high", (1.0, 0.0))
        runtime.set_step_strengths("high", (0.5, 0.0))
        assert_close(run(high, inputs), expected[0.5])
        assert [wanted[0] for _, wanted in merges[after_first:]] == [0.5] * (2 * high_writes)
    for name, module in (("high", high), ("low", low)):
        assert all(torch.equal(value, base_weights(module)[key]) for key, value in originals[name].items())
    # room for the exact originals but not for two more copies of high's weights: nothing is kept
    with LoraRuntime(
        {"high": high, "low": low}, paths, mode="merged", steps=steps, device_copy_room=high_bytes + low_bytes
    ) as runtime:
        assert runtime.device_copy_bytes == high_bytes + low_bytes
        merges.clear()
        for _ in range(2):
            for expert, _, strengths in steps:
                runtime.set_step_strengths(expert, strengths)
        assert len(merges) == 2 * (2 * high_writes) + len(second.down)


def test_the_mode_choice_spreads_one_time_merge_costs_over_the_generations_that_keep_the_loras() -> None:
    """Per generation: unmerged pays per forward; merged pays the first merge and the close once over `generations`,
    and a re-merge per strength change, plus the return to the first strengths that starts each later generation."""
    costs = ModeCosts(unmerged_per_forward=0.1, first_merge=1.0, re_merge=0.2, unmerge=0.2)
    constant = {"e": [5]}  # unmerged 0.5; merged 1.2 / generations
    assert [choose_mode(constant, costs, generations=g) for g in (1, 2, 3)] == ["unmerged", "unmerged", "merged"]
    changing = {"e": [3, 3]}  # unmerged 0.6; merged 1.2 / g + 0.2 * (1 + (g - 1) / g)
    assert choose_mode(changing, costs, generations=4) == "unmerged"  # 0.3 + 0.35 = 0.65
    assert choose_mode(changing, costs, generations=6) == "merged"  # 0.2 + 0.367 = 0.567
    with pytest.raises(ValueError, match="generations: expected at least 1, got 0"):
        choose_mode(constant, costs, generations=0)


def test_without_a_step_plan_every_lora_counts_for_the_device_copies(tmp_path: Path) -> None:
    """No steps given (a caller that sets strengths as it goes): each LoRA may be used, so the room is planned for all
    the weights they write, the full deltas (a bias) as well as the pairs' weights."""
    transformer = tiny_transformer(seed=0)
    spec = make_lora_spec(transformer, seed=5, block_modules=ATTENTION_MODULES)
    bias = torch.full((24,), 0.5)
    path = write_original(
        spec, tmp_path / "with_bias.safetensors", extra={"diffusion_model.blocks.0.self_attn.q.diff_b": bias}
    )
    original_bias = transformer.blocks[0].attn1.to_q.bias.detach().clone()
    pair_bytes = _targeted_bytes(transformer, spec)
    bias_bytes = original_bias.numel() * original_bias.element_size()
    with LoraRuntime({"high": transformer}, [path], mode="merged", device_copy_room=10**9) as runtime:
        assert runtime.device_copy_bytes == pair_bytes + bias_bytes
        runtime.set_step_strengths("high", (1.0,))
        assert_close(transformer.blocks[0].attn1.to_q.bias.detach(), original_bias + bias)
    assert torch.equal(transformer.blocks[0].attn1.to_q.bias.detach(), original_bias)


def test_auto_on_cpu_merges_regardless_of_spans(tmp_path: Path) -> None:
    transformer = tiny_transformer(seed=3)
    path = write_diffusers(make_lora_spec(transformer, seed=4), tmp_path / "l.safetensors")
    with LoraRuntime({"high": transformer}, [path], steps=[("high", 1, (1.0,))]) as runtime:
        assert runtime.mode == "merged"


@pytest.mark.parametrize("mode", ["unmerged", "merged"])
def test_one_file_with_several_ranks_and_alphas_applies_each_modules_own_scale(
    mode: str, transformer, inputs, tmp_path: Path
) -> None:
    """Extractors write a rank (and an alpha) per module: attention at rank 4 with alpha 2, the ffn at rank 2 with alpha
    8, and one module at rank 8 with alpha 1. peft needs each odd rank and its alpha by name (rank_pattern,
    alpha_pattern); one scale for all would be off by a factor of 4 on the ffn."""
    attention = make_lora_spec(transformer, seed=11, rank=4, alpha=2.0, block_modules=ATTENTION_MODULES[1:])
    ffn = make_lora_spec(transformer, seed=12, rank=2, alpha=8.0, block_modules=FFN_MODULES)
    single = make_lora_spec(transformer, seed=13, rank=8, alpha=1.0, block_modules=ATTENTION_MODULES[:1])
    tensors = {}
    for spec in (attention, ffn, single):
        path = write_original(spec, tmp_path / "part.safetensors")
        tensors.update(load_file(str(path)))
    mixed = tmp_path / "mixed_ranks.safetensors"
    save_file(tensors, str(mixed))

    expected = run(patched_copy(transformer, [(attention, 0.9), (ffn, 0.9), (single, 0.9)]), inputs)
    assert (expected - run(transformer, inputs)).abs().max() > 1e-2
    with LoraRuntime({"high": transformer}, [mixed], mode=mode) as runtime:
        runtime.set_step_strengths("high", [0.9])
        assert_close(run(transformer, inputs), expected)
        if mode == "unmerged":
            ranks = {layer.r["lora0"] for layer in transformer.modules() if isinstance(layer, LoraLayer)}
            assert ranks == {2, 4, 8}


def test_every_strength_change_costs_a_re_merge_and_a_tie_stays_unmerged() -> None:
    from Wan2GP.loras import CUDA_MODE_COSTS, ModeCosts, choose_mode

    # ten changes, three forwards each: 9 re-merges outweigh 30 forwards of unmerged matmuls
    assert choose_mode({"high": [3] * 10}) == "unmerged"
    merged = CUDA_MODE_COSTS.first_merge + 9 * CUDA_MODE_COSTS.re_merge + CUDA_MODE_COSTS.unmerge
    assert merged > 30 * CUDA_MODE_COSTS.unmerged_per_forward
    # at equal cost nothing is written into the weights
    even = ModeCosts(unmerged_per_forward=1.0, first_merge=2.0, re_merge=1.0, unmerge=1.0)
    assert choose_mode({"high": [3]}, even) == "unmerged"
    assert choose_mode({"high": [4]}, even) == "merged"


def test_a_bf16_file_on_a_float32_model_loads_in_the_models_dtype(transformer, inputs, spec, tmp_path: Path) -> None:
    """LoRA files are mostly bf16, CPU runs float32 (and GPU models may be fp16): the adapter takes the layer's dtype."""
    path = write_diffusers(spec, tmp_path / "bf16.safetensors")
    save_file({key: value.to(torch.bfloat16) for key, value in load_file(str(path)).items()}, str(path))
    scale = spec.alpha / spec.rank  # folded into A in the file, then rounded to bf16 with it
    rounded = LoraSpec(
        down={name: (value * scale).to(torch.bfloat16).float() for name, value in spec.down.items()},
        up={name: value.to(torch.bfloat16).float() for name, value in spec.up.items()},
        alpha=spec.rank,
        rank=spec.rank,
    )
    expected = run(patched_copy(transformer, [(rounded, 1.0)]), inputs)
    with LoraRuntime({"high": transformer}, [path], mode="unmerged") as runtime:
        runtime.set_step_strengths("high", [1.0])
        layers = [layer for layer in transformer.modules() if isinstance(layer, LoraLayer)]
        assert layers and all(layer.lora_A["lora0"].weight.dtype == torch.float32 for layer in layers)
        assert_close(run(transformer, inputs), expected)


def test_a_layer_with_non_float_weights_is_never_merged_into(spec, tmp_path: Path) -> None:
    """A quantized weight without per-row scales (here: a bare float8 cast) cannot take a merged delta: merged is
    refused naming the first three such layers, auto stays unmerged; a bias delta (always written) on such a bias is
    refused in every mode. (torchao's per-row float8 weights do take them: test_lora_float8.py.)"""
    transformer = tiny_transformer(seed=0)
    quantized = [f"blocks.{block}.attn1.{name}" for block in (0, 1) for name in ("to_q", "to_k")]
    for name in quantized:
        layer = transformer.get_submodule(name)
        layer.weight = torch.nn.Parameter(layer.weight.data.to(torch.float8_e4m3fn), requires_grad=False)
    path = write_original(spec, tmp_path / "a.safetensors")
    expected = re.escape(str(sorted(quantized)[:3]))  # the file's order: to_k before to_q
    with pytest.raises(
        ValueError,
        match=rf"^mode 'merged': layers {expected} have quantized weights other than float8 with per-row scales, ",
    ):
        LoraRuntime({"high": transformer}, [path], mode="merged")
    with LoraRuntime({"high": transformer}, [path]) as runtime:
        assert runtime.mode == "unmerged"

    biased = tiny_transformer(seed=0)
    targets = [f"blocks.{block}.attn1.{name}.bias" for block in (0, 1) for name in ("to_q", "to_k")]
    extra = {}
    for target in targets:
        owner = biased.get_submodule(target.rsplit(".", 1)[0])
        owner.bias = torch.nn.Parameter(owner.bias.data.to(torch.float8_e4m3fn), requires_grad=False)
        original = target.replace("attn1.to_", "self_attn.").replace(".bias", ".diff_b")
        extra[f"diffusion_model.{original}"] = torch.ones(24)
    bias_file = tmp_path / "biases.safetensors"
    save_file(extra, str(bias_file))
    listed = re.escape(str(sorted(targets)[:3]))
    for mode in ("auto", "unmerged"):
        with pytest.raises(
            ValueError,
            match=rf"^LoRA deltas for {listed}: these parameters hold quantized weights other than float8 with per-row ",
        ):
            LoraRuntime({"high": biased}, [bias_file], mode=mode)


def test_a_lora_on_the_head_leaves_the_vace_blocks_proj_out_alone(tmp_path: Path) -> None:
    """The head is `proj_out`, and so is every VACE block's output layer: a LoRA on the head must attach to the head."""
    vace = tiny_vace()
    generator = torch.Generator().manual_seed(21)
    out_features = vace.proj_out.out_features
    down, up = torch.randn(2, 24, generator=generator), torch.randn(out_features, 2, generator=generator)
    path = tmp_path / "head.safetensors"
    save_file(
        {"diffusion_model.head.head.lora_down.weight": down, "diffusion_model.head.head.lora_up.weight": up}, str(path)
    )
    with LoraRuntime({"high": vace}, [path], mode="unmerged"):
        assert isinstance(vace.proj_out, LoraLayer)
        assert not any(isinstance(block.proj_out, LoraLayer) for block in vace.vace_blocks)


def test_a_closed_runtime_refuses_strengths_by_name(transformer, spec, tmp_path: Path) -> None:
    runtime = LoraRuntime({"high": transformer}, [write_original(spec, tmp_path / "a.safetensors")])
    runtime.close()
    with pytest.raises(RuntimeError, match=r"^set_step_strengths: this LoraRuntime is closed$"):
        runtime.set_step_strengths("high", [1.0])


def test_peft_refusing_a_file_is_a_lora_error_naming_the_file_and_peft_s_reason(
    spec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    transformer = tiny_transformer(seed=0)
    path = write_original(spec, tmp_path / "refused.safetensors")

    def refuse(*args: object, **kwargs: object) -> None:
        raise KeyError("lora_B for blocks.0.attn1.to_q")

    monkeypatch.setattr(transformer, "load_lora_adapter", refuse)
    with pytest.raises(LoraError) as caught:
        LoraRuntime({"high": transformer}, [path], mode="unmerged")
    assert caught.value.path == path
    assert caught.value.problem == "peft could not attach it (KeyError: 'lora_B for blocks.0.attn1.to_q')"
    assert not any(isinstance(module, LoraLayer) for module in transformer.modules())  # nothing stays attached


def test_a_file_with_as_many_bias_deltas_as_pairs_applies(transformer, inputs, tmp_path: Path) -> None:
    """What applies is pairs plus full deltas: two of each is four changes, not none."""
    pairs = make_lora_spec(transformer, seed=31, block_modules=["attn1.to_q"])  # one pair per block: two
    generator = torch.Generator().manual_seed(32)
    biases = {block: torch.randn(24, generator=generator) for block in (0, 1)}
    extra = {f"diffusion_model.blocks.{block}.self_attn.q.diff_b": delta for block, delta in biases.items()}
    path = write_original(pairs, tmp_path / "two_and_two.safetensors", extra=extra)
    reference = patched_copy(transformer, [(pairs, 1.0)])
    with torch.no_grad():
        for block, delta in biases.items():
            reference.blocks[block].attn1.to_q.bias += delta
    with LoraRuntime({"high": transformer}, [path]) as runtime:
        runtime.set_step_strengths("high", [1.0])
        assert_close(run(transformer, inputs), run(reference, inputs))


def _pair_file(path: Path, pairs: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> Path:
    """A diffusers/peft-named file of (down, up) pairs, keys as given (with their prefix)."""
    tensors = {}
    for key, (down, up) in pairs.items():
        tensors[f"{key}.lora_A.weight"] = down
        tensors[f"{key}.lora_B.weight"] = up
    save_file(tensors, str(path))
    return path


def test_what_a_runtime_refuses_is_named(spec, tmp_path: Path) -> None:
    transformer = tiny_transformer(seed=0)
    with pytest.raises(ValueError, match=r"^transformers: expected at least one transformer, e\.g\. \{'high': "):
        LoraRuntime({}, [])
    # a pair on a layer that is not Linear
    norm = _pair_file(
        tmp_path / "norm.safetensors", {"transformer.blocks.0.norm2": (torch.ones(2, 24), torch.ones(24, 2))}
    )
    with pytest.raises(LoraError) as caught:
        LoraRuntime({"high": transformer}, [norm])
    assert caught.value.path == norm
    assert (
        caught.value.problem
        == f"blocks.0.norm2 is a {type(transformer.blocks[0].norm2).__name__}; LoRA pairs apply to Linear layers"
    )
    # the inputs fit and only the outputs do not
    wrong_out = _pair_file(
        tmp_path / "out.safetensors", {"transformer.blocks.0.attn1.to_q": (torch.ones(2, 24), torch.ones(30, 2))}
    )
    with pytest.raises(LoraError, match=r"maps 24 inputs to 30 outputs, the layer 24 to 24"):
        LoraRuntime({"high": transformer}, [wrong_out])
    # a bias delta of another model's size
    bias = tmp_path / "bias.safetensors"
    save_file({"diffusion_model.blocks.0.self_attn.q.diff_b": torch.ones(30)}, str(bias))
    with pytest.raises(LoraError) as caught:
        LoraRuntime({"high": transformer}, [bias])
    assert caught.value.path == bias
    assert caught.value.problem == (
        "blocks.0.attn1.to_q.bias: a delta of shape (30,) for a parameter of shape (24,) (a LoRA for another model size?)"
    )
    # a two-part (high/low) file on one transformer serving both experts
    parts = _pair_file(
        tmp_path / "parts.safetensors",
        {
            "diffusion_model.transformer_1.blocks.0.attn1.to_q": (torch.ones(2, 24), torch.ones(24, 2)),
            "diffusion_model.transformer_2.blocks.0.attn1.to_k": (torch.ones(2, 24), torch.ones(24, 2)),
        },
    )
    with pytest.raises(LoraError) as caught:
        LoraRuntime({"high": transformer, "low": transformer}, [parts])
    assert caught.value.path == parts
    assert caught.value.problem == "holds different parts for the experts ['high', 'low'], which share one transformer"


def test_a_transformer_with_someone_elses_adapter_is_refused_by_name(spec, tmp_path: Path) -> None:
    transformer = tiny_transformer(seed=0)
    foreign = write_diffusers(spec, tmp_path / "foreign.safetensors")
    transformer.load_lora_adapter(str(foreign), prefix="transformer", adapter_name="theirs")
    with pytest.raises(
        RuntimeError,
        match=r"^transformer \['high'\] already carries LoRA adapters \['theirs'\]; close the previous LoraRuntime "
        r"before making a new one$",
    ):
        LoraRuntime({"high": transformer}, [write_original(spec, tmp_path / "mine.safetensors")])


def test_one_low_rank_term_merges_as_one_gemm_rounded_once() -> None:
    """The GPU's re-merge of a 16-bit weight with one active LoRA (Wan2GP.loras.merge_low_rank, run here on the CPU):
    the float32 path's sum rounded once, up to the GEMM's order of accumulation (a last bit, in a few elements)."""
    from Wan2GP.lora_formats import FullDelta, LowRank
    from Wan2GP.loras import merge_low_rank, single_low_rank_term

    generator = torch.Generator().manual_seed(5)
    original = (torch.randn(256, 384, generator=generator) * 0.02).bfloat16()
    up = (torch.randn(256, 16, generator=generator) * 0.05).bfloat16()
    down = (torch.randn(16, 384, generator=generator) * 0.05).bfloat16()
    term = LowRank(down=down, up=up, magnitude=None, source="a")
    for strength in (0.75, 1.0, -0.3):
        exact = original.float().addmm_(up.float(), down.float(), alpha=strength).bfloat16()
        parameter = original.clone()
        merge_low_rank(parameter, original, term, strength)
        differs = parameter != exact
        assert int(differs.sum()) <= 0.001 * exact.numel()  # not one bit off where most are: the strength applied once
        # a last bit of the result, or the float32 sum's own rounding where the LoRA cancels the weight
        allowed = exact.float().abs() * 2**-7 + original.float().abs() * 2**-20
        assert bool(((parameter.float() - exact.float()).abs() <= allowed)[differs].all())
        assert not torch.equal(parameter, original)
    other = LowRank(down=down, up=up, magnitude=None, source="b")
    dora = LowRank(down=down, up=up, magnitude=torch.ones(256, dtype=torch.bfloat16), source="c")
    full = FullDelta(delta=torch.zeros_like(original), source="d")
    # it applies to one active plain term in the weight's own 16-bit dtype, and to nothing else
    assert single_low_rank_term([(0, term), (1, other)], (0.75, 0.0), original) == (term, 0.75)
    assert single_low_rank_term([(0, term), (1, other)], (0.75, 1.0), original) is None
    assert single_low_rank_term([(0, dora)], (1.0,), original) is None
    assert single_low_rank_term([(0, full)], (1.0,), original) is None
    assert single_low_rank_term([(0, term)], (1.0,), original.float()) is None
    widened = LowRank(down=down.float(), up=up.float(), magnitude=None, source="e")
    assert single_low_rank_term([(0, widened)], (1.0,), original) is None
