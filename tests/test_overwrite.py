"""No silent overwrite and no half-written output (item 7)."""
from __future__ import annotations


import pytest

from layergrad import cli
from layergrad.atomic import atomic_write
from layergrad.store import paper
from helpers import selection_run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return selection_run(tmp_path_factory.mktemp("sel"))


def select(run_dir, out, *extra):
    return cli.main(["select", str(run_dir / "run"), "--by", "loss", "--top", "2", "--out", str(out), *extra])


def test_two_selects_into_one_folder_keep_both_score_tables(run_dir, tmp_path):
    assert select(run_dir, tmp_path / "a.json") == 0
    assert select(run_dir, tmp_path / "b.json") == 0
    assert (tmp_path / "a.scores.csv").exists() and (tmp_path / "b.scores.csv").exists()


def test_an_existing_output_is_refused_unless_force(run_dir, tmp_path, capsys):
    out = tmp_path / "a.json"
    assert select(run_dir, out) == 0
    before = out.read_bytes(), (tmp_path / "a.scores.csv").read_bytes()
    capsys.readouterr()
    assert select(run_dir, out) == 2
    err = capsys.readouterr().err
    assert str(out) in err and "--force" in err
    assert (out.read_bytes(), (tmp_path / "a.scores.csv").read_bytes()) == before
    assert select(run_dir, out, "--force") == 0
    csv = tmp_path / "mine.csv"
    csv.write_text("keep me", encoding="utf-8")
    assert cli.main(["scores", str(run_dir / "run"), "--out", str(tmp_path / "s.json"), "--csv", str(csv)]) == 2
    assert csv.read_text(encoding="utf-8") == "keep me"
    to = tmp_path / "x.jsonl"
    to.write_text("old", encoding="utf-8")
    assert cli.main(["export", str(run_dir / "run"), "--to", str(to)]) == 2
    assert to.read_text(encoding="utf-8") == "old"
    assert cli.main(["export", str(run_dir / "run"), "--to", str(to), "--force"]) == 0


def test_report_into_a_folder_holding_a_report_says_what_it_replaces(run_dir, tmp_path, capsys):
    out = tmp_path / "rep"
    args = ["report", "--run", f"x={run_dir / 'run'}", "--out", str(out), "--n-boot", "5", "--n-perm", "9"]
    assert cli.main(args) == 0
    assert "holds a report" not in capsys.readouterr().err
    assert cli.main(args) == 0
    assert f"{out} holds a report made" in capsys.readouterr().err


def test_an_interrupted_export_leaves_no_half_written_file(run_dir, tmp_path, monkeypatch):
    to = tmp_path / "x.jsonl"
    real = paper.to_reference_lines

    def half(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(paper, "to_reference_lines", half)
    with pytest.raises(KeyboardInterrupt):
        paper.export_reference(run_dir / "run", to)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(paper, "to_reference_lines", real)
    with pytest.raises(KeyboardInterrupt):
        with atomic_write(to, "w", encoding="utf-8") as fh:
            fh.write("half of it")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []
