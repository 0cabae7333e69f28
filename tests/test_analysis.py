"""Statistics of the analysis on synthetic run directories with known answers.

Runs are written through the real store (``RunStore.open`` + ``write_part``) and read back
through ``load_group``; no engine or model is involved. ``make_run`` is also used by
``test_report.py``.
"""
from __future__ import annotations


import numpy as np
import pandas as pd
import pytest
from scipy import stats

from layergrad.analysis import bootstrap
from layergrad.analysis.compare import by_adjust
from layergrad.analysis.design import design
from layergrad.analysis.multiplicity import maxt
from layergrad.analysis.primary import effect, primary_table
from layergrad.analysis import (
    AnalysisError,
    IncompatibleGroups,
    auroc,
    bh_adjust,
    compare_groups,
    compare_table,
    cosine_table,
    curve_table,
    exclusions,
    group_curves,
    length_table,
    load_group,
    load_groups,
    mad_of_curve,
    mad_table,
    partial_table,
    segments,
    status_table,
)
from layergrad.store import RunStore
from helpers import make_run, noise





def grp(tmp_path, label, values, **kw):
    return load_group(label, make_run(tmp_path / label, values, **kw))




# ---- MAD -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "L, expected",
    [
        (9, {"early": 2.0, "middle": 8.0, "late": 14.0, "all": 8.0}),  # thirds 0-2, 3-5, 6-8; steps 1,3,...,15
        (10, {"early": 3.0, "middle": 10.0, "late": 16.0, "all": 9.0}),  # thirds 0-3, 4-6, 7-9; steps 1,3,...,17
    ],
)
def test_mad_known_curve(tmp_path, L, expected):
    # Mean curve c_l = l^2 exactly (offsets +-d cancel); each example is the curve shifted by a
    # constant, so every bootstrap resample has the same MAD: the interval is a point.
    c = np.arange(L, dtype=float) ** 2
    off = np.array([-0.3, 0.3, -1.0, 1.0])[:, None, None]
    g = grp(tmp_path, "g", {"nuclear": c[None, None, :] + off + np.zeros((4, 1, 1))}, roles=("q",))
    t = mad_table([g], ["nuclear"], n_boot=200).set_index("segment")
    for seg, want in expected.items():
        assert t.loc[seg, "mad"] == pytest.approx(want)
        assert t.loc[seg, "ci_low"] == pytest.approx(want) and t.loc[seg, "ci_high"] == pytest.approx(want)


def test_segments_are_thirds_of_depth():
    s = segments(30)
    assert [list(s[k][[0, -1]]) for k in ("early", "middle", "late")] == [[0, 9], [10, 19], [20, 29]]
    s = segments(32)
    assert [len(s[k]) for k in ("early", "middle", "late", "all")] == [11, 11, 10, 32]
    s = segments(2)  # too shallow for thirds: segments with < 2 layers have no pair -> NaN MAD
    assert [len(s[k]) for k in ("early", "middle", "late")] == [1, 1, 0]


def test_mad_ci_reflects_noise(tmp_path):
    # Flat true curve: MAD of the sample mean is pure noise, the interval must contain it and be wide.
    rng = np.random.default_rng(1)
    g = grp(tmp_path, "g", {"nuclear": noise(rng, 30, 1, 12)}, roles=("q",))
    t = mad_table([g], ["nuclear"], n_boot=300).set_index("segment")
    assert (t["ci_low"] <= t["mad"]).all() and (t["mad"] <= t["ci_high"] * 1.5).all()
    assert (t["ci_high"] - t["ci_low"] > 0).all()


