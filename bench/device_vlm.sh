#!/usr/bin/env bash
# Runs bench/vlm_prompts.py on the lent GPU machine (python 3.12 image; its transformers is older than ours and it
# has no loguru or diffusers). The wheels travel in .whl/ (git-ignored), made here with `pip download` as
# bench/README.md says. Usage there: bash bench/device_vlm.sh NAME [vlm_prompts args...]; log and JSON go to $OUT.
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
name=${1:?usage: device_vlm.sh NAME [args...]}
shift
mkdir -p "$OUT" /tmp/site
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .whl/transformers-*.whl .whl/loguru-*.whl .whl/diffusers-*.whl .whl/importlib_metadata-*.whl \
    .whl/lazy_importer-*.whl || exit 1
export PYTHONPATH="/tmp/site:$PWD"
python3 -c 'import torch, transformers, loguru, diffusers, Wan2GP.prompt_writer
print("torch", torch.__version__, "transformers", transformers.__version__)' || exit 2
{
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv
    python3 bench/vlm_prompts.py --json "$OUT/$name.json" "$@" 2>&1
    nvidia-smi --query-gpu=name,clocks.sm,temperature.gpu,power.draw --format=csv
} | tee "$OUT/$name.log"
