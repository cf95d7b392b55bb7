"""LoRAs merged into float8 weights (Wan2GP.loras with Wan2GP.quantization): the fast path's per-row float8 blocks take
a merged LoRA by quantizing the merged weight again from the float8 originals.

The CPU builds the same torchao Float8Tensor (per-row scales) through the weight-only "fp8" format: torchao refuses
its fp8-activation config without an fp8 GPU, and the weight tensors of both are the same class with the same data.
Every expected weight is computed by torchao's own `Float8Tensor.from_hp`, an implementation independent of ours."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lora_fixtures import make_lora_spec, run, tiny_transformer, transformer_inputs, write_original
from safetensors.torch import save_file
from torchao.quantization import Float8Tensor, PerRow, PerTensor

from Wan2GP.engine import LORA_RUN_GENERATIONS
from Wan2GP.lora_formats import LowRank, read_lora_file
from Wan2GP.loras import (
    CUDA_FLOAT8_DEVICE_COPY_COSTS,
    LoraRuntime,
    auto_modes,
    choose_mode,
    forward_spans,
)
from Wan2GP.quantization import float8_rows, is_float8_rows, quantize_transformer

CPU = torch.device("cpu")


def float8_transformer() -> torch.nn.Module:
    transformer = tiny_transformer(seed=0)
    quantize_transformer(transformer, "fp8", work_device=CPU, keep_on=CPU)
    return transformer


def inner(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return weight.qdata.clone(), weight.scale.clone()


def torchao_requantized(weight: torch.Tensor, delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """What torchao makes of the float32 sum of the float8 weight and a delta, quantized per row."""
    fresh = Float8Tensor.from_hp(weight.dequantize(torch.float32) + delta, granularity=PerRow())
    return fresh.qdata, fresh.scale


def bfloat16_product(pair: LowRank, strength: float) -> torch.Tensor:
    """A low-rank pair's change as the float8 merge computes it: a bfloat16 matmul of the scaled factors."""
    return ((pair.up.to(torch.bfloat16) * strength) @ pair.down.to(torch.bfloat16)).float()


def assert_same_bits(actual: tuple[torch.Tensor, torch.Tensor], expected: tuple[torch.Tensor, torch.Tensor]) -> None:
    for got, want in zip(actual, expected, strict=True):
        assert got.dtype == want.dtype and got.shape == want.shape
        # float8 has no equality kernel on a CPU: compare the bytes
        assert (
            torch.equal(got.view(torch.uint8), want.view(torch.uint8))
            if got.element_size() == 1
            else torch.equal(got, want)
        )


def test_float8_rows_is_torchao_s_per_row_quantization_of_the_sum_eager_and_compiled() -> None:
    generator = torch.Generator().manual_seed(5)
    base = Float8Tensor.from_hp(torch.randn(48, 80, generator=generator), granularity=PerRow())
    delta = torch.randn(48, 80, generator=generator) * 0.3
    delta[3] *= 40  # a row whose maximum moves a lot: its scale must follow the sum, not the original
    expected = torchao_requantized(base, delta)
    assert_same_bits(float8_rows(base.qdata, base.scale, delta), expected)
    # what a GPU runs (LoraRuntime compiles it there, shape-generic): inductor's fused kernels, the same bits, for
    # another shape too and for the bfloat16 deltas the low-rank pairs give
    compiled = torch.compile(float8_rows, dynamic=True)
    assert_same_bits(compiled(base.qdata, base.scale, delta), expected)
    wide = Float8Tensor.from_hp(torch.randn(24, 136, generator=generator), granularity=PerRow())
    wide_delta = (torch.randn(24, 136, generator=generator) * 0.3).bfloat16()
    expected_wide = torchao_requantized(wide, wide_delta.float())
    assert_same_bits(compiled(wide.qdata, wide.scale, wide_delta), expected_wide)
    assert_same_bits(float8_rows(wide.qdata, wide.scale, wide_delta), expected_wide)
    # the sum changed row 3's scale, and it is not the original's
    assert not torch.equal(expected[1][3], base.scale[3])


