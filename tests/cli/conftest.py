"""Fixtures for the admin CLI tests: `python -m source.cli` runs against the real databases of tests/conftest.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class CliResult:
    returncode: int
    stdout: str
    stderr: str

    @property
    def last_line(self) -> str:
        return self.stdout.strip().splitlines()[-1]

    def json(self) -> Any:
        return json.loads(self.stdout)


@pytest.fixture
def cli(tmp_path: Path) -> Callable[..., CliResult]:
    """Runs `python -m source.cli ARGS` from a scratch folder (so a default sqlite:///tasks.db lands there)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("HW_") and key != "DATABASE_URL"}
    env["PYTHONPATH"] = str(REPO_ROOT)

    def run(*args: str, stdin: str | None = None, extra_env: dict[str, str] | None = None) -> CliResult:
        completed = subprocess.run(
            [sys.executable, "-m", "source.cli", *args],
            cwd=tmp_path,
            env={**env, **(extra_env or {})},
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
        )
        return CliResult(completed.returncode, completed.stdout, completed.stderr)

    return run
