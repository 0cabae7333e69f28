"""BENCHMARKS.md from the workers' results: the machine, the targets, the tables, the raw numbers."""
from __future__ import annotations

import json
import os
import re
import platform
import statistics

from methods import LABELS

TARGETS = (  # (config, modules, quantity, bound, sense, text)
    ("wide", "all", "d/c", 1.15, "<=", "wide, all modules: (d) at most 1.15 x (c)"),
    ("wide", "all", "d/b", 0.75, "<=", "wide, all modules: (d) at most 0.75 x (b)"),
    ("wide", "all", "a/d", 20.0, ">=", "wide, all modules: (d) at least 20 x faster than (a)"),
    ("wide", "all", "diff", 1e-4, "<=", "wide, all modules: nuclear norms of (d) within 1e-4 relative of (a)"),
    ("default", "all", "d/b", 0.85, "<=", "default model, all modules: (d) at most 0.85 x (b)"),
    ("wide", "all", "mem", 1.2, "<=", "wide, all modules: peak memory of (d) at most 1.2 x (b)"),
    ("default", "all", "mem", 1.2, "<=", "default model, all modules: peak memory of (d) at most 1.2 x (b)"),
)


def machine() -> dict:
    import torch
    import transformers

    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem_gb = None
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemTotal"):
                    mem_gb = int(line.split()[1]) / 1024**2
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": mem_gb,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "os": f"{platform.system()} {platform.release()}",
        "gpu": gpu,
    }


# ---------------------------------------------------------------------------------------
# Figures from the raw results
# ---------------------------------------------------------------------------------------


def _med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def per_example(t: dict, key: str) -> float | None:
    """Median over rounds of this method's seconds per example."""
    if key not in t["times"]:
        return None
    return _med([s / t["n_examples"] for s in t["times"][key] if s is not None])


def ratio(t: dict, num: str, den: str) -> float | None:
    """Median over rounds of the paired per-round ratio (the same round's batches)."""
    if num not in t["times"] or den not in t["times"]:
        return None
    return _med([x / y for x, y in zip(t["times"][num], t["times"][den]) if x is not None and y])


def paper_per_example(t: dict, m: str) -> float | None:
    runs = t.get("paper", {}).get(f"a:{m}", [])
    return statistics.mean(r["seconds"] for r in runs) if runs else None


def figures(results: dict) -> dict:
    """(config, modules) -> the row's numbers."""
    rows = {}
    for config, t in results["timing"].items():
        mods = sorted({k.split(":", 1)[1] for k in t["times"] if k.startswith("d:")}, key=lambda m: (m != "attn", m))
        mem = results["memory"].get(config, {})
        for m in mods:
            d = f"d:{m}"
            pa = paper_per_example(t, m)
            pd = per_example(t, d)
            acc = t.get("accuracy", {}).get(m, {})
            peak = lambda k: mem[k]["peak_kb"] / 1024**2 if k in mem else None  # noqa: E731
            work = lambda k: (mem[k]["peak_kb"] - mem[k]["base_kb"]) / 1024**2 if k in mem else None  # noqa: E731
            rows[(config, m)] = {
                "a": pa, "b": per_example(t, "b"), "hf": per_example(t, "hf"), "c": per_example(t, "c"), "d": pd,
                "a/d": pa / pd if pa and pd else None,
                "d/b": ratio(t, d, "b"), "d/c": ratio(t, d, "c"), "hf/b": ratio(t, "hf", "b"),
                "diff": acc.get("max_rel_diff"), "n_diff": acc.get("n_values", 0),
                "n_paper": len(t.get("paper", {}).get(f"a:{m}", [])),
                "peak": {k: peak(k) for k in ("a:" + m, "b", "hf", "c", d)},
                "work": {k: work(k) for k in ("a:" + m, "b", "hf", "c", d)},
                "mem": peak(d) / peak("b") if peak(d) and peak("b") else None,
                "mem_work": work(d) / work("b") if work(d) and work("b") else None,
            }
    return rows


# ---------------------------------------------------------------------------------------
# Markdown
# ---------------------------------------------------------------------------------------


def _f(x, fmt="{:.2f}", none="n/a"):
    return none if x is None else fmt.format(x)


def _secs(x):
    if x is None:
        return "n/a"
    return f"{x:.1f}" if x >= 10 else f"{x:.2f}"