def test_a_bfloat16_product_costs_the_merged_float8_weight_nothing_measurable() -> None:
    """The float8 merge multiplies the low-rank factors in bfloat16 (half the memory of a float32 product): against the
    exact float32 sum, its float8 weight is as close as the one quantized from a float32 product, to 1% of float8's
    own error; the two differ in ~2% of their codes (roundings that a bfloat16 ulp tips over)."""
    generator = torch.Generator().manual_seed(11)
    # a Wan Linear's proportions: weights ~0.02, a rank-64 change of ~12% of the weight's norm
    weight = torch.randn(512, 1024, generator=generator) * 0.02
    base = Float8Tensor.from_hp(weight, granularity=PerRow())
    up = torch.randn(512, 64, generator=generator) * 0.02
    down = torch.randn(64, 1024, generator=generator) * 0.02
    pair = LowRank(down=down, up=up, magnitude=None, source="blocks.0.self_attn.q")
    exact = base.dequantize(torch.float32) + 0.75 * up @ down
    merged_bf16 = float8_rows(base.qdata, base.scale, bfloat16_product(pair, 0.75))
    merged_fp32 = float8_rows(base.qdata, base.scale, 0.75 * up @ down)

    def error(merged: tuple[torch.Tensor, torch.Tensor]) -> float:
        return float((merged[0].float() * merged[1] - exact).norm() / exact.norm())

    assert 0.01 < error(merged_fp32) < 0.05  # float8's own rounding
    assert error(merged_bf16) <= 1.01 * error(merged_fp32)
    codes_differ = (merged_bf16[0].view(torch.uint8) != merged_fp32[0].view(torch.uint8)).float().mean()
    assert 0 < codes_differ < 0.05


def test_only_per_row_float8_weights_are_written_into() -> None:
    transformer = float8_transformer()
    assert is_float8_rows(transformer.blocks[0].attn1.to_q.weight)
    assert not is_float8_rows(tiny_transformer(seed=0).blocks[0].attn1.to_q.weight)  # plain float32
    assert not is_float8_rows(Float8Tensor.from_hp(torch.randn(8, 16), granularity=PerTensor()))  # one scale
    int8 = tiny_transformer(seed=0)
    quantize_transformer(int8, "int8", work_device=CPU, keep_on=CPU)
    assert not is_float8_rows(int8.blocks[0].attn1.to_q.weight)


@pytest.mark.parametrize("mode", ["merged", "auto"])
def test_a_merged_lora_is_the_float8_weight_quantized_again_and_close_gives_the_bits_back(
    mode: str, tmp_path: Path
) -> None:
    transformer = float8_transformer()
    inputs = transformer_inputs(seed=1)
    spec = make_lora_spec(transformer, seed=3)
    path = write_original(spec, tmp_path / "lora.safetensors")
    pairs = read_lora_file(path).for_expert("high").low_rank
    weights = {name: transformer.get_submodule(name).weight for name in pairs}
    before = {name: inner(weight) for name, weight in weights.items()}
    base_output = run(transformer, inputs)

    with LoraRuntime({"high": transformer}, [path], mode=mode) as runtime:
        assert runtime.mode == "merged"  # auto on a CPU merges, float8 weights included
        runtime.set_step_strengths("high", [0.9])
        for name, pair in pairs.items():
            original = Float8Tensor(*before[name], block_size=[1, weights[name].shape[1]], dtype=weights[name].dtype)
            assert_same_bits(inner(weights[name]), torchao_requantized(original, bfloat16_product(pair, 0.9)))
        merged_output = run(transformer, inputs)
        at_09 = {name: inner(weight) for name, weight in weights.items()}
        runtime.set_step_strengths("high", [0.3])
        runtime.set_step_strengths("high", [0.9])
        for name in weights:  # computed from the originals every time: no drift over strength changes
            assert_same_bits(inner(weights[name]), at_09[name])
    for name in weights:
        assert_same_bits(inner(weights[name]), before[name])
    assert torch.equal(run(transformer, inputs), base_output)

    # the same LoRA as peft adapters on the same float8 weights: the merged output differs only by float8 rounding
    with LoraRuntime({"high": transformer}, [path], mode="unmerged") as runtime:
        runtime.set_step_strengths("high", [0.9])
        unmerged_output = run(transformer, inputs)
    change = (unmerged_output - base_output).norm()
    assert (merged_output - unmerged_output).norm() < 0.1 * change


