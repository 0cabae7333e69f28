"""Seeded simulations of every test and interval the findings use (issue 21), at the tool's typical sizes.

Each check of a false-positive rate asserts that the count of rejections lies in the 99.9% binomial
interval of the nominal 5% (``within_binomial``); each coverage check asserts at least 93%.
"""
from __future__ import annotations

import numpy as np
import pytest

from layergrad.analysis import effects
from layergrad.analysis.compare import compare_arrays, compare_groups
from layergrad.analysis.design import design
from layergrad.analysis.multiplicity import maxt, min_attainable_p
from layergrad.analysis.primary import effect, primary_table
from stats_helpers import curves, group, within_binomial

R_SIM = 600


@pytest.mark.parametrize("n", [8, 10, 12])
def test_paired_t_null_rate_and_coverage(n):
    """Paired t on log values: 5% false positives, >= 93% coverage of the true ratio (0.8), lognormal data."""
    rng = np.random.default_rng(n)
    base = rng.normal(3, 1, (R_SIM, n))
    ya, yb0 = base + rng.normal(0, 0.3, (R_SIM, n)), base + rng.normal(0, 0.3, (R_SIM, n))
    yb = base + np.log(0.8) + rng.normal(0, 0.3, (R_SIM, n))
    null = effects.paired(ya.T, yb0.T)  # columns = simulations
    eff = effects.paired(ya.T, yb.T)
    assert within_binomial(int((null["p_value"] < 0.05).sum()), R_SIM)
    cover = ((eff["ci_low"] <= 0.8) & (0.8 <= eff["ci_high"])).mean()
    assert cover >= 0.93


def test_welch_null_rate_and_coverage_with_unequal_spreads():
    """Independent n = (6, 12), spreads 3 vs 1 on the log scale: Welch's t keeps 5% and covers."""
    rng = np.random.default_rng(3)
    ya, yb = rng.normal(0, 3, (6, R_SIM)), rng.normal(0, 1, (12, R_SIM))
    st = effects.welch(ya, yb)
    assert within_binomial(int((st["p_value"] < 0.05).sum()), R_SIM)
    assert ((st["ci_low"] <= 1) & (1 <= st["ci_high"])).mean() >= 0.93


def test_studentized_permutation_null_rate_with_unequal_spreads():
    """The cell test (independent): permutations of Welch's statistic, spreads 3 vs 1, n = (6, 12): about 5%
    (the unstudentized difference of means rejected 16% here)."""
    rng = np.random.default_rng(4)
    ya, yb = rng.normal(0, 3, (6, 300)), rng.normal(0, 1, (12, 300))
    _, raw = maxt(ya, yb, paired=False, n_perm=499, rng=np.random.default_rng(5))
    assert within_binomial(int((raw < 0.05).sum()), 300)


def test_clustered_design_null_rate():
    """Two responses per instruction, each group its own instructions, a large instruction effect: averaging within
    instructions keeps 5% (treating the 2 x n examples as independent gave 17%)."""
    rng = np.random.default_rng(6)
    rej = 0
    for _ in range(300):
        inst = rng.normal(0, 1, (2, 8))  # instruction effects, group a and b
        xa = np.exp(np.repeat(inst[0], 2) + rng.normal(0, 0.2, 16))
        xb = np.exp(np.repeat(inst[1], 2) + rng.normal(0, 0.2, 16))
        ga = group("a", xa[:, None, None], instructions=[f"a{i // 2}" for i in range(16)])
        gb = group("b", xb[:, None, None], instructions=[f"b{i // 2}" for i in range(16)])
        d = design(ga, gb)
        assert d.kind == "independent" and d.clustered and d.n_units_a == 8
        row = primary_table([ga, gb], ["nuclear"]).iloc[0]
        rej += row["p_value"] < 0.05
    assert within_binomial(rej, 300)


