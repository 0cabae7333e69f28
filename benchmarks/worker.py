"""One benchmark process: ``timing`` (every method, interleaved) or ``memory`` (one method, fresh process).

Run by :mod:`run` in a subprocess; writes one JSON file (``--out``). Not meant to be called by hand,
but it can be: ``python benchmarks/worker.py timing --config default --out /tmp/t.json --quick``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

import methods as M  # noqa: E402
import workloads as W  # noqa: E402


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------
# Peak resident memory of this process
# ---------------------------------------------------------------------------------------


def _status() -> dict[str, int]:
    out = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(("VmRSS", "VmHWM")):
                k, v = line.split(":", 1)
                out[k] = int(v.split()[0])  # kB
    return out


def reset_peak() -> bool:
    """Reset the kernel's resident high-water mark (Linux >= 4.0); False where that is not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


# ---------------------------------------------------------------------------------------
# Setup shared by both kinds
# ---------------------------------------------------------------------------------------


def setup(a):
    torch.set_num_threads(a.threads)
    wl = W.load_workload(a.config, device=a.device, dtype=a.dtype)
    examples, source = W.load_examples(a.per_file, a.data_dir)
    examples, encs, mode = W.encode_all(examples, wl.tokenizer)
    batches = W.make_batches(encs, a.batch_size)
    return wl, examples, encs, mode, batches, source


def paper_positions(examples, k: int) -> list[int]:
    """``k`` examples for the paper's method, alternating between the data files (short, long, ...)."""
    by_source: dict[str, list[int]] = {}
    for pos, ex in enumerate(examples):
        by_source.setdefault(ex.source, []).append(pos)
    lists = list(by_source.values())
    out = []
    j = 0
    while len(out) < k and any(j < len(v) for v in lists):
        for v in lists:
            if j < len(v) and len(out) < k:
                out.append(v[j])
        j += 1
    return out


def sample_layers(targets, k: int):
    """The targets of ``k`` evenly spaced layers, the first and the last included, and those outside the layer
    stack (``k`` <= 0: all)."""
    layers = sorted({t.layer for t in targets if t.layer >= 0})
    if k <= 0 or k >= len(layers):
        return targets
    keep = {layers[round(j * (len(layers) - 1) / (k - 1))] for j in range(k)} if k > 1 else {layers[0]}
    return [t for t in targets if t.layer < 0 or t.layer in keep]


def build_methods(wl, modules: list[str], keys: list[str], paper_modules: list[str] | None = None,
                  reference_layers: int = 0):
    from layergrad.run.plan import pad_id_of
    from layergrad.inputs.targets import find_targets

    pad_id = pad_id_of(wl.tokenizer)
    targets = {m: find_targets(wl.model, m) for m in sorted(set(modules) | {"all"})}
    runs = {}
    # (r), untimed and slow on a GPU (float64 QR per module), runs once, on the largest selection only: every
    # other selection's modules are among its modules, so each (d), (q), (u) is compared on the same values.
    largest = max(modules, key=lambda m: len(targets[m])) if modules else None
    if "b" in keys:
        runs["b"] = M.train_step(wl.model, pad_id)
    if "hf" in keys:
        runs["hf"] = M.train_step(wl.model, pad_id, stock=True)
    if "c" in keys:
        runs["c"] = M.runner_method(wl.model, targets["all"], pad_id, measure=False)
    for m in modules:
        if "d" in keys:
            runs[f"d:{m}"] = M.runner_method(wl.model, targets[m], pad_id, measure=True)
        if "q" in keys:
            runs[f"q:{m}"] = M.runner_method(wl.model, targets[m], pad_id, measure=True, method="factored")
        if "u" in keys:  # the eigenproblems one example at a time, as before issue 16 (on CUDA, "d" batches them)
            runs[f"u:{m}"] = M.runner_method(wl.model, targets[m], pad_id, measure=True, eig_batch="off")
        if "r" in keys and m == largest:
            runs[f"r:{m}"] = M.runner_method(wl.model, sample_layers(targets[m], reference_layers), pad_id, measure=True,
                                             reference=True)
        if "a" in keys and (paper_modules is None or m in paper_modules):
            runs[f"a:{m}"] = M.paper_method(wl.model, targets[m])
    return runs, {m: len(t) for m, t in targets.items()}


