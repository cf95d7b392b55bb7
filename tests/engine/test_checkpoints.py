"""Finetunes published as single-file transformer checkpoints (upstream's `"URLs": [".../resolve/main/X.safetensors"]`
and, for two experts, `"URLs2"`): the transformers come from those files, in the original Wan key layout, and the other
components plus the transformer config from the architecture's diffusers-format repo.

The real Hub cannot be reached here, so `fake_hub` serves both: the architecture's repo (a bundled tiny model's folder,
published under the real architecture's repo id) and a finetuner's repo holding checkpoint files written from that
tiny model's transformers with their keys renamed back to the original layout. Loaded that way, a model must hold
exactly the bundled tiny model's weights and render its video (up to float32 rounding).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
from diffusers import WanTransformer3DModel
from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers
from engine_helpers import gradient_image
from huggingface_hub import constants as hf_constants
from huggingface_hub.errors import EntryNotFoundError
from local_http import FakeHub
from log_capture import captured_messages

from Wan2GP.architectures import ARCHITECTURES
from Wan2GP.catalog import ModelDefinition, default_catalog_dir, load_catalog
from Wan2GP.checkpoints import load_checkpoint_transformers
from Wan2GP.engine import ModelLoadError, WanEngine
from Wan2GP.model_folders import TRANSFORMER_SUBFOLDERS

FINETUNE_REPO = "finetuner/tiny-finetunes"
WEIGHTS_FILE = "diffusion_pytorch_model.safetensors"
# Small requests (VACE needs 17 frames); the tiny i2v model's 4 steps run 2 on each expert.
VACE_PARAMS = {"prompt": "a cat walks on the beach", "seed": 11, "num_inference_steps": 2, "video_length": 17}
VACE_PARAMS |= {"resolution": "32x32"}
I2V_PARAMS = {"prompt": "a dog runs in the forest", "seed": 5, "num_inference_steps": 4, "video_length": 5}
I2V_PARAMS |= {"resolution": "32x32"}
# The same weights give the same video up to float32 rounding: a loader's tensors may sit at another memory alignment,
# and CPU matmul kernels round differently then (seen: 5e-7).
ATOL = 1e-5

# diffusers' transformer names -> the original Wan layout that upstream checkpoints use (what diffusers' single-file
# converter undoes), for every tensor of the tiny t2v, i2v and VACE transformers.
_BLOCK = r"^((?:vace_)?blocks\.\d+)\."
_TO_ORIGINAL = tuple(
    (re.compile(pattern), replacement)
    for pattern, replacement in (
        (r"\.attn1\.to_(q|k|v)\.", r".self_attn.\1."),
        (r"\.attn1\.to_out\.0\.", ".self_attn.o."),
        (r"\.attn1\.norm_(q|k)\.", r".self_attn.norm_\1."),
        (r"\.attn2\.to_(q|k|v)\.", r".cross_attn.\1."),
        (r"\.attn2\.to_out\.0\.", ".cross_attn.o."),
        (r"\.attn2\.norm_(q|k)\.", r".cross_attn.norm_\1."),
        (r"\.ffn\.net\.0\.proj\.", ".ffn.0."),
        (r"\.ffn\.net\.2\.", ".ffn.2."),
        (_BLOCK + r"norm2\.", r"\1.norm3."),  # the cross-attention norm
        (_BLOCK + r"scale_shift_table$", r"\1.modulation"),
        (r"^(vace_blocks\.\d+)\.proj_in\.", r"\1.before_proj."),
        (r"^(vace_blocks\.\d+)\.proj_out\.", r"\1.after_proj."),
        (r"^proj_out\.", "head.head."),
        (r"^scale_shift_table$", "head.modulation"),
        (r"^condition_embedder\.text_embedder\.linear_1\.", "text_embedding.0."),
        (r"^condition_embedder\.text_embedder\.linear_2\.", "text_embedding.2."),
        (r"^condition_embedder\.time_embedder\.linear_1\.", "time_embedding.0."),
        (r"^condition_embedder\.time_embedder\.linear_2\.", "time_embedding.2."),
        (r"^condition_embedder\.time_proj\.", "time_projection.1."),
    )
)


def original_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A diffusers transformer state dict with its keys in the original Wan layout."""

    def original(name: str) -> str:
        for pattern, replacement in _TO_ORIGINAL:
            name = pattern.sub(replacement, name)
        return name

    renamed = {original(name): tensor for name, tensor in state.items()}
    # The helper itself checked: diffusers' converter takes every renamed key back to where it came from.
    assert convert_wan_transformer_to_diffusers({name: name for name in renamed}) == {
        name: original(name) for name in state
    }
    assert "blocks.0.self_attn.q.weight" in renamed and "head.head.weight" in renamed
    return renamed


