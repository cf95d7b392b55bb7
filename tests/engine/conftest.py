"""Shared fixtures for the engine tests: one tiny-model cache and one engine for the whole session.

The tiny models are built once into a session temp folder (through the engine's normal loading path) and reused by
every test; switching between them costs a fraction of a second.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from Wan2GP.catalog import Catalog, load_catalog
from Wan2GP.engine import WanEngine

# A two-expert text-to-video tiny model exists only for the tests (the bundled catalog has t2v, i2v_2_2 and VACE).
TINY_T2V_2_2 = {
    "model": {
        "name": "Tiny Wan2.2 T2V, two experts (tests only)",
        "architecture": "t2v_2_2",
        "weights": {"tiny": {"seed": 4567}},
        "experts": 2,
        "transformer_dtype": "float32",
        "vae_dtype": "float32",
        "fps": 16,
    },
    "resolution": "64x64",
    "video_length": 9,
    "num_inference_steps": 4,
    "guidance_phases": 2,
    "guidance_scale": 3,
    "guidance2_scale": 3,
    "switch_threshold": 800,
    "model_switch_phase": 1,
    "flow_shift": 5,
    "sample_solver": "euler",
    "seed": 7,
}


def _tiny(name: str, architecture: str, seed: int, experts: int, **settings: object) -> dict[str, object]:
    model = {"name": name, "architecture": architecture, "weights": {"tiny": {"seed": seed}}, "experts": experts}
    model.update(transformer_dtype="float32", vae_dtype="float32", fps=16)
    return {"model": model, "resolution": "64x64", "video_length": 9, "num_inference_steps": 4, **settings}


# For the comparisons with diffusers' VACE pipeline: the two-expert VACE the bundled tiny models lack.
TINY_VACE_2_2 = _tiny("Tiny Wan2.2 VACE, two experts (tests only)", "vace_14B_2_2", 6789, 2, sample_solver="euler")


@pytest.fixture(scope="session")
def extra_catalog_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("extra_catalog")
    (folder / "wan_tiny_t2v_2_2.json").write_text(json.dumps(TINY_T2V_2_2))
    (folder / "wan_tiny_vace_2_2.json").write_text(json.dumps(TINY_VACE_2_2))
    return folder


@pytest.fixture(scope="session")
def catalog(extra_catalog_dir: Path) -> Catalog:
    return load_catalog(extra_dirs=[extra_catalog_dir])


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("wan2gp_cache")


@pytest.fixture(scope="session")
def engine(cache_dir: Path, catalog: Catalog) -> Iterator[WanEngine]:
    engine = WanEngine(device="cpu", cache_dir=cache_dir, catalog=catalog)
    yield engine
    engine.unload()


@pytest.fixture(scope="session")
def diffusers_like_engine(cache_dir: Path, catalog: Catalog) -> Iterator[WanEngine]:
    """An engine with Wan2GP's i2v start-frame re-injection off: what diffusers' i2v pipeline does."""
    engine = WanEngine(device="cpu", cache_dir=cache_dir, catalog=catalog, reinject_start_frame=False)
    yield engine
    engine.unload()
