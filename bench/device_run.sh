#!/usr/bin/env bash
# Runs bench/lora_modes.py on the lent GPU machine (python 3.12 image without diffusers/loguru/pydantic).
# The wheels travel in .whl/ (gitignored), made here with `pip download` as bench/README.md says.
# Usage there: bash bench/device_run.sh "<lora_modes args>" ["<lora_modes args>" ...]; logs and JSON go to $OUT.
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT" /tmp/site /tmp/peft /tmp/typing
install() { python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$@"; }
main_wheels=$(ls .whl/*.whl | grep -v -e '/peft-' -e '/typing_extensions-')
install /tmp/site $main_wheels || exit 1
install /tmp/peft .whl/peft-*.whl || exit 1
install /tmp/typing .whl/typing_extensions-*.whl || exit 1

check='import torch, diffusers, peft, pydantic, loguru; from diffusers import WanTransformer3DModel; import Wan2GP.loras
print("torch", torch.__version__, "diffusers", diffusers.__version__, "peft", peft.__version__)'
# Prefer the image's own typing_extensions and the project's peft (0.21.2); fall back where an import fails.
for path in /tmp/site:/tmp/peft /tmp/site:/tmp/peft:/tmp/typing /tmp/site /tmp/site:/tmp/typing; do
    if PYTHONPATH="$path:$PWD" python3 -c "$check"; then export PYTHONPATH="$path:$PWD"; break; fi
done
[ -n "${PYTHONPATH:-}" ] || { echo "no working import path"; exit 2; }
echo "PYTHONPATH=$PYTHONPATH"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,temperature.gpu --format=csv

index=0
for args in "$@"; do
    index=$((index + 1))
    # shellcheck disable=SC2086  # args is a list of words on purpose
    python3 bench/lora_modes.py $args --json "$OUT/run$index.json" 2>&1 | tee "$OUT/run$index.log"
done