def write_checkpoint(transformer_folder: Path, target: Path) -> Path:
    """The diffusers-format transformer in `transformer_folder` as one upstream-style checkpoint file."""
    state = safetensors.torch.load_file(transformer_folder / WEIGHTS_FILE)
    safetensors.torch.save_file(original_layout(state), target)
    return target


def hub_url(filename: str) -> str:
    return f"https://huggingface.co/{FINETUNE_REPO}/resolve/main/{filename}"


def write_upstream_definition(
    folder: Path, model_id: str, like: str, urls: list[str], urls2: list[str] | None = None
) -> None:
    """An upstream-style definition: the bundled tiny model `like`'s settings, its weights named only by URLs."""
    definition = json.loads((default_catalog_dir() / f"{like}.json").read_text())
    model = definition["model"]
    for key in ("weights", "experts", "travel_counterparts"):
        model.pop(key, None)
    model["URLs"] = urls
    if urls2 is not None:
        model["URLs2"] = urls2
    (folder / f"{model_id}.json").write_text(json.dumps(definition))


def serve_architecture_repo(fake_hub: FakeHub, engine: WanEngine, local_model: str) -> tuple[str, Path]:
    """Publish the bundled tiny model's folder as its architecture's diffusers-format repo; (repo id, folder)."""
    local = engine.load(local_model)
    repo_id = ARCHITECTURES[local.definition.architecture].repo_id
    fake_hub.add_repo(repo_id, local.weights_dir)
    return repo_id, local.weights_dir


def same_state(module: torch.nn.Module, reference: torch.nn.Module) -> bool:
    state, expected = module.state_dict(), reference.state_dict()
    return state.keys() == expected.keys() and all(torch.equal(state[name], expected[name]) for name in expected)


@pytest.fixture
def finetunes(tmp_path: Path) -> Path:
    """The finetuner's repo folder (checkpoint files are written into it, then published)."""
    folder = tmp_path / "finetunes"
    folder.mkdir()
    return folder


@pytest.fixture
def catalog_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "catalog"
    folder.mkdir()
    return folder


def checkpoint_engine(catalog_dir: Path, tmp_path: Path) -> WanEngine:
    return WanEngine(device="cpu", cache_dir=tmp_path / "cache", catalog=load_catalog(extra_dirs=[catalog_dir]))


def test_one_expert_finetune_named_by_upstream_urls_renders_like_the_same_weights_from_a_repo(
    fake_hub: FakeHub, engine: WanEngine, finetunes: Path, catalog_dir: Path, tmp_path: Path
) -> None:
    repo_id, repo = serve_architecture_repo(fake_hub, engine, "wan_tiny_vace")
    write_checkpoint(repo / "transformer", finetunes / "TinyVaceFusion_fp32.safetensors")
    fake_hub.add_repo(FINETUNE_REPO, finetunes)
    write_upstream_definition(
        catalog_dir, "tiny_vace_finetune", "wan_tiny_vace", [hub_url("TinyVaceFusion_fp32.safetensors")]
    )
    hub_engine = checkpoint_engine(catalog_dir, tmp_path)

    definition = hub_engine.catalog.get("tiny_vace_finetune")
    assert definition.weights.kind == "checkpoints" and definition.weights.repo_id == repo_id == (
        "Wan-AI/Wan2.1-VACE-14B-diffusers"
    )
    with captured_messages("INFO") as messages:
        from_checkpoint = hub_engine.render(hub_engine.resolve({"model": "tiny_vace_finetune", **VACE_PARAMS}))
    from_repo = engine.render(engine.resolve({"model": "wan_tiny_vace", **VACE_PARAMS}))

    assert torch.allclose(from_checkpoint.latents, from_repo.latents, atol=ATOL, rtol=0)
    assert np.abs(from_checkpoint.frames.astype(int) - from_repo.frames.astype(int)).max() <= 1
    assert same_state(
        hub_engine.load("tiny_vace_finetune").transformers["high"], engine.load("wan_tiny_vace").transformers["high"]
    )

    # From the architecture's repo: every other component, and of the transformer only its config.
    fetched = fake_hub.file_requests(repo_id, "GET")
    assert "transformer/config.json" in fetched and "vae/diffusion_pytorch_model.safetensors" in fetched
    assert not any(name.startswith("transformer/") and name != "transformer/config.json" for name in fetched)
    # The checkpoint, once, into the standard Hugging Face cache; one INFO line says which file and its size.
    assert fake_hub.file_requests(FINETUNE_REPO, "GET") == ["TinyVaceFusion_fp32.safetensors"]
    cached = list(Path(hf_constants.HF_HUB_CACHE).glob("models--finetuner--tiny-finetunes/snapshots/*/*.safetensors"))
    assert [path.name for path in cached] == ["TinyVaceFusion_fp32.safetensors"]
    size_mb = cached[0].stat().st_size / 1e6
    lines = [message for message in messages if "TinyVaceFusion_fp32.safetensors" in message]
    assert lines == [
        f"Checkpoint for tiny_vace_finetune: {hub_url('TinyVaceFusion_fp32.safetensors')} ({size_mb:.1f} MB)"
    ]


