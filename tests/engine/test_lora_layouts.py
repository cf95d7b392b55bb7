"""Every common Wan LoRA layout, as the tool that writes it names its keys, loads and applies as that tool means it.

Each test below builds one synthetic file for the tiny transformer from a "truth" (what the file should change, by
diffusers parameter), spelled with the key names, extras and dtypes of one tool, taken from that tool's public source:

- Lightning: lightx2v/Wan2.2-Lightning releases (and upstream_engine_spec.md §4.4): diffusion_model.blocks.N.
  {self_attn,cross_attn}.{q,k,v,o} and ffn.{0,2} with .lora_down.weight / .lora_up.weight / .alpha, bf16.
- LightX2V's extractor: ModelTC/LightX2V tools/extract/lora_extractor.py: "diffusion_model." + the original key, a
  lora_down/lora_up pair (no alpha) for 2-D weights of >= 1M parameters, otherwise the weight as ".diff" (norms,
  the 5-D patch_embedding, head.head), every bias as ".diff_b", every modulation as ".diff_m" (blocks.N.diff_m,
  head.diff_m).
- kijai's extractor: kijai/ComfyUI-KJNodes nodes/lora_nodes.py (LoraExtractKJ, bias_diff on): a lora_down/lora_up
  pair (no alpha) for every >= 2-D weight but the 5-D patch embedding, ".diff" for 1-D weights (norm_q, norm_k,
  norm3), ".diff_b" for every bias (patch_embedding.diff_b included); fp16.
- musubi-tuner with include patterns: kohya-ss/musubi-tuner networks/lora_wan.py: "lora_unet_" + the original module
  path with "." -> "_", .lora_down.weight / .lora_up.weight / .alpha, non-block modules (head.head, text_embedding,
  time_embedding, time_projection) included.
- diffusion-pipe: tdrussell/diffusion-pipe models/wan.py save_adapter: "diffusion_model." + peft's keys on the
  original model, .lora_A.weight / .lora_B.weight, no alpha in the file.
- ai-toolkit: ostris/ai-toolkit extensions_built_in/diffusion_models/wan22/wan22_14b_model.py: diffusers module
  names after "diffusion_model.", lora_A/lora_B; split files per expert, or one combined file whose keys carry
  "transformer_1." (high noise) / "transformer_2." (low noise).
- diffusers/peft: diffusers' save_lora_weights: "transformer." + peft keys, alpha in `lora_adapter_metadata`.
- VideoX-Fun: aigc-apps/VideoX-Fun videox_fun/utils/lora_utils.py: "lora_unet" + "." + "" + "." + module with "." ->
  "_" gives "lora_unet__blocks_0_self_attn_q", with .alpha.
- the dotted kohya form "lora_unet_blocks_0.self_attn.q.lora_down.weight" (issue 20).
- DoRA: LyCORIS/kohya "dora_scale" (1, in) or (out, 1) next to the pair, as ComfyUI's weight_decompose reads it, and
  peft's "lora_magnitude_vector" (out,) with use_dora in the metadata.

Reference semantics (ComfyUI's and LightX2V's), computed here independently of Wan2GP: a pair adds
s * (alpha / rank) * up @ down (no alpha: 1); diff, diff_b, diff_m add s * delta to the weight, the bias, the modulation
table; DoRA sets W + s * (m * V / ||V|| - W), V = W + (alpha / rank) up @ down, the norm per row or per column.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from log_capture import captured_warnings
from lora_fixtures import base_weights, run, tiny_transformer, transformer_inputs
from safetensors.torch import save_file

from Wan2GP.lora_formats import read_lora_file
from Wan2GP.loras import LoraError, LoraRuntime

NUM_BLOCKS = 2

# diffusers module (inside block N) -> the original Wan module, as the Wan checkpoints name them
BLOCK_ORIGINAL = {
    "attn1.to_q": "self_attn.q",
    "attn1.to_k": "self_attn.k",
    "attn1.to_v": "self_attn.v",
    "attn1.to_out.0": "self_attn.o",
    "attn1.norm_q": "self_attn.norm_q",
    "attn1.norm_k": "self_attn.norm_k",
    "attn2.to_q": "cross_attn.q",
    "attn2.to_k": "cross_attn.k",
    "attn2.to_v": "cross_attn.v",
    "attn2.to_out.0": "cross_attn.o",
    "attn2.norm_q": "cross_attn.norm_q",
    "attn2.norm_k": "cross_attn.norm_k",
    "norm2": "norm3",
    "ffn.net.0.proj": "ffn.0",
    "ffn.net.2": "ffn.2",
}
TOP_ORIGINAL = {
    "patch_embedding": "patch_embedding",
    "condition_embedder.text_embedder.linear_1": "text_embedding.0",
    "condition_embedder.text_embedder.linear_2": "text_embedding.2",
    "condition_embedder.time_embedder.linear_1": "time_embedding.0",
    "condition_embedder.time_embedder.linear_2": "time_embedding.2",
    "condition_embedder.time_proj": "time_projection.1",
    "proj_out": "head.head",
}
BLOCK_LINEARS = [name for name in BLOCK_ORIGINAL if "norm" not in name]
NORMS = ["attn1.norm_q", "attn1.norm_k", "attn2.norm_q", "attn2.norm_k", "norm2"]
TOP_LINEARS = [name for name in TOP_ORIGINAL if name != "patch_embedding"]


def original(module: str) -> str:
    """diffusers module path -> original Wan module path (the tiny t2v transformer's modules)."""
    if module.startswith("blocks."):
        _, block, inner = module.split(".", 2)
        return f"blocks.{block}.{BLOCK_ORIGINAL[inner]}"
    return TOP_ORIGINAL[module]


@dataclass(frozen=True)
class Pair:
    module: str  # diffusers name
    down: torch.Tensor
    up: torch.Tensor
    alpha: float | None
    magnitude: torch.Tensor | None = None

    @property
    def scale(self) -> float:
        return 1.0 if self.alpha is None else self.alpha / self.down.shape[0]


@dataclass(frozen=True)
class Full:
    parameter: str  # diffusers name: "<module>.weight", "<module>.bias" or "...scale_shift_table"
    delta: torch.Tensor


Truth = list[Pair | Full]


class TruthMaker:
    """Random pairs and deltas shaped for the tiny transformer's parameters."""

    def __init__(self, transformer: torch.nn.Module, seed: int) -> None:
        self.parameters = dict(transformer.named_parameters())
        self.generator = torch.Generator().manual_seed(seed)

    def randn(self, *shape: int, scale: float = 0.3) -> torch.Tensor:
        return torch.randn(*shape, generator=self.generator) * scale

    def pair(self, module: str, *, rank: int = 4, alpha: float | None = 2.0, magnitude: str = "") -> Pair:
        out_features, in_features = self.parameters[f"{module}.weight"].shape
        down, up = self.randn(rank, in_features), self.randn(out_features, rank)
        weight = self.parameters[f"{module}.weight"].detach()
        shapes = {"out": (out_features,), "out,1": (out_features, 1), "1,in": (1, in_features)}
        values = None
        if magnitude:  # a trained magnitude: the base norms, moved a little
            dimension = 0 if magnitude == "1,in" else 1
            values = (weight.norm(dim=dimension) * (1 + self.randn(weight.shape[1 - dimension], scale=0.1))).reshape(
                shapes[magnitude]
            )
        return Pair(module, down, up, alpha, values)

    def full(self, parameter: str) -> Full:
        return Full(parameter, self.randn(*self.parameters[parameter].shape, scale=0.05))


def block_modules(*inner: str) -> list[str]:
    return [f"blocks.{block}.{name}" for block in range(NUM_BLOCKS) for name in inner]


def biased(module: str) -> bool:
    return not module.endswith(("norm_q", "norm_k"))  # the RMS norms have no bias


# --- the tools' key names -------------------------------------------------------------------------------------------


def save(path: Path, tensors: dict[str, torch.Tensor], dtype: torch.dtype = torch.float32, metadata=None) -> Path:
    save_file({key: value.to(dtype).contiguous() for key, value in tensors.items()}, str(path), metadata=metadata)
    return path


def original_keys(truth: Truth, *, prefix: str = "diffusion_model.", pair: tuple[str, str] = ("lora_down", "lora_up")):
    """ComfyUI-style original names: pairs (+ .alpha when the truth has one), .diff / .diff_b / .diff_m."""
    tensors: dict[str, torch.Tensor] = {}
    for item in truth:
        if isinstance(item, Pair):
            name = prefix + original(item.module)
            tensors[f"{name}.{pair[0]}.weight"] = item.down
            tensors[f"{name}.{pair[1]}.weight"] = item.up
            if item.alpha is not None:
                tensors[f"{name}.alpha"] = torch.tensor(item.alpha)
            if item.magnitude is not None:
                tensors[f"{name}.dora_scale"] = item.magnitude
        elif item.parameter.endswith("scale_shift_table"):
            owner = item.parameter.removesuffix("scale_shift_table").rstrip(".") or "head"
            tensors[f"{prefix}{owner}.diff_m"] = item.delta
        else:
            module, _, kind = item.parameter.rpartition(".")
            tensors[f"{prefix}{original(module)}.{'diff' if kind == 'weight' else 'diff_b'}"] = item.delta
    return tensors


def kohya_keys(truth: Truth, *, prefix: str = "lora_unet_", dotted: bool = False) -> dict[str, torch.Tensor]:
    tensors = {}
    for key, value in original_keys(truth, prefix="").items():
        if ".lora_" in key:
            module, param = key.split(".lora_", 1)
            param = "lora_" + param
        else:
            module, param = key.rsplit(".", 1)
        if dotted:  # "blocks_0.self_attn.q": only the block index is joined with "_"
            flat = module.replace("blocks.", "blocks_", 1)
        else:
            flat = module.replace(".", "_")
        tensors[f"{prefix}{flat}.{param}"] = value
    return tensors


def diffusers_keys(truth: Truth, *, prefix: str) -> dict[str, torch.Tensor]:
    tensors = {}
    for item in truth:
        assert isinstance(item, Pair)
        tensors[f"{prefix}{item.module}.lora_A.weight"] = item.down
        tensors[f"{prefix}{item.module}.lora_B.weight"] = item.up
        if item.magnitude is not None:
            tensors[f"{prefix}{item.module}.lora_magnitude_vector"] = item.magnitude
    return tensors


# --- the layouts ----------------------------------------------------------------------------------------------------


def lightning(make: TruthMaker, path: Path) -> tuple[Truth, Path]:
    truth: Truth = [make.pair(module, rank=4, alpha=8.0) for module in block_modules(*BLOCK_LINEARS)]
    return truth, save(path, original_keys(truth), torch.bfloat16)


def lightx2v_extractor(make: TruthMaker, path: Path) -> tuple[Truth, Path]:
    # At 14B size: the attention/ffn/embedding matrices are >= 1M parameters (pairs); head.head (64 x 5120) and the
    # patch embedding are below (".diff"), as are the 1-D norm weights; every bias is ".diff_b".
    pairs = block_modules(*BLOCK_LINEARS) + TOP_LINEARS[:-1]
    truth: Truth = [make.pair(module, rank=4, alpha=None) for module in pairs]
    truth += [make.full(f"{module}.weight") for module in block_modules(*NORMS) + ["patch_embedding", "proj_out"]]
    truth += [make.full(f"{module}.bias") for module in block_modules(*BLOCK_LINEARS, "norm2") + TOP_LINEARS]
    truth += [make.full("patch_embedding.bias")]
    truth += [make.full(f"blocks.{block}.scale_shift_table") for block in range(NUM_BLOCKS)]
    truth += [make.full("scale_shift_table")]
    return truth, save(path, original_keys(truth), torch.bfloat16)


def kijai_extractor(make: TruthMaker, path: Path) -> tuple[Truth, Path]:
    truth: Truth = [make.pair(module, rank=4, alpha=None) for module in block_modules(*BLOCK_LINEARS) + TOP_LINEARS]
    truth += [make.full(f"{module}.weight") for module in block_modules(*NORMS)]
    biases = [m for m in block_modules(*BLOCK_LINEARS, *NORMS) if biased(m)] + TOP_LINEARS + ["patch_embedding"]
    truth += [make.full(f"{module}.bias") for module in biases]
    return truth, save(path, original_keys(truth), torch.float16)


def musubi_with_include_patterns(make: TruthMaker, path: Path) -> tuple[Truth, Path]:
    modules = block_modules(*BLOCK_LINEARS) + TOP_LINEARS
    truth: Truth = [make.pair(module, rank=4, alpha=1.0) for module in modules]
    return truth, save(path, kohya_keys(truth), torch.bfloat16, metadata={"ss_network_module": "networks.lora_wan"})


def diffusion_pipe(make: TruthMaker, path: Path) -> tuple[Truth, Path]:
    truth: Truth = [make.pair(module, rank=4, alpha=None) for module in block_modules(*BLOCK_LINEARS)]
    keys = original_keys(truth, pair=("lora_A", "lora_B"))
    return truth, save(path, keys, torch.bfloat16, metadata={"format": "pt"})


def ai_toolkit_split(make: TruthMaker, path: Path) -> tuple[Truth, Path]:
    truth: Truth = [make.pair(module, rank=4, alpha=None) for module in block_modules(*BLOCK_LINEARS)]
    return truth, save(path, diffusers_keys(truth, prefix="diffusion_model."), torch.bfloat16)


def diffusers_peft(make: TruthMaker, path: Path) -> tuple[Truth, Path]:
    truth: Truth = [make.pair(module, rank=4, alpha=6.0) for module in block_modules(*BLOCK_LINEARS)]
    config = {"transformer.r": 4, "transformer.lora_alpha": 6.0, "transformer.use_dora": False}
    metadata = {"format": "pt", "lora_adapter_metadata": json.dumps(config)}
    return truth, save(path, diffusers_keys(truth, prefix="transformer."), metadata=metadata)


def videox_fun(make: TruthMaker, path: Path) -> tuple[Truth, Path]:
    truth: Truth = [make.pair(module, rank=4, alpha=2.0) for module in block_modules(*BLOCK_LINEARS)]
    return truth, save(path, kohya_keys(truth, prefix="lora_unet__"))


def dotted_kohya(make: TruthMaker, path: Path) -> tuple[Truth, Path]:
    truth: Truth = [make.pair(module, rank=4, alpha=2.0) for module in block_modules(*BLOCK_LINEARS)]
    return truth, save(path, kohya_keys(truth, dotted=True))


def dora_lycoris(make: TruthMaker, path: Path) -> tuple[Truth, Path]:
    # Both magnitude axes ComfyUI tells apart: (1, in) (LyCORIS' default) and (out, 1).
    modules = block_modules(*BLOCK_LINEARS)
    truth: Truth = [
        make.pair(module, rank=4, alpha=2.0, magnitude="1,in" if i % 2 else "out,1") for i, module in enumerate(modules)
    ]
    return truth, save(path, kohya_keys(truth))


def dora_peft(make: TruthMaker, path: Path) -> tuple[Truth, Path]:
    truth: Truth = [make.pair(module, rank=4, alpha=None, magnitude="out") for module in block_modules(*BLOCK_LINEARS)]
    config = {"transformer.r": 4, "transformer.use_dora": True}
    metadata = {"format": "pt", "lora_adapter_metadata": json.dumps(config)}
    return truth, save(path, diffusers_keys(truth, prefix="transformer."), metadata=metadata)


LAYOUTS: dict[str, tuple[Callable[[TruthMaker, Path], tuple[Truth, Path]], str]] = {
    "Lightning": (lightning, "original Wan names"),
    "LightX2V extractor": (lightx2v_extractor, "diff, diff_b, diff_m"),
    "kijai extractor": (kijai_extractor, "diff, diff_b"),
    "musubi-tuner, include patterns": (musubi_with_include_patterns, "kohya/musubi-tuner names"),
    "diffusion-pipe": (diffusion_pipe, "original Wan names (diffusion_model.blocks.N.self_attn.q) with lora_A/lora_B"),
    "ai-toolkit split file": (ai_toolkit_split, "diffusers names"),
    "diffusers/peft": (diffusers_peft, "diffusers names"),
    "VideoX-Fun": (videox_fun, "VideoX-Fun kohya names"),
    "dotted kohya": (dotted_kohya, "dotted kohya names"),
    "DoRA, LyCORIS dora_scale": (dora_lycoris, "dora_scale"),
    "DoRA, peft lora_magnitude_vector": (dora_peft, "lora_magnitude_vector"),
}


# --- the reference ----------------------------------------------------------------------------------------------------


def expected_deltas(base: dict[str, torch.Tensor], truth: Truth, strength: float, dtype: torch.dtype):
    """Per parameter, what the tool means the weights to become minus what they were (`base`), in float64 from the
    file's tensors as stored (rounded to `dtype`)."""
    deltas: dict[str, torch.Tensor] = {}

    def stored(tensor: torch.Tensor) -> torch.Tensor:
        return tensor.to(dtype).double()

    for item in truth:
        if isinstance(item, Full):
            deltas[item.parameter] = strength * stored(item.delta)
            continue
        weight = base[f"{item.module}.weight"].double()
        low_rank = item.scale * stored(item.up) @ stored(item.down)
        if item.magnitude is None:
            deltas[f"{item.module}.weight"] = strength * low_rank
            continue
        combined = weight + low_rank
        magnitude = stored(item.magnitude)
        if magnitude.shape == (1, weight.shape[1]):  # per input column
            dora = combined * magnitude / combined.norm(dim=0, keepdim=True)
        else:  # per output row
            dora = combined * magnitude.reshape(-1, 1) / combined.norm(dim=1, keepdim=True)
        deltas[f"{item.module}.weight"] = strength * (dora - weight)
    return deltas


def assert_deltas(transformer, before: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    # The merged parameter is one fp32 rounding of the exact sum: allow a few fp32 ulps of the weight itself.
    for name, parameter in transformer.named_parameters():
        actual = parameter.detach().double() - before[name].double()
        wanted = expected.get(name, torch.zeros_like(actual))
        tolerance = 4e-7 * (before[name].double().abs().max().item() + wanted.abs().max().item()) + 1e-9
        assert (actual - wanted).abs().max().item() <= tolerance, f"{name}: delta differs from the reference"


# --- the tests --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_layout_loads_and_applies_as_its_tool_means(layout: str, tmp_path: Path) -> None:
    writer, described_as = LAYOUTS[layout]
    transformer = tiny_transformer(seed=0)
    inputs = transformer_inputs(seed=1)
    truth, path = writer(TruthMaker(transformer, seed=len(layout)), tmp_path / "lora.safetensors")
    dtype = next(iter(read_tensors(path).values())).dtype
    before = base_weights(transformer)
    base = run(transformer, inputs)

    assert described_as in read_lora_file(path).layout
    outputs = {}
    for mode in ("merged", "unmerged"):
        with captured_warnings() as warnings, LoraRuntime({"high": transformer}, [path], mode=mode) as runtime:
            runtime.set_step_strengths("high", [0.0])
            assert torch.equal(run(transformer, inputs), base), "multiplier 0 must leave the output unchanged"
            runtime.set_step_strengths("high", [1.0])
            outputs[mode] = run(transformer, inputs)
            assert (outputs[mode] - base).abs().max() > 1e-3, "multiplier 1 must change the output"
            if mode == "merged":
                assert_deltas(transformer, before, expected_deltas(before, truth, 1.0, dtype))
                runtime.set_step_strengths("high", [0.5])
                assert_deltas(transformer, before, expected_deltas(before, truth, 0.5, dtype))
        assert warnings == [], "every key of the file names something in the model"
        assert all(torch.equal(tensor, before[name]) for name, tensor in transformer.state_dict().items())
    scale = outputs["merged"].abs().max().item()
    assert (outputs["merged"] - outputs["unmerged"]).abs().max().item() <= 1e-5 * scale


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def test_ai_toolkit_combined_file_splits_into_the_high_and_low_experts(tmp_path: Path) -> None:
    high, low = tiny_transformer(seed=0), tiny_transformer(seed=21)
    inputs = transformer_inputs(seed=1)
    high_truth: Truth = [TruthMaker(high, seed=1).pair(m, alpha=None) for m in block_modules(*BLOCK_LINEARS)]
    low_truth: Truth = [TruthMaker(low, seed=2).pair(m, alpha=None) for m in block_modules("attn1.to_q", "ffn.net.2")]
    tensors = diffusers_keys(high_truth, prefix="diffusion_model.transformer_1.")
    tensors |= diffusers_keys(low_truth, prefix="diffusion_model.transformer_2.")
    path = save(tmp_path / "combined.safetensors", tensors, torch.bfloat16)
    assert "ai-toolkit Wan 2.2 combined file" in read_lora_file(path).layout

    before = {"high": base_weights(high), "low": base_weights(low)}
    with captured_warnings() as warnings, LoraRuntime({"high": high, "low": low}, [path], mode="merged") as runtime:
        runtime.set_step_strengths("high", [1.0])
        runtime.set_step_strengths("low", [0.5])
        assert_deltas(high, before["high"], expected_deltas(before["high"], high_truth, 1.0, torch.bfloat16))
        assert_deltas(low, before["low"], expected_deltas(before["low"], low_truth, 0.5, torch.bfloat16))
    assert warnings == []

    # On a one-transformer model the high-noise part applies and the low-noise part is reported, not dropped silently.
    single = tiny_transformer(seed=0)
    base = run(single, inputs)
    with captured_warnings() as warnings, LoraRuntime({"high": single}, [path]) as runtime:
        runtime.set_step_strengths("high", [1.0])
        assert (run(single, inputs) - base).abs().max() > 1e-3
    assert len(warnings) == 1 and "part for the low-noise expert (4 modules) is not applied" in warnings[0]


def test_wan21_image_keys_on_a_model_without_image_attention_are_reported_once(tmp_path: Path) -> None:
    transformer = tiny_transformer(seed=0)
    truth: Truth = [TruthMaker(transformer, seed=3).pair(m) for m in block_modules("attn1.to_q")]
    tensors = original_keys(truth)
    generator = torch.Generator().manual_seed(4)
    for block in range(NUM_BLOCKS):  # Wan 2.1 I2V's CLIP branch: k_img/v_img, and the image embedder
        for name in ("k_img", "v_img"):
            tensors[f"diffusion_model.blocks.{block}.cross_attn.{name}.lora_down.weight"] = torch.zeros(4, 24)
            tensors[f"diffusion_model.blocks.{block}.cross_attn.{name}.lora_up.weight"] = torch.zeros(24, 4)
        tensors[f"diffusion_model.blocks.{block}.cross_attn.norm_k_img.diff"] = torch.randn(24, generator=generator)
    tensors["diffusion_model.img_emb.proj.1.lora_down.weight"] = torch.zeros(4, 1280)
    tensors["diffusion_model.img_emb.proj.1.lora_up.weight"] = torch.zeros(1280, 4)
    path = save(tmp_path / "wan21_i2v.safetensors", tensors)
    before = base_weights(transformer)
    with captured_warnings() as warnings, LoraRuntime({"high": transformer, "low": transformer}, [path]) as runtime:
        runtime.set_step_strengths("high", [1.0])
        assert_deltas(transformer, before, expected_deltas(before, truth, 1.0, torch.float32))
    assert len(warnings) == 1
    assert "wan21_i2v.safetensors" in warnings[0] and "7 of its modules name nothing in this model" in warnings[0]
    assert "blocks.0.cross_attn.k_img" in warnings[0]


def test_file_of_which_nothing_applies_is_an_error_naming_its_layout(tmp_path: Path) -> None:
    transformer = tiny_transformer(seed=0)
    tensors = {
        "diffusion_model.img_emb.proj.1.lora_down.weight": torch.zeros(4, 1280),
        "diffusion_model.img_emb.proj.1.lora_up.weight": torch.zeros(1280, 4),
    }
    path = save(tmp_path / "clip_only.safetensors", tensors)
    with pytest.raises(LoraError, match="nothing in it applies") as raised:
        LoraRuntime({"high": transformer}, [path])
    assert "clip_only.safetensors" in str(raised.value) and "original Wan names" in str(raised.value)
    assert "img_emb.proj.1" in str(raised.value)


@pytest.mark.parametrize("mode", ["merged", "unmerged"])
def test_per_step_strengths_reach_every_kind_of_key_on_both_experts(mode: str, tmp_path: Path) -> None:
    experts = {"high": tiny_transformer(seed=0), "low": tiny_transformer(seed=21)}
    inputs = transformer_inputs(seed=1)
    dora_truth, dora_path = dora_lycoris(TruthMaker(experts["high"], seed=5), tmp_path / "dora.safetensors")
    diff_truth, diff_path = lightx2v_extractor(TruthMaker(experts["high"], seed=6), tmp_path / "diffs.safetensors")
    before = {expert: base_weights(transformer) for expert, transformer in experts.items()}

    def reference(expert: str, strengths: tuple[float, float]) -> torch.Tensor:
        patched = tiny_transformer(seed=0 if expert == "high" else 21)
        deltas = [
            expected_deltas(before[expert], dora_truth, strengths[0], torch.float32),
            expected_deltas(before[expert], diff_truth, strengths[1], torch.bfloat16),
        ]
        with torch.no_grad():
            for name, parameter in patched.named_parameters():
                for delta in deltas:
                    if name in delta:
                        parameter += delta[name].to(parameter.dtype)
        return run(patched, inputs)

    schedule = [
        ("high", (1.0, 0.0)),
        ("high", (0.5, 1.0)),
        ("low", (0.0, 0.25)),
        ("low", (1.0, 0.25)),
        ("high", (0, 0)),
    ]
    with LoraRuntime(experts, [dora_path, diff_path], mode=mode) as runtime:
        for expert, strengths in schedule:
            runtime.set_step_strengths(expert, strengths)
            actual, expected = run(experts[expert], inputs), reference(expert, strengths)
            assert (actual - expected).abs().max().item() <= 1e-5 * expected.abs().max().item(), (expert, strengths)
    for expert, transformer in experts.items():
        assert all(torch.equal(tensor, before[expert][name]) for name, tensor in transformer.state_dict().items())