@pytest.mark.parametrize("step, min_cover", [(1.0, 0.9), (0.3, 0.85)])
def test_mad_interval_coverage(step, min_cover):
    """A linear true curve (true MAD = step) with noise: the BC interval covers the true MAD.

    At step 0.3 noise inflates the sample MAD noticeably; the plain percentile interval then
    covers the truth only about 70% of the time, which is why mad.py uses the BC interval.
    """
    rng = np.random.default_rng(17)
    layers = segments(12)["all"]
    hits = 0
    for _ in range(150):
        x = step * np.arange(12)[None, :] + rng.standard_normal((40, 12))  # (n, L)
        boot = bootstrap.resampled_means(x, bootstrap.resample_counts(40, 400, rng))
        est = mad_of_curve(bootstrap.means(x)[0], layers)
        lo, hi = bootstrap.bias_corrected_interval(mad_of_curve(boot, layers), est, np.array(40))
        hits += lo <= step <= hi
    assert hits / 150 >= min_cover


# ---- curves and bootstrap --------------------------------------------------------------------


def test_bootstrap_ci_covers_true_mean(tmp_path):
    cover, cover_wrong, cells = 0, 0, 0
    for k in range(4):
        rng = np.random.default_rng(100 + k)
        g = grp(tmp_path, f"g{k}", {"nuclear": noise(rng, 40, 1, 250, loc=5.0, scale=1.0)}, roles=("q",))
        c = group_curves(g, "nuclear", n_boot=1000, seed=k)
        cover += ((c.low <= 5.0) & (5.0 <= c.high)).sum()
        cover_wrong += ((c.low <= 5.8) & (5.8 <= c.high)).sum()  # 5 standard errors off
        cells += c.mean.size
    assert 0.90 <= cover / cells <= 0.98, cover / cells
    assert cover_wrong / cells < 0.01


def test_same_resamples_across_layers(tmp_path):
    # Layer 1 = layer 0 + 5 for every example: with shared resamples the intervals shift exactly.
    rng = np.random.default_rng(2)
    x0 = rng.standard_normal((25, 1, 1))
    g = grp(tmp_path, "g", {"nuclear": np.concatenate([x0, x0 + 5], axis=2)}, roles=("q",))
    c = group_curves(g, "nuclear", n_boot=500)
    assert c.low[0, 1] - c.low[0, 0] == pytest.approx(5.0)
    assert c.high[0, 1] - c.high[0, 0] == pytest.approx(5.0)


def test_curve_table_columns_and_means(tmp_path):
    rng = np.random.default_rng(3)
    x = noise(rng, 10, 2, 4)
    g = grp(tmp_path, "g", {"nuclear": x})
    t = curve_table([g], ["nuclear", "top1_share"], n_boot=100)
    assert list(t.columns) == ["group", "role", "layer", "metric", "mean", "ci_low", "ci_high", "n"]
    assert len(t) == 2 * 2 * 4
    q = t[(t.metric == "nuclear") & (t.role == "o")].sort_values("layer")
    np.testing.assert_allclose(q["mean"], x[:, 1, :].mean(axis=0))
    assert (q["n"] == 10).all()
    # determinism: same seed, same numbers
    pd.testing.assert_frame_equal(t, curve_table([g], ["nuclear", "top1_share"], n_boot=100))


# ---- comparisons -----------------------------------------------------------------------------


def test_auroc_ties_count_half():
    a = np.array([[1.0], [1.0]])
    assert auroc(a, a.copy())[0] == 0.5
    assert auroc(np.array([[0.0], [1.0]]), np.array([[1.0], [2.0]]))[0] == pytest.approx(3.5 / 4)
    rng = np.random.default_rng(4)
    a, b = rng.integers(0, 4, (13, 3)).astype(float), rng.integers(0, 4, (9, 3)).astype(float)
    brute = ((b[None] > a[:, None]).sum((0, 1)) + 0.5 * (b[None] == a[:, None]).sum((0, 1))) / (13 * 9)
    np.testing.assert_allclose(auroc(a, b), brute)


def test_permutation_exact_enumeration():
    # C(4, 2) = 6 splits; only the observed split and its mirror reach the largest |t|.
    _, p = maxt(np.array([[0.0], [1.0]]), np.array([[10.0], [11.0]]), paired=False, n_perm=999)
    assert p[0] == pytest.approx(2 / 6)