def _tokens(ts):
    s = sorted(ts)
    return f"{len(s)} ex, median {int(statistics.median(s))} tok ({s[0]}-{s[-1]})"


def targets_table(rows: dict) -> list[str]:
    out = ["| target | measured | met? |", "| --- | --- | --- |"]
    for config, m, q, bound, sense, text in TARGETS:
        r = rows.get((config, m))
        v = r.get(q) if r else None
        if v is None:
            out.append(f"| {text} | not measured | n/a |")
            continue
        ok = v <= bound if sense == "<=" else v >= bound
        if q == "diff":
            shown = f"{v:.1e}"
            miss = "" if ok else f" ({v / bound:.1f} x the bound)"
        else:
            shown = f"{v:.2f}"
            miss = "" if ok else (f" ({(v / bound - 1) * 100:.0f}% over)" if sense == "<=" else f" ({(1 - v / bound) * 100:.0f}% short)")
        out.append(f"| {text} | {shown} | {'yes' if ok else 'NO' + miss} |")
    return out


def results_table(rows: dict, results: dict) -> list[str]:
    head = ("| model | modules | examples | batch | (a) s/ex | (b) s/ex | (b') s/ex | (c) s/ex | (d) s/ex "
            "| (a)/(d) | (d)/(b) | (d)/(c) | max rel. diff (d) vs (a) |")
    out = [head, "| --- " * 13 + "|"]
    for (config, m), r in rows.items():
        t = results["timing"][config]
        paper = f" (on {r['n_paper']})" if r["n_paper"] else ""
        out.append(
            f"| {config} | {m} | {_tokens(t['tokens'])} | {t['batch_size']} | {_secs(r['a'])}{paper} | {_secs(r['b'])} | {_secs(r['hf'])} "
            f"| {_secs(r['c'])} | {_secs(r['d'])} | {_f(r['a/d'], '{:.1f}')} | {_f(r['d/b'])} | {_f(r['d/c'])} "
            f"| {_f(r['diff'], '{:.1e}')} ({r['n_diff']} values) |"
        )
    return out


def memory_table(rows: dict) -> list[str]:
    out = ["| model | modules | (a) | (b) | (b') | (c) | (d) | (d)/(b) peak | (d)/(b) above baseline |", "| --- " * 9 + "|"]
    for (config, m), r in rows.items():
        cells = []
        for k in ("a:" + m, "b", "hf", "c", f"d:{m}"):
            pk, wk = r["peak"].get(k), r["work"].get(k)
            cells.append("n/a" if pk is None else f"{pk:.2f} (+{wk:.2f})")
        out.append(f"| {config} | {m} | " + " | ".join(cells) + f" | {_f(r['mem'])} | {_f(r['mem_work'])} |")
    return out


def batch_table(results: dict) -> list[str]:
    out = ["| model | batch (tokens) | (b) s/ex | (c) s/ex | (d) attn s/ex | (d) all s/ex | (d)/(c) attn | (d)/(c) all | (d)/(b) all |",
           "| --- " * 9 + "|"]
    for config, t in results["timing"].items():
        tb = t["times_by_batch"]
        for bi, toks in enumerate(t["batches"]):
            n = len(toks)
            pe = lambda k: _med([s / n for s in tb[k][bi]]) if k in tb else None  # noqa: E731
            rt = lambda a, b: _med([x / y for x, y in zip(tb[a][bi], tb[b][bi])]) if a in tb and b in tb else None  # noqa: E731
            out.append(f"| {config} | {n} x max {max(toks)} (min {min(toks)}) | {_secs(pe('b'))} | {_secs(pe('c'))} | {_secs(pe('d:attn'))} "
                       f"| {_secs(pe('d:all'))} | {_f(rt('d:attn', 'c'))} | {_f(rt('d:all', 'c'))} | {_f(rt('d:all', 'b'))} |")
    return out