def test_two_expert_finetune_takes_urls_for_the_high_and_urls2_for_the_low_noise_expert(
    fake_hub: FakeHub, engine: WanEngine, finetunes: Path, catalog_dir: Path, tmp_path: Path
) -> None:
    repo_id, repo = serve_architecture_repo(fake_hub, engine, "wan_tiny_i2v_2_2")
    high_file, low_file = "TinyI2VFusion_HIGH_fp32.safetensors", "TinyI2VFusion_LOW_fp32.safetensors"
    write_checkpoint(repo / "transformer", finetunes / high_file)
    write_checkpoint(repo / "transformer_2", finetunes / low_file)
    fake_hub.add_repo(FINETUNE_REPO, finetunes)
    high, low = hub_url(high_file), hub_url(low_file)
    write_upstream_definition(catalog_dir, "tiny_i2v_finetune", "wan_tiny_i2v_2_2", [high], [low])
    write_upstream_definition(catalog_dir, "tiny_i2v_finetune_swapped", "wan_tiny_i2v_2_2", [low], [high])
    hub_engine = checkpoint_engine(catalog_dir, tmp_path)
    start_image = tmp_path / "start.png"
    gradient_image(32, 32).save(start_image)
    params = {**I2V_PARAMS, "image_start": str(start_image)}

    definition = hub_engine.catalog.get("tiny_i2v_finetune")
    assert (definition.weights.repo_id, definition.weights.checkpoints, definition.experts) == (repo_id, (high, low), 2)
    from_checkpoints = hub_engine.render(hub_engine.resolve({"model": "tiny_i2v_finetune", **params}))
    from_repo = engine.render(engine.resolve({"model": "wan_tiny_i2v_2_2", **params}))

    assert from_checkpoints.forward_passes == from_repo.forward_passes
    assert torch.allclose(from_checkpoints.latents, from_repo.latents, atol=ATOL, rtol=0)
    assert np.abs(from_checkpoints.frames.astype(int) - from_repo.frames.astype(int)).max() <= 1
    loaded, local = hub_engine.load("tiny_i2v_finetune"), engine.load("wan_tiny_i2v_2_2")
    for expert in TRANSFORMER_SUBFOLDERS:
        assert same_state(loaded.transformers[expert], local.transformers[expert]), expert
    # (The two configs are one blob, which the client GETs once: HEAD shows what was asked for.)
    assert {"transformer/config.json", "transformer_2/config.json"} <= set(fake_hub.file_requests(repo_id, "HEAD"))
    fetched = fake_hub.file_requests(repo_id, "GET")
    assert not any(name.startswith("transformer") and not name.endswith("/config.json") for name in fetched)

    # The same two files the other way round: a different model (so the comparison above would catch a swap), its
    # high-noise expert the low-noise file's weights. Both files come from the Hugging Face cache this time.
    swapped = hub_engine.render(hub_engine.resolve({"model": "tiny_i2v_finetune_swapped", **params}))
    assert (swapped.latents - from_repo.latents).abs().max() > 0.01
    assert same_state(hub_engine.load("tiny_i2v_finetune_swapped").transformers["high"], local.transformers["low"])
    assert sorted(fake_hub.file_requests(FINETUNE_REPO, "GET")) == [high_file, low_file]