def test_permutation_nominal_rate_under_null():
    rng = np.random.default_rng(5)
    a, b = rng.standard_normal((12, 3000)), rng.standard_normal((15, 3000))
    _, p = maxt(a, b, paired=False, n_perm=999, rng=np.random.default_rng(6))
    assert 0.035 <= (p < 0.05).mean() <= 0.065
    assert 0.17 <= (p < 0.2).mean() <= 0.23
    assert p.min() >= 1 / 1000


def test_same_distribution_not_significant_at_nominal_rate(tmp_path):
    rates, any_sig = [], 0
    for k in range(5):
        rng = np.random.default_rng(200 + k)
        ga = grp(tmp_path / str(k), "a", {"nuclear": noise(rng, 14, 2, 60)})
        gb = grp(tmp_path / str(k), "b", {"nuclear": noise(rng, 18, 2, 60)})
        t = compare_groups(ga, gb, ["nuclear"], n_perm=499, seed=k)
        assert len(t) == 120
        rates.append((t["p_value"] < 0.05).mean())
        any_sig += bool((t["p_adjusted"] < 0.05).any())
    assert 0.025 <= np.mean(rates) <= 0.075, rates
    assert any_sig <= 1  # max-T keeps family-wise false alarms at 5% under the global null


def test_separated_groups(tmp_path):
    rng = np.random.default_rng(7)
    ga = grp(tmp_path, "low", {"nuclear": noise(rng, 20, 2, 5, loc=10.0, scale=1.0)})
    gb = grp(tmp_path, "high", {"nuclear": noise(rng, 25, 2, 5, loc=20.0, scale=1.0)})
    t = compare_groups(ga, gb, ["nuclear"], n_perm=999, pairing="none")
    assert list(t.columns) == ["group_a", "group_b", "design", "n_pairs", "role", "layer", "metric", "rel_diff", "ratio", "ratio_ci_low",
                               "ratio_ci_high", "auroc", "p_value", "p_adjusted", "correction", "min_p", "n_a", "n_b"]
    assert (t["design"] == "independent").all() and (t["n_pairs"] == 0).all()
    np.testing.assert_allclose(t["ratio"], t["rel_diff"] + 1)
    assert ((t["ratio_ci_low"] < t["ratio"]) & (t["ratio"] < t["ratio_ci_high"])).all()
    assert ((t["ratio_ci_low"] > 1.7) & (t["ratio_ci_high"] < 2.3)).all()
    assert (t["auroc"] == 1.0).all()
    assert (t["p_value"] == 1 / 1000).all() and (t["p_adjusted"] < 0.01).all()
    np.testing.assert_allclose(t["rel_diff"], 1.0, atol=0.2)
    assert (t["n_a"] == 20).all() and (t["n_b"] == 25).all()
    back = compare_groups(gb, ga, ["nuclear"], n_perm=99)
    assert (back["auroc"] == 0.0).all()


def test_bh_matches_scipy():
    p = np.array([0.01, 0.04, 0.03, 0.5])
    np.testing.assert_allclose(bh_adjust(p), [0.04, 0.16 / 3, 0.16 / 3, 0.5])
    rng = np.random.default_rng(8)
    p = rng.uniform(size=200) ** 3
    np.testing.assert_allclose(bh_adjust(p), stats.false_discovery_control(p))
    p[[3, 50]] = np.nan
    q = bh_adjust(p)
    assert np.isnan(q[[3, 50]]).all()
    np.testing.assert_allclose(q[np.isfinite(p)], stats.false_discovery_control(p[np.isfinite(p)]))


# ---- length ----------------------------------------------------------------------------------