def gpu_rows(gpu: dict) -> list[dict]:
    rows = []
    for config, t in gpu.get("timing", {}).items():
        mods = sorted({k.split(":", 1)[1] for k in t["times"] if k.startswith("d:")}, key=lambda m: (m != "attn", m))
        peak = t.get("peak_gpu_gb") or {}
        for m in mods:
            d = f"d:{m}"
            pa, pd = paper_per_example(t, m), per_example(t, d)
            rows.append({
                "config": config, "modules": m, "t": t, "a": pa, "b": per_example(t, "b"), "c": per_example(t, "c"), "d": pd,
                "a/d": pa / pd if pa and pd else None, "d/b": ratio(t, d, "b"), "d/c": ratio(t, d, "c"),
                "q": per_example(t, f"q:{m}"), "q/b": ratio(t, f"q:{m}", "b"),
                "u": per_example(t, f"u:{m}"), "u/d": ratio(t, f"u:{m}", d), "ref_u": t.get("reference", {}).get(f"u:{m}", {}),
                "ref_q": t.get("reference", {}).get(f"q:{m}", {}),
                "peak_b": peak.get("b"), "peak_d": peak.get(d),
                "mem": peak[d] / peak["b"] if peak.get(d) and peak.get("b") else None,
                "ref": t.get("reference", {}).get(m, {}), "acc": t.get("accuracy", {}).get(m, {}),
                "n_paper": len(t.get("paper", {}).get(f"a:{m}", [])),
            })
    return rows


def _ms(x):
    return "n/a" if x is None else f"{x * 1000:.0f}"


def gpu_table(gpu: dict) -> list[str]:
    """Milliseconds per example; memory and accuracy columns only where some run recorded them."""
    rows = gpu_rows(gpu)
    full = any(not r["t"].get("from_logs") for r in rows)
    head = ("| model | modules | examples | (a) ms/ex | (b) ms/ex | (c) ms/ex | (d) ms/ex | (q) ms/ex | (u) ms/ex | (a)/(d) | (d)/(b) "
            "| (d)/(c) | (q)/(b) | (u)/(d) |")
    if full:
        head += (" peak GB (b) | peak GB (d) | (d)/(b) peak | max rel. diff (d) vs (r): nuclear, s_1, eff. rank | (d) vs (a) "
                 "| (q) vs (r) | (u) vs (r) |")
    out = [head, "| --- " * head[1:-1].count("|") + "| --- |"]
    for r in rows:
        t = r["t"]
        shown = (_tokens(t["tokens"]) + f", batches of {t['batch_size']}" if "tokens" in t else
                 f"{t['n_examples']} ex: " + ", ".join(f"{n} x max {m} tok" for n, m in t["batches_logged"]))
        paper = f" (on {r['n_paper']})" if r["n_paper"] else ""
        line = (f"| {r['config']} | {r['modules']} | {shown} | {_ms(r['a'])}{paper} | {_ms(r['b'])} | {_ms(r['c'])} | {_ms(r['d'])} "
                f"| {_ms(r['q'])} | {_ms(r['u'])} | {_f(r['a/d'], '{:.0f}')} | {_f(r['d/b'], '{:.1f}')} | {_f(r['d/c'], '{:.1f}')} "
                f"| {_f(r['q/b'], '{:.1f}')} | {_f(r['u/d'], '{:.1f}')} |")
        if full:
            ref, acc = r["ref"], r["acc"]
            by = ref.get("by_stat") or {}
            stats = (", ".join(_f(by.get(k), "{:.1e}") for k in ("nuclear", "spectral", "effective_rank")) if by
                     else _f(ref.get("max_rel_diff"), "{:.1e}"))
            line += (f" {_f(r['peak_b'], '{:.1f}')} | {_f(r['peak_d'], '{:.1f}')} | {_f(r['mem'])} "
                     f"| {stats} | {_f(acc.get('max_rel_diff'), '{:.1e}')} "
                     f"| {_f(r['ref_q'].get('max_rel_diff'), '{:.1e}')} | {_f(r['ref_u'].get('max_rel_diff'), '{:.1e}')} |")
        out.append(line)
    return out


