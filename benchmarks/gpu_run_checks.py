"""`layergrad run` end to end on CUDA (issue 16, item 4), on a saved random-weight ~1.2B Llama in bf16.

1. ``kill``: every module, ``--ifd --cosine``; killed (SIGKILL) once its first part is committed, then
   rerun: the rerun resumes and the store holds every example once, all ``ok``.
2. ``oom``: the same in-process with the CUDA allocator capped (``set_per_process_memory_fraction``), so a
   full batch raises a real ``torch.OutOfMemoryError``: the back-off splits it; the numbers equal run 1's.
3. ``device_map``: ``--device-map auto`` on the one GPU; the numbers equal run 1's.
4. ``eig_batch``: ``--eig-batch off`` (per-example eigenproblems), timed against run 1's resumed half.

Each check's seconds, statuses and largest relative difference go to ``--json`` as it finishes.

    LAYERGRAD_BENCH_TOKENIZER=.gpu/tokenizer PYTHONPATH=src python3 benchmarks/gpu_run_checks.py \
        --data .gpu/data/gsm8k_train_with_cot.json --work /tmp/lg --json $OUT/gpu_run_checks.json
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

SHAPE = dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
             num_key_value_heads=8)  # ~1.2B parameters with a 49152-token vocabulary
#: ``--dry-run``: the same checks on the CPU with a small model, before the one GPU call (the OOM check needs CUDA)
DRY_SHAPE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)


def build_model(folder: Path, shape: dict = SHAPE, device: str = "cuda") -> int:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    tok = AutoTokenizer.from_pretrained(os.environ["LAYERGRAD_BENCH_TOKENIZER"], local_files_only=True)
    cfg = LlamaConfig(vocab_size=len(tok), max_position_embeddings=4096, tie_word_embeddings=False,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, **shape)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    n = sum(p.numel() for p in model.parameters())
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    return n


def run_args(a, model: Path, out: Path, *extra: str) -> list[str]:
    return ["run", "--model", str(model), "--data", a.data, "--out", str(out), "--device", a.device, "--modules", "all",
            "--ifd", "--cosine", "--limit", str(a.limit), "--batch-size", "8", "--no-progress", *extra]


def cli(args: list[str], timeout: float) -> tuple[int, float, str]:
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "layergrad", *args], capture_output=True, text=True, timeout=timeout)
    return p.returncode, time.perf_counter() - t0, (p.stdout + p.stderr)[-3000:]


def summary(out: Path) -> dict:
    from layergrad.store import load_results

    r = load_results(out)
    return {"examples": len(r.examples), "ids_unique": bool(r.examples["id"].is_unique),
            "statuses": r.examples["status"].value_counts().to_dict(), "module_rows": len(r.modules),
            "cosine_rows": len(r.cosine)}


def max_rel_diff(a: Path, b: Path, col: str = "nuclear") -> float | None:
    from layergrad.store import load_results

    x, y = load_results(a).modules, load_results(b).modules
    m = x.merge(y, on=["id", "module"], suffixes=("_a", "_b"))
    if not len(m):
        return None
    return float(((m[f"{col}_a"] - m[f"{col}_b"]).abs() / m[f"{col}_a"].abs().clip(lower=1e-300)).max())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--work", default="/tmp/lg")
    p.add_argument("--json", required=True)
    p.add_argument("--limit", type=int, default=24)
    p.add_argument("--oom-gb", type=float, default=9.0, help="the allocator's cap in check 2 (weights ~2.4 GB)")
    p.add_argument("--timeout", type=float, default=240)
    p.add_argument("--checks", default="kill,oom,device_map,eig_batch")
    p.add_argument("--dry-run", action="store_true", help="on the CPU with a small model, without the OOM check (which needs CUDA)")
    a = p.parse_args(argv)
    a.device = "cpu" if a.dry_run else "cuda"
    if a.dry_run:
        a.checks = ",".join(c for c in a.checks.split(",") if c != "oom")
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    res: dict = {}
    save = lambda: Path(a.json).write_text(json.dumps(res, indent=1, default=str))  # noqa: E731
    model = work / "model-1b"
    t0 = time.perf_counter()
    if not (model / "config.json").exists():
        shape = DRY_SHAPE if a.dry_run else SHAPE
        res["model"] = {"parameters": build_model(model, shape, a.device), "shape": shape, "dtype": "bfloat16"}
    res["model_build_s"] = time.perf_counter() - t0
    save()
    checks = a.checks.split(",")
    base = work / "run-kill"

    if "kill" in checks:
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "layergrad", *run_args(a, model, base)],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        killed_after = None
        while proc.poll() is None and time.perf_counter() - t0 < a.timeout:
            if any(base.rglob("*.parquet")):
                time.sleep(0.5)
                proc.send_signal(signal.SIGKILL)
                killed_after = time.perf_counter() - t0
                break
            time.sleep(0.5)
        proc.wait()
        before = summary(base) if (base / "manifest.json").exists() else None
        rc, sec, log = cli(run_args(a, model, base), a.timeout)
        res["kill"] = {"killed_after_s": killed_after, "first_rc": proc.returncode, "before_resume": before,
                       "resume_rc": rc, "resume_s": sec, "after": summary(base) if rc == 0 else None, "log": log[-1500:]}
        save()
        print("kill:", json.dumps({k: v for k, v in res["kill"].items() if k != "log"}), flush=True)

    if "oom" in checks:
        out = work / "run-oom"
        code = (
            "import sys, torch; from layergrad.cli import main\n"
            f"torch.cuda.set_per_process_memory_fraction({a.oom_gb} * 2**30 / torch.cuda.get_device_properties(0).total_memory)\n"
            f"sys.exit(main({json.dumps(run_args(a, model, out, '--max-batch-tokens', '65536'))}))\n"
        )
        t0 = time.perf_counter()
        pr = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=a.timeout)
        logtxt = pr.stdout + pr.stderr
        res["oom"] = {"rc": pr.returncode, "s": time.perf_counter() - t0, "cap_gb": a.oom_gb,
                      "backoff_lines": [ln for ln in logtxt.splitlines() if "memory" in ln.lower()][:20],
                      "after": summary(out) if pr.returncode == 0 else None,
                      "max_rel_diff_nuclear_vs_kill": max_rel_diff(base, out) if pr.returncode == 0 and base.exists() else None,
                      "log": logtxt[-1500:]}
        save()
        print("oom:", json.dumps({k: v for k, v in res["oom"].items() if k != "log"}), flush=True)

    if "device_map" in checks:
        out = work / "run-devmap"
        rc, sec, log = cli(run_args(a, model, out, "--device-map", "auto"), a.timeout)
        res["device_map"] = {"rc": rc, "s": sec, "after": summary(out) if rc == 0 else None,
                             "max_rel_diff_nuclear_vs_kill": max_rel_diff(base, out) if rc == 0 and base.exists() else None,
                             "log": log[-1500:]}
        save()
        print("device_map:", json.dumps({k: v for k, v in res["device_map"].items() if k != "log"}), flush=True)

    if "eig_batch" in checks:
        for mode in ("on", "off"):
            out = work / f"run-eig-{mode}"
            rc, sec, log = cli(run_args(a, model, out, "--eig-batch", mode), a.timeout)
            res[f"eig_batch_{mode}"] = {"rc": rc, "s": sec, "after": summary(out) if rc == 0 else None, "log": log[-800:]}
            save()
        if res["eig_batch_on"]["rc"] == 0 and res["eig_batch_off"]["rc"] == 0:
            res["eig_batch_max_rel_diff_nuclear"] = max_rel_diff(work / "run-eig-off", work / "run-eig-on")
            res["eig_batch_max_rel_diff_min_sigma"] = max_rel_diff(work / "run-eig-off", work / "run-eig-on", "min_sigma")
        save()
        print("eig_batch:", {m: res[f"eig_batch_{m}"]["s"] for m in ("on", "off")}, res.get("eig_batch_max_rel_diff_nuclear"), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