def test_length_effect_vs_group_effect(tmp_path):
    rng = np.random.default_rng(9)
    la, lb = rng.uniform(20, 200, 60), rng.uniform(60, 300, 60)  # b answers are longer, with overlap

    def size(lengths, shift=0.0):  # nuclear grows with length only (plus a group shift)
        return (0.01 * lengths[:, None, None] + shift + 0.05 * rng.standard_normal((len(lengths), 1, 3)))

    ga = grp(tmp_path, "short", {"nuclear": size(la)}, roles=("q",), lengths=la)
    gb = grp(tmp_path, "long", {"nuclear": size(lb)}, roles=("q",), lengths=lb)
    lt = length_table([ga, gb])
    assert list(lt.columns) == ["group", "role", "metric", "n", "pearson_r", "pearson_p", "spearman_rho", "spearman_p"]
    assert (lt["pearson_r"] > 0.9).all()
    pt = partial_table([ga, gb]).iloc[0]
    assert pt["r_group"] > 0.4  # the groups differ ...
    assert abs(pt["partial_pearson"]) < 0.15 and pt["partial_pearson_p"] > 0.05  # ... only through length
    gc = grp(tmp_path, "long+1", {"nuclear": size(lb, shift=1.0)}, roles=("q",), lengths=lb)
    pt = partial_table([ga, gc]).iloc[0]
    assert pt["partial_pearson"] > 0.5 and pt["partial_pearson_p"] < 1e-6  # a real group effect survives
    assert pt["partial_spearman"] > 0.3
    far = rng.uniform(1000, 2000, 60)  # no common support: no partial correlation (it would be extrapolation)
    gd = grp(tmp_path, "far", {"nuclear": size(far)}, roles=("q",), lengths=far)
    pt = partial_table([ga, gd]).iloc[0]
    assert not pt["support"] and np.isnan(pt["partial_pearson"]) and np.isnan(pt["partial_spearman_p"])


# ---- validation and clear messages -----------------------------------------------------------


def test_different_depths_refused(tmp_path):
    rng = np.random.default_rng(10)
    ga = grp(tmp_path, "deep", {"nuclear": noise(rng, 5, 2, 6)})
    gb = grp(tmp_path, "shallow", {"nuclear": noise(rng, 5, 2, 4)})
    with pytest.raises(IncompatibleGroups) as e:
        compare_table([ga, gb], ["nuclear"], n_perm=9)
    msg = str(e.value)
    assert "'deep'" in msg and "'shallow'" in msg and "6 layers" in msg and "4" in msg and "depth differs" in msg


def test_different_module_sets_refused(tmp_path):
    rng = np.random.default_rng(11)
    ga = grp(tmp_path, "attn", {"nuclear": noise(rng, 5, 2, 3)}, roles=("q", "o"))
    gb = grp(tmp_path, "qonly", {"nuclear": noise(rng, 5, 1, 3)}, roles=("q",))
    with pytest.raises(IncompatibleGroups, match=r"module sets differ: 3 only in 'attn' \(e\.g\. model\.layers\.0\.self_attn\.o_proj"):
        compare_groups(ga, gb, ["nuclear"], n_perm=9)


def test_single_example_group(tmp_path):
    g = grp(tmp_path, "one", {"nuclear": np.full((1, 2, 3), 2.5)})
    assert any("single ok example" in n and "undefined" in n for n in g.notes)
    t = curve_table([g], ["nuclear"], n_boot=50)
    assert (t["mean"] == 2.5).all() and t["ci_low"].isna().all() and t["ci_high"].isna().all() and (t["n"] == 1).all()
    assert mad_table([g], ["nuclear"], n_boot=50)["ci_low"].isna().all()


def test_nan_values_excluded_per_layer_and_reported(tmp_path):
    rng = np.random.default_rng(12)
    x = noise(rng, 8, 2, 4).astype(object)
    x[3, 0, 2] = np.nan  # stored NaN
    x[5, 0, 2] = None  # no row at all
    x[5, 1, 1] = np.nan
    g = grp(tmp_path, "holes", {"nuclear": x})
    t = curve_table([g], ["nuclear"], n_boot=100).set_index(["role", "layer"])
    assert t.loc[("q", 2), "n"] == 6 and t.loc[("o", 1), "n"] == 7 and t.loc[("q", 1), "n"] == 8
    keep = [i for i in range(8) if i not in (3, 5)]
    assert t.loc[("q", 2), "mean"] == pytest.approx(np.mean([x[i, 0, 2] for i in keep]))
    ex = exclusions(g, ["nuclear"]).set_index(["role", "layer"])
    assert ex.loc[("q", 2), "n_excluded"] == 2 and ex.loc[("o", 1), "n_excluded"] == 1 and len(ex) == 2
    other = grp(tmp_path, "full", {"nuclear": noise(rng, 8, 2, 4)})
    c = compare_groups(other, g, ["nuclear"], n_perm=99, pairing="none").set_index(["role", "layer"])
    assert c.loc[("q", 2), "n_b"] == 6 and c.loc[("q", 2), "n_a"] == 8 and np.isfinite(c.loc[("q", 2), "p_value"])