def gpu_section(gpu: dict) -> list[str]:
    meta = gpu.get("meta", {})
    L = ["", "## GPU", ""]
    L.append(f"- Device: {meta.get('gpu')}; {meta.get('cores')} CPU cores; {meta.get('os')}; Python {meta.get('python')}, "
             f"torch {meta.get('torch')}, transformers {meta.get('transformers')} (the GPU machine's own packages).")
    if meta.get("command"):
        L.append(f"- Date: {meta.get('started')} ({meta.get('minutes', 0):.0f} minutes). Command: `{meta.get('command')}`.")
    for config, t in gpu.get("timing", {}).items():
        L.append(f"- `{config}`: {t['description']}; {t['prompt_mode']} prompts; data: {t['source']}"
                 + (f"; model weights {_f(t.get('model_gpu_gb'), '{:.1f}')} GB on the GPU" if "model_gpu_gb" in t else "")
                 + (f"; (r) on {t['reference_layers']} evenly spaced layers." if t.get("reference_layers") else "."))
        if t.get("from_logs"):
            L.append(f"  Timings rebuilt from the worker logs {', '.join(f'`{x}`' for x in t['logs'])} "
                     f"({sum(x is not None for x in t['times'].get('b', []))} round(s) of (b)): the runs reached their time limits before writing their "
                     "results, so there are no peak-memory or accuracy figures for them.")
    if gpu.get("errors"):
        L.append("- **Errors during this run:** " + "; ".join(gpu["errors"]))
    L += ["", "Methods as on the CPU, statistics in float32 from the model's activations (bf16 for `llama8b`); peak GB: the CUDA "
          "allocator's high-water mark while the method ran (`torch.cuda.max_memory_allocated`, weights included). "
          "(r): float64 statistics by the QR path from the same captured inputs and output gradients (untimed); "
          "(d) vs (r) is therefore the error of layergrad's float32 statistics on the GPU (largest relative difference of "
          "the nuclear norm, the spectral norm s_1 and the effective rank, over the examples and the modules (r) ran on: "
          "every layer, or as many evenly spaced layers as the run's `--reference-layers` says). (u): (d) with the "
          "eigenproblems solved one example and module at a time (`eig_batch=off`, as before batching). (d) vs (a): against the paper's "
          "method, whose dense weight gradient a bf16 model returns in bf16 (each entry rounded to 8 bits), so "
          "that column is mostly (a)'s own rounding. (q): (d) with the QR path forced for every module (float32 "
          "`torch.linalg.qr` and `svdvals` of the small core) instead of the `auto` choice made from CPU costs.", ""]
    if any(t.get("from_logs") for t in gpu.get("timing", {}).values()):
        L += ["(a) in the runs rebuilt from logs took `torch.linalg.svdvals` (values only), not the full SVD of the "
              "CPU rows, so their (a)/(d) is understated.", ""]
    L += gpu_table(gpu)
    per_pair = []
    for r in gpu_rows(gpu):
        n_mod = r["t"].get("n_targets", {}).get(r["modules"]) or _N_TARGETS.get((r["config"], r["modules"]))
        if r["d"] and r["c"] and n_mod:
            per_pair.append(f"{r['config']} {r['modules']}: {(r['d'] - r['c']) / n_mod * 1000:.1f} ms")
    L += ["", "On the GPU the statistics, not the model, set the pace. Their cost per module and example, "
          "((d) - (c)) / modules: " + "; ".join(per_pair) + ". That is the latency of one small float64 symmetric "
          "eigensolver call (cuSOLVER's `syevd` through `torch.linalg.eigvalsh`, one matrix at a time, a few hundred "
          "rows) plus its Gram products, whatever the width: the model's own work on a 8B model runs at "
          "hundreds of TFLOP/s and is done in tens of milliseconds. The QR path (q) is slower still (`geqrf` and a "
          "float32 SVD per module and example). What would close the gap, none of it done yet: one batched "
          "eigensolver call per module over the batch's examples (padding an example's X and D with zero rows "
          "adds only zero eigenvalues, so this is exact), or over the modules of a layer; overlapping the "
          "eigensolvers with the next batch's forward on a second CUDA stream or on the CPU cores; a float32 "
          "eigensolver with float64 refinement of the small eigenvalues."]
    return L


_BATCH_LINE = re.compile(r"round (\d+) batch (\d+) \((\d+) ex, max (\d+) tok\) ([a-z]+(?::[a-z]+)?): ([0-9.]+) s$")
_PAPER_LINE = re.compile(r"round (\d+) paper example (\d+) \((\d+) tok\) (a:[a-z]+): ([0-9.]+) s$")
_START_LINE = re.compile(r"(\S+) on (\S+): (\d+) examples in (\d+) batches")


