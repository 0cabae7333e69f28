#!/usr/bin/env bash
# Issue 16's GPU checks in ONE call on a lent H200 (at most ~10 minutes), results saved as they come under
# $OUT. First, here: benchmarks/gpu_prepare.sh (fills .gpu/). Then, with the device tool:
#   run(command="bash benchmarks/gpu_checks.sh", carry=[".gpu"], timeout_s=600)
# Steps (each bounded by `timeout`, so a slow one cannot eat the next one's time):
#   0. the layergrad[gpu] extra from carried wheels when .gpu/whl exists (CuPy is on the image otherwise)
#   1. pytest -m gpu (tests/test_gpu.py and the rest of the gpu marker)             ~1 min
#   2. benchmarks/gpu_eig.py: eigensolvers by backend, size, stack; padding cost    ~2.5 min
#   3. the benchmark --device cuda: llama8b (attn, all) and wide, d (batched), u (per example), b, c, r   ~4 min
#   4. benchmarks/gpu_run_checks.py: layergrad run on a 1.2B bf16 model: kill+resume, OOM back-off,
#      --device-map auto, --eig-batch on/off                                         ~3 min
set -uo pipefail
OUT=${OUT:-/tmp/gpu-out}; mkdir -p "$OUT"
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 LAYERGRAD_BENCH_TOKENIZER=$PWD/.gpu/tokenizer
if [ -d .gpu/whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/whl/*.whl \
    && export PYTHONPATH=$PYTHONPATH:/tmp/site
fi
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; python3 -c "import torch, cupy; print('torch', torch.__version__, 'cupy', cupy.__version__)"; } 2>&1 | tee "$OUT/env.txt"
t0=$SECONDS
timeout 90 python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu.py 2>&1 | tail -25 | tee "$OUT/pytest_gpu.txt"
echo "[gpu_checks] pytest done at $((SECONDS - t0)) s"
timeout 170 python3 benchmarks/gpu_eig.py --json "$OUT/gpu_eig.json" --budget-s 140 > "$OUT/gpu_eig.log" 2>&1
tail -3 "$OUT/gpu_eig.log"; echo "[gpu_checks] gpu_eig done at $((SECONDS - t0)) s"
timeout 250 python3 benchmarks/run.py --device cuda --configs llama8b,wide --per-file 4 --batch-size 8 --rounds 1 \
  --modules attn,all --paper-modules attn --paper-examples 0 --gpu-methods b,c,d,u,r --data-dir .gpu/data --threads 8 \
  --timeout 120 --json "$OUT/gpu_bench.json" --output "$OUT/gpu_bench.md" > "$OUT/gpu_bench.log" 2>&1
tail -15 "$OUT/gpu_bench.log"; echo "[gpu_checks] benchmark done at $((SECONDS - t0)) s"
timeout 230 python3 benchmarks/gpu_run_checks.py --data .gpu/data/gsm8k_train_with_cot.json --work /tmp/lg \
  --json "$OUT/gpu_run_checks.json" --timeout 100 > "$OUT/gpu_run_checks.log" 2>&1
grep -E '^(kill|oom|device_map|eig_batch):' "$OUT/gpu_run_checks.log"; tail -3 "$OUT/gpu_run_checks.log"
echo "[gpu_checks] all done at $((SECONDS - t0)) s"
