"""Data as researchers have it: ``datasets`` folders (save_to_disk, load_dataset folders), hub dataset
ids, CSV. The oracle is the JSON file the same records were written from: exactly its statistics."""
from __future__ import annotations

import csv

import pytest

from conftest import RECORDS, make_model, make_tokenizer, write_json
from layergrad.config import RunConfig
from layergrad.inputs.data import DataError, DatasetOptions, load_examples
from layergrad.inputs.models import LoadedModel
from layergrad.run import engine
from layergrad.store import load_results

METRICS = ["nuclear", "spectral", "frobenius", "min_sigma", "effective_rank", "stable_rank"]


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    import datasets

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "ds-cache")  # never the user's cache


@pytest.fixture(scope="module")
def model():
    tok = make_tokenizer()
    m = make_model("llama", len(tok))
    return LoadedModel(model=m, tokenizer=tok, source="test", path="test", fingerprint="fp", dtype="float64")


def write_csv(path, rows, fieldnames=None, delimiter=","):
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=fieldnames or list(rows[0]), delimiter=delimiter)
        w.writeheader()
        w.writerows(rows)
    return path


def _run(tmp_path, model, data, out, **kw):
    cfg = RunConfig(data=[str(data)], out=str(tmp_path / out), progress=False, stats_dtype="float64",
                    spectrum_k=None, device="cpu", group="g", **kw)
    engine.run(cfg, loaded=model)
    res = load_results(cfg.out)
    return res.modules.sort_values(["id", "module"]).reset_index(drop=True)[["id", "module", *METRICS]], res


def test_saved_dataset_and_csv_give_the_json_files_statistics(tmp_path, model):
    import datasets

    records = [dict(r) for r in RECORDS]
    js = write_json(tmp_path / "d.json", records)
    saved = tmp_path / "saved"
    datasets.Dataset.from_list(records).save_to_disk(str(saved))
    dd = tmp_path / "saved-dict"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(records[:1]),
                          "test": datasets.Dataset.from_list(records)}).save_to_disk(str(dd))
    csv_file = write_csv(tmp_path / "d.csv", records)
    tsv_file = write_csv(tmp_path / "d.tsv", records, delimiter="\t")

    want, _ = _run(tmp_path, model, js, "json")
    assert len(want) == len(RECORDS) * 3 * 7 and want["id"].nunique() == len(RECORDS)
    for out, data, kw in [("saved", saved, {}), ("dict", dd, {"split": "test"}), ("csv", csv_file, {}),
                          ("tsv", tsv_file, {})]:
        got, res = _run(tmp_path, model, data, out, **kw)
        assert got.equals(want), out  # the same records, the same ids (content hashes), the same numbers
        assert res.manifest["data"] == [str(data)]


def test_dataset_id_column_and_field_mapping(tmp_path):
    import datasets

    rows = [{"qid": f"q{k}", "question": r["instruction"], "answer": r["output"]} for k, r in enumerate(RECORDS)]
    saved = tmp_path / "mapped"
    datasets.Dataset.from_list(rows).save_to_disk(str(saved))
    fields = dict(instruction="question", output="answer", id="qid")
    from layergrad.inputs.data import Fields

    for src in (saved, write_csv(tmp_path / "m.csv", rows)):
        exs, _ = load_examples([str(src)], fields=Fields(**fields))
        assert [e.id for e in exs] == [f"q{k}" for k in range(len(RECORDS))]
        assert [e.response for e in exs] == [r["output"] for r in RECORDS]


def test_csv_keeps_numbers_as_text(tmp_path):
    path = write_csv(tmp_path / "n.csv", [{"instruction": "What is 6 times 7?", "input": "", "output": "42"}])
    (ex,), _ = load_examples([str(path)])
    assert ex.response == "42" and ex.prompt == "What is 6 times 7?"


def test_unknown_split_names_the_splits(tmp_path):
    import datasets

    dd = tmp_path / "dd"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(RECORDS[:2]),
                          "validation": datasets.Dataset.from_list(RECORDS[:2])}).save_to_disk(str(dd))
    with pytest.raises(DataError) as err:
        load_examples([str(dd)], dataset=DatasetOptions(split="valid"))
    msg = str(err.value)
    assert str(dd) in msg and "no split 'valid'" in msg and "did you mean 'validation'" in msg and "--split" in msg
    exs, _ = load_examples([str(dd)])  # no --split: train
    assert len(exs) == 2


def test_unknown_subset_and_split_of_a_load_dataset_folder(tmp_path):
    folder = tmp_path / "configs"
    folder.mkdir()
    write_csv(folder / "a.csv", RECORDS[:2])
    write_csv(folder / "b.csv", RECORDS[2:])
    (folder / "README.md").write_text("---\nconfigs:\n- config_name: first\n  data_files: a.csv\n"
                                      "- config_name: second\n  data_files: b.csv\n---\n")
    with pytest.raises(DataError) as err:
        load_examples([str(folder)], dataset=DatasetOptions(subset="thrid"))
    msg = str(err.value)
    assert str(folder) in msg and "'thrid' not found" in msg and "first" in msg and "second" in msg and "--subset" in msg
    with pytest.raises(DataError, match="Unknown split .*--split"):
        load_examples([str(folder)], dataset=DatasetOptions(subset="first", split="nope"))
    exs, _ = load_examples([str(folder)], dataset=DatasetOptions(subset="second"))
    assert [e.response for e in exs] == [r["output"] for r in RECORDS[2:]]


def test_missing_column_names_source_record_and_field(tmp_path):
    path = write_csv(tmp_path / "bad.csv", [{"instruction": "q", "answer": "a"}])
    with pytest.raises(DataError) as err:
        load_examples([str(path)])
    assert f"{path}: record 0, field 'output': missing" in str(err.value)


def test_hub_dataset_offline_and_absent(tmp_path):
    with pytest.raises(DataError) as err:
        load_examples(["org/no-such-dataset"])
    msg = str(err.value)
    assert "org/no-such-dataset" in msg and "could not load the hub dataset" in msg and "go online" in msg


def test_cli_exits_2_on_a_bad_split(tmp_path, capsys):
    import datasets

    from layergrad.cli import main

    dd = tmp_path / "dd"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(RECORDS[:1])}).save_to_disk(str(dd))
    rc = main(["run", "--data", str(dd), "--split", "tset", "--out", str(tmp_path / "o"), "--model", str(tmp_path / "m")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "no split 'tset'" in err and "Traceback" not in err


def test_a_missing_relative_data_file_is_no_hub_id(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match="data/typo.json: file not found"):
        load_examples(["data/typo.json"])