def test_a_checkpoint_the_hub_does_not_have_is_a_model_load_error_naming_its_url(
    fake_hub: FakeHub, engine: WanEngine, finetunes: Path, catalog_dir: Path, tmp_path: Path
) -> None:
    serve_architecture_repo(fake_hub, engine, "wan_tiny_t2v")
    (finetunes / "README.md").write_text("other files only")
    fake_hub.add_repo(FINETUNE_REPO, finetunes)
    missing = hub_url("NoSuchFinetune_fp16.safetensors")
    write_upstream_definition(catalog_dir, "tiny_missing_finetune", "wan_tiny_t2v", [missing])
    hub_engine = checkpoint_engine(catalog_dir, tmp_path)
    params = {"model": "tiny_missing_finetune", "prompt": "a cat", "num_inference_steps": 2, "video_length": 5}

    with pytest.raises(
        ModelLoadError, match=f"model tiny_missing_finetune: cannot fetch checkpoint {missing}: "
    ) as caught:
        hub_engine.generate(params, output_dir=tmp_path / "out")

    assert isinstance(caught.value.__cause__, EntryNotFoundError)  # the Hub's 404, not "offline"
    assert fake_hub.file_requests(FINETUNE_REPO, "HEAD") == ["NoSuchFinetune_fp16.safetensors"]
    assert hub_engine.loaded_model() is None
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("architecture_model", "checkpoint_model", "reason"),
    [
        (
            "wan_tiny_vace",
            "wan_tiny_t2v",
            r"the file has no VACE blocks \(vace_blocks\.\*, vace_patch_embedding: 62 tensors missing\), so it is not "
            r"a vace_14B transformer\. Upstream Wan2GP grafts a separate VACE module onto such a checkpoint; this "
            r"engine does not",
        ),
        ("wan_tiny_t2v", "wan_tiny_vace", r"the file is a VACE transformer \(62 vace_\* tensors\), expected a t2v one"),
        (
            "wan_tiny_t2v",
            "wan_tiny_i2v_2_2",
            r"the file is not a t2v Wan transformer .*: patch_embedding\.weight has shape \[24, 36, 1, 2, 2\], "
            r"expected \[24, 16, 1, 2, 2\]$",
        ),
    ],
)
def test_a_checkpoint_of_another_architecture_is_a_model_load_error_saying_what_it_is(
    fake_hub: FakeHub,
    engine: WanEngine,
    finetunes: Path,
    catalog_dir: Path,
    tmp_path: Path,
    architecture_model: str,
    checkpoint_model: str,
    reason: str,
) -> None:
    other_transformer = engine.load(checkpoint_model).weights_dir / "transformer"
    serve_architecture_repo(fake_hub, engine, architecture_model)
    write_checkpoint(other_transformer, finetunes / "Mislabelled_fp16.safetensors")
    fake_hub.add_repo(FINETUNE_REPO, finetunes)
    url = hub_url("Mislabelled_fp16.safetensors")
    write_upstream_definition(catalog_dir, "tiny_mislabelled", architecture_model, [url])
    hub_engine = checkpoint_engine(catalog_dir, tmp_path)

    with pytest.raises(ModelLoadError, match=f"^model tiny_mislabelled: checkpoint {url}: {reason}"):
        hub_engine.load("tiny_mislabelled")

    assert hub_engine.loaded_model() is None


