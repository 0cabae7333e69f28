"""Reliability: crash safety: what a crash can leave behind is discarded on resume."""
from __future__ import annotations

import errno
import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from conftest import make_model, write_json
from layergrad.run import engine
from layergrad.cli import main
from layergrad.store import load_results
from layergrad.store.run import UNREADABLE
from helpers import MANY, assert_same_runs, config, loaded


def test_half_written_unreadable_and_orphan_parts_are_discarded_on_resume(tmp_path, tokenizer):
    model = make_model("llama", len(tokenizer))
    whole = config(tmp_path, MANY, out="whole", batch_size=2, modules="attn")
    engine.run(whole, loaded=loaded(model, tokenizer))
    hurt = config(tmp_path, MANY, out="hurt", batch_size=2, modules="attn")
    engine.run(hurt, loaded=loaded(model, tokenizer))
    parts = Path(hurt.out) / "parts"
    # a committed examples part cut short, a modules part cut short, a modules part gone
    for name in ("examples-r0-000001.parquet", "modules-r0-000003.parquet"):
        data = (parts / name).read_bytes()
        (parts / name).write_bytes(data[: len(data) // 2])
    (parts / "modules-r0-000005.parquet").unlink()
    # a temporary file and an orphan (modules written, examples never committed) of a crashed writer
    (parts / f"examples-r0-000007.parquet.{os.getpid() + 1}.tmp").write_bytes(b"PAR1 half a part")
    (parts / "modules-r0-000099.parquet").write_bytes((parts / "modules-r0-000000.parquet").read_bytes())

    lost = {"examples-r0-000001", "modules-r0-000003", "modules-r0-000005"}
    n_lost_examples = sum(len(pq.read_table(parts / f"examples-r0-00000{k}.parquet")) for k in (3, 5))
    with pytest.warns(UserWarning, match="cannot be read and is left out"):
        before = load_results(hurt.out)  # readers already ignore the damaged parts, whole
    assert len(before.examples) == len(MANY) - n_lost_examples - 2 and set(before.modules["id"]) <= set(before.examples["id"])

    s = engine.run(hurt, loaded=loaded(model, tokenizer))
    assert s.computed == n_lost_examples + 2  # exactly the examples of the three damaged parts
    assert not list(parts.glob("*.tmp")) and not (parts / "modules-r0-000099.parquet").exists()
    moved = {p.name.split(".parquet")[0] for p in (parts / UNREADABLE).iterdir()}
    assert {m.replace("modules", "examples") for m in lost} <= moved  # set aside whole, never deleted
    assert_same_runs(load_results(whole.out), load_results(hurt.out))


def test_a_write_that_fails_leaves_no_temporary_file(tmp_path, monkeypatch):
    import pyarrow as pa

    from layergrad.store import parts

    def full(table, fh, **kw):
        fh.write(b"PAR1 partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(parts.pq, "write_table", full)
    with pytest.raises(parts.StoreWriteError) as info:
        parts.write_atomic(pa.table({"a": [1]}), tmp_path / "x.parquet")
    assert info.value.errno == errno.ENOSPC and isinstance(info.value, OSError)
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_keeps_what_was_stored_and_the_rerun_finishes(tmp_path, tiny_folder, monkeypatch, capsys):
    data = write_json(tmp_path / "d.json", MANY[:5])
    args = ["run", "--model", str(tiny_folder), "--data", str(data), "--out", str(tmp_path / "o"), "--batch-size", "1",
            "--no-progress", "--modules", "attn"]
    real, calls = engine.compute_batch, {"n": 0}

    def interrupted(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(engine, "compute_batch", interrupted)
    assert main(args) == 130
    assert "results stored so far are kept, rerun the same command to resume" in capsys.readouterr().err
    monkeypatch.setattr(engine, "compute_batch", real)
    assert main(args) == 0
    assert "computed 3 now, 2 were already stored" in capsys.readouterr().out