def test_maxt_controls_familywise_error_over_correlated_cells():
    """Max-T over 3 roles x 10 layers with strongly correlated cells, 10 pairs (exact enumeration): the chance of any
    false positive in the family stays at 5%."""
    rng = np.random.default_rng(7)
    fw = 0
    for _ in range(200):
        shared = rng.normal(0, 1, (10, 1))
        da = shared + 0.3 * rng.normal(0, 1, (10, 30))
        adj, _ = maxt(np.zeros_like(da), da, paired=True)
        fw += (adj < 0.05).any()
    assert within_binomial(fw, 200)


def test_item1_eight_pairs_with_a_fivefold_effect_are_significant_after_maxt():
    """8 pairs, b = 0.2 a in every one of 1,050 cells: BY could reach no cell (smallest q 0.059); max-T finds all."""
    rng = np.random.default_rng(8)
    xa = np.exp(rng.normal(0, 0.3, (8, 1050)))
    xb = 0.2 * xa * np.exp(rng.normal(0, 0.05, (8, 1050)))
    ga, gb = group("a", xa.reshape(8, 7, 150), instructions=range(8)), group("b", xb.reshape(8, 7, 150), instructions=range(8))
    d = design(ga, gb)
    st = compare_arrays(xa, xb, d, label_a="a", label_b="b")
    assert (st["p_adjusted"] < 0.05).all() and st["min_p"][0] == pytest.approx(2 / 256)
    by = compare_arrays(xa, xb, d, label_a="a", label_b="b", correction="by")
    assert not (by["p_adjusted"] < 0.05).any()  # what the old default did


def test_attainable_p():
    assert min_attainable_p(5, 5, paired=True) == pytest.approx(2 / 32)
    assert min_attainable_p(8, 8, paired=True) == pytest.approx(2 / 256)
    assert min_attainable_p(3, 3, paired=False) == pytest.approx(2 / 20)
    assert min_attainable_p(3, 4, paired=False) == pytest.approx(1 / 35)
    assert min_attainable_p(30, 30, paired=True, n_perm=999) == pytest.approx(1 / 1000)


def test_paired_length_model_null_rate_under_a_pure_length_effect():
    """ln y = -0.7 ln(length) + noise, lengths overlapping within pairs: the effect at equal length keeps 5%."""
    rng = np.random.default_rng(9)
    rej = fitted = 0
    for _ in range(R_SIM):
        la = rng.uniform(2, 5, 10)
        lb = la + rng.normal(0.2, 0.6, 10)
        base = rng.normal(3, 1, 10)
        o = effect(base - 0.7 * la + rng.normal(0, 0.2, 10), base - 0.7 * lb + rng.normal(0, 0.2, 10), la, lb, True)
        if o["length_control"] == "model":
            fitted += 1
            rej += o["adj_p_value"] < 0.05
    assert fitted > R_SIM / 2 and within_binomial(rej, fitted)


def test_independent_length_model_null_rate_and_power():
    """Independent, overlapping lengths, a pure length effect: 5%; a true x0.7 effect on top of length is detected in
    most runs."""
    rng = np.random.default_rng(10)
    rej = power = fitted = 0
    for _ in range(R_SIM):
        la, lb = rng.uniform(2, 5, 12), rng.uniform(3, 6, 12)
        ya, yb = -0.7 * la + rng.normal(0, 0.2, 12), -0.7 * lb + rng.normal(0, 0.2, 12)
        null, alt = effect(ya, yb, la, lb, False), effect(ya, yb + np.log(0.7), la, lb, False)
        if null["length_control"] == "model":
            fitted += 1
            rej += null["adj_p_value"] < 0.05
            power += alt["adj_p_value"] < 0.05
    assert fitted > 0.9 * R_SIM and within_binomial(rej, fitted)
    assert power / fitted > 0.4


def test_length_model_interval_coverage():
    rng = np.random.default_rng(11)
    cover = 0
    for _ in range(R_SIM):
        la = rng.uniform(2, 5, 8)
        lb = la + rng.normal(0, 0.5, 8)
        base = rng.normal(3, 1, 8)
        o = effect(base - 0.5 * la + rng.normal(0, 0.2, 8), base + np.log(0.8) - 0.5 * lb + rng.normal(0, 0.2, 8), la, lb, True)
        cover += o["length_control"] == "model" and o["adj_ci_low"] <= 0.8 <= o["adj_ci_high"]
    assert cover / R_SIM >= 0.93 * 0.9  # model fitted in >= 90% of runs (support), and covers when fitted


