"""A run can grow: --limit, --shard and more --data extend a run directory; a
record whose text changed under a stored id is refused, naming it; a difference of identity is
named by its option, in the user's terms."""
from __future__ import annotations

import json
from pathlib import Path

from conftest import save_model, write_json
from layergrad.cli import main
from layergrad.store import load_results
from layergrad.store.merge import check
from helpers import MANY, assert_same_runs

import pytest


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory, tokenizer):
    return save_model(tmp_path_factory.mktemp("model"), "llama", tokenizer)


def args(model, out, *data, extra=()):
    return ["run", "--model", str(model), "--data", *map(str, data), "--out", str(out), "--no-progress",
            "--modules", "q", "--prompt-mode", "base", "--batch-size", "2", *extra]


def test_try_a_few_then_do_the_rest(tmp_path, tiny_folder, capsys):
    data = write_json(tmp_path / "d.json", MANY[:8])
    grown, full = tmp_path / "grown", tmp_path / "full"
    assert main(args(tiny_folder, grown, data, extra=["--limit", "5"])) == 0
    capsys.readouterr()
    assert main(args(tiny_folder, grown, data)) == 0
    captured = capsys.readouterr()
    assert "computed 3 now, 5 were already stored" in captured.out
    assert "--limit: extending the run from 5 to none" in captured.err
    assert main(args(tiny_folder, full, data)) == 0
    # equal to rounding: the first call planned its batches over 5 examples, not 8 (batch-mates differ)
    assert_same_runs(load_results(full), load_results(grown), exact=False)
    report = check([grown])
    assert report.expected == 8 and not report.missing  # merge still lists missing ids of the grown run


def test_more_data_files_and_shards_extend_a_run(tmp_path, tiny_folder, capsys):
    a = write_json(tmp_path / "a.json", MANY[:3])
    b = write_json(tmp_path / "b.json", MANY[3:6])
    out = tmp_path / "o"
    assert main(args(tiny_folder, out, a, extra=["--shard", "0/2"])) == 0
    assert main(args(tiny_folder, out, a, extra=["--shard", "1/2"])) == 0
    assert main(args(tiny_folder, out, a, b, extra=["--add-data"])) == 0
    assert "computed 3 now, 3 were already stored" in capsys.readouterr().out
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["data"] == [str(a), str(b)]
    assert len(load_results(out).ok) == 6 and not check([out]).missing


def test_other_data_files_need_add_data(tmp_path, tiny_folder, capsys):
    """A run of one file given another file is refused (exit 2) naming the stored files, the new ones and
    --add-data; nothing is computed or recorded. With --add-data the run grows by it."""
    chats = write_json(tmp_path / "chats.json", MANY[:2])
    alpaca = write_json(tmp_path / "alpaca.json", MANY[2:4])
    out = tmp_path / "o"
    assert main(args(tiny_folder, out, chats)) == 0
    manifest = (out / "manifest.json").read_text()
    parts = sorted(p.name for p in (out / "parts").iterdir())
    capsys.readouterr()
    assert main(args(tiny_folder, out, alpaca)) == 2
    err = capsys.readouterr().err
    assert f"holds a run of {chats}; --data also names {alpaca}" in err and "--add-data" in err
    assert "Traceback" not in err and "--out" in err
    assert (out / "manifest.json").read_text() == manifest and sorted(p.name for p in (out / "parts").iterdir()) == parts
    assert main(args(tmp_path / "no-model-here", out, alpaca)) == 2  # refused before any model loads
    assert "--add-data" in capsys.readouterr().err
    assert main(args(tiny_folder, out, alpaca, extra=["--add-data"])) == 0
    assert json.loads((out / "manifest.json").read_text())["data"] == [str(chats), str(alpaca)]
    assert len(load_results(out).ok) == 4


def test_a_record_changed_under_the_same_id_is_refused_naming_it(tmp_path, tiny_folder, capsys):
    recs = [dict(r, id=f"ex{k}") for k, r in enumerate(MANY[:3])]
    data = write_json(tmp_path / "d.json", recs)
    out = tmp_path / "o"
    assert main(args(tiny_folder, out, data)) == 0
    recs[1]["output"] = "A different answer."
    write_json(data, recs + [dict(MANY[5], id="ex9")])
    before = sorted(p.name for p in (out / "parts").iterdir())
    assert main(args(tiny_folder, out, data)) == 2
    err = capsys.readouterr().err
    assert "id 'ex1'" in err and "record 1" in err and "output differs" in err and "Traceback" not in err
    assert sorted(p.name for p in (out / "parts").iterdir()) == before  # nothing computed, nothing replaced


def test_an_identity_difference_is_named_by_its_option(tmp_path, tiny_folder, capsys):
    data = write_json(tmp_path / "d.json", MANY[:2])
    out = tmp_path / "o"
    assert main(args(tiny_folder, out, data, extra=["--max-length", "64"])) == 0
    assert main(args(tiny_folder, out, data, extra=["--max-length", "32", "--spectrum-k", "4"])) == 2
    err = capsys.readouterr().err
    assert "--max-length: 64 (stored) vs 32 (now)" in err
    assert "--spectrum-k: 64 (stored) vs 4 (now)" in err
    assert "data_fingerprint" not in err