def test_not_ok_examples_counted(tmp_path):
    rng = np.random.default_rng(13)
    g = grp(tmp_path, "g", {"nuclear": noise(rng, 4, 2, 3)},
            not_ok=[("skipped", "no response tokens"), ("skipped", "no response tokens"), ("failed", "out of memory")])
    s = status_table([g]).set_index(["status", "reason"])
    assert s.loc[("skipped", "no response tokens"), "count"] == 2 and s.loc[("failed", "out of memory"), "count"] == 1
    assert g.n == 4 and any("3 of 7 examples are not ok" in n for n in g.notes)


def test_no_ok_examples_is_a_clear_error(tmp_path):
    path = tmp_path / "bad"
    store = RunStore(path)
    store.open({"model": "m", "n_layers": 2, "module_names": []})
    store.write_part([{"id": "x", "status": "failed", "reason": "boom", "order": 0}], [])
    with pytest.raises(AnalysisError, match=r"no examples with status ok \(failed \(boom\): 1\)"):
        load_group("bad", path)


def test_imported_run_without_spectrum_metrics(tmp_path):
    # Runs imported from the paper's JSONL store nuclear/spectral/frobenius but no spectrum.
    rng = np.random.default_rng(14)
    vals = {m: noise(rng, 5, 2, 3) for m in ("nuclear", "spectral", "frobenius", "min_sigma")}
    g = grp(tmp_path, "paper", vals, prompt_mode="imported", fill=False, manifest_extra={"n_layers": None})
    assert g.n_layers == 3 and any("n_layers" in n for n in g.notes)
    assert not g.available("effective_rank") and any("effective_rank" in n for n in g.notes)
    t = curve_table([g], ["nuclear", "effective_rank"], n_boot=50)
    assert set(t["metric"]) == {"nuclear"}


def test_cosine_curves(tmp_path):
    rng = np.random.default_rng(15)
    n, L = 6, 3
    rows = [{"id": f"e{i}", "kind": "next_layer", "role": "q", "layer": l, "module_a": f"model.layers.{l}.self_attn.q_proj",
             "module_b": f"model.layers.{l + 1}.self_attn.q_proj", "cosine": 0.1 * l + 0.01 * (i - 2.5)}
            for i in range(n) for l in range(L - 1)]
    g = grp(tmp_path, "cos", {"nuclear": noise(rng, n, 2, L)}, cosine=rows)
    t = cosine_table([g], n_boot=100)
    assert list(t["layer"]) == [0, 1] and np.allclose(t["mean"], [0.0, 0.1]) and (t["n"] == n).all()


def test_run_split_by_group_column(tmp_path):
    rng = np.random.default_rng(16)
    x = noise(rng, 6, 2, 3)
    x[3:] += 10
    path = make_run(tmp_path / "both", {"nuclear": x}, groups=["fast"] * 3 + ["slow"] * 3)
    fast, slow = load_groups(path)
    assert (fast.label, slow.label, fast.n, slow.n) == ("fast", "slow", 3, 3)
    np.testing.assert_allclose(slow.values["nuclear"], x[3:])
    (one,) = load_groups(path, "all")
    assert one.n == 6 and any("2 groups (fast, slow)" in n for n in one.notes)
    (plain,) = load_groups(make_run(tmp_path / "plain", {"nuclear": x}))
    assert plain.label == "plain"


# ---- paired designs --------------------------------------------------------------------------