# ---------------------------------------------------------------------------------------
# timing: every method, interleaved, several rounds
# ---------------------------------------------------------------------------------------


def compare_to_reference(values: dict[str, dict]) -> dict[str, dict]:
    """Every (d), (q), (u) against the float64 reference (r), on the values both have.

    ``values``: method key (``d:attn``, ``r:all``, ...) -> payload (``(position, module)``: nuclear norm,
    ``(position, module, stat)``: another statistic). Returns, per ``attn`` (for ``d:attn``) or ``u:attn``,
    the largest relative difference over all statistics and ``by_stat``; values undefined on either side
    (NaN, a zero gradient) or zero in (r) are left out, ``n_values`` counts the values both have.
    """
    ref = next((v for k, v in values.items() if k.startswith("r:")), None)
    out: dict[str, dict] = {}
    for k in [k for k in values if ref is not None and k.startswith(("d:", "q:", "u:"))]:
        which, m = k.split(":", 1)
        got = values[k]
        by_stat: dict[str, float] = {}
        for key, v in ref.items():
            if key in got and v != 0 and v == v and got[key] == got[key]:
                stat = key[2] if len(key) == 3 else "nuclear"
                by_stat[stat] = max(by_stat.get(stat, 0.0), abs(got[key] - v) / abs(v))
        out[m if which == "d" else k] = {"max_rel_diff": max(by_stat.values()) if by_stat else None,
                                         "n_values": sum(1 for key in ref if key in got), "by_stat": by_stat}
    return out


def timing(a) -> dict:
    def save(partial: dict) -> None:  # a timeout or a kill keeps every round measured so far
        partial["env"] = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
        Path(a.out).write_text(json.dumps(partial, indent=1))

    wl, examples, encs, mode, batches, source = setup(a)
    modules = a.modules.split(",")
    keys = a.methods.split(",")
    runs, n_targets = build_methods(wl, modules, keys, a.paper_modules.split(",") if a.paper_modules else None,
                                    a.reference_layers)
    batched = [k for k in runs if not k.startswith("a:")]
    paper = [k for k in runs if k.startswith("a:")]
    ppos = paper_positions(examples, a.paper_examples) if paper else []
    log(f"{a.config} on {a.device}: {len(encs)} examples in {len(batches)} batches; methods {', '.join(runs)}; paper on {len(ppos)}")

    # warm-up (not timed): every batched method once on the smallest batch
    small = min(batches, key=lambda b: sum(encs[k].n_tokens for k in b))
    for k in batched:
        if not k.startswith("r:"):  # the reference is not timed: it runs once, in round 0
            runs[k]([encs[p] for p in small], small)

    cuda = a.device.startswith("cuda")
    peak_gpu = {k: 0.0 for k in batched + paper}  # GB allocated at the peak, the model's weights included
    model_gpu = torch.cuda.memory_allocated() / 1024**3 if cuda else None

    def call(k, batch_encs, batch):
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        sec, payload = runs[k](batch_encs, batch)
        if cuda:
            peak_gpu[k] = max(peak_gpu[k], torch.cuda.max_memory_allocated() / 1024**3)
        return sec, payload

    times = {k: [0.0] * a.rounds for k in batched}
    by_batch = {k: [[0.0] * a.rounds for _ in batches] for k in batched}
    d_values: dict[str, dict] = {k: {} for k in batched if k.startswith(("d:", "q:", "r:", "u:"))}
    paper_times: dict[str, list] = {k: [] for k in paper}
    paper_values: dict[str, dict] = {k: {} for k in paper}
    done = [0]  # rounds complete

    def result(complete: bool) -> dict:
        accuracy = {}
        for k in paper:
            m = k.split(":", 1)[1]
            ref, got = paper_values[k], d_values.get(f"d:{m}", {})
            diffs = [abs(got[key] - v) / abs(v) for key, v in ref.items() if key in got and v != 0]
            accuracy[m] = {"max_rel_diff": max(diffs) if diffs else None, "n_values": len(diffs)}
        reference = compare_to_reference(d_values)
        return {
            "kind": "timing",
            "config": a.config,
            "description": wl.description,
            "prompt_mode": mode,
            "source": source,
            "n_examples": len(encs),
            "tokens": [e.n_tokens for e in encs],
            "batches": [[encs[p].n_tokens for p in b] for b in batches],
            "batch_size": a.batch_size,
            "rounds": done[0],
            "threads": torch.get_num_threads(),
            "n_targets": n_targets,
            "times": {k: v[: done[0]] for k, v in times.items()},  # per round, seconds for all batches
            "times_by_batch": {k: [v[: done[0]] for v in vs] for k, vs in by_batch.items()},  # [batch][round] seconds
            "load": os.getloadavg(),
            "paper": paper_times,
            "accuracy": accuracy,
            "reference": reference,  # (d) against (r), float64 statistics of the same captures
            "reference_layers": a.reference_layers,  # (r) on this many evenly spaced layers (0: all)
            "device": a.device,
            "gpu": torch.cuda.get_device_name(0) if cuda else None,
            "peak_gpu_gb": peak_gpu if cuda else None,
            "model_gpu_gb": model_gpu,
            "complete": complete,  # False: written after a round, the process may have been stopped since
        }

    for r in range(a.rounds):
        order = batched[r % len(batched):] + batched[: r % len(batched)]  # rotate: no method always first
        for bi, batch in enumerate(batches):
            for k in order:
                if k.startswith("r:") and r > 0:
                    continue
                sec, payload = call(k, [encs[p] for p in batch], batch)
                times[k][r] += sec
                by_batch[k][bi][r] = sec
                if k in d_values:
                    d_values[k].update(payload)
                log(f"round {r} batch {bi} ({len(batch)} ex, max {max(encs[p].n_tokens for p in batch)} tok) {k}: {sec:.2f} s")
        done[0] = r + 1
        save(result(False))
        for pos in ppos[r :: a.rounds]:
            for k in paper:
                sec, payload = call(k, [encs[pos]], [pos])
                paper_times[k].append({"position": pos, "tokens": encs[pos].n_tokens, "seconds": sec})
                paper_values[k].update(payload)
                log(f"round {r} paper example {pos} ({encs[pos].n_tokens} tok) {k}: {sec:.1f} s")
                save(result(False))

    return result(True)


