"""Every file accounted for: a folder given as data reads every supported file in it and its subfolders,
names each file it skips with the reason, and `validate` and `run` agree on what it holds."""
from __future__ import annotations

import csv
import json

import pytest

from helpers import MANY
from layergrad.cli import main
from layergrad.inputs.data import DataError, load_examples, validate
from layergrad.store import load_results

CHATS = [{"messages": [{"role": "user", "content": f"What is {k} times 2?"},
                       {"role": "assistant", "content": f"It is {2 * k}."}]} for k in range(4)]


def _csv(path, records):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=["instruction", "output"])
        w.writeheader()
        w.writerows(records)
    return path


@pytest.fixture
def mixed(tmp_path):
    """Two CSVs (one in a subfolder), a chat JSONL, a .txt, a .png and a hidden file."""
    folder = tmp_path / "mixed"
    _csv(folder / "alpaca.csv", MANY[:3])
    _csv(folder / "more" / "extra.csv", MANY[3:5])
    (folder / "chats.jsonl").write_text("".join(json.dumps(r) + "\n" for r in CHATS), encoding="utf-8")
    (folder / "notes.txt").write_text("not data\n")
    (folder / "plot.png").write_bytes(b"\x89PNG\r\n")
    (folder / ".DS_Store").write_bytes(b"\0")
    return folder


def test_a_folder_reads_every_format_and_names_what_it_skips(mixed, capsys):
    examples, problems = load_examples([str(mixed)])
    assert not problems and len(examples) == 3 + 2 + 4
    sources = {ex.source for ex in examples}
    assert sources == {str(mixed / "alpaca.csv"), str(mixed / "more" / "extra.csv"), str(mixed / "chats.jsonl")}
    assert {ex.group for ex in examples} == {"mixed"}  # the folder is one group
    assert sum(ex.is_chat for ex in examples) == 4
    assert main(["validate", str(mixed)]) == 0
    out = capsys.readouterr().out
    assert "reading 3 data files (subfolders included): alpaca.csv, chats.jsonl, more/extra.csv" in out
    assert "notes.txt (not a data format (.txt))" in out and "plot.png (not a data format (.png))" in out
    assert ".DS_Store (hidden file)" in out
    assert "ok: 3 file(s), no problems" in out


def test_a_bad_file_in_a_folder_is_named_by_its_path(mixed):
    (mixed / "more" / "broken.jsonl").write_text('{"instruction": "Q"}\n', encoding="utf-8")
    problems = validate([str(mixed)])
    assert [str(p) for p in problems] == [
        f"{mixed / 'more' / 'broken.jsonl'}: record 0 (line 1), field 'output': missing (the record has keys 'instruction')"]
    with pytest.raises(DataError):
        load_examples([str(mixed)])


def test_a_folder_without_data_files_says_what_it_holds(tmp_path):
    folder = tmp_path / "empty"
    folder.mkdir()
    (folder / "readme.txt").write_text("x")
    (problem,) = validate([str(folder)])
    assert problem.is_file_level and "no data file" in problem.message and "readme.txt (not a data format (.txt))" in problem.message


def test_run_reads_what_validate_reads(mixed, tiny_folder, tmp_path, capsys):
    out = tmp_path / "o"
    assert main(["run", "--model", str(tiny_folder), "--data", str(mixed), "--out", str(out), "--no-progress",
                 "--modules", "q", "--prompt-mode", "chat", "--batch-size", "4"]) == 0
    err = capsys.readouterr().err
    assert "reading 3 data files (subfolders included)" in err and "notes.txt (not a data format (.txt))" in err
    res = load_results(out)
    want = {ex.id for ex in load_examples([str(mixed)])[0]}
    assert set(res.examples["id"]) == want and (res.examples["status"] == "ok").all()
    assert res.examples["id"].size == 9
