"""The benchmark worker's bookkeeping: which layers the float64 reference runs on, and how (d), (u) are compared to it."""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
worker = pytest.importorskip("worker")


@dataclass
class T:
    name: str
    layer: int


def test_reference_layers_are_evenly_spaced_with_both_ends_and_keep_the_head():
    targets = [T(f"l{j}.{r}", j) for j in range(32) for r in ("q", "k")] + [T("lm_head", -1)]
    got = worker.sample_layers(targets, 8)
    layers = sorted({t.layer for t in got if t.layer >= 0})
    assert layers == [0, 4, 9, 13, 18, 22, 27, 31]
    assert sum(t.layer == 9 for t in got) == 2  # every role of a chosen layer
    assert any(t.name == "lm_head" for t in got)
    assert worker.sample_layers(targets, 0) == targets and worker.sample_layers(targets, 40) == targets
    assert {t.layer for t in worker.sample_layers(targets, 1)} == {0, -1}


def test_each_method_is_compared_on_the_values_the_reference_has_by_statistic():
    ref = {(0, "a"): 10.0, (0, "a", "effective_rank"): 4.0, (1, "a"): 0.0, (1, "a", "effective_rank"): math.nan,
           (0, "b"): 2.0}
    values = {
        "r:all": ref,
        "d:all": {(0, "a"): 10.001, (0, "a", "effective_rank"): 4.0004, (1, "a"): 0.0, (1, "a", "effective_rank"): math.nan,
                  (0, "b"): 2.0, (0, "c"): 99.0},
        "u:attn": {(0, "a"): 10.0, (0, "a", "effective_rank"): 4.0},
        "b": {},
    }
    out = worker.compare_to_reference(values)
    assert set(out) == {"all", "u:attn"}
    d = out["all"]
    assert d["by_stat"]["nuclear"] == pytest.approx(1e-4) and d["by_stat"]["effective_rank"] == pytest.approx(1e-4)
    assert d["max_rel_diff"] == pytest.approx(1e-4)
    assert d["n_values"] == 5  # (0, "c") is not in the reference; zeros and NaNs counted but not compared
    assert out["u:attn"]["max_rel_diff"] == 0.0 and out["u:attn"]["n_values"] == 2
    assert worker.compare_to_reference({"d:all": {(0, "a"): 1.0}}) == {}