def _quantized(state: dict[str, torch.Tensor], encoding: str) -> dict[str, torch.Tensor]:
    """`state` (original layout) with its block linear weights stored the way `encoding` stores them."""
    result = {}
    for name, tensor in state.items():
        if not (name.startswith("blocks.") and name.endswith(".weight") and tensor.ndim == 2):
            result[name] = tensor
        elif encoding == "quanto":  # optimum-quanto's serialisation of a qint8 linear, as upstream's mmgp writes it
            result[name + "._data"] = tensor.to(torch.int8)
            result[name + "._scale"] = torch.ones(tensor.shape[0], 1)
            result[name.removesuffix("weight") + "input_scale"] = torch.ones(1)
            result[name.removesuffix("weight") + "output_scale"] = torch.ones(1)
        elif encoding == "nvfp4":  # two 4-bit values per byte, a float8 scale per 16 values, a global scale
            result[name] = torch.zeros(tensor.shape[0], tensor.shape[1] // 2, dtype=torch.uint8)
            result[name + "_scale"] = torch.ones(tensor.shape[0], tensor.shape[1] // 16).to(torch.float8_e4m3fn)
            result[name + "_scale_2"] = torch.ones(())
        else:
            result[name] = tensor.to(torch.float8_e4m3fn)
    return result


@pytest.mark.parametrize(
    ("encoding", "named"),
    [
        ("quanto", r"quanto weights \(optimum-quanto int8/fp8"),
        ("nvfp4", r"NVFP4 weights"),
        ("fp8", r"FP8 weights"),
    ],
)
def test_a_quantized_checkpoint_is_a_model_load_error_naming_its_format(
    fake_hub: FakeHub,
    engine: WanEngine,
    finetunes: Path,
    catalog_dir: Path,
    tmp_path: Path,
    encoding: str,
    named: str,
) -> None:
    _, repo = serve_architecture_repo(fake_hub, engine, "wan_tiny_t2v")
    state = original_layout(safetensors.torch.load_file(repo / "transformer" / WEIGHTS_FILE))
    safetensors.torch.save_file(_quantized(state, encoding), finetunes / f"TinyT2V_{encoding}.safetensors")
    fake_hub.add_repo(FINETUNE_REPO, finetunes)
    url = hub_url(f"TinyT2V_{encoding}.safetensors")
    write_upstream_definition(catalog_dir, "tiny_quantized", "wan_tiny_t2v", [url])
    hub_engine = checkpoint_engine(catalog_dir, tmp_path)

    with pytest.raises(
        ModelLoadError,
        match=f"^model tiny_quantized: checkpoint {url}: the file holds {named}.*, which this engine does not load "
        r"\(it loads bf16, fp16 and fp32 checkpoints\): name the 16-bit file",
    ):
        hub_engine.load("tiny_quantized")


def test_in_bfloat16_a_checkpoint_transformer_has_the_dtypes_and_values_from_pretrained_gives(
    fake_hub: FakeHub, engine: WanEngine, finetunes: Path, catalog_dir: Path
) -> None:
    # On a GPU the transformer runs in bf16, except what diffusers keeps in float32 (norms, modulation tables, the
    # time embedder, the RoPE tables): the single-file transformer must match the repo's one there too.
    _, repo = serve_architecture_repo(fake_hub, engine, "wan_tiny_t2v")
    write_checkpoint(repo / "transformer", finetunes / "TinyT2V_fp32.safetensors")
    fake_hub.add_repo(FINETUNE_REPO, finetunes)
    write_upstream_definition(catalog_dir, "tiny_t2v_finetune", "wan_tiny_t2v", [hub_url("TinyT2V_fp32.safetensors")])
    definition: ModelDefinition = load_catalog(extra_dirs=[catalog_dir]).get("tiny_t2v_finetune")

    loaded = load_checkpoint_transformers(definition, repo, WanTransformer3DModel, torch.bfloat16, torch.device("cpu"))
    reference = WanTransformer3DModel.from_pretrained(
        repo, subfolder="transformer", torch_dtype=torch.bfloat16, local_files_only=True
    )

    def tensors(module: torch.nn.Module) -> dict[str, torch.Tensor]:
        return {**module.state_dict(), **dict(module.named_buffers())}

    ours, expected = tensors(loaded["high"]), tensors(reference)
    assert ours.keys() == expected.keys()
    assert {name: tensor.dtype for name, tensor in ours.items()} == {n: t.dtype for n, t in expected.items()}
    assert all(torch.equal(ours[name], expected[name]) for name in expected)
    assert expected["blocks.0.attn1.to_q.weight"].dtype == torch.bfloat16
    assert expected["blocks.0.scale_shift_table"].dtype == expected["rope.freqs_cos"].dtype == torch.float32
