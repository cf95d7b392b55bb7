"""The README's first command, `python worker.py --demo`, run as a newcomer runs it: its own process, a fresh folder,
the tiny models (from the session's cache, so this test does not rebuild them). It must end in a stitched mp4 of the
contracted length with its contact sheet beside it, tell the user what the run did and that random weights make
noise, and speak in the worker's one log format from its first line, without library progress bars."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# The worker's human log line: time | level | worker id | task id | message (source/worker/logs.py).
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} \| [A-Z]+ +\| \S+ \| task \S+ \| ")


@pytest.mark.slow
def test_the_demo_runs_end_to_end_and_shows_what_it_did(tmp_path, model_cache, ffprobe):
    completed = subprocess.run(
        [sys.executable, str(REPO / "worker.py"), "--demo", "--model-cache-dir", str(model_cache)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    video = Path(completed.stdout.strip().splitlines()[-1])
    assert video.is_file() and video.is_relative_to(tmp_path)
    assert int(ffprobe(str(video))["nb_read_frames"]) == 46  # [25, 25] with overlap 4, the demo's contract
    assert video.with_name(f"{video.stem}_contact.png").is_file()

    err = completed.stderr
    first = err.splitlines()[0]
    assert LOG_LINE.match(first), first  # the queue's migration lines come in the worker's format too
    assert "it/s" not in err and "Loading weights" not in err  # no library tqdm bars between the log lines
    assert re.search(r"│ stitched +│ 46 ", err)  # the summary table
    assert "random weights" in err and "noise" in err