def test_headline_is_a_geometric_mean_over_roles():
    """A big role with no effect does not decide the headline: the ratio is the geometric mean of the per-role ratios."""
    rng = np.random.default_rng(12)
    xa = curves(rng, 10, 4, 6)
    xa[:, 3] *= 10.0  # a role ten times larger
    xb = xa.copy()
    xb[:, :3] *= 0.5  # the three small roles halve, the big one is unchanged
    t = primary_table([group("a", xa, instructions=range(10)), group("b", xb, instructions=range(10))], ["nuclear"]).set_index("role")
    assert t.loc["all", "ratio"] == pytest.approx(0.5 ** 0.75, rel=1e-9)
    assert t.loc["q", "ratio"] == pytest.approx(0.5) and t.loc["o", "ratio"] == pytest.approx(1.0)


def test_cells_compare_against_an_independent_oracle():
    """compare_groups' ratio and interval equal scipy's paired t on the log values, written here."""
    from scipy import stats as st

    rng = np.random.default_rng(13)
    xa, xb = curves(rng, 9, 2, 4), curves(rng, 9, 2, 4)
    c = compare_groups(group("a", xa, instructions=range(9)), group("b", xb, instructions=range(9)), ["nuclear"], n_perm=99)
    r = c[(c["role"] == "k") & (c["layer"] == 2)].iloc[0]
    d = np.log(xb[:, 1, 2]) - np.log(xa[:, 1, 2])
    res = st.ttest_1samp(d, 0.0)
    ci = res.confidence_interval(0.95)
    assert r["ratio"] == pytest.approx(np.exp(d.mean()), rel=1e-12)
    assert (r["ratio_ci_low"], r["ratio_ci_high"]) == pytest.approx((np.exp(ci.low), np.exp(ci.high)), rel=1e-10)
    assert r["design"] == "paired" and r["n_pairs"] == 9


def test_quality_cosine_interval_coverage():
    """The quality page's cosine interval (each example's mean over roles and layers, then a t interval over 24
    examples): >= 93% coverage of the true mean cosine, examples varying and cells noisy and skewed."""
    from layergrad.analysis.quality import QualityCell, cosine_summary

    rng = np.random.default_rng(11)
    n, R, L, mu, hits = 24, 2, 6, 0.002, 0
    for _ in range(R_SIM):
        cells = []
        for split in ("high", "low"):
            g = group(split, curves(rng, n, R, L))
            g.cosine = {"q_o": (["q"], mu + rng.normal(0, 0.002, (n, 1, 1)) + rng.exponential(0.01, (n, 1, L)) - 0.01)}
            cells.append(g)
        row = cosine_summary([QualityCell("m", "p", "x", *cells)]).iloc[0]
        hits += row["ci_low"] <= mu <= row["ci_high"]
    assert hits / R_SIM >= 0.93


def test_quality_partial_rank_correlation_null_rate_under_a_pure_length_effect():
    """The quality page's exploratory partial rank correlation on length: a score and a property that both
    follow length and nothing else (n = 60, lengths overlapping) are flagged at about 5%."""
    import pandas as pd

    from layergrad.analysis.quality import score_correlations

    rng = np.random.default_rng(12)
    rejections = supported = 0
    for _ in range(R_SIM):
        length = rng.uniform(20, 800, 60)
        frame = pd.DataFrame({"model": "m", "pool": "p", "n_response_tokens": length,
                              "score": 0.004 * length + rng.normal(0, 1, 60), "nuclear": -0.003 * length + rng.normal(0, 1, 60)})
        row = score_correlations(frame, ["score"], ["nuclear"]).iloc[0]
        supported += bool(row["length_support"])  # without support the partial is NaN: never flagged
        rejections += row["partial_p_value"] < 0.05
    assert supported >= 0.9 * R_SIM
    assert within_binomial(int(rejections), supported)
