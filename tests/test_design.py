"""Pairing you can trust (issue 21, item 2): never on ids by default, every example left out counted, clusters kept."""
from __future__ import annotations

import numpy as np
import pandas as pd

from layergrad.analysis.design import design
from layergrad.analysis.primary import primary_table
from layergrad.report.findings import findings_table
from stats_helpers import group


def _groups(n_a, n_b, inst_a, inst_b, seed=0):
    rng = np.random.default_rng(seed)
    ga = group("a", np.exp(rng.normal(size=(n_a, 2, 3))), instructions=inst_a)
    gb = group("b", np.exp(rng.normal(size=(n_b, 2, 3))), instructions=inst_b)
    ga.keys["id"] = np.array([str(i) for i in range(n_a)], dtype=object)  # both datasets number their records 0, 1, ...
    gb.keys["id"] = np.array([str(i) for i in range(n_b)], dtype=object)
    return ga, gb


def _sentence(ga, gb):
    t = {"primary": primary_table([ga, gb], ["nuclear"]), "evenness_compare": None,
         "compare": pd.DataFrame(columns=["group_a", "group_b", "metric", "p_adjusted", "min_p", "role", "layer"])}
    return findings_table(t, [ga, gb]).iloc[0]["sentence"]


def test_unrelated_datasets_with_the_same_ids_are_not_paired():
    ga, gb = _groups(10, 10, [f"x{i}" for i in range(10)], [f"y{i}" for i in range(10)])
    d = design(ga, gb)
    assert d.kind == "independent" and d.n_units_a == 10
    assert "independent, 10 and 10 instructions" in _sentence(ga, gb)
    assert design(ga, gb, "id").kind == "paired"  # only when asked


def test_examples_left_out_of_pairing_are_counted_in_the_sentence():
    ga, gb = _groups(10, 10, [f"q{i}" for i in range(10)], [f"q{i}" for i in range(8)] + ["other1", "other2"])
    d = design(ga, gb)
    assert d.kind == "paired" and d.n_pairs == 8 and (d.n_left_a, d.n_left_b) == (2, 2)
    assert "8 pairs; 4 examples without a partner left out" in _sentence(ga, gb)
    ga, gb = _groups(5, 40, [f"q{i}" for i in range(5)], [f"q{i}" for i in range(40)])
    d = design(ga, gb)
    assert d.n_pairs == 5 and d.n_left_b == 35
    assert "35 examples without a partner left out" in _sentence(ga, gb)


def test_repeated_instructions_are_clusters_not_dropped_keys():
    """Two responses per instruction in each group, shared instructions: paired on instructions, each unit the mean of
    its two examples (the old pairing dropped every repeated key and fell back to independent examples)."""
    inst = [f"q{i // 2}" for i in range(12)]
    ga, gb = _groups(12, 12, inst, inst)
    d = design(ga, gb)
    assert d.kind == "paired" and d.n_pairs == 6 and d.clustered and d.n_left_a == d.n_left_b == 0
    ua, _ = d.aggregate(np.arange(12.0), np.arange(12.0))
    np.testing.assert_allclose(ua, [0.5, 2.5, 4.5, 6.5, 8.5, 10.5])
    assert "repeated instructions averaged" in _sentence(ga, gb)


def test_pair_key_wins_over_instruction():
    ga, gb = _groups(6, 6, ["same"] * 6, ["same"] * 6)
    ga.keys["pair_key"] = np.array([f"k{i}" for i in range(6)], dtype=object)
    gb.keys["pair_key"] = np.array([f"k{5 - i}" for i in range(6)], dtype=object)
    d = design(ga, gb)
    assert d.by == "pair_key" and [int(u[0]) for u in d.units_b] == [5, 4, 3, 2, 1, 0]
