#!/usr/bin/env bash
# Runs bench/engine_step.py on the lent GPU machine (python 3.12 image without diffusers/loguru).
# The wheels travel in .whl/ (git-ignored), made here with `pip download` as bench/README.md says.
# Usage there: bash bench/device_engine.sh NAME [engine_step args...]; log and JSON go to $OUT/NAME.{log,json}.
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
name=${1:?usage: device_engine.sh NAME [args...]}
shift
mkdir -p "$OUT" /tmp/site /tmp/typing
install() { python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$@"; }
# peft and pydantic are not needed here (no LoRA, no request parsing); typing_extensions only if the image's own is too old.
main_wheels=$(ls .whl/*.whl | grep -v -e '/peft-' -e '/typing_extensions-' -e '/pydantic' -e '/annotated_types-' -e '/typing_inspection-')
install /tmp/site $main_wheels || exit 1
install /tmp/typing .whl/typing_extensions-*.whl || exit 1

check='import torch, diffusers, transformers, loguru; from diffusers import WanTransformer3DModel
from transformers import UMT5EncoderModel; import Wan2GP.sampler, Wan2GP.schedule
print("torch", torch.__version__, "diffusers", diffusers.__version__, "transformers", transformers.__version__)'
for path in /tmp/site /tmp/site:/tmp/typing; do
    if PYTHONPATH="$path:$PWD" python3 -c "$check"; then export PYTHONPATH="$path:$PWD"; break; fi
done
[ -n "${PYTHONPATH:-}" ] || { echo "no working import path"; exit 2; }
echo "PYTHONPATH=$PYTHONPATH"
{
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv
    python3 bench/engine_step.py --json "$OUT/$name.json" "$@" 2>&1
    nvidia-smi --query-gpu=name,clocks.sm,temperature.gpu,power.draw --format=csv
} | tee "$OUT/$name.log"
