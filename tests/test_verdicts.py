"""Every verdict word: a case that produces it and one that must not (issue 21, items 4, 5, 8); bad input gives
a sentence, never a traceback or a NaN in a sentence."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from layergrad.analysis.primary import primary_table
from layergrad.analysis.verdicts import RULES, WORDS, verdict
from layergrad.report.findings import findings_table
from stats_helpers import group


def paired_groups(n=16, effect=1.0, dl=None, slope=0.0, noise=0.05, seed=0, lengths=True, R=4, L=5):
    """Pairs with ln y_b - ln y_a = ln(effect) + slope * (ln len_b - ln len_a) + noise; dl = ln len_b - ln len_a."""
    rng = np.random.default_rng(seed)
    dl = np.zeros(n) if dl is None else np.asarray(dl, dtype=float)
    la = rng.uniform(3, 4, n)
    lb = la + dl
    base = rng.normal(0, 0.5, n)
    ya = base + slope * la + rng.normal(0, noise, n)
    yb = base + np.log(effect) + slope * lb + rng.normal(0, noise, n)
    shape = np.ones((1, R, L))
    xa, xb = np.exp(ya)[:, None, None] * shape, np.exp(yb)[:, None, None] * shape
    kw = {"instructions": [f"i{i}" for i in range(n)]}
    return (group("a", xa, np.exp(la) if lengths else None, **kw), group("b", xb, np.exp(lb) if lengths else None, **kw))


def finding(ga, gb) -> tuple[str, str, dict]:
    prim = primary_table([ga, gb], ["nuclear"])
    t = {"primary": prim, "compare": pd.DataFrame(columns=["group_a", "group_b", "metric", "p_adjusted", "min_p", "role", "layer"]),
         "evenness_compare": None}
    f = findings_table(t, [ga, gb]).iloc[0]
    assert "nan" not in f["sentence"].lower(), f["sentence"]
    return f["verdict"], f["sentence"], prim.iloc[0].to_dict()


CASES = {
    "no inference": lambda: (group("a", np.ones((1, 2, 3))), group("b", np.ones((1, 2, 3)) * 2)),
    "lower at equal length": lambda: paired_groups(effect=0.85, noise=0.05),  # both members at identical lengths (truncation)
    "higher at equal length": lambda: paired_groups(effect=1.3, dl=np.linspace(-0.5, 1.0, 16), slope=0.2),
    "reversed at equal length": lambda: paired_groups(effect=1.5, dl=np.linspace(-0.5, 2.5, 16), slope=-1.0),
    "hidden by length": lambda: paired_groups(effect=1.8, dl=np.linspace(-0.9, 2.1, 16) + 0.0, slope=-1.0, noise=0.05),
    "explained by length": lambda: paired_groups(effect=1.0, dl=np.linspace(-0.5, 2.5, 16), slope=-1.0, noise=0.02),
    "unclear at equal length": lambda: paired_groups(n=10, effect=1.0, dl=np.linspace(-0.6, 3.0, 10), slope=-1.0, noise=0.3, seed=3),
    "not separable from length": lambda: paired_groups(effect=1.0, dl=np.full(16, 2.3), slope=-1.0),
    "lower, length not controlled": lambda: paired_groups(effect=0.5, lengths=False),
    "negligible difference": lambda: paired_groups(effect=1.0, noise=0.01),
    "no clear difference": lambda: paired_groups(n=5, effect=1.0, noise=0.5, seed=4),
}
# the same data with one thing changed, which must NOT give that word
NOT = {
    "no inference": lambda: paired_groups(n=3, effect=0.5),
    "lower at equal length": lambda: paired_groups(effect=1.0, noise=0.05),
    "higher at equal length": lambda: paired_groups(effect=1.0, dl=np.linspace(-0.5, 1.0, 16), slope=0.2),
    "reversed at equal length": lambda: paired_groups(effect=0.7, dl=np.linspace(-0.5, 2.5, 16), slope=-1.0),
    "hidden by length": lambda: paired_groups(effect=1.8, dl=np.linspace(-0.9, 2.1, 16), slope=0.0, noise=0.05),
    "explained by length": lambda: paired_groups(effect=0.7, dl=np.linspace(-0.5, 2.5, 16), slope=-1.0, noise=0.02),
    "unclear at equal length": lambda: paired_groups(n=10, effect=1.0, dl=np.linspace(-0.6, 3.0, 10), slope=-1.0, noise=0.01),
    "not separable from length": lambda: paired_groups(effect=1.0, dl=np.linspace(-0.5, 2.5, 16), slope=-1.0),
    "lower, length not controlled": lambda: paired_groups(effect=0.5),
    "negligible difference": lambda: paired_groups(n=5, effect=1.0, noise=0.5, seed=4),
    "no clear difference": lambda: paired_groups(effect=1.0, noise=0.01),
}


def test_rules_table_names_every_word():
    text = " ".join(w for w, _ in RULES)
    assert all(w in text for w in WORDS) and set(CASES) | {"higher, length not controlled"} >= set(WORDS) - {"higher, length not controlled"}


@pytest.mark.parametrize("word", list(CASES))
def test_word_is_produced(word):
    got, sentence, _ = finding(*CASES[word]())
    assert got == word, sentence


@pytest.mark.parametrize("word", list(NOT))
def test_word_is_not_produced(word):
    got, sentence, _ = finding(*NOT[word]())
    assert got != word, sentence


def test_reversal_and_suppression_read_as_such():
    """Item 5: overall 0.2-like with 1.5 at equal length is a reversal, not 'not significant'; length masking a real
    1.8x effect is 'hidden by length', not 'no clear difference'."""
    _, s, p = finding(*CASES["reversed at equal length"]())
    assert p["ratio"] < 1 < p["adj_ratio"] and "At equal length" in s
    _, s, p = finding(*CASES["hidden by length"]())
    assert p["adj_ratio"] == pytest.approx(1.8, rel=0.1) and p["p_holm"] >= 0.05


def test_no_common_support_gives_no_adjusted_number_and_names_the_remedy():
    """Item 4: without overlap, no length-adjusted number and no partial correlation is printed; the sentence says what would."""
    _, s, p = finding(*CASES["not separable from length"]())
    assert p["length_control"] == "no common support" and not np.isfinite(p["adj_ratio"])
    assert "--truncate-to" in s and "partial" not in s.lower()


def test_no_clear_difference_states_the_interval():
    """No power statement was ever made: 'no clear difference' now gives the interval the data allow."""
    _, s, p = finding(*CASES["no clear difference"]())
    assert "The data allow ratios from" in s and "measure more examples" in s


@pytest.mark.parametrize("case", ["one example", "constant", "no finite value", "all lengths equal", "no overlap"])
def test_bad_input_gives_a_reason_not_a_traceback(case):
    rng = np.random.default_rng(5)
    if case == "one example":
        ga, gb = group("a", np.ones((1, 2, 3))), group("b", np.ones((1, 2, 3)))
    elif case == "constant":
        ga, gb = group("a", np.ones((6, 2, 3)), instructions=range(6)), group("b", np.ones((6, 2, 3)), instructions=range(6))
    elif case == "no finite value":
        ga, gb = group("a", np.full((6, 2, 3), np.nan)), group("b", np.exp(rng.normal(size=(6, 2, 3))))
    elif case == "all lengths equal":
        ga = group("a", np.exp(rng.normal(size=(6, 2, 3))), lengths=np.full(6, 10.0))
        gb = group("b", np.exp(rng.normal(size=(7, 2, 3))), lengths=np.full(7, 10.0))
    else:
        ga = group("a", np.exp(rng.normal(size=(6, 2, 3))), lengths=np.full(6, 5.0))
        gb = group("b", np.exp(rng.normal(size=(7, 2, 3))), lengths=np.full(7, 500.0))
    prim = primary_table([ga, gb], ["nuclear"])
    if case == "no finite value":
        assert len(prim) == 0  # the metric is not available in group a: no row, no sentence
        return
    v, s, p = finding(ga, gb)
    if case in ("one example", "constant"):
        assert v == "no inference" and ("no interval or test is possible" in s)
    elif case == "all lengths equal":
        assert p["length_control"] == "equal"
    else:
        assert p["length_control"] == "no common support" and "cannot separate" in s


def test_verdict_of_a_row_by_hand():
    base = {"p_value": 0.001, "p_holm": 0.002, "ratio": 0.5, "ci_low": 0.4, "ci_high": 0.6, "length_control": "model",
            "adj_ratio": 0.98, "adj_ci_low": 0.95, "adj_ci_high": 1.02, "adj_p_holm": 0.4}
    assert verdict(base) == "explained by length"
    assert verdict({**base, "adj_ci_low": 0.7, "adj_ci_high": 1.3}) == "unclear at equal length"
    assert verdict({**base, "length_control": "lengths unknown"}) == "lower, length not controlled"
    assert verdict({**base, "ratio": 1.5, "length_control": "lengths unknown"}) == "higher, length not controlled"


def test_the_docs_print_the_rules_of_the_code():
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "statistics.md").read_text()
    for word, when in RULES:
        assert f"| {word} | {when} |" in text, word