def _paired_groups(tmp_path, n=12, shift=0.5, seed=30, **kw):
    """Pairs share an instruction; a large per-pair level (sd 5) buries a constant shift of b."""
    rng = np.random.default_rng(seed)
    level = 10 + 5 * rng.standard_normal((n, 1, 1))
    xa = level + 0.2 * rng.standard_normal((n, 2, 3))
    xb = level + shift + 0.2 * rng.standard_normal((n, 2, 3))
    ins = [f"question {i}" for i in range(n)]
    ga = grp(tmp_path, "a", {"nuclear": xa}, instructions=ins, ids=[f"a{i}" for i in range(n)], **kw)
    perm = rng.permutation(n)  # b stored in another order: pairing must go by key, not position
    gb = grp(tmp_path, "b", {"nuclear": xb[perm]}, instructions=[ins[i] for i in perm], ids=[f"b{i}" for i in perm], **kw)
    return ga, gb


def test_paired_shift_detected_only_when_paired(tmp_path):
    ga, gb = _paired_groups(tmp_path)
    pr = design(ga, gb)
    assert pr.kind == "paired" and pr.by == "instruction" and pr.n_pairs == 12
    assert [ga.keys["instruction"][u[0]] for u in pr.units_a] == [gb.keys["instruction"][u[0]] for u in pr.units_b]
    paired = compare_groups(ga, gb, ["nuclear"], n_perm=1999)
    unpaired = compare_groups(ga, gb, ["nuclear"], n_perm=1999, pairing="none")
    assert (paired["design"] == "paired").all() and (paired["n_pairs"] == 12).all()
    assert (paired["p_value"] < 0.005).all() and (paired["p_adjusted"] < 0.05).all()
    assert (paired["auroc"] >= 0.9).all()  # (almost) every pair has b above its a
    assert (unpaired["p_value"] > 0.3).all() and (unpaired["auroc"] < 0.75).all()  # same n, missed
    assert ((paired["ratio_ci_low"] > 1.0) & (paired["ratio_ci_low"] < paired["ratio"])).all()  # the paired interval excludes 1
    assert (unpaired["ratio_ci_low"] < 1.0).all()  # the independent one does not
    o = primary_table([ga, gb], ["nuclear"]).iloc[0]
    assert o["design"] == "paired" and o["p_value"] < 0.005 and o["ci_low"] > 1.0


def test_signflip_nominal_rate_and_exact():
    rng = np.random.default_rng(31)
    d = rng.standard_normal((12, 3000))
    _, p = maxt(np.zeros_like(d), d, paired=True, n_perm=999, rng=np.random.default_rng(32))
    assert 0.035 <= (p < 0.05).mean() <= 0.065 and 0.17 <= (p < 0.2).mean() <= 0.23
    d = np.array([[1.0], [2.0], [3.0]])  # 8 sign patterns, exact: only +-(1,2,3) reach the largest |t|
    assert maxt(np.zeros_like(d), d, paired=True, n_perm=999)[1][0] == pytest.approx(2 / 8)


def test_same_distribution_paired_groups_nominal(tmp_path):
    rates, any_sig = [], 0
    for k in range(4):
        ga, gb = _paired_groups(tmp_path / str(k), n=14, shift=0.0, seed=40 + k)
        t = compare_groups(ga, gb, ["nuclear"], n_perm=499, seed=k)
        rates.append((t["p_value"] < 0.05).mean())
        any_sig += bool((t["p_adjusted"] < 0.05).any())
    rng = np.random.default_rng(45)
    p = np.concatenate([maxt(np.zeros((14, 500)), rng.standard_normal((14, 500)), paired=True, n_perm=499, rng=rng)[1] for _ in range(4)])
    assert 0.03 <= (p < 0.05).mean() <= 0.07
    assert np.mean(rates) <= 0.2 and any_sig <= 1


