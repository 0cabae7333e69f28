"""Crash safety: a real `layergrad run` killed with SIGKILL at random moments, then rerun, ends
with exactly the results of an uninterrupted run (no example lost, none duplicated, no corrupt part).

SIGKILL is the worst case: no handler runs. SIGTERM kills a Python process the same way, and
Ctrl-C (KeyboardInterrupt) unwinds through the same atomic writes (tests/test_resume.py).

Each process gets OMP_NUM_THREADS=1 (the machine is shared); one process at a time.
"""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import save_model, write_json
from layergrad.store import RunStore, load_results
from layergrad.store.run import UNREADABLE
from helpers import assert_same_runs

N_EXAMPLES = 40
KILLS = 5  # SIGKILLs delivered while the run is working (startup, computing, or mid-write)
SEED = 9

RECORDS = [
    {"instruction": f"What is {a} plus {b}?", "output": ("Step 1: " * (a % 5)) + f"The answer is {a + b}."}
    for a in range(N_EXAMPLES // 2) for b in (1, 30)
]


def command(folder: Path, data: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "layergrad", "run", "--model", str(folder), "--data", str(data), "--out", str(out),
            "--batch-size", "1", "--prompt-mode", "base", "--no-progress"]


def env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def committed(parts: Path) -> int:
    return len(list(parts.glob("examples-*.parquet"))) if parts.exists() else 0


def temporaries(parts: Path, pid: int | None = None) -> list[Path]:
    """Temporary files (of process ``pid`` only, when given: a killed run's are left until the next one starts)."""
    found = list(parts.glob("*.tmp")) if parts.exists() else []
    return [p for p in found if pid is None or p.name.endswith(f".{pid}.tmp")]


def run_and_kill(cmd: list[str], parts: Path, rng: random.Random, log: Path) -> dict | None:
    """Start the run and SIGKILL it at a random moment; ``None`` if it finished first."""
    trigger = rng.choice(["parts", "mid-write", "delay"])
    start = committed(parts)
    target = start + rng.randint(1, 4)
    delay = rng.uniform(0.2, 4.0)
    with open(log, "ab") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=fh, env=env())
    t0 = time.monotonic()
    try:
        while proc.poll() is None:
            n = committed(parts)
            if trigger == "parts" and n >= target:
                break
            if trigger == "mid-write" and n > start and temporaries(parts, proc.pid):
                break
            if trigger == "mid-write" and n >= start + 6:  # never caught one in flight: kill now
                break
            if trigger == "delay" and time.monotonic() - t0 >= delay:
                break
            time.sleep(0.001)
        if proc.poll() is not None:
            return None
        in_flight = bool(temporaries(parts, proc.pid))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    return {"trigger": trigger, "parts_before": start, "parts_at_kill": committed(parts), "mid_write": in_flight,
            "left_behind": len(temporaries(parts))}


def test_sigkill_at_random_moments_then_rerun_equals_an_uninterrupted_run(tmp_path, tokenizer):
    folder = save_model(tmp_path, "llama", tokenizer)
    data = write_json(tmp_path / "d.json", RECORDS)
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    log = tmp_path / "log.txt"
    done = subprocess.run(command(folder, data, whole), capture_output=True, text=True, env=env())
    assert done.returncode == 0, done.stderr

    rng = random.Random(SEED)
    kills = []
    for _ in range(3 * KILLS):  # a kill during startup or a run that finishes first costs an attempt
        kill = run_and_kill(command(folder, data, cut), cut / "parts", rng, log)
        if kill is None:
            break
        kills.append(kill)
        if len(kills) == KILLS:
            break
    working = [k for k in kills if k["parts_at_kill"] > k["parts_before"]]
    assert len(kills) == KILLS, kills
    assert len(working) >= sum(k["trigger"] != "delay" for k in kills) >= 2, kills  # the seeded triggers
    before_resume = committed(cut / "parts")
    assert before_resume < N_EXAMPLES  # the kills did interrupt the run

    final = subprocess.run(command(folder, data, cut), capture_output=True, text=True, env=env())
    assert final.returncode == 0, final.stderr
    assert f"{N_EXAMPLES - before_resume} now, {before_resume} were already stored" in final.stdout

    # no example lost or duplicated, no corrupt part, identical values
    a, b = load_results(whole), load_results(cut)
    assert len(b.examples) == N_EXAMPLES and (b.examples["status"] == "ok").all()
    assert_same_runs(a, b, exact=True)
    store = RunStore(cut)
    assert all(store.part_problem(t) is None for t in store.committed_tags())
    assert not (cut / "parts" / UNREADABLE).exists()  # an atomic write never leaves a corrupt part
    assert not temporaries(cut / "parts")
    print(f"\ncrash test: {len(kills)} SIGKILLs survived ({len(working)} while computing, "
          f"{sum(k['mid_write'] for k in kills)} mid-write); {N_EXAMPLES} examples, 0 lost, 0 duplicated")
