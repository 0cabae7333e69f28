"""Failed is not final: a rerun retries the examples that failed for a reason that can change (out of memory,
over the --max-memory budget), says so, and replaces their rows; --no-retry keeps them, --retry-failed
retries every kind; a run that measured nothing exits non-zero naming why; --max-memory needs its unit."""
from __future__ import annotations

import pytest

from conftest import write_json
from helpers import MANY
from layergrad.cli import main
from layergrad.run import faults
from layergrad.store import load_results
from layergrad.store.merge import check


def args(model, out, data, *extra):
    return ["run", "--model", str(model), "--data", str(data), "--out", str(out), "--no-progress",
            "--modules", "q", "--prompt-mode", "base", "--batch-size", "2", *extra]


@pytest.mark.parametrize("bad, hint", [("12", "did you mean 12GiB?"), ("1.5", "did you mean 1.5GiB?")])
def test_max_memory_without_a_unit_is_refused_with_a_did_you_mean(tmp_path, tiny_folder, capsys, bad, hint):
    data = write_json(tmp_path / "d.json", MANY[:2])
    out = tmp_path / "o"
    assert main(args(tiny_folder, out, data, "--max-memory", bad)) == 2
    err = capsys.readouterr().err
    assert hint in err and "fraction of the available memory, in (0, 1]" in err and "Traceback" not in err
    assert not out.exists()


def test_nothing_fits_the_budget_then_a_rerun_retries_the_failed(tmp_path, tiny_folder, capsys):
    data = write_json(tmp_path / "d.json", MANY[:4])
    out = tmp_path / "o"
    # 1KB is below the tiny model's weights: every example fails without running, and the run says why
    assert main(args(tiny_folder, out, data, "--max-memory", "1KB")) == 1
    captured = capsys.readouterr()
    assert "failed: 4 does not fit the memory budget (0.00 GiB; --max-memory)" in captured.out
    assert "no example of" in captured.err and "was measured" in captured.err and "--max-memory" in captured.err
    assert "less than the model's weights" in captured.err
    assert load_results(out).examples["status"].tolist() == ["failed"] * 4

    # --no-retry keeps them as they are
    assert main(args(tiny_folder, out, data, "--no-retry")) == 1
    captured = capsys.readouterr()
    assert "keeping 4 failed examples as stored" in captured.err and "computed 0 now" in captured.out

    # a plain rerun retries them: their new rows replace the failed ones
    assert main(args(tiny_folder, out, data)) == 0
    captured = capsys.readouterr()
    assert "retrying 4 failed examples (4 does not fit the memory budget" in captured.err
    assert "computed 4 now, 0 were already stored" in captured.out and "failed:" not in captured.out
    res = load_results(out)
    assert res.examples["status"].tolist() == ["ok"] * 4 and res.examples["id"].is_unique
    report = check([out])
    assert report.statuses == {"ok": 4} and not report.duplicates and not report.missing

    # nothing left to retry: a fourth call computes nothing
    assert main(args(tiny_folder, out, data)) == 0
    assert "computed 0 now, 4 were already stored" in capsys.readouterr().out


def test_which_failures_a_rerun_retries():
    failed = {"a": faults.out_of_memory(12), "b": faults.does_not_fit(12, 3 << 30, 1 << 30),
              "c": faults.nonfinite_loss(float("nan")), "d": "linear algebra failure: x", "e": faults.out_of_memory(5)}
    ids = ["a", "b", "c", "d"]  # "e" is not in this selection
    assert set(faults.to_retry(failed, ids, "auto")) == {"a", "b"}
    assert set(faults.to_retry(failed, ids, "all")) == {"a", "b", "c", "d"}
    assert faults.to_retry(failed, ids, "none") == {}
    assert faults.count_by_label([failed["a"], failed["b"], failed["c"], failed["e"]]) == (
        "2 out of memory, 1 does not fit the memory budget (1.00 GiB; --max-memory), 1 non-finite loss")