def timing_from_logs(texts: list[str]) -> dict:
    """A worker's timing result rebuilt from its log lines, for runs stopped before they wrote one.

    Each log (one worker process of one configuration) adds its rounds; a method's round counts only
    where every batch of it was logged. What a log cannot tell (peak memory, accuracy, the token count
    of each example) is left out, and ``from_logs`` says so.
    """
    rounds: dict[tuple[str, int], float] = {}  # (method, round over all logs) -> seconds
    paper: dict[str, list[dict]] = {}
    batches: dict[int, tuple[int, int]] = {}
    config = device = None
    n_examples = 0
    offset = 0
    for text in texts:
        per_round: dict[tuple[str, int], dict[int, float]] = {}
        n_batches = 0
        for line in text.splitlines():
            line = line.split("] ", 1)[-1].strip()
            if m := _START_LINE.match(line):
                config, device, n_examples, n_batches = m[1], m[2], int(m[3]), int(m[4])
            elif m := _BATCH_LINE.match(line):
                r, b, n, tmax, key, sec = int(m[1]), int(m[2]), int(m[3]), int(m[4]), m[5], float(m[6])
                batches[b] = (n, tmax)
                per_round.setdefault((key, r), {})[b] = sec
            elif m := _PAPER_LINE.match(line):
                paper.setdefault(m[4], []).append({"position": int(m[2]), "tokens": int(m[3]), "seconds": float(m[5])})
        for (key, r), secs in per_round.items():
            if len(secs) == n_batches and not key.startswith("r:"):
                rounds[(key, offset + r)] = sum(secs.values())
        offset += 1 + max((r for _, r in per_round), default=-1)
    # aligned by round (None where a method did not finish that round), so ratios pair the same round
    times = {key: [rounds.get((key, g)) for g in range(offset)] for key in sorted({k for k, _ in rounds})}
    return {"config": config, "device": device, "n_examples": n_examples, "times": times, "paper": paper,
            "batches_logged": [batches[b] for b in sorted(batches)], "from_logs": True}


_N_TARGETS = {("llama8b", "attn"): 128, ("llama8b", "all"): 224, ("wide", "attn"): 16, ("wide", "all"): 28}  # for logs


def gpu_summary(gpu: dict) -> str:
    return "\n".join(gpu_table(gpu))


def render(results: dict) -> str:
    meta = results["meta"]
    rows = figures(results)
    L = ["# Benchmarks", ""]
    L.append("Generated by `benchmarks/run.py`; do not edit by hand. Regenerate with:")
    L += ["", "```", meta["command"], "```", ""]
    L.append(f"- Date: {meta['started']} ({meta['minutes']:.0f} minutes{', --quick' if meta['quick'] else ''}).")
    L.append(f"- Machine: {meta['cpu']}, {meta['cores']} cores, {_f(meta['memory_gb'], '{:.0f}')} GB RAM; {meta['os']}; "
             f"Python {meta['python']}, torch {meta['torch']}, transformers {meta['transformers']}.")
    L.append(f"- Threads: {meta['threads']} torch threads per process; one benchmark process at a time.")
    L.append(f"- Load average (1, 5, 15 min) at start {_load(meta['load_start'])}, at end {_load(meta['load_end'])}: "
             "the machine is shared, so every ratio is taken within one process, methods interleaved, medians over rounds.")
    gpu = results.get("gpu")
    L.append("- GPU: " + (f"{meta['gpu']}." if meta["gpu"] else
                          f"none on this machine; the GPU figures (section GPU) come from a separate run on a {gpu['meta']['gpu']}."
                          if gpu else "none. No GPU was available to this benchmark, so no GPU figures are recorded."))
    for config, t in results["timing"].items():
        L.append(f"- `{config}`: {t['description']}; {t['prompt_mode']} prompts; data: {t['source']}.")
    if results.get("errors"):
        L += ["", "**Errors during this run:** " + "; ".join(results["errors"])]
    L += ["", "## Targets (issue #4)", ""] + targets_table(rows)
    L += ["", "## Time per example", ""]
    L.append("Seconds per example: each method's total over all batches divided by the number of examples, median over "
             "rounds. Ratios are medians of the per-round ratios (same round, same batches). (a) runs one example at a time, "
             "on the number of examples shown (mean). Max rel. diff: the largest |nuclear(d) - nuclear(a)| / nuclear(a) "
             "over those examples and every module.")
    L += [""] + results_table(rows, results)
    L += ["", "### By batch", "", "Batches are grouped by length (the engine's plan), so the rows show how the ratios depend on sequence length.", ""]
    L += batch_table(results)
    if any(results["memory"].values()):
        L += ["", "## Peak memory", ""]
        L.append("GB resident: the kernel's high-water mark of resident memory (`VmHWM`) of a fresh process that loaded the "
                 "model and the data, reset the mark (`/proc/self/clear_refs`), then ran only this method once, on the "
                 "longest batch ((a): one example). In parentheses, the part above the resident size just before the "
                 "method ran (the method's own working memory; the model's weights are in the total).")
        L += [""] + memory_table(rows)
    if gpu:
        L += gpu_section(gpu)
    L += ["", "## What was measured", ""]
    for k in ("a", "b", "hf", "c", "d", "r"):
        L.append(f"- **{LABELS[k]}**: {_DEFINITIONS[k]}")
    L += ["", "## What limits the ratios", "", _LIMITS]
    L += ["", "<details><summary>Raw results (JSON)</summary>", "", "```json", json.dumps(_raw(results), indent=1), "```", "", "</details>", ""]
    return "\n".join(L)


