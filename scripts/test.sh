#!/usr/bin/env bash
# Installs what the test suite needs on a fresh machine, then runs it. Extra arguments go to pytest.
#   - Debian's ffmpeg for ffprobe (tests check real mp4 files with it; the product itself only needs the ffmpeg
#     binary that imageio-ffmpeg ships)
#   - a virtual environment with the pinned requirements (torch==2.13.0 resolves to the local CPU build here)
#   - PostgreSQL tests use TEST_DATABASE_URL (default: the local server on 127.0.0.1:5432, trust auth); each run
#     creates and drops its own database.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v ffprobe >/dev/null 2>&1; then
    if [ "$(id -u)" = "0" ]; then
        apt-get update -qq && apt-get install -y -qq --no-install-recommends ffmpeg >/dev/null
    else
        echo "ffprobe not found: install Debian's ffmpeg package (sudo apt-get install ffmpeg)" >&2
        exit 1
    fi
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -r requirements.txt 2>&1 | grep -v "is ignored: it is neither" || true

export TEST_DATABASE_URL="${TEST_DATABASE_URL:-postgresql://postgres@127.0.0.1:5432/postgres}"
exec .venv/bin/python -m pytest "$@"
