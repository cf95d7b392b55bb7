#!/usr/bin/env bash
# Installs what the test suite needs on a fresh machine, then runs it over every core. Extra arguments go to pytest.
#   - Debian's ffmpeg for ffprobe (tests check real mp4 files with it; the product itself only needs the ffmpeg
#     binary that imageio-ffmpeg ships)
#   - Debian's chromium and chromium-driver (the dashboard's browser test plays a stitched video in it)
#   - a virtual environment with the pinned requirements (torch==2.13.0 resolves to the local CPU build here)
#   - PostgreSQL tests use TEST_DATABASE_URL (default: the local server on 127.0.0.1:5432, trust auth); each run
#     creates and drops its own database.
set -euo pipefail
cd "$(dirname "$0")/.."

# Each step says what it is doing (and took): a fresh machine spends minutes in apt and pip before the first test.
started=$SECONDS
step() { echo "test.sh [$((SECONDS - started)) s]: $*" >&2; }

missing=()
command -v ffprobe >/dev/null 2>&1 || missing+=(ffmpeg)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = "0" ]; then
        step "installing Debian's ${missing[*]}"
        apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    else
        echo "missing: install Debian's packages ${missing[*]} (sudo apt-get install ${missing[*]})" >&2
        exit 1
    fi
fi

if [ ! -x .venv/bin/python ]; then
    step "creating the virtual environment .venv"
    python3 -m venv .venv
fi
step "installing the pinned requirements into .venv (minutes on a fresh machine, seconds after)"
# pip's notes about the machine's local mirror are noise; its exit status is kept (a failed install stops here).
# --no-compile: byte-compiling every installed module (torch's thousands) took 40-60 s of the 10-minute budget on the
# 2-core machine (68-91 s with it, 29 s without); Python compiles the modules the tests import as it imports them.
.venv/bin/pip install -q --disable-pip-version-check --no-compile -r requirements.txt \
    2> >(grep -v "is ignored: it is neither" >&2)

export TEST_DATABASE_URL="${TEST_DATABASE_URL:-postgresql://postgres@127.0.0.1:5432/postgres}"
# One pytest worker per core (pytest-xdist; idle workers steal queued tests), each with one torch/OpenMP thread:
# on the 2-core machine the serial suite kept one core busy (722 s); two workers with 2 threads each fought over the
# cores (417 s); two workers with one thread each took 304 s. At most 8 workers: each holds its own torch and tiny
# models (the largest process peaked at 0.8-0.9 GB in those runs). Pass -n 0 to run in one process.
cores=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)  # GNU nproc reports those variables when they are set
workers=$((cores < 8 ? cores : 8))
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
step "running the tests on $workers workers (PostgreSQL from TEST_DATABASE_URL)"
exec .venv/bin/python -m pytest -n "$workers" --dist worksteal "$@"
