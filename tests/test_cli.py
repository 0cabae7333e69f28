"""The command line: help is instant, errors are clear, subcommands do their job."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import save_model, write_json
from layergrad.cli import main


def test_help_does_not_import_torch():
    code = "import sys; from layergrad.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_run_help_has_runnable_examples(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    assert "layergrad run --data" in capsys.readouterr().out


def test_modules_lists_layer_role_shape(tmp_path, tokenizer, capsys):
    """Phi-3's fused qkv_proj (16 + 8 + 8 rows: 4 heads, 2 key/value heads of 4) is listed by role."""
    folder = save_model(tmp_path, "phi3", tokenizer)
    assert main(["modules", str(folder), "--modules", "attn"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {ln.split()[0]: ln.split()[1:] for ln in lines[1:-1]}
    assert rows["model.layers.0.self_attn.qkv_proj[q]"] == ["0", "q", "16", "x", "16"]
    assert rows["model.layers.0.self_attn.qkv_proj[k]"] == ["0", "k", "8", "x", "16"]
    assert rows["model.layers.2.self_attn.qkv_proj[v]"] == ["2", "v", "8", "x", "16"]
    assert rows["model.layers.1.self_attn.o_proj"] == ["1", "o", "16", "x", "16"]
    assert len(rows) == 12 and not any("gate_up" in m for m in rows)
    # the fused matrix as a whole, on request
    assert main(["modules", str(folder), "--modules", "qkv"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split()[:3] for ln in lines[1:-1]] == [[f"model.layers.{k}.self_attn.qkv_proj", str(k), "qkv"] for k in range(3)]


def test_unknown_role_suggests_the_right_one(tmp_path, tokenizer, capsys):
    folder = save_model(tmp_path, "llama", tokenizer)
    assert main(["modules", str(folder), "--modules", "qproj"]) == 2
    assert "did you mean 'q'" in capsys.readouterr().err.replace('"', "'")


def test_unknown_model_path_is_an_error_not_a_fallback(tmp_path, records, capsys):
    data = write_json(tmp_path / "d.json", records)
    code = main(["run", "--model", str(tmp_path / "nope"), "--data", str(data), "--out", str(tmp_path / "o"), "--no-progress"])
    assert code == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "nope") in err
    assert not (tmp_path / "o").exists()


def test_bad_data_stops_before_computing_and_names_record_and_field(tmp_path, tokenizer, capsys):
    folder = save_model(tmp_path, "llama", tokenizer)
    data = write_json(tmp_path / "d.json", [{"instruction": "a", "output": "b"}, {"instruction": "a", "output": ""}, {"output": "x"}])
    code = main(["run", "--model", str(folder), "--data", str(data), "--out", str(tmp_path / "o"), "--no-progress"])
    assert code == 2
    err = capsys.readouterr().err
    assert "record 1" in err and "'output'" in err and "record 2" in err and "'instruction'" in err
    assert not (tmp_path / "o").exists()


def test_skip_invalid_stores_invalid_records_with_reason(tmp_path, tokenizer, capsys):
    from layergrad.store import load_results

    folder = save_model(tmp_path, "llama", tokenizer)
    data = write_json(tmp_path / "d.json", [{"instruction": "a", "output": "b c"}, {"instruction": "a", "output": ""}])
    assert main(["run", "--model", str(folder), "--data", str(data), "--out", str(tmp_path / "o"), "--no-progress", "--skip-invalid"]) == 0
    res = load_results(tmp_path / "o")
    assert list(res.examples["status"]) == ["ok", "invalid"]
    assert "record 1" in res.examples["reason"].iloc[1]


def test_validate_lists_every_problem(tmp_path, capsys):
    data = write_json(tmp_path / "d.json", [{"instruction": 1, "output": "b"}, {"instruction": "a"}])
    assert main(["validate", str(data)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and "record 0" in out[0] and "record 1" in out[1]


def test_resume_with_other_modules_is_refused_naming_the_difference(tmp_path, tokenizer, records, capsys):
    folder = save_model(tmp_path, "llama", tokenizer)
    data = write_json(tmp_path / "d.json", records)
    base = ["run", "--model", str(folder), "--data", str(data), "--out", str(tmp_path / "o"), "--no-progress"]
    assert main(base + ["--modules", "attn"]) == 0
    assert main(base + ["--modules", "mlp"]) == 2
    err = capsys.readouterr().err
    assert "modules: stored 'attn', now 'mlp'" in err and "another --out" in err


def test_export_native_run_writes_reference_keys(tmp_path, tokenizer, records, capsys):
    folder = save_model(tmp_path, "llama", tokenizer)
    data = write_json(tmp_path / "d.json", records)
    assert main(["run", "--model", str(folder), "--data", str(data), "--out", str(tmp_path / "o"), "--no-progress", "--modules", "attn"]) == 0
    assert main(["export", str(tmp_path / "o"), "--format", "reference", "--to", str(tmp_path / "x.jsonl")]) == 0
    lines = [json.loads(line) for line in (tmp_path / "x.jsonl").open()]
    assert len(lines) == len(records)
    assert "model.layers.0.self_attn.q_proj.weight" in lines[0]
    assert lines[0]["model.layers.0.self_attn.q_proj.weight"]["M_max"] is None  # not computed in a native run
    assert "--elementwise" in capsys.readouterr().err
