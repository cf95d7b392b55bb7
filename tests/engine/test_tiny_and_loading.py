"""Tiny models are deterministic and load through the same from_pretrained path as real weights."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from Wan2GP.catalog import load_catalog
from Wan2GP.engine import WanEngine
from Wan2GP.loading import needed_subfolders
from Wan2GP.tiny import MARKER_FILE, build_tiny_model, ensure_tiny_model


def weights(folder: Path, subfolder: str) -> dict[str, torch.Tensor]:
    (file,) = (folder / subfolder).glob("*.safetensors")
    return load_file(str(file))


def test_same_seed_same_weights_other_seed_differs(tmp_path: Path) -> None:
    first = build_tiny_model("i2v_2_2", 2, 11, tmp_path / "a")
    second = build_tiny_model("i2v_2_2", 2, 11, tmp_path / "b")
    other = build_tiny_model("i2v_2_2", 2, 12, tmp_path / "c")
    for subfolder in ("transformer", "transformer_2", "vae", "text_encoder"):
        a, b, c = weights(first, subfolder), weights(second, subfolder), weights(other, subfolder)
        assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)
        assert any(not torch.equal(a[key], c[key]) for key in a)
    high, low = weights(first, "transformer"), weights(first, "transformer_2")
    assert any(not torch.equal(high[key], low[key]) for key in high)  # two distinct experts
    assert weights(first, "transformer")["patch_embedding.weight"].shape[1] == 36  # i2v input channels


def test_building_leaves_the_global_rng_alone(tmp_path: Path) -> None:
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    build_tiny_model("t2v", 1, 5, tmp_path / "t2v")
    assert torch.equal(torch.rand(3), expected)


def test_stale_or_partial_folder_is_rebuilt(tmp_path: Path) -> None:
    folder = build_tiny_model("t2v", 1, 5, tmp_path / "model")
    marker = json.loads((folder / MARKER_FILE).read_text())
    (folder / MARKER_FILE).write_text(json.dumps({**marker, "seed": 6}))
    (folder / "transformer" / "config.json").unlink()
    ensure_tiny_model(folder, "t2v", 1, 5)
    assert (folder / "transformer" / "config.json").is_file()
    assert json.loads((folder / MARKER_FILE).read_text())["seed"] == 5


def test_cache_holds_exactly_the_diffusers_subfolders(engine: WanEngine, cache_dir: Path) -> None:
    model = engine.load("wan_tiny_i2v_2_2")
    folder = model.weights_dir
    assert folder == cache_dir / "tiny" / "wan_tiny_i2v_2_2"
    subfolders = sorted(path.name for path in folder.iterdir() if path.is_dir())
    assert subfolders == sorted(needed_subfolders(model.definition))
    assert type(model.transformers["high"]).__name__ == "WanTransformer3DModel"
    assert set(model.transformers) == {"high", "low"}
    assert type(engine.load("wan_tiny_vace").transformers["high"]).__name__ == "WanVACETransformer3DModel"


def test_local_dir_model_loads_the_same_weights(engine: WanEngine, cache_dir: Path, tmp_path: Path) -> None:
    tiny_folder = engine.load("wan_tiny_t2v").weights_dir
    definition_dir = tmp_path / "defs"
    definition_dir.mkdir()
    definition = {
        "model": {
            "name": "tiny t2v from a local folder",
            "architecture": "t2v",
            "weights": {"local_dir": str(tiny_folder)},
            "experts": 1,
            "transformer_dtype": "float32",
        },
        "resolution": "64x64",
        "video_length": 9,
        "num_inference_steps": 3,
        "sample_solver": "euler",
    }
    (definition_dir / "local_t2v.json").write_text(json.dumps(definition))
    local_engine = WanEngine(device="cpu", cache_dir=cache_dir, catalog=load_catalog(extra_dirs=[definition_dir]))
    params = {"prompt": "a cat", "seed": 1, "num_inference_steps": 3, "sample_solver": "euler", "flow_shift": 5.0}
    params |= {"guidance_scale": 3.0, "resolution": "64x64", "video_length": 9}
    from_local = local_engine.render(local_engine.resolve({"model": "local_t2v", **params}))
    from_tiny = engine.render(engine.resolve({"model": "wan_tiny_t2v", **params}))
    local_engine.unload()
    assert torch.allclose(from_local.latents, from_tiny.latents, atol=1e-5, rtol=0)
