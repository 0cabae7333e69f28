"""The quality study: [quality] in an experiment TOML, its effects (high vs low per metric) against a
float64 recomputation from the stored rows, the agreement page, and the experiment's hook."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from conftest import DATA, write_json
from layergrad.analysis.groups import load_group
from layergrad.analysis.quality import (CLAIM, QualityCell, cosine_summary, length_overlap, quality_effects, reasoning_effects,
                                        score_correlations)
from layergrad.experiment import ExperimentError, load_config, plan, run_experiment
from layergrad.report.quality import study_cells
from layergrad.store import load_results

SHORT = ["Yes.", "No.", "It is 7.", "Four."]
LONG = ["Step 1: add 3 and 4. Step 2: the sum is 7. The answer is 7.",
        "First, 12 plus 30 is 42, because 10 + 30 = 40 and 2 more is 42. So 42.",
        "A lion would not salute; salutes are a military custom of people. No.",
        "Ava had 3 apples, bought 4 more, and now holds 3 + 4 = 7 apples in total."]


REASONING = ["Let me think. 3 + 4: three, then four more, five, six, seven. Check: 7 - 4 = 3. So the answer is 7.",
             "Hmm, 12 + 30. Tens: 10 + 30 = 40; units: 2. Total 42. Verify: 42 - 30 = 12. Answer: 42.",
             "Wait, can a lion salute? Salutes are human military customs; a lion has no such custom. So no."]


def _toml(tmp_path, model, metrics=("m1", "m2"), quality="", report=""):
    (tmp_path / "data").mkdir(exist_ok=True)
    write_json(tmp_path / "data" / "reasoning.json", [{"instruction": f"R{i}?", "output": o} for i, o in enumerate(REASONING)])
    for m in metrics:
        for level, outs in (("highest", LONG), ("lowest", SHORT)):
            write_json(tmp_path / "data" / f"{m}_pool_{level}.json",
                       [{"instruction": f"Q{i} for {m}?", "output": o, "score": i} for i, o in enumerate(outs)])
    path = tmp_path / "q.toml"
    path.write_text(f"""name = "q"
