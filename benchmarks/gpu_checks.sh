#!/usr/bin/env bash
# Issue 16's GPU checks in ONE call on a lent H200, results saved as they come under $OUT. A task's device time
# is 15 minutes in all, the machine's start included, so the steps are bounded to about 9 minutes together.
# First, here: benchmarks/gpu_prepare.sh (fills .gpu/), and the CPU dry runs of steps 2, 3 and 4 (they catch a
# broken argument before the GPU's time is spent):
#   LAYERGRAD_BENCH_TOKENIZER=$PWD/.gpu/tokenizer PYTHONPATH=src .venv/bin/python benchmarks/gpu_run_checks.py \
#       --dry-run --data .gpu/data/gsm8k_train_with_cot.json --work /tmp/lgdry --json /tmp/lgdry.json --limit 4
#   PYTHONPATH=src .venv/bin/python benchmarks/worker.py timing --config default --modules attn,all --per-file 1 \
#       --batch-size 2 --methods b,c,d,u,r --rounds 1 --paper-examples 0 --reference-layers 3 --out /tmp/w.json
#   PYTHONPATH=src .venv/bin/python benchmarks/gpu_eig.py --device cpu --sizes 64 --stacks 1,8 --route-sizes 64 \
#       --route-width 128 --json /tmp/eig.json
# Then, with the device tool:
#   run(command="bash benchmarks/gpu_checks.sh", carry=[".gpu"], timeout_s=600)
# Steps, most needed first (each bounded by `timeout`, so a slow one cannot eat the next one's time):
#   0. the layergrad[gpu] extra from carried wheels when .gpu/whl exists (CuPy is on the image otherwise)
#   1. pytest -m gpu (tests/test_gpu.py: every backend and batched side against the float64 oracle)  <= 60 s
#   2. the benchmark --device cuda: llama8b (attn, all) and wide: (b), (c), (d) batched, (u) per example,
#      the float64 reference (r) on 8 evenly spaced layers of `all`                                  <= 200 s
#   3. benchmarks/gpu_run_checks.py: layergrad run on a 1.2B bf16 model: kill+resume, a real CUDA OOM
#      and the back-off, --device-map auto, --eig-batch off and on                                   <= 200 s
#   4. benchmarks/gpu_eig.py: eigensolvers by backend, dtype, size, stack; padding cost              <= 90 s
# Afterwards, here: benchmarks/run.py --render BENCHMARKS.md --add-gpu <files_at>/gpu_bench.json, and the
# other JSON files into BENCHMARKS.md's GPU section by hand (size classes: spectra/batched.py SIZE_CLASS_MIN).
set -uo pipefail
OUT=${OUT:-/tmp/gpu-out}; mkdir -p "$OUT"
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 LAYERGRAD_BENCH_TOKENIZER=$PWD/.gpu/tokenizer
if [ -d .gpu/whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/whl/*.whl \
    && export PYTHONPATH=$PYTHONPATH:/tmp/site
fi
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; python3 -c "import torch, cupy; print('torch', torch.__version__, 'cupy', cupy.__version__)"; } 2>&1 | tee "$OUT/env.txt"
t0=$SECONDS
timeout 60 python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu.py 2>&1 | tail -25 | tee "$OUT/pytest_gpu.txt"
echo "[gpu_checks] pytest done at $((SECONDS - t0)) s"
timeout 200 python3 benchmarks/run.py --device cuda --configs llama8b,wide --per-file 4 --batch-size 8 --rounds 1 \
  --modules attn,all --paper-modules attn --paper-examples 0 --gpu-methods b,c,d,u,r --reference-layers 8 --data-dir .gpu/data --threads 8 \
  --timeout 150 --json "$OUT/gpu_bench.json" --output "$OUT/gpu_bench.md" > "$OUT/gpu_bench.log" 2>&1
tail -15 "$OUT/gpu_bench.log"; echo "[gpu_checks] benchmark done at $((SECONDS - t0)) s"
timeout 200 python3 benchmarks/gpu_run_checks.py --data .gpu/data/gsm8k_train_with_cot.json --work /tmp/lg \
  --json "$OUT/gpu_run_checks.json" --timeout 60 > "$OUT/gpu_run_checks.log" 2>&1
grep -E '^(kill|oom|device_map|eig_batch):' "$OUT/gpu_run_checks.log"; tail -3 "$OUT/gpu_run_checks.log"
timeout 90 python3 benchmarks/gpu_eig.py --json "$OUT/gpu_eig.json" --budget-s 75 > "$OUT/gpu_eig.log" 2>&1
tail -3 "$OUT/gpu_eig.log"; echo "[gpu_checks] gpu_eig done at $((SECONDS - t0)) s"
echo "[gpu_checks] all done at $((SECONDS - t0)) s"