def test_a_full_delta_is_written_into_a_float8_weight_in_every_mode(tmp_path: Path) -> None:
    """A `diff` key (a full delta of a Linear weight, LightX2V's extractors write them) used to be refused on the fast
    path's float8 weights; it is quantized in with the weight, unmerged mode included."""
    transformer = float8_transformer()
    target = transformer.blocks[1].attn1.to_v
    delta = torch.randn(target.weight.shape, generator=torch.Generator().manual_seed(8)) * 0.05
    path = tmp_path / "diff.safetensors"
    save_file({"diffusion_model.blocks.1.self_attn.v.diff": delta}, str(path))
    before = inner(target.weight)
    original = Float8Tensor(*before, block_size=[1, target.weight.shape[1]], dtype=target.weight.dtype)
    for mode in ("unmerged", "merged"):
        with LoraRuntime({"high": transformer}, [path], mode=mode) as runtime:
            runtime.set_step_strengths("high", [0.5])
            assert_same_bits(inner(target.weight), torchao_requantized(original, 0.5 * delta))
        assert_same_bits(inner(target.weight), before)


def test_auto_on_a_gpu_merges_float8_weights_only_from_device_copies() -> None:
    # the seed segment: high expert 4 forwards at 0.75 then 2 at 1.0, low expert 2 at 1.0
    steps = [("high", 2, (0.75, 0.0))] * 2 + [("high", 1, (1.0, 0.0))] * 2 + [("low", 1, (0.0, 1.0))] * 2
    experts = {1: ["high"], 2: ["low"]}
    run = LORA_RUN_GENERATIONS  # as the engine chooses: the set stays attached for a travel run's next segments
    assert auto_modes(steps, experts, {1, 2}, {1, 2}, generations=run) == {1: "merged", 2: "merged"}
    # float8 originals in host memory would travel at every re-merge: not measured, so unmerged
    assert auto_modes(steps, experts, {1}, {1, 2}, generations=run) == {1: "merged", 2: "unmerged"}
    # bf16 weights keep their own costs: host copies there merge only when the spans pay for it (not these)
    assert auto_modes(steps, experts, set(), set(), generations=run) == {1: "unmerged", 2: "unmerged"}
    # at the measured float8 costs one generation alone is cheaper with adapters (first merge and close not repaid)
    assert auto_modes(steps, experts, {1, 2}, {1, 2}) == {1: "unmerged", 2: "unmerged"}
    spans = forward_spans(steps)
    assert choose_mode({"low": spans["low"]}, CUDA_FLOAT8_DEVICE_COPY_COSTS, generations=2) == "unmerged"
    assert choose_mode({"low": spans["low"]}, CUDA_FLOAT8_DEVICE_COPY_COSTS, generations=3) == "merged"


def test_a_float8_weight_returns_to_a_kept_strength_set_by_a_copy_of_its_bits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from Wan2GP import loras

    requantized: list[str] = []
    merge = loras._Write._merge

    def counted(self, parameter, wanted, requantize):
        requantized.append(self.name)
        merge(self, parameter, wanted, requantize)

    monkeypatch.setattr(loras._Write, "_merge", counted)
    transformer = float8_transformer()
    spec = make_lora_spec(transformer, seed=3)
    path = write_original(spec, tmp_path / "lora.safetensors")
    weights = {
        name: transformer.get_submodule(name).weight for name in read_lora_file(path).for_expert("high").low_rank
    }
    before = {name: inner(weight) for name, weight in weights.items()}
    steps = [("high", 2, (0.9,)), ("high", 1, (0.3,))]
    with LoraRuntime({"high": transformer}, [path], mode="merged", steps=steps, device_copy_room=10**9) as runtime:
        runtime.set_step_strengths("high", [0.9])
        at_09 = {name: inner(weight) for name, weight in weights.items()}
        runtime.set_step_strengths("high", [0.3])
        at_03 = {name: inner(weight) for name, weight in weights.items()}
        assert len(requantized) == 2 * len(weights)
        for strengths, expected in (([0.9], at_09), ([0.3], at_03), ([0.9], at_09)):
            runtime.set_step_strengths("high", strengths)
            for name in weights:
                assert_same_bits(inner(weights[name]), expected[name])
        assert len(requantized) == 2 * len(weights)
    for name in weights:
        assert_same_bits(inner(weights[name]), before[name])
