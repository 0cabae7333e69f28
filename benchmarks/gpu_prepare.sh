#!/usr/bin/env bash
# Run HERE (the CPU machine), once, before benchmarks/gpu_checks.sh goes to the GPU machine: fills the
# ignored folder .gpu/ (carried with the call: `carry: [".gpu"]`) with the data files and the default
# model's tokenizer; CuPy is already on the H200 image (cupy-cuda13x), so no wheel is needed unless
# LAYERGRAD_GPU_WHEELS=1 (then .gpu/whl gets the layergrad[gpu] extra's wheel for Python 3.12).
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.gpu/' "$(git rev-parse --git-common-dir)/info/exclude" 2>/dev/null || echo '/.gpu/' >> "$(git rev-parse --git-common-dir)/info/exclude"
PY=${PY:-/work/main/.venv/bin/python}
mkdir -p .gpu/data .gpu/tokenizer
cp /work/shared/data/cot_500/gsm8k_train_with_cot.json /work/shared/data/cot_500/gsm8k_train_with_cot_gpt4o.json .gpu/data/
PYTHONPATH=src "$PY" -c "from layergrad.inputs.models import load_model; load_model('default').tokenizer.save_pretrained('.gpu/tokenizer')"
if [ "${LAYERGRAD_GPU_WHEELS:-0}" = 1 ]; then
  "$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 -d .gpu/whl 'cupy-cuda13x>=13'
fi
du -sh .gpu
