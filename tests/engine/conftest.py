"""Shared fixtures for the engine tests: one tiny-model cache and one engine for the whole session.

The tiny models are built once into a session temp folder (through the engine's normal loading path) and reused by
every test; switching between them costs a fraction of a second.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from Wan2GP.catalog import Catalog, load_catalog
from Wan2GP.engine import WanEngine


@pytest.fixture(scope="session")
def catalog() -> Catalog:
    return load_catalog()


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
