"""Fixtures shared by every test area.

Backend tests run against a real SQLite file and a real PostgreSQL schema. PostgreSQL comes from $TEST_DATABASE_URL
(e.g. postgresql://postgres@127.0.0.1:5432/postgres): one database is created for the session and dropped at the end;
each test gets its own empty schema. Without the variable the Postgres cases are skipped with the reason, unless
REQUIRE_POSTGRES=1 (set by .ci/run), which makes them fail instead. `reigh_db` is a fresh database per test holding
Reigh's schema (tests/reigh_schema.sql, written from Reigh's migrations; tests/reigh_app.py inserts rows as its app does).

HTTP tests talk to real servers on 127.0.0.1 (`http_server`, `fake_hub`; see tests/local_http.py). The real Hugging
Face Hub cannot be reached here: `fake_hub` is a local server that speaks its API, and the real `huggingface_hub`
client is pointed at it.
"""

from __future__ import annotations

import gc
import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import hypothesis  # noqa: F401  (imported before gc.freeze below: see pytest_collection_finish)
import pytest
from huggingface_hub import constants as hf_constants
from local_http import FakeHub, LocalServer
from reigh_app import ReighDatabase, reigh_database

from source.queue import TaskQueue, open_queue
from source.queue.testing import (
    REQUIRE_POSTGRES_ENV,
    TEST_DATABASE_URL_ENV,
    postgres_admin_url,
    postgres_required,
    temporary_database,
    temporary_schema,
)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Everything collection imported (torch, diffusers, transformers: millions of objects) lives as long as the test
    process: moved out of the collector's reach, so that each `gc.collect()` (WanEngine.unload runs one to free a
    model's memory) walks only what the tests made since. It took 0.4 s a call over that heap, 11 s of 100 in the
    placement and equivalence tests. Hypothesis is imported before it: its plugins register PRNGs by weak reference
    and warn when the collector cannot see who holds them, which frozen holders would hide."""
    gc.freeze()


def _postgres_server(what: str) -> str:
    """$TEST_DATABASE_URL, or a skip saying why (a failure under REQUIRE_POSTGRES=1, as in CI)."""
    admin_url = postgres_admin_url()
    if admin_url is None:
        reason = f"{what} need {TEST_DATABASE_URL_ENV} (e.g. postgresql://postgres@127.0.0.1:5432/postgres)"
        if postgres_required():
            pytest.fail(f"{REQUIRE_POSTGRES_ENV}=1 but {reason}")
        pytest.skip(reason)
    return admin_url


@pytest.fixture(scope="session")
def postgres_database_url() -> Iterator[str]:
    with temporary_database(_postgres_server("PostgreSQL tests"), prefix="hw_test") as url:
        yield url


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One model cache per test session: the tiny random-weight models are built into it once."""
    return tmp_path_factory.mktemp("wan2gp_cache")


@pytest.fixture
def reigh_db() -> Iterator[ReighDatabase]:
    """A fresh database per test with Reigh's schema (tests/reigh_schema.sql), a user and a project."""
    with reigh_database(_postgres_server("Reigh schema tests")) as database:
        yield database


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def queue_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'tasks.db'}"
        return
    database_url = request.getfixturevalue("postgres_database_url")
    with temporary_schema(database_url) as url:
        yield url


@pytest.fixture
def queue(queue_url: str) -> Iterator[TaskQueue]:
    opened = open_queue(queue_url)
    opened.migrate()
    yield opened
    opened.close()


@pytest.fixture
def http_server() -> Iterator[LocalServer]:
    server = LocalServer()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def fake_hub(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeHub]:
    """The Hugging Face Hub client pointed at a `FakeHub` on 127.0.0.1 (HF_ENDPOINT), because the real Hub cannot be
    reached here. Online whatever the developer's settings, with an empty Hub cache and no token of its own."""
    hub = FakeHub()
    hf_home = tmp_path_factory.mktemp("hf_home")
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_CACHE", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.setenv("HF_HOME", str(hf_home))
    # huggingface_hub reads these variables once, at import; the client consults the module constants at call time.
    monkeypatch.setattr(hf_constants, "ENDPOINT", hub.url)
    monkeypatch.setattr(
        hf_constants, "HUGGINGFACE_CO_URL_TEMPLATE", hub.url + "/{repo_id}/resolve/{revision}/{filename}"
    )
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hf_constants, "HF_HOME", str(hf_home))
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(hf_home / "hub"))
    monkeypatch.setattr(hf_constants, "HF_TOKEN_PATH", str(hf_home / "token"))
    # The client fetches a registry of AI-agent harnesses (for its User-Agent) before its first request in a process,
    # from the endpoint, unless a copy under HF_HOME is under a day old: give it an empty copy so that the fake Hub
    # only sees the requests the code under test makes.
    harness_registry = hf_home / ".agent_harnesses.json"
    harness_registry.write_text(json.dumps({"standardEnvVars": [], "harnesses": {}}))
    monkeypatch.setattr(hf_constants, "AGENT_HARNESSES_PATH", str(harness_registry))
    try:
        yield hub
    finally:
        hub.stop()


@pytest.fixture(scope="session")
def ffprobe() -> Callable[[str], dict]:
    """The video stream of an mp4 as ffprobe decodes it: exact frame count, size, codec, pixel format."""

    def probe(path: str) -> dict:
        command = [
            "ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0", "-show_entries",
            "stream=nb_read_frames,width,height,codec_name,pix_fmt", "-of", "json", str(path),
        ]  # fmt: skip
        out = subprocess.run(command, check=True, capture_output=True, text=True)
        return json.loads(out.stdout)["streams"][0]

    return probe
