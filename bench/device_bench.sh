#!/usr/bin/env bash
# Runs a bench/ script through WanEngine on the lent GPU machine (python 3.12 image without diffusers, loguru or
# pydantic): memory_profiles or segment_vs_stock. The wheels travel in .whl/ (git-ignored, bench/README.md says how
# they are made); imageio_ffmpeg travels unpacked in .whl/extra without its 68 MB ffmpeg binary (nothing here writes a
# video).
# Usage there: bash bench/device_bench.sh SCRIPT NAME [script args...]; log and JSON go to $OUT/NAME.{log,json}.
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
script=${1:?usage: device_bench.sh SCRIPT NAME [args...]}
name=${2:?usage: device_bench.sh SCRIPT NAME [args...]}
shift 2
mkdir -p "$OUT" /tmp/site
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH="/tmp/site:$PWD/.whl/extra:$PWD:$PWD/bench"
# FlashAttention-4's site folder (flash-attn-4 and its CuTe DSL compiler, 263 MB unpacked) is over one call's 64 MiB
# even compressed: it travels as an xz'd tar in two parts, .site-a/ in one call and .site-b/ in the next. A carried
# folder does not outlive its call, so each call copies its part to /tmp/fa4-parts, which does while the machine is
# held; once both are there they are joined and unpacked (bench/README.md says how the parts are made).
mkdir -p /tmp/fa4-parts
cp .site-a/*.part* .site-b/*.part* /tmp/fa4-parts/ 2>/dev/null
if [ -f /tmp/fa4-parts/fa4site312.tar.xz.part00 ] && [ -f /tmp/fa4-parts/fa4site312.tar.xz.part01 ]; then
    [ -d /tmp/site312 ] || { cat /tmp/fa4-parts/*.part* | xz -d | tar -x -C /tmp || exit 3; }
    # what the package's .pth would add, which PYTHONPATH folders do not read
    export PYTHONPATH="$PYTHONPATH:/tmp/site312:/tmp/site312/nvidia_cutlass_dsl/dsl_packages"
fi
python3 -c 'import torch, diffusers, transformers, peft, loguru, pydantic, imageio_ffmpeg, Wan2GP.engine
print("torch", torch.__version__, "diffusers", diffusers.__version__, "transformers", transformers.__version__, "peft", peft.__version__)' || exit 2
python3 -c 'import flash_attn.cute, importlib.metadata as m; print("flash-attn-4", m.version("flash-attn-4"), "cutlass-dsl", m.version("nvidia-cutlass-dsl"))' 2>&1 | tail -1
python3 -c 'import torch, flash_attn_3._C, importlib.metadata as m; print("flash-attn-3", m.version("flash-attn-3"))' 2>&1 | tail -1
{
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
    free -g
    python3 "bench/$script.py" --json "$OUT/$name.json" --workdir "/tmp/$script" "$@" 2>&1
} | tee "$OUT/$name.log"
