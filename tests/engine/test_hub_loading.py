"""Catalog models whose weights name a Hugging Face repo: the engine downloads them with the real `huggingface_hub`
client, from `fake_hub` (a server on 127.0.0.1 that speaks the Hub API, since the real Hub cannot be reached here).

The repo served is the tiny two-expert i2v model plus what a real Wan 2.2 i2v "-Diffusers" repo holds and the engine
never uses (an image encoder, a scheduler config, a large original checkpoint at the root), so the tests see that only
the needed subfolders are fetched and that the fetched model generates the same video as the locally built one.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from engine_helpers import gradient_image
from huggingface_hub import constants as hf_constants
from huggingface_hub.errors import RepositoryNotFoundError
from local_http import FakeHub

from Wan2GP.catalog import default_catalog_dir, load_catalog
from Wan2GP.engine import ModelLoadError, WanEngine
from Wan2GP.loading import LoadedModel
from Wan2GP.tiny import build_tiny_model
from Wan2GP.video_io import read_video

REPO_ID = "test-org/tiny-wan-i2v"
MISSING_REPO_ID = "test-org/no-such-repo"
LOCAL_MODEL = "wan_tiny_i2v_2_2"  # built from its seed into the session engine's cache (tests/engine/conftest.py)
HUB_MODEL = "wan_tiny_i2v_2_2_hub"
MISSING_MODEL = "wan_tiny_i2v_2_2_missing"
NEEDED_FOLDERS = ("transformer", "transformer_2", "vae", "text_encoder", "tokenizer")
JUNK_FILE = "wan2.2_i2v_original.pth"


def _local_definition() -> dict[str, Any]:
    return json.loads((default_catalog_dir() / f"{LOCAL_MODEL}.json").read_text())


def _write_definition(folder: Path, model_id: str, repo_id: str) -> None:
    definition = _local_definition()
    definition["model"]["weights"] = {"repo_id": repo_id, "revision": "main"}
    (folder / f"{model_id}.json").write_text(json.dumps(definition))


def _tiny_i2v_repo(folder: Path) -> Path:
    """The tiny i2v model of the bundled catalog, laid out like a Wan 2.2 i2v Diffusers repo with extras."""
    model = _local_definition()["model"]
    build_tiny_model(model["architecture"], model["experts"], model["weights"]["tiny"]["seed"], folder)
    components = {name: ["diffusers", "Component"] for name in (*NEEDED_FOLDERS, "image_encoder", "scheduler")}
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "WanImageToVideoPipeline", **components}))
    (folder / "image_encoder").mkdir()
    (folder / "image_encoder" / "config.json").write_text('{"model_type": "clip_vision_model"}')
    (folder / "image_encoder" / "model.safetensors").write_bytes(bytes(range(256)) * 512)
    (folder / "scheduler").mkdir()
    (folder / "scheduler" / "scheduler_config.json").write_text('{"_class_name": "UniPCMultistepScheduler"}')
    (folder / JUNK_FILE).write_bytes(b"\x5a" * (12 * 1024 * 1024))  # over the Hub's LFS threshold
    return folder


def _repo_files(folder: Path) -> set[str]:
    return {path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file()}


def _weighted_modules(model: LoadedModel) -> dict[str, torch.nn.Module]:
    experts = {f"transformer ({expert})": module for expert, module in model.transformers.items()}
    return {**experts, "vae": model.vae, "text_encoder": model.text_encoder}


@pytest.fixture
def hub_catalog_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "catalog"
    folder.mkdir()
    _write_definition(folder, HUB_MODEL, REPO_ID)
    _write_definition(folder, MISSING_MODEL, MISSING_REPO_ID)
    return folder


def test_hub_model_fetches_only_the_needed_subfolders_and_renders_like_the_local_model(
    fake_hub: FakeHub, hub_catalog_dir: Path, engine: WanEngine, tmp_path: Path
) -> None:
    repo = _tiny_i2v_repo(tmp_path / "repo")
    commit = fake_hub.add_repo(REPO_ID, repo)
    engine_cache = tmp_path / "wan2gp_cache"
    hub_engine = WanEngine(device="cpu", cache_dir=engine_cache, catalog=load_catalog(extra_dirs=[hub_catalog_dir]))
    start_image = tmp_path / "start.png"
    gradient_image(64, 64).save(start_image)
    params = {"prompt": "a cat walks on the beach", "seed": 11, "num_inference_steps": 2, "video_length": 5}
    params |= {"resolution": "64x64", "image_start": str(start_image)}

    result = hub_engine.generate({"model": HUB_MODEL, **params}, output_dir=tmp_path / "out")

    assert result.frames == 5 and (result.width, result.height) == (64, 64)
    assert read_video(result.path).frames.shape == (5, 64, 64, 3)

    # Exactly the engine's subfolders and model_index.json: never the image encoder, the scheduler, the root
    # checkpoint or the tiny builder's marker file. (Identical files share one blob, so the client GETs it once.)
    needed = {name for name in _repo_files(repo) if name.split("/")[0] in NEEDED_FOLDERS} | {"model_index.json"}
    fetched = fake_hub.file_requests(REPO_ID, "GET")
    assert sorted(set(fake_hub.file_requests(REPO_ID, "HEAD"))) == sorted(needed)
    assert len(fetched) == len(set(fetched)) and set(fetched) <= needed
    assert "transformer/diffusion_pytorch_model.safetensors" in fetched
    assert "transformer_2/diffusion_pytorch_model.safetensors" in fetched
    assert not any(name.startswith(("image_encoder/", "scheduler/")) or name == JUNK_FILE for name in fetched)
    assert fake_hub.hits("GET", f"/api/models/{REPO_ID}/revision/main") == 1

    # On disk: the standard Hugging Face cache (HF_HOME), not the engine's own cache folder, with only those files.
    weights_dir = hub_engine.load(HUB_MODEL).weights_dir
    assert weights_dir == Path(hf_constants.HF_HUB_CACHE) / "models--test-org--tiny-wan-i2v" / "snapshots" / commit
    assert _repo_files(weights_dir) == needed
    assert not engine_cache.exists()

    # Same weights and, for the same request, the same latents and frames as the model built locally from its seed.
    hub_model, local_model = hub_engine.load(HUB_MODEL), engine.load(LOCAL_MODEL)
    hub_modules, local_modules = _weighted_modules(hub_model), _weighted_modules(local_model)
    assert hub_modules.keys() == local_modules.keys()
    for name, module in hub_modules.items():
        local_state = local_modules[name].state_dict()
        assert all(torch.equal(tensor, local_state[key]) for key, tensor in module.state_dict().items()), name
    from_hub = hub_engine.render(hub_engine.resolve({"model": HUB_MODEL, **params}))
    from_local = engine.render(engine.resolve({"model": LOCAL_MODEL, **params}))
    assert from_hub.latents.shape == from_local.latents.shape
    assert torch.allclose(from_hub.latents, from_local.latents, atol=1e-4, rtol=0)
    assert np.abs(from_hub.frames.astype(int) - from_local.frames.astype(int)).max() <= 1
    hub_engine.unload()

    # A second engine (a restarted worker) loads from the Hub cache: the revision is checked again, no file is fetched.
    WanEngine(device="cpu", cache_dir=engine_cache, catalog=hub_engine.catalog).load(HUB_MODEL)
    assert fake_hub.hits("GET", f"/api/models/{REPO_ID}/revision/main") == 2
    assert fake_hub.file_requests(REPO_ID, "GET") == fetched


def test_repo_the_hub_does_not_have_is_a_model_load_error_naming_it(
    fake_hub: FakeHub, hub_catalog_dir: Path, tmp_path: Path
) -> None:
    hub_engine = WanEngine(
        device="cpu", cache_dir=tmp_path / "cache", catalog=load_catalog(extra_dirs=[hub_catalog_dir])
    )
    params = {"model": MISSING_MODEL, "prompt": "a cat", "num_inference_steps": 2, "video_length": 5}

    with pytest.raises(ModelLoadError, match=f"model {MISSING_MODEL}: cannot fetch {MISSING_REPO_ID}@main") as caught:
        hub_engine.generate(params, output_dir=tmp_path / "out")

    # The client read the 404 as "no such repo" (not "Hub unreachable, try the cache").
    assert isinstance(caught.value.__cause__, RepositoryNotFoundError)

    assert fake_hub.hits("GET", f"/api/models/{MISSING_REPO_ID}/revision/main") == 1
    assert not any("/resolve/" in request.path for request in fake_hub.requests)
    assert hub_engine.loaded_model() is None
    assert not (tmp_path / "out").exists()


def test_repo_lacking_an_expert_is_a_model_load_error_naming_the_subfolder(
    fake_hub: FakeHub, hub_catalog_dir: Path, tmp_path: Path
) -> None:
    # E.g. a one-expert Diffusers repo named by a two-expert definition: the download itself succeeds.
    repo = _tiny_i2v_repo(tmp_path / "repo")
    shutil.rmtree(repo / "transformer_2")
    fake_hub.add_repo(REPO_ID, repo)
    hub_engine = WanEngine(
        device="cpu", cache_dir=tmp_path / "cache", catalog=load_catalog(extra_dirs=[hub_catalog_dir])
    )

    with pytest.raises(
        ModelLoadError, match=f"model {HUB_MODEL}: {REPO_ID}@main lacks the subfolder\\(s\\) transformer_2"
    ):
        hub_engine.load(HUB_MODEL)

    assert "transformer/diffusion_pytorch_model.safetensors" in fake_hub.file_requests(REPO_ID, "GET")
    assert hub_engine.loaded_model() is None