out = "{tmp_path / 'out'}"
data_root = "data"
[run]
prompt_mode = "base"
modules = "q,k,v,o"
cosine = true
progress = false
[[models]]
name = "tiny"
model = "{model}"
[[groups]]
label = "traces"
data = "reasoning.json"
[matrix]
data = "{{metric}}_pool_{{level}}.json"
label = "{{metric}} / {{level}}"
metric = {list(metrics)!r}
level = {{ "high" = "highest", "low" = "lowest" }}
[[matrix.comparisons]]
title = "{{metric}}: high vs low"
each = ["metric"]
{quality}
{report}""".replace("'", '"'))
    return path


def _per_example(run_dir, prop, geometric=False):
    """Each example's mean of ``prop`` over its modules (q/k/v/o in every layer: the mean over layers and roles);
    ``geometric``: per role the mean over layers, then the geometric mean over roles (the primary analysis's outcome)."""
    res = load_results(run_dir)
    mods = res.modules[res.modules["layer"] >= 0]
    if geometric:
        per_role = mods.groupby(["id", "role"])[prop].mean()
        v = np.exp(np.log(per_role).groupby(level="id").mean())
    else:
        v = mods.groupby("id")[prop].mean()
    return v.reindex(res.ok["id"]).to_numpy(np.float64), res.ok["n_response_tokens"].to_numpy(float)


def test_effects_equal_a_recomputation_and_the_page_is_written(tmp_path, tiny_folder):
    path = _toml(tmp_path, tiny_folder, quality="[quality]\nmetric = \"metric\"\nlevel = \"level\"\nreasoning = [\"traces\"]")
    run_experiment(path, reports=False, log=lambda *_: None)
    conf = load_config(path)
    jobs, _ = plan(conf)
    cells, reasoning, notes = study_cells(conf, jobs)
    assert [(c.model, c.pool, c.metric) for c in cells] == [("tiny", "", "m1"), ("tiny", "", "m2")] and not notes
    eff = quality_effects(cells)
    assert len(eff) == 4
    runs = {j.label: j.cfg.out for j in jobs}
    for _, r in eff.iterrows():
        hi, len_hi = _per_example(runs[f"{r['metric']} / high"], r["property"], geometric=True)
        lo, len_lo = _per_example(runs[f"{r['metric']} / low"], r["property"], geometric=True)
        assert r["n_high"] == 4 and r["n_low"] == 4
        assert r["ratio"] == pytest.approx(np.exp(np.log(hi).mean() - np.log(lo).mean()), rel=1e-10)
        assert r["ratio_ci_low"] <= r["ratio"] <= r["ratio_ci_high"]
        p_basis = r["adj_p_holm"] if r["basis"] == "at equal length" else r["p_holm"]  # the verdicts' rule: Holm, 0.05
        assert r["effect_p_holm"] == p_basis
        sign = (1 if r["effect"] > 1 else -1) if p_basis < 0.05 else 0
        assert r["sign"] == sign and r["verdict"]
        assert r["agrees"] == ("unsettled" if sign == 0 else "yes" if sign == CLAIM[r["property"]] else "no")
        assert r["median_tokens_high"] == np.median(len_hi) and r["median_tokens_low"] == np.median(len_lo)
        assert r["median_tokens_high"] > r["median_tokens_low"]  # LONG vs SHORT outputs
    from layergrad.report.quality import write_page

    # the reasoning group against each of the four splits, ratio traces / split
    assert [(c.reasoning.label, c.against.label) for c in reasoning] == [("traces", f"{m} / {lv}") for m in ("m1", "m2") for lv in ("high", "low")]
    reff = reasoning_effects(reasoning)
    assert len(reff) == 8
    for _, r in reff.iterrows():
        other, _ = _per_example(runs[r["against"]], r["property"], geometric=True)
        mine, _ = _per_example(runs["traces"], r["property"], geometric=True)
        assert r["n_reasoning"] == 3 and r["ratio"] == pytest.approx(np.exp(np.log(mine).mean() - np.log(other).mean()), rel=1e-10)
        assert (r["claim"] == 1) == (r["property"] == "effective_rank")  # the paper: reasoning data have the highest effective ranks
        if r["property"] == "nuclear":  # no claim, so no agreement either way, whatever the sign
            assert r["agrees"] == ""
    index = write_page(cells, tmp_path / "page", title="t", scores=["score"], reasoning=reasoning)
    text = index.read_text()
    assert "Agreement matrix" in text and "at equal length" in text and "exploratory" in text
    assert (tmp_path / "page" / "figures" / "agreement.png").stat().st_size > 0
    back = pd.read_csv(tmp_path / "page" / "quality_effects.csv")
    assert np.allclose(back["ratio"], eff["ratio"], rtol=1e-12)
    # correlations of the records' own score with each property over all 16 examples, against the textbook
    # partial-correlation formula on ranks (the code regresses ranks instead)
    from scipy import stats

    corr = pd.read_csv(tmp_path / "page" / "quality_correlations.csv")
    assert len(corr) == 2 and set(corr["n"]) == {16}
    for _, r in corr.iterrows():
        xs, ys, zs = [], [], []
        for j in jobs:
            if j.label == "traces":  # not a split: no score, not in the correlations
                continue
            v, n_tok = _per_example(j.cfg.out, r["property"])
            xs += list(range(4))  # "score" = i of Q{i}, in record order (= run order here)
            ys += list(v)
            zs += list(n_tok)
        x, y, z = (stats.rankdata(a) for a in (xs, ys, zs))
        assert r["spearman"] == pytest.approx(stats.spearmanr(xs, ys)[0], abs=1e-12)
        rxy, rxz, ryz = np.corrcoef(x, y)[0, 1], np.corrcoef(x, z)[0, 1], np.corrcoef(y, z)[0, 1]
        assert r["length_support"]  # every score value has a long (high split) and a short (low split) example
        assert r["partial_spearman"] == pytest.approx((rxy - rxz * ryz) / np.sqrt((1 - rxz**2) * (1 - ryz**2)), abs=1e-10)
    # cosines per split and kind, against the stored cosine rows: each example's mean over its rows, then a t interval
    cos = cosine_summary(cells)
    assert set(cos["kind"]) == {"next_layer", "q_o", "k_v"} and len(cos) == 2 * 2 * 3
    for _, r in cos.iterrows():
        rows = load_results(runs[f"{r['metric']} / {r['split']}"]).cosine
        per_ex = rows[rows["kind"] == r["kind"]].groupby("id")["cosine"].mean()
        lo, hi = stats.t.interval(0.95, len(per_ex) - 1, loc=per_ex.mean(), scale=stats.sem(per_ex))
        assert r["n"] == 4 and r["mean"] == pytest.approx(per_ex.mean(), abs=1e-12)
        assert (r["ci_low"], r["ci_high"]) == pytest.approx((lo, hi), abs=1e-12)
        assert r["mean_abs"] == pytest.approx(rows[rows["kind"] == r["kind"]]["cosine"].abs().groupby(rows["id"]).mean().mean(), abs=1e-12)
    assert "Gradient cosines" in text and (tmp_path / "page" / "quality_cosines.csv").exists()
    assert "Reasoning traces against the instruction splits" in text and "traces, effective_rank" in text


def test_score_correlations_are_partial_on_length_only_where_the_lengths_overlap():
    from scipy import stats

    rng = np.random.default_rng(0)
    n = 40
    score = rng.normal(size=n)
    apart = np.where(score > np.median(score), 1000.0, 10.0) + rng.uniform(0, 5, n)  # high scores: long; low: short
    mixed = rng.uniform(10, 1000, n)
    prop = rng.normal(size=n) + 0.5 * score
    frame = pd.DataFrame({"model": "m", "pool": "p", "score": score, "nuclear": prop, "n_response_tokens": apart})
    frame = pd.concat([frame, frame.assign(pool="q", n_response_tokens=mixed)])
    c = score_correlations(frame, ["score"], ["nuclear"]).set_index("pool")
    assert c.loc["p", "spearman"] == pytest.approx(stats.spearmanr(score, prop)[0], abs=1e-12)
    assert not c.loc["p", "length_support"] and np.isnan(c.loc["p", "partial_spearman"]) and np.isnan(c.loc["p", "partial_p_value"])
    assert c.loc["q", "length_support"]
    x, y, z = (stats.rankdata(a) for a in (score, prop, mixed))
    rxy, rxz, ryz = np.corrcoef(x, y)[0, 1], np.corrcoef(x, z)[0, 1], np.corrcoef(y, z)[0, 1]
    r = (rxy - rxz * ryz) / np.sqrt((1 - rxz**2) * (1 - ryz**2))
    assert c.loc["q", "partial_spearman"] == pytest.approx(r, abs=1e-10)
    t = r * np.sqrt((n - 3) / (1 - r * r))
    assert c.loc["q", "partial_p_value"] == pytest.approx(2 * stats.t.sf(abs(t), n - 3), rel=1e-9)
    # an integer score where most examples share the top value (instag, difficulty): split below the top value
    tied = np.where(np.arange(n) < 0.6 * n, 9.0, np.arange(n) % 3)
    t_frame = pd.DataFrame({"model": "m", "pool": "p", "score": tied, "nuclear": prop, "n_response_tokens": mixed})
    c = score_correlations(t_frame, ["score"], ["nuclear"]).iloc[0]
    assert c["length_support"] and np.isfinite(c["partial_spearman"])


def test_the_agreement_sign_follows_the_verdicts_rule():
    from layergrad.analysis.quality import _sign

    assert _sign(0.5, 0.01) == -1 and _sign(2.0, 0.049) == 1  # significant after Holm: the effect's side of 1
    assert _sign(0.5, 0.05) == 0 and _sign(2.0, 0.3) == 0      # not significant: unsettled, whatever the ratio
    assert _sign(np.nan, 0.01) == 0 and _sign(0.5, np.nan) == 0


def test_length_overlap():
    assert length_overlap(np.array([1.0, 2, 3]), np.array([1.0, 2, 3])) == 1
    assert length_overlap(np.array([1.0, 2]), np.array([5.0, 6])) == 0
    assert length_overlap(np.array([1.0, 4]), np.array([3.0, 9, np.nan])) == pytest.approx(2 / 4)  # 4 in [3, 9], 3 in [1, 4]


@pytest.mark.slow  # a whole experiment: one full comparison report (figures) besides the quality page, ~20 s of CPU
def test_the_experiment_writes_the_quality_page_and_refuses_bad_quality_keys(tmp_path, tiny_folder):
    bad = _toml(tmp_path, tiny_folder, metrics=("m1",), quality="[quality]\nmetrc = \"metric\"\nproperties = [\"nuclearr\"]\nreasoning = [\"tracs\"]")
    with pytest.raises(ExperimentError) as e:
        load_config(bad)
    assert "unknown key 'metrc' (did you mean 'metric'?)" in str(e.value) and "did you mean 'nuclear'?" in str(e.value)
    assert "[quality] reasoning: 'tracs' is no group's label (did you mean 'traces'?)" in str(e.value)
    path = _toml(tmp_path, tiny_folder, metrics=("m1",), quality="[quality]", report="[report]\nn_boot = 100\nn_perm = 100")
    overview = run_experiment(path, log=lambda *_: None)
    assert "quality/index.html" in overview.read_text()
    eff = pd.read_csv(tmp_path / "out" / "reports" / "quality" / "quality_effects.csv")
    assert list(eff["property"]) == ["nuclear", "effective_rank"] and set(eff["metric"]) == {"m1"}


@pytest.mark.skipif(not (DATA / "quality_10k").exists(), reason="shared/data/quality_10k not present beside the repository")
def test_the_shipped_study_plans_every_present_split():
    from conftest import REPO

    conf = load_config(REPO / "experiments" / "quality.toml")
    jobs, notes = plan(conf)
    assert len(jobs) == 15  # 2 pools x 4 metrics x 2 splits, less Magpie's reward (absent), and the R1 traces
    assert any("reward_mag" in n for n in notes)
