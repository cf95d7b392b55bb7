"""A model definition's built-in LoRAs come through the worker's one LoRA store (capped download, safetensors check,
the Hub's sha256), like the payload's, and reach the engine as local files: the engine fetches no URLs.

The Hub is `fake_hub` (a server on 127.0.0.1 that speaks the Hub API, HF_ENDPOINT pointing at it); the catalog is the
bundled one plus a tiny model whose definition names a built-in LoRA by its huggingface.co URL, as upstream's do.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from local_http import FakeHub
from tiny_loras import write_tiny_lora

import Wan2GP.engine
import Wan2GP.lora_files
from source.media.video import read_frames
from source.queue import TaskStatus
from Wan2GP.catalog import default_catalog_dir

REPO_ID = "someone/wan-accelerators"
LORA_FILE = "speed/tiny_speed_lora.safetensors"
BUILTIN_URL = f"https://huggingface.co/{REPO_ID}/resolve/main/{LORA_FILE}"
MODEL = "wan_tiny_t2v_builtin_lora"  # wan_tiny_t2v's weights (same seed) plus one built-in LoRA
PARAMS = {"prompt": "a red kite", "video_length": 9, "seed": 5}


@pytest.fixture
def catalog_with_builtin_lora(worker_env, tmp_path: Path) -> Path:
    """MODEL in a folder the worker loads over the bundled catalog (--defaults-dir), for the handlers' model lookups
    and the worker's engine alike."""
    definition = json.loads((default_catalog_dir() / "wan_tiny_t2v.json").read_text())
    definition["model"].update(loras=[BUILTIN_URL], loras_multipliers=["1.0"])
    folder = tmp_path / "catalog"
    folder.mkdir()
    (folder / f"{MODEL}.json").write_text(json.dumps(definition))
    worker_env.settings = dataclasses.replace(worker_env.settings, defaults_dirs=(folder,))
    return folder


def test_a_built_in_hub_lora_is_fetched_by_the_lora_store_and_reaches_the_engine_as_a_local_file(
    worker_env, fake_hub: FakeHub, catalog_with_builtin_lora: Path, model_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = worker_env.tmp / "repo"
    (repo / "speed").mkdir(parents=True)
    write_tiny_lora("wan_tiny_t2v", model_cache, repo / LORA_FILE, seed=7)
    fake_hub.add_repo(REPO_ID, repo)
    handed_to_engine: list[tuple[str, str]] = []
    resolve_lora_file = Wan2GP.lora_files.resolve_lora_file

    def recording(source: str, lora_dir: Path, *, field: str) -> Path:
        handed_to_engine.append((source, field))
        return resolve_lora_file(source, lora_dir, field=field)

    monkeypatch.setattr(Wan2GP.lora_files, "resolve_lora_file", recording)

    with_lora = [worker_env.queue.enqueue("t2v", {"model": MODEL, **PARAMS}) for _ in range(2)]
    without = worker_env.queue.enqueue("t2v", {"model": "wan_tiny_t2v", **PARAMS})
    assert worker_env.drain() == 0

    tasks = [worker_env.queue.get(task_id) for task_id in (*with_lora, without)]
    assert [task.status for task in tasks] == [TaskStatus.COMPLETE] * 3, [task.error_message for task in tasks]
    # The store's download: once (the second task reuses it, checked against its manifest), the Hub's sha256 kept.
    stored = worker_env.settings.lora_dir / "by-url"
    [manifest_path] = stored.rglob("lora.json")
    manifest = json.loads(manifest_path.read_text())
    assert manifest["url"] == f"{fake_hub.url}/{REPO_ID}/resolve/main/{LORA_FILE}"  # HF_ENDPOINT's, as the Hub's
    assert manifest["file"] == "tiny_speed_lora.safetensors"
    assert manifest["sha256"] == hashlib.sha256((repo / LORA_FILE).read_bytes()).hexdigest()
    assert fake_hub.file_requests(REPO_ID, "HEAD") == [LORA_FILE]  # the size and sha256 the Hub announces
    assert fake_hub.file_requests(REPO_ID, "GET") == [LORA_FILE]
    # The engine got that local file, for the built-in slot, twice; never the URL.
    local_file = str(manifest_path.parent / manifest["file"])
    assert handed_to_engine == [(local_file, "builtin_lora_files[0]")] * 2
    # And it ran: the same weights and seed without the built-in LoRA give another video.
    with_frames, without_frames = (read_frames(Path(task.output_location)) for task in (tasks[0], tasks[2]))
    assert with_frames.shape == without_frames.shape
    assert np.abs(with_frames.astype(int) - without_frames.astype(int)).max() > 8


def test_a_built_in_lora_the_hub_does_not_have_fails_the_task_naming_the_model(
    worker_env, fake_hub: FakeHub, catalog_with_builtin_lora: Path
) -> None:
    repo = worker_env.tmp / "repo"
    repo.mkdir()
    (repo / "README.md").write_text("no LoRA here")
    fake_hub.add_repo(REPO_ID, repo)  # the repo exists, the LoRA file does not
    task_id = worker_env.queue.enqueue("t2v", {"model": MODEL, **PARAMS})
    assert worker_env.drain() == 0
    task = worker_env.queue.get(task_id)
    assert task.status == TaskStatus.FAILED
    assert task.error_message.startswith(f"model {MODEL}: loras[0]: "), task.error_message
    assert "404" in task.error_message