# ---------------------------------------------------------------------------------------
# memory: one method in a fresh process
# ---------------------------------------------------------------------------------------


def memory(a) -> dict:
    wl, examples, encs, mode, batches, source = setup(a)
    key = a.methods
    base_key, _, mods = key.partition(":")
    runs, _ = build_methods(wl, [mods] if mods else [], [base_key])
    run = runs[key]
    if base_key == "a":
        pos = paper_positions(examples, 1)
        batch = pos
    else:
        batch = batches[0]  # the longest batch
    import gc

    gc.collect()
    exact = reset_peak()
    base = _status()
    seconds, _ = run([encs[p] for p in batch], batch)
    peak = _status()
    return {
        "kind": "memory",
        "config": a.config,
        "method": key,
        "tokens": [encs[p].n_tokens for p in batch],
        "base_kb": base["VmRSS"],
        "peak_kb": peak["VmHWM"],
        "peak_reset": exact,  # False: the peak includes loading the model
        "seconds": seconds,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("kind", choices=["timing", "memory"])
    p.add_argument("--config", required=True, choices=W.CONFIGS)
    p.add_argument("--modules", default="attn,all")
    p.add_argument("--methods", default="b,hf,c,d,a", help="timing: a comma list; memory: one key such as d:all")
    p.add_argument("--per-file", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--paper-examples", type=int, default=2)
    p.add_argument("--reference-layers", type=int, default=0, help="(r) on this many evenly spaced layers (0: all)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--paper-modules", default=None, help="selections (a) runs on (default: every one of --modules)")
    p.add_argument("--dtype", default=None, help="model dtype (default: the configuration's own)")
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    result = timing(a) if a.kind == "timing" else memory(a)
    result["env"] = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    Path(a.out).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