def test_duplicate_instructions_are_one_unit(tmp_path):
    rng = np.random.default_rng(33)
    ins = [f"q{i}" for i in range(9)] + ["q0"]  # q0 twice in a
    ga = grp(tmp_path, "a", {"nuclear": noise(rng, 10, 2, 3)}, instructions=ins, ids=[f"a{i}" for i in range(10)])
    gb = grp(tmp_path, "b", {"nuclear": noise(rng, 10, 2, 3)}, instructions=[f"q{i}" for i in range(10)], ids=[f"b{i}" for i in range(10)])
    pr = design(ga, gb)
    assert pr.kind == "paired" and pr.n_pairs == 9 and pr.clustered  # q0..q8; q0's two examples of a are one unit
    assert (pr.n_left_a, pr.n_left_b) == (0, 1)  # q9 only in b
    unrelated = grp(tmp_path, "c", {"nuclear": noise(rng, 10, 2, 3)}, instructions=[f"z{i}" for i in range(10)], ids=[f"c{i}" for i in range(10)])
    assert design(ga, unrelated).kind == "independent"


def test_by_matches_scipy():
    rng = np.random.default_rng(34)
    p = rng.uniform(size=200) ** 3
    np.testing.assert_allclose(by_adjust(p), stats.false_discovery_control(p, method="by"))
    assert (by_adjust(p) >= bh_adjust(p)).all()


# ---- length control ------------------------------------------------------------------------


def test_length_model_removes_a_length_only_difference(tmp_path):
    rng = np.random.default_rng(9)
    la, lb = rng.uniform(20, 200, 80), rng.uniform(100, 400, 80)

    def size(lengths, factor=1.0):
        return factor * 0.01 * lengths[:, None, None] * np.exp(0.05 * rng.standard_normal((len(lengths), 1, 3)))

    ga = grp(tmp_path, "short", {"nuclear": size(la)}, roles=("q",), lengths=la, instructions=[f"s{i}" for i in range(80)])
    gb = grp(tmp_path, "long", {"nuclear": size(lb)}, roles=("q",), lengths=lb, instructions=[f"l{i}" for i in range(80)])
    raw = primary_table([ga, gb], ["nuclear"]).iloc[0]
    assert raw["design"] == "independent" and raw["p_value"] < 0.01 and raw["ratio"] > 1.5  # overall: a large difference ...
    assert raw["length_control"] == "model" and raw["adj_ci_low"] < 1 < raw["adj_ci_high"]  # ... gone at equal length
    gc = grp(tmp_path, "long+", {"nuclear": size(lb, 1.3)}, roles=("q",), lengths=lb, instructions=[f"m{i}" for i in range(80)])
    m = primary_table([ga, gc], ["nuclear"]).iloc[0]
    assert m["adj_p_value"] < 0.01 and m["adj_ci_low"] > 1.2 and m["adj_ratio"] == pytest.approx(1.3, rel=0.05)  # a true effect survives


def test_length_model_without_overlap():
    r = effect(np.zeros(5), np.ones(5) + np.arange(5) * 0.1, np.log(np.arange(1, 6.0)), np.log(np.arange(100, 105.0)), False)
    assert r["length_control"] == "no common support" and "adj_ratio" not in r


# ---- the paper's layer splits ----------------------------------------------------------------


def test_paper_segments():
    s = segments(28, "paper")
    assert [list(s[k][[0, -1]]) for k in ("early", "middle", "late")] == [[0, 6], [7, 20], [21, 27]]
    for L, (e, m) in {26: (7, 20), 32: (10, 20), 42: (12, 30)}.items():
        s = segments(L, "paper")
        assert s["early"][-1] == e - 1 and s["middle"][0] == e and s["middle"][-1] == m - 1 and s["late"][0] == m
    np.testing.assert_array_equal(segments(30, "paper")["middle"], segments(30)["middle"])  # unknown depth: thirds


def test_derived_metrics(tmp_path):
    rng = np.random.default_rng(35)
    nuc, spec = noise(rng, 4, 2, 3, loc=5.0), noise(rng, 4, 2, 3, loc=2.0)
    g = grp(tmp_path, "d", {"nuclear": nuc, "spectral": spec}, loss=[0.5, 1.0, 2.0, 4.0])
    np.testing.assert_allclose(g.values["s_ratio"], spec / nuc)
    np.testing.assert_allclose(g.values["s_sum_per_loss"], nuc / np.array([0.5, 1.0, 2.0, 4.0])[:, None, None])
