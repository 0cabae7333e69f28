"""The benchmark's bookkeeping: figures rebuilt from worker logs, ratios paired by round."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
report = pytest.importorskip("report")

LOG_1 = """\
[bench 17:25:03] /work/main/benchmarks/worker.py timing --config wide ...
[17:25:14] wide on cuda: 4 examples in 2 batches; methods b, c, d:all, r:all, a:all; paper on 1
[17:26:39] round 0 batch 0 (2 ex, max 600 tok) b: 0.40 s
[17:26:39] round 0 batch 0 (2 ex, max 600 tok) d:all: 2.00 s
[17:26:40] round 0 batch 0 (2 ex, max 600 tok) r:all: 9.00 s
[17:26:41] round 0 batch 1 (2 ex, max 200 tok) b: 0.20 s
[17:26:42] round 0 batch 1 (2 ex, max 200 tok) d:all: 1.00 s
[17:26:42] round 0 batch 1 (2 ex, max 200 tok) r:all: 5.00 s
[17:26:50] round 0 paper example 3 (190 tok) a:all: 12.5 s
[17:27:00] round 1 batch 0 (2 ex, max 600 tok) b: 0.60 s
[17:27:01] round 1 batch 0 (2 ex, max 600 tok) d:all: 3.00 s
[17:27:02] round 1 batch 1 (2 ex, max 200 tok) b: 0.40 s
"""
LOG_2 = """\
[17:35:39] wide on cuda: 4 examples in 2 batches; methods b, d:all; paper on 0
[17:37:01] round 0 batch 0 (2 ex, max 600 tok) b: 0.50 s
[17:37:01] round 0 batch 1 (2 ex, max 600 tok) b: 0.30 s
[17:37:06] round 0 batch 0 (2 ex, max 600 tok) d:all: 4.00 s
[17:37:06] round 0 batch 1 (2 ex, max 600 tok) d:all: 2.00 s
"""


def test_a_round_counts_only_where_every_batch_was_logged():
    t = report.timing_from_logs([LOG_1])
    assert (t["config"], t["device"], t["n_examples"]) == ("wide", "cuda", 4)
    assert t["times"]["b"] == pytest.approx([0.6, 1.0])  # round 1 has both batches of b
    assert t["times"]["d:all"] == [pytest.approx(3.0), None]  # round 1 of d:all lacks batch 1: not counted
    assert "r:all" not in t["times"]  # the reference is untimed
    assert t["paper"]["a:all"] == [{"position": 3, "tokens": 190, "seconds": 12.5}]
    assert t["batches_logged"] == [(2, 600), (2, 200)]


def test_logs_of_several_processes_add_their_rounds_and_ratios_pair_rounds():
    t = report.timing_from_logs([LOG_1, LOG_2])
    assert t["times"]["b"] == pytest.approx([0.6, 1.0, 0.8])
    assert t["times"]["d:all"] == [pytest.approx(3.0), None, pytest.approx(6.0)]
    # paired by round: 3.0 / 0.6 = 5.0 and 6.0 / 0.8 = 7.5; b's round 1 has no partner
    assert report.ratio(t, "d:all", "b") == pytest.approx(6.25)
    assert report.per_example(t, "b") == pytest.approx(0.8 / 4)
    assert report.per_example(t, "d:all") == pytest.approx(4.5 / 4)