def _load(x):
    return ", ".join(f"{v:.1f}" for v in x)


def _raw(results: dict) -> dict:
    return {k: results.get(k) for k in ("meta", "timing", "memory", "errors", "gpu") if k in results}


RAW_START, RAW_END = "```json\n", "\n```"


def results_from_markdown(text: str) -> dict:
    """The raw results embedded in a BENCHMARKS.md (to render it again with a newer report.py)."""
    start = text.index("<summary>Raw results")
    start = text.index(RAW_START, start) + len(RAW_START)
    return json.loads(text[start : text.index(RAW_END, start)])


def summary(results: dict) -> str:
    rows = figures(results)
    return "\n".join(targets_table(rows) + [""] + results_table(rows, results))


_DEFINITIONS = {
    "a": "one example at a time: the dense weight gradient of every selected module by autograd "
         "(`layergrad.measure.oracle.example_gradients`, logits at every position, as the paper's code) and a full "
         "`torch.linalg.svd` of each in float32 (U and V too, as the paper's script computes them; on this CPU a full "
         "SVD of a 2048 x 5632 matrix takes about 1.6 times `svdvals`). A float32 dense SVD leaves rounding noise of "
         "about `u s_1` on each of the `min(out, in) - T` singular values that are exactly 0 in the gradient, which "
         "adds up to about 1e-4 of the nuclear norm for the wide model's 2048 x 5632 modules: the max rel. diff column "
         "is mostly (a)'s own rounding (layergrad's values are held to a float64 oracle in the tests).",
    "b": "forward and backward of the same padded batches with a gradient for every weight and the same per-example loss "
         "as layergrad (logits only at response positions); no statistics, no optimizer step.",
    "hf": "the stock Hugging Face step: `model(input_ids, attention_mask, labels=...)` (logits at every position), "
          "backward with every weight gradient. For context: no target refers to it.",
    "c": "layergrad's own forward and activation-only backward (no parameter requires a gradient; the backward stops at "
         "the first measured module), logits only at response positions, the capture hooks in place with a sink that does "
         "nothing: exactly (d) without the statistics.",
    "d": "`layergrad.run.engine.BatchRunner` with the engine's statistics sink (float32 statistics, the `auto` method, "
         "top-64 spectrum kept): every metric of every selected module for every example. Writing results to disk is not "
         "included (it is the same for any method).",
    "r": "(GPU only, untimed) the same runner with float64 statistics by the QR path (`Measurer(method=\"factored\", "
         "stats_dtype=torch.float64)`): the exact singular values of the gradients (d) measures, for a model where the "
         "paper's method cannot be run on every module within the benchmark's time.",
}

_LIMITS = """\
For a module with input width `i` and output width `o` and an example of `t` tokens, the floor (c)
costs about `4 t i o` operations (forward and input gradient) and a training step (b) `6 t i o`. The
statistics need every singular value of the `o x i` gradient `G = D^T X`, whose rank is `min(t, i, o)`:
layergrad forms a symmetric `t x t` (or `o x o`, `i x i`) matrix with those squared singular values in
float64 (Gram matrices: about `1.5 (o + i / s) t^2` operations, `s` modules sharing the input) and
takes its eigenvalues (`eigvalsh`: about 7.5 `t^3` float64-product operations on this CPU,
`benchmarks/calibrate.py`). Relative to the floor this is about `t / i` and `(t / i)^2`: a few percent
for short examples on a wide model, and a large fraction once `t` approaches the width. Float64 is
needed: a squared singular value computed in float32 loses the small singular values (measured on
SmolLM2's gradients: float32 Gram matrices are off by up to 1e-5 relative in the nuclear norm, float64
ones by 1e-9, the float32 QR path by 3e-7). The by-batch table shows the dependence on length."""
