"""Reliability: bad input is refused before anything is computed, naming file, record and field."""
from __future__ import annotations

from pathlib import Path

import pytest

from conftest import make_model, write_json
from layergrad.run import engine
from layergrad.run import faults
from layergrad.cli import main
from layergrad.store import load_results
from helpers import MANY, config, loaded


def _catalogue():
    """(case id, file name, content, fragments the message must hold): the data catalogue of
    tests/test_data.py (validated there) run through `layergrad run`, plus what needs a model."""
    from helpers import ALPACA, CHAT_PROBLEMS, FILE_PROBLEMS, RECORD_PROBLEMS

    cases = []
    for name, content, index, field, fragment in RECORD_PROBLEMS:
        cases.append((name, "data.json", content, [f"record {index}", fragment] + ([f"field {field!r}"] if field else [])))
    for name, fname, content, fragment in FILE_PROBLEMS:
        cases.append((name, fname, content, [fragment]))
    for name, record, field, fragment in CHAT_PROBLEMS:
        cases.append(("chat " + name, "chat.json", [ALPACA[0], record], ["record 1", f"field {field!r}", fragment]))
    cases.append(("duplicate ids", "data.json", [{"id": "a", **ALPACA[0]}, {"id": "a", **ALPACA[1]}],
                  ["record 1", "field 'id'", "duplicate id 'a'"]))
    cases.append(("response wholly truncated", "data.json",
                  [ALPACA[0], {"instruction": "What is 12 plus 30? " * 12, "output": "42"}],
                  ["record 1", "field 'output'", "response truncated away by --max-length 32", "--skip-invalid"]))
    return cases


CATALOGUE = _catalogue()
# what needs a model: (case id, extra arguments, fragments)
MODEL_PROBLEMS = [
    ("unknown model path", ["--model", "{tmp}/no-such-model"], ["no-such-model"]),
    ("no module matches --modules", ["--modules", "qkv"], ["no module of LlamaForCausalLM matches --modules 'qkv'", "roles present"]),
    ("unknown role, did you mean", ["--modules", "qproj"], ["unknown role 'qproj'", "did you mean 'q'?"]),
]



def _write(path: Path, content) -> Path:
    from helpers import write

    return write(path, content)


@pytest.mark.parametrize("name, fname, content, fragments", CATALOGUE, ids=[c[0] for c in CATALOGUE])
def test_run_refuses_bad_data_before_anything_is_written(tmp_path, tiny_folder, capsys, name, fname, content, fragments):
    data = _write(tmp_path / fname, content)
    out = tmp_path / "out"
    code = main(["run", "--model", str(tiny_folder), "--data", str(data), "--out", str(out), "--no-progress",
                 "--prompt-mode", "base", "--max-length", "32"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "layergrad: error: " in err and "Traceback" not in err
    assert str(data) in err
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    assert not out.exists()


@pytest.mark.parametrize("name, args, fragments", MODEL_PROBLEMS, ids=[c[0] for c in MODEL_PROBLEMS])
def test_run_refuses_bad_model_or_selection(tmp_path, tiny_folder, capsys, name, args, fragments):
    data = write_json(tmp_path / "d.json", MANY[:2])
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    model = [] if "--model" in args else ["--model", str(tiny_folder)]
    out = tmp_path / "out"
    code = main(["run", *model, "--data", str(data), "--out", str(out), "--no-progress", *args])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    for fragment in fragments:
        assert fragment in err.replace('"', "'"), (fragment, err)
    assert not out.exists()


def test_validate_lists_every_problem_of_every_file_at_once(tmp_path, capsys):
    files, expected = [], 0
    for k, (name, fname, content, _) in enumerate(CATALOGUE):
        if name == "response wholly truncated":  # needs a tokenizer: `run` finds it, not `validate`
            continue
        folder = tmp_path / str(k)
        folder.mkdir()
        files.append(str(_write(folder / fname, content)))
        expected += 1
    assert main(["validate", *files]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == expected  # one problem per case, none lost, none repeated
    assert {line.split(":")[0] for line in lines} == set(files)


def test_skip_invalid_runs_the_rest_and_stores_each_bad_record_with_its_reason(tmp_path, tokenizer):
    records = [MANY[0], {"instruction": "x", "output": ""}, {"instruction": "What is 12 plus 30? " * 12, "output": "42"},
               ["not", "an", "object"], MANY[1]]
    cfg = config(tmp_path, records, skip_invalid=True, max_length=32)
    s = engine.run(cfg, loaded=loaded(make_model("llama", len(tokenizer)), tokenizer))
    res = load_results(cfg.out)
    assert s.status_counts == {"ok": 2, "invalid": 2, "skipped": 1}
    by_index = {r["index"]: r for r in res.examples.to_dict("records")}
    assert by_index[1]["status"] == "invalid" and "record 1, field 'output'" in by_index[1]["reason"]
    assert by_index[3]["status"] == "invalid" and "record 3" in by_index[3]["reason"]
    assert by_index[2]["status"] == "skipped" and "--max-length 32" in by_index[2]["reason"]
    kinds = {i: faults.reason_kind(r["status"], r["reason"]) for i, r in by_index.items()}
    assert kinds == {0: None, 1: "invalid record", 2: "response truncated by --max-length", 3: "invalid record", 4: None}
    assert set(res.modules["id"]) == set(res.ok["id"])
