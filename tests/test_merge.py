"""``--shard i/N`` runs + ``layergrad merge`` give the store of a single run; bad merges are refused."""
from __future__ import annotations

import pytest

from conftest import save_model, write_json
from layergrad.run import engine
from layergrad.cli import main
from layergrad.config import RunConfig
from layergrad.store.merge import MergeError, check, merge
from layergrad.inputs.models import load_model
from layergrad.store import load_results
from helpers import assert_identical_results, part_ids, study_records


@pytest.fixture(scope="module")
def study(tmp_path_factory, tokenizer):
    """One model and data; a single run and shards 0/2 and 1/2 in their own directories."""
    tmp = tmp_path_factory.mktemp("merge")
    folder = save_model(tmp, "llama", tokenizer)
    data = write_json(tmp / "d.json", study_records())  # 7 to compute (odd), 1 invalid, 1 skipped
    loaded = load_model(str(folder))

    def run(out, **kw):
        opts = dict(data=[str(data)], out=str(tmp / out), model=str(folder), batch_size=2, max_length=128,
                    cosine=True, skip_invalid=True, progress=False)
        opts.update(kw)
        engine.run(RunConfig(**opts), loaded=loaded)
        return tmp / out

    dirs = {"single": run("single"), "s0": run("s0", shard="0/2"), "s1": run("s1", shard="1/2")}
    return tmp, run, dirs


def test_shards_then_merge_equal_the_single_run(study, capsys):
    tmp, _, d = study
    assert main(["merge", str(d["s0"]), str(d["s1"]), "--to", str(tmp / "merged")]) == 0
    out = capsys.readouterr().out
    assert "9 distinct examples stored (1 invalid, 7 ok, 1 skipped); the data holds 9: none missing" in out
    assert f"merged into {tmp / 'merged'}" in out
    assert_identical_results(load_results(tmp / "merged"), load_results(d["single"]))
    # each shard computed a part of the examples, disjoint; the merged store can be resumed as a run
    a, b = (set(i for ids in part_ids(d[k]).values() for i in ids) for k in ("s0", "s1"))
    assert a and b and not a & b
    assert load_results(tmp / "merged").manifest["merged_from"] == [str(d["s0"]), str(d["s1"])]


def test_merge_lists_missing_examples_and_what_to_do(study, capsys):
    tmp, _, d = study
    want = set(load_results(d["s1"]).examples["id"])
    assert main(["merge", str(d["s0"])]) == 1  # a check: nothing written
    out = capsys.readouterr().out
    assert f"{len(want)} missing" in out and "rerun the shard command(s)" in out
    r = check([d["s0"]])
    assert set(r.missing) == want and not r.complete


def test_merged_store_with_gaps_is_completed_by_a_run_into_it(study):
    tmp, run, d = study
    r = merge([d["s0"]], tmp / "partial")
    assert r.missing and r.written == tmp / "partial"
    run("partial")  # the same options, --out the merged directory: computes just the missing ones
    assert check([tmp / "partial"]).complete
    assert_identical_results(load_results(tmp / "partial"), load_results(d["single"]))


def test_one_directory_written_by_all_shards_checks_complete(study, capsys):
    tmp, run, d = study
    run("together", shard="1/2")
    run("together", shard="0/2")
    assert main(["merge", str(tmp / "together")]) == 0
    out = capsys.readouterr().out
    assert "writers: s0of2, s1of2" in out and "none missing" in out
    assert_identical_results(load_results(tmp / "together"), load_results(d["single"]))


def test_examples_stored_twice_are_reported_and_merged_once(study, capsys):
    tmp, _, d = study
    assert main(["merge", str(d["single"]), str(d["s1"]), "--to", str(tmp / "twice")]) == 0
    out = capsys.readouterr().out
    n = len(load_results(d["s1"]).examples)
    assert f"{n} examples are stored more than once (the first copy is used)" in out
    assert_identical_results(load_results(tmp / "twice"), load_results(d["single"]))


def test_incompatible_shards_are_refused_naming_key_and_values(study, capsys):
    tmp, run, d = study
    odd = run("odd", shard="1/2", max_length=100)
    assert main(["merge", str(d["s0"]), str(odd), "--to", str(tmp / "never")]) == 2
    err = capsys.readouterr().err
    assert f"cannot merge {odd} with {d['s0']}" in err
    assert f"max_length: 128 in {d['s0']}" in err and f"max_length: 100 in {odd}" in err
    assert not (tmp / "never").exists()


def test_other_model_is_refused(study, tmp_path, tokenizer):
    tmp, _, d = study
    other = save_model(tmp_path, "qwen2", tokenizer)
    data = tmp / "d.json"
    engine.run(RunConfig(data=[str(data)], out=str(tmp_path / "q"), model=str(other), batch_size=2, max_length=128,
                         cosine=True, skip_invalid=True, progress=False, shard="1/2"))
    with pytest.raises(MergeError, match="model_fingerprint"):
        check([d["s0"], tmp_path / "q"])


def test_unreadable_data_is_said_not_guessed(study, tmp_path, monkeypatch):
    tmp, _, d = study
    monkeypatch.chdir(tmp_path)
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(d["s0"], copy)
    m = (copy / "manifest.json").read_text().replace(str(tmp / "d.json"), "gone/d.json")
    (copy / "manifest.json").write_text(m)
    r = check([copy])
    assert r.expected is None and r.missing == []
    assert any("cannot check for missing examples: data file(s) gone/d.json not readable" in n for n in r.notes)


def test_merge_never_overwrites(study):
    tmp, _, d = study
    with pytest.raises(MergeError, match="exists already"):
        merge([d["s0"], d["s1"]], d["single"])
    with pytest.raises(MergeError, match="given twice"):
        check([d["s0"], d["s0"]])
    with pytest.raises(FileNotFoundError, match="not a layergrad run directory"):
        check([tmp / "nowhere"])
