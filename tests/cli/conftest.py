"""Fixtures for the admin CLI tests: `python -m source.cli` runs against the real databases of tests/conftest.py."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from source.cli.__main__ import main

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
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., CliResult]:
    """Runs the `python -m source.cli ARGS` entry point (`source.cli.__main__.main`) in this process, from a scratch
    folder (so a default sqlite:///tasks.db lands there), with a clean environment and its output captured. In
    process because a fresh interpreter per call cost ~1.5 s of imports each (90 s of the suite);
    `cli_process` runs the real command line for the tests that are about the entry point itself."""
    for key in list(os.environ):
        if key.startswith("HW_") or key == "DATABASE_URL":
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)

    def run(*args: str, stdin: str | None = None, extra_env: dict[str, str] | None = None) -> CliResult:
        out, err = io.StringIO(), io.StringIO()
        with monkeypatch.context() as scoped:
            for key, value in (extra_env or {}).items():
                scoped.setenv(key, value)
            scoped.setattr(sys, "stdin", io.StringIO(stdin or ""))
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                try:
                    returncode = main(list(args))
                except SystemExit as exit_:  # argparse's usage errors
                    returncode = exit_.code if isinstance(exit_.code, int) else 1
        return CliResult(returncode, out.getvalue(), err.getvalue())

    return run


@pytest.fixture
def cli_process(tmp_path: Path) -> Callable[..., CliResult]:
    """Runs `python -m source.cli ARGS` as its own process from a scratch folder."""
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
