"""``select``: the high/low design (``--split``), the data's own scores (``record:NAME``, or ``field:NAME``, its earlier spelling), CSV in, CSV out;
NaN, missing and non-numeric scores not eligible and counted; ties across the cut stated."""
from __future__ import annotations

import csv
import json

import pandas as pd
import pytest

from conftest import make_model, make_tokenizer, write_json
from helpers import loaded
from layergrad import cli
from layergrad.config import RunConfig
from layergrad.run import engine

# score per record; "" (missing) and "n/a" (not a number) are not eligible; 3.0 ties across a cut
SCORES = ["2.5", "3.0", "", "1.0", "3.0", "n/a", "0.5", "3.0", "-1", "2.5"]


def _csv(path, rows):
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def _rows(path):
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _brute(direction, k):
    """Indices of the k highest (lowest) eligible scores, ties by input order: written in input order."""
    ok = [(float(s), i) for i, s in enumerate(SCORES) if s not in ("", "n/a")]
    key = (lambda t: (-t[0], t[1])) if direction == "top" else (lambda t: (t[0], t[1]))
    return sorted(i for _, i in sorted(ok, key=key)[:k])


def test_split_of_a_csv_file_writes_csv_rows_as_read(tmp_path, capsys):
    rows = [{"instruction": f"q{i}, with a comma", "output": f'say "{i}"\nnext line', "score": s, "note": ""}
            for i, s in enumerate(SCORES)]
    src = _csv(tmp_path / "pool.csv", rows)
    assert cli.main(["select", str(src), "--by", "score", "--split", "3", "--out", str(tmp_path / "picked")]) == 0
    out = capsys.readouterr().out
    high, low = tmp_path / "picked" / "pool_score_highest_3.csv", tmp_path / "picked" / "pool_score_lowest_3.csv"
    assert _rows(high) == [rows[i] for i in _brute("top", 3)]  # every cell as read, input order
    assert _rows(low) == [rows[i] for i in _brute("bottom", 3)]
    assert _brute("top", 3) == [1, 4, 7]  # three tie at 3.0: all in; the cut falls between 3.0 and 2.5
    assert "not eligible: 2 with record:score NaN\n    of these, 1 without a value of 'score', 1 whose 'score' is not a number" in out
    table = pd.read_csv(tmp_path / "picked" / "pool_score.scores.csv", keep_default_na=False)
    assert list(table["selected"]) == ["high" if i in (1, 4, 7) else "low" if i in (3, 6, 8) else "" for i in range(10)]
    # a cut inside a tie is stated: top 2 of three 3.0s
    assert cli.main(["select", str(src), "--by", "field:score", "--top", "2", "--out", str(tmp_path / "two.csv")]) == 0
    out = capsys.readouterr().out
    assert "ties at the cut: 3 eligible examples have record:score = 3; 2 selected, 1 left out by input order" in out
    assert _rows(tmp_path / "two.csv") == [rows[1], rows[4]]
    # a fraction of the 8 eligible: floor(0.25 * 8) = 2 at each end
    assert cli.main(["select", str(src), "--by", "score", "--split", "25%", "--out", str(tmp_path / "f.tsv")]) == 0
    got = pd.read_csv(tmp_path / "f_low.tsv", sep="\t", dtype=str, keep_default_na=False)
    assert list(got["score"]) == ["0.5", "-1"]  # the two lowest, in input order


def test_split_refuses_overlapping_ends_and_unknown_fields(tmp_path, capsys):
    src = write_json(tmp_path / "pool.json", [{"instruction": "a", "output": "b", "reward": r} for r in (1, 2, 3, None, 5)])
    assert cli.main(["select", str(src), "--by", "reward", "--split", "3", "--out", str(tmp_path / "x.json")]) == 2
    assert "would overlap; ask for at most 2" in capsys.readouterr().err
    assert not (tmp_path / "x_high.json").exists() and not (tmp_path / "x_low.json").exists()
    assert cli.main(["select", str(src), "--by", "reward", "--split", "2", "--out", str(tmp_path / "x.json")]) == 0
    assert json.loads((tmp_path / "x_high.json").read_text()) == [{"instruction": "a", "output": "b", "reward": r} for r in (3, 5)]
    assert json.loads((tmp_path / "x_low.json").read_text()) == [{"instruction": "a", "output": "b", "reward": r} for r in (1, 2)]
    capsys.readouterr()
    assert cli.main(["select", str(src), "--by", "rewrd", "--top", "1", "--out", str(tmp_path / "y.json")]) == 2
    assert "has a field 'rewrd'; did you mean 'reward'?" in capsys.readouterr().err


def test_a_run_is_ranked_by_its_records_own_field_where_no_run_metric_has_the_name(tmp_path, capsys):
    recs = [{"instruction": f"What is {i} plus 1?", "output": f"It is {i + 1}.", "reward": float(r)} for i, r in enumerate([0.3, 0.9, 0.1, 0.7])]
    data = write_json(tmp_path / "d.json", recs)
    tok = make_tokenizer(bos=False)
    cfg = RunConfig(data=[str(data)], out=str(tmp_path / "run"), progress=False, prompt_mode="base", modules="q")
    engine.run(cfg, loaded=loaded(make_model("llama", len(tok)), tok))
    assert cli.main(["select", cfg.out, "--by", "reward", "--split", "1", "--out", str(tmp_path / "s.jsonl")]) == 0
    assert [json.loads(x)["reward"] for x in (tmp_path / "s_high.jsonl").read_text().splitlines()] == [0.9]
    assert [json.loads(x)["reward"] for x in (tmp_path / "s_low.jsonl").read_text().splitlines()] == [0.1]
    capsys.readouterr()
    assert cli.main(["select", cfg.out, "--by", "rewardd", "--top", "1", "--out", str(tmp_path / "z.json")]) == 2
    assert "nor is it a field of the records" in capsys.readouterr().err
