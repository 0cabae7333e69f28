"""One writer per name per run directory: a second copy is refused naming the
holder, shards write together, a lock left by a killed process is taken over."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from conftest import save_model, write_json
from layergrad.cli import main
from layergrad.store import RunStore, load_results
from layergrad.store.lock import RunLocked, WriterLock

SRC = str(Path(__file__).resolve().parents[1] / "src")
RECORDS = [{"instruction": f"What is {a} plus {b}?", "output": f"The answer is {a + b}."} for a, b in [(1, 2), (3, 4), (5, 6)]]


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory, tokenizer):
    return save_model(tmp_path_factory.mktemp("model"), "llama", tokenizer)


def hold(out: Path, writer: str = "r0") -> subprocess.Popen:
    """Another process that holds ``writer``'s lock of ``out`` until it is killed."""
    code = textwrap.dedent(f"""
        import sys, time
        from layergrad.store.lock import WriterLock
        lock = WriterLock({str(out)!r}, {writer!r})
        lock.acquire()  # as RunStore.open takes it
        print("ready", flush=True)
        time.sleep(600)
    """)
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                         env={**os.environ, "PYTHONPATH": SRC})
    assert p.stdout.readline().strip() == "ready"
    return p


def run_args(tiny_folder, data, out, *extra):
    return ["run", "--model", str(tiny_folder), "--data", str(data), "--out", str(out), "--no-progress",
            "--modules", "q", "--prompt-mode", "base", *extra]


def test_a_second_writer_is_refused_naming_the_holder_and_a_killed_holders_lock_is_taken_over(tmp_path, tiny_folder, capsys):
    data = write_json(tmp_path / "d.json", RECORDS)
    out = tmp_path / "o"
    holder = hold(out)
    try:
        assert main(run_args(tiny_folder, data, out)) == 2
        err = capsys.readouterr().err
        assert f"PID {holder.pid}" in err and socket.gethostname() in err and "started 20" in err
        assert "another --out" in err and "Traceback" not in err
        assert not list((out / "parts").glob("examples-*"))  # nothing written by the refused process
    finally:
        holder.send_signal(signal.SIGKILL)  # the holder dies without releasing anything
        holder.wait()
    assert main(run_args(tiny_folder, data, out)) == 0  # its lock is free: taken over at once
    assert len(load_results(out).ok) == len(RECORDS)


def test_shards_write_together_but_two_copies_of_one_shard_do_not(tmp_path, tiny_folder, capsys):
    data = write_json(tmp_path / "d.json", RECORDS)
    out = tmp_path / "o"
    holder = hold(out, writer="s0of2")
    try:
        assert main(run_args(tiny_folder, data, out, "--shard", "1/2")) == 0  # another writer name: allowed
        assert main(run_args(tiny_folder, data, out, "--shard", "0/2")) == 2  # the same: refused
        assert "writer 's0of2'" in capsys.readouterr().err
    finally:
        holder.kill()
        holder.wait()


def test_the_lock_is_released_when_a_run_ends_even_by_an_error(tmp_path):
    a = RunStore(tmp_path / "o")
    a.open({"schema_version": 2})
    with pytest.raises(RunLocked):
        RunStore(tmp_path / "o").open({"schema_version": 2})
    a.close()
    b = RunStore(tmp_path / "o")
    with pytest.raises(Exception):
        b.open({"schema_version": 3})  # a configuration mismatch: refused, and the lock let go
    RunStore(tmp_path / "o").open({"schema_version": 2})


def test_waiting_writers_are_serialised(tmp_path):
    first = WriterLock(tmp_path, "r0")
    first.acquire()
    order = []

    def second():
        lock = WriterLock(tmp_path, "r0")
        lock.acquire(wait=True)
        order.append("second")
        lock.release()

    t = threading.Thread(target=second)
    t.start()
    time.sleep(0.3)
    order.append("first done")
    first.release()
    t.join(10)
    assert order == ["first done", "second"]


def test_a_run_that_waits_for_the_lock_runs_after_the_holder(tmp_path, tokenizer):
    """What `layergrad experiment` does: two studies over one run directory are serialised."""
    from conftest import make_model
    from helpers import MANY, config, loaded

    cfg = config(tmp_path, MANY[:2], modules="q")
    events, held = [], threading.Event()

    def hold_for_a_second():
        holder = WriterLock(cfg.out, "r0")
        holder.acquire()
        held.set()
        time.sleep(1.0)
        events.append("released")
        holder.release()

    threading.Thread(target=hold_for_a_second).start()
    held.wait(10)
    from layergrad.run import engine

    s = engine.run(cfg, loaded=loaded(make_model("llama", len(tokenizer)), tokenizer), wait_for_lock=True)
    events.append("ran")
    assert events == ["released", "ran"] and s.computed == 2
