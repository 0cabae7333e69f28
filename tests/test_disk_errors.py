"""Reliability: disk full or unwritable output: a clear error, earlier parts intact, resumable."""
from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from conftest import write_json
from layergrad.cli import main
from layergrad.store import load_results
from helpers import MANY, assert_same_runs


@pytest.mark.parametrize("code, advice", [(errno.ENOSPC, "free some space"), (errno.EDQUOT, "free some space"),
                                          (errno.EACCES, "make it writable"), (errno.EROFS, "make it writable"),
                                          (errno.EIO, "fix the cause")])
def test_write_errors_name_the_path_the_cause_and_what_to_do(code, advice):
    from layergrad.store.parts import StoreWriteError

    e = StoreWriteError(Path("/runs/x/parts/examples-r0-000002.parquet"), OSError(code, os.strerror(code)))
    assert str(e) == (f"cannot write /runs/x/parts/examples-r0-000002.parquet: {os.strerror(code)} ({errno.errorcode[code]}). "
                      f"Results committed before are intact; {advice}, then rerun the same command to resume.")
    assert e.errno == code


def test_disk_full_mid_run_is_a_clear_error_and_the_run_resumes(tmp_path, tiny_folder, monkeypatch, capsys):
    from layergrad.store import parts

    data = write_json(tmp_path / "d.json", MANY[:6])
    args = ["run", "--model", str(tiny_folder), "--data", str(data), "--batch-size", "1", "--no-progress", "--modules", "attn"]
    assert main(args + ["--out", str(tmp_path / "whole")]) == 0

    real, calls = parts.pq.write_table, {"n": 0}

    def failing(table, where, **kw):
        calls["n"] += 1
        if calls["n"] > 5:  # two parts (modules + examples each) commit, the third fails mid-write
            where.write(b"PAR1 partial")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(table, where, **kw)

    monkeypatch.setattr(parts.pq, "write_table", failing)
    out = tmp_path / "o"
    assert main(args + ["--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"cannot write {out / 'parts'}" in err and "No space left on device (ENOSPC)" in err
    assert "free some space" in err and "rerun the same command to resume" in err and "Traceback" not in err
    kept = load_results(out)
    assert len(kept.examples) == 2 and not list((out / "parts").glob("*.tmp"))
    whole = load_results(tmp_path / "whole")
    want = dict(zip(whole.examples["id"], whole.examples["loss"]))
    assert {i: want[i] for i in kept.examples["id"]} == dict(zip(kept.examples["id"], kept.examples["loss"]))  # intact

    monkeypatch.setattr(parts.pq, "write_table", real)  # space is back
    assert main(args + ["--out", str(out)]) == 0
    assert "computed 4 now, 2 were already stored" in capsys.readouterr().out
    assert_same_runs(whole, load_results(out))


def test_output_that_cannot_be_created_is_a_clear_error(tmp_path, tiny_folder, capsys):
    data = write_json(tmp_path / "d.json", MANY[:1])
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory", encoding="utf-8")
    assert main(["run", "--model", str(tiny_folder), "--data", str(data), "--out", str(blocker / "run"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"cannot write {blocker / 'run' / 'parts'}" in err and "ENOTDIR" in err and "Traceback" not in err


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root ignores directory permissions")
def test_read_only_output_directory_is_a_clear_error(tmp_path, tiny_folder, capsys):
    data = write_json(tmp_path / "d.json", MANY[:2])
    out = tmp_path / "o"
    out.mkdir()
    out.chmod(0o500)
    try:
        assert main(["run", "--model", str(tiny_folder), "--data", str(data), "--out", str(out), "--no-progress"]) == 2
    finally:
        out.chmod(0o700)
    err = capsys.readouterr().err
    assert f"cannot write {out / 'parts'}" in err and "EACCES" in err and "make it writable" in err
