#!/usr/bin/env bash
# Mutation testing of the core modules (scripts/mutation.py says how; README "Tests that bite" has the last scores).
# Not part of CI: 2-3 hours on 2 cores for every module (README "Tests that bite"). Arguments go to scripts/mutation.py.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
    .venv/bin/pip install --quiet -r requirements.txt
fi
# Only when missing or another version: reinstalling on every run races with a second run in the same venv.
pinned=$(sed -n 's/^mutmut==//p' requirements-dev.txt)
if ! .venv/bin/python -c "import importlib.metadata as m, sys; sys.exit(m.version('mutmut') != '$pinned')" 2>/dev/null; then
    .venv/bin/pip install --quiet -r requirements-dev.txt
fi
export TEST_DATABASE_URL="${TEST_DATABASE_URL:-postgresql://postgres@127.0.0.1:5432/postgres}"
exec .venv/bin/python scripts/mutation.py "$@"
