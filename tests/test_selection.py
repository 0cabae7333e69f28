"""Scores, METRIC grammar, selection by score, writing back in the input's format, score analysis."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from conftest import make_model, make_tokenizer
from layergrad import cli
from layergrad.run import engine
from layergrad.config import RunConfig
from layergrad.inputs.data import load_examples
from layergrad.analysis.selection import (
    Amount, MetricError, RunDataError, metric_values, parse_amount, parse_metric, run_examples, score_table, select,
)
from layergrad.store import load_results
from helpers import JSONL_LINES, loaded, selection_run

# ------------------------------------------------------------------------------ the grammar


@pytest.mark.parametrize("text,name", [
    ("ifd", "ifd"),
    ("IFD_PPL", "ifd_ppl"),
    ("nuclear", "nuclear:all:mean"),
    ("nuclear:attn", "nuclear:attn:mean"),
    ("effective_rank:attn:mean", "effective_rank:attn:mean"),
    ("effective_rank:attn:all", "effective_rank:attn:mean"),
    ("nuclear:mlp:late", "nuclear:mlp:late"),
    ("nuclear:k,q:0-1,3", "nuclear:q,k:0-1,3"),
    ("nuclear:q,k,v,o,qkv:early", "nuclear:attn:early"),
    ("top1_share:mlp,attn:middle", "top1_share:attn,mlp:middle"),
    ("top1_share:all,unknown:middle", "top1_share:all:middle"),
    ("stable_rank::late", "stable_rank:all:late"),
])
def test_metric_names_are_canonical(text, name):
    assert parse_metric(text).name == name


@pytest.mark.parametrize("text,hint", [
    ("effective-rank:attn", "did you mean 'effective_rank'"),
    ("nucler", "did you mean 'nuclear'"),
    ("nuclear:atn", "did you mean 'attn'"),
    ("nuclear:attn:lates", "did you mean 'late'"),
    ("nuclear:attn:5-2", "A <= B"),
    ("ifd:attn", "takes no roles"),
    ("nuclear:attn:late:x", "at most"),
    ("nuclear:lm_head", "outside the layer stack"),
])
def test_metric_errors_name_the_fix(text, hint):
    with pytest.raises(MetricError, match=hint):
        parse_metric(text)


def test_layer_words_use_the_thirds_of_the_depth():
    m = parse_metric("nuclear:attn:late")
    assert m.layer_indices(30).tolist() == list(range(20, 30))
    assert parse_metric("nuclear:attn:early").layer_indices(32).tolist() == list(range(0, 11))
    assert parse_metric("nuclear:attn:0-2,5").layer_indices(6).tolist() == [0, 1, 2, 5]
    with pytest.raises(MetricError, match="layers 0-2"):
        parse_metric("nuclear:attn:3").layer_indices(3)


@pytest.mark.parametrize("direction,text,n,want", [
    ("top", "5", 3, 3), ("top", "20%", 60, 12), ("bottom", "29%", 100, 29), ("ratio", "0.2", 60, 12),
    ("ratio", "0.29", 100, 29), ("top", "0", 10, 0), ("ratio", "1", 7, 7),
])
def test_amounts(direction, text, n, want):
    assert parse_amount(direction, text).of(n) == want


@pytest.mark.parametrize("direction,text", [("ratio", "0"), ("ratio", "1.5"), ("top", "-1"), ("top", "x"), ("bottom", "120%")])
def test_bad_amounts(direction, text):
    with pytest.raises(MetricError, match=f"--{direction}"):
        parse_amount(direction, text)


# ------------------------------------------------------------------------------ selection


def table(scores, status=None, name="loss"):
    n = len(scores)
    return pd.DataFrame({
        "id": [f"e{k}" for k in range(n)], "group": "g", "source": "d.json", "index": range(n),
        "order": range(n), "status": status or ["ok"] * n, name: scores,
    })


def test_top_and_bottom_are_the_extremes_with_ties_broken_by_input_order():
    t = table([3.0, 1.0, 3.0, 2.0, 1.0, 3.0, np.nan])
    top = select(t, "loss", Amount("top", count=2))
    assert top.ids == ["e0", "e2"]  # three tied at 3.0: the earliest two records
    assert top.ranked == ["e0", "e2", "e5", "e3", "e1", "e4"]  # NaN is not eligible
    assert select(t, "loss", Amount("bottom", count=3)).ids == ["e1", "e4", "e3"]
    assert select(t, "loss", Amount("top", fraction=0.5)).ids == ["e0", "e2", "e5"]
    assert select(t, "loss", Amount("top", count=99)).ids == top.ranked
    # the same with the rows shuffled: order comes from the `order` column, not the row position
    shuffled = t.sample(frac=1, random_state=3)
    assert select(shuffled, "loss", Amount("top", count=2)).ids == ["e0", "e2"]


def test_selection_equals_a_brute_force_sort():
    rng = np.random.default_rng(0)
    v = rng.integers(0, 5, 40).astype(float)  # many ties
    t = table(list(v))
    for k in (0, 1, 7, 40):
        want_top = sorted(range(40), key=lambda i: (-v[i], i))[:k]
        want_bottom = sorted(range(40), key=lambda i: (v[i], i))[:k]
        assert select(t, "loss", Amount("top", count=k)).ids == [f"e{i}" for i in want_top]
        assert select(t, "loss", Amount("bottom", count=k)).ids == [f"e{i}" for i in want_bottom]


def test_ifd_filter_drops_nan_and_values_above_one_keeps_one():
    """Cherry_LLM's filter (``if mean_rate > 1: continue``): IFD above 1 is dropped, exactly 1 is kept."""
    t = table([0.5, 1.0, 0.9, np.nan, 1.7, 0.2, 1.0000001], status=["ok"] * 5 + ["failed", "ok"], name="ifd")
    sel = select(t, "ifd", Amount("top", count=10))
    assert sel.ids == ["e1", "e2", "e0"]  # 1.0 kept; 1.7 and 1.0000001 dropped, NaN dropped, failed not eligible
    assert sel.dropped == {"with status other than ok": 1, "with ifd NaN": 1, "with ifd > 1 (IFD filter)": 2}
    summary = sel.summary(t.set_index("id")["ifd"])
    assert any("IFD filter on" in line and "kept ifd <= 1" in line and "2 with ifd > 1" in line for line in summary)
    assert select(t, "ifd", Amount("top", count=10), ifd_filter=False).ids == ["e4", "e6", "e1", "e2", "e0"]
    assert select(t, "ifd", Amount("bottom", count=1)).ids == ["e0"]
    for name in ("ifd", "ifd_ppl"):  # the boundary exactly, on both IFD columns
        edge = table([1.0, 1.0000001, np.nextafter(1.0, 2.0), np.nextafter(1.0, 0.0)], name=name)
        assert select(edge, name, Amount("top", count=10)).ids == ["e0", "e3"]
    # the filter is for IFD only
    assert select(table([1.5, 2.0]), "loss", Amount("top", count=1)).ids == ["e1"]


# ------------------------------------------------------------------------------ on a real run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return selection_run(tmp_path_factory.mktemp("sel"))


def test_spectral_scores_are_means_over_the_matching_modules(run_dir):
    res = load_results(run_dir / "run")
    mods = res.modules
    for text, roles, layers in [("nuclear:attn:late", {"q", "k", "v", "o"}, {2}), ("effective_rank:q,down:0-1", {"q", "down"}, {0, 1}),
                                ("frobenius", {"q", "k", "v", "o", "gate", "up", "down"}, {0, 1, 2})]:
        got = metric_values(res, text)
        m = mods[mods["role"].isin(roles) & mods["layer"].isin(layers)]
        want = m.groupby("id")[text.split(":")[0]].mean()
        assert m.groupby("id").size().eq(len(roles) * len(layers)).all()
        for i in want.index:
            assert got[i] == pytest.approx(want[i], rel=1e-12)
    with pytest.raises(MetricError, match="roles measured"):
        metric_values(res, "nuclear:qkv")


def test_score_table_has_every_example_and_default_scores(run_dir):
    res = load_results(run_dir / "run")
    t = score_table(res)
    assert list(t["id"]) == list(res.examples["id"])
    for c in ("ifd", "ifd_ppl", "loss_no_prompt", "loss", "n_response_tokens", "nuclear:attn:mean", "effective_rank:mlp:mean",
              "effective_rank:all:mean", "ifd_reason"):
        assert c in t.columns
    assert t.set_index("id").loc["a", "ifd"] == res.examples.set_index("id").loc["a", "ifd"]
    # "b" has one response token and no BOS: the default definition (cherry) still scores it without the
    # prompt (after '### Response:'); superfiltering would leave it undefined (tests/test_ifd.py)
    assert res.manifest["ifd"] == "cherry"
    assert math.isfinite(t.set_index("id").loc["b", "ifd"]) and pd.isna(t.set_index("id").loc["b", "ifd_reason"])


def _select(run_dir, out, *args):
    return cli.main(["select", str(run_dir / "run"), *args, "--out", str(out)])


def test_select_writes_the_input_lines_byte_for_byte(run_dir, tmp_path, capsys):
    res = load_results(run_dir / "run")
    out = tmp_path / "top.jsonl"
    assert _select(run_dir, out, "--by", "loss", "--top", "3") == 0
    printed = capsys.readouterr().out
    loss = res.examples.set_index("id")["loss"]
    top = sorted(loss.index, key=lambda i: (-loss[i], int(res.examples.set_index("id").loc[i, "order"])))[:3]
    exs = {e.id: e for e in load_examples([str(run_dir / "d.jsonl"), str(run_dir / "e.json")])[0]}
    in_order = [i for i in res.examples["id"] if i in top]
    lines = out.read_text(encoding="utf-8").splitlines()
    want = [exs[i].raw if exs[i].raw is not None else json.dumps(exs[i].record, ensure_ascii=False) for i in in_order]
    assert lines == want
    for line in lines:
        if line in JSONL_LINES:
            assert line in (run_dir / "d.jsonl").read_text(encoding="utf-8").splitlines()
    assert "selected 3 of 8 examples: top 3 by loss" in printed
    scores = pd.read_csv(tmp_path / "top.scores.csv")  # named after its output (issue 17)
    assert len(scores) == 8 and scores["selected"].sum() == 3
    assert set(scores.loc[scores["selected"], "id"].astype(str)) == set(top)
    assert scores.set_index("id").loc[top[0], "rank"] == 1


def test_select_jsonl_only_input_is_byte_identical(tmp_path, capsys):
    jl = tmp_path / "d.jsonl"
    jl.write_text("\n".join(JSONL_LINES) + "\n", encoding="utf-8")
    tok = make_tokenizer(bos=True)
    cfg = RunConfig(data=[str(jl)], out=str(tmp_path / "run"), progress=False, ifd=True, prompt_mode="base", modules="attn")
    engine.run(cfg, loaded=loaded(make_model("llama", len(tok)), tok))
    out = tmp_path / "all.jsonl"
    assert cli.main(["select", cfg.out, "--by", "n_tokens", "--top", "100%", "--out", str(out)]) == 0
    assert out.read_bytes() == jl.read_bytes()  # every record, input order, byte for byte
    out2 = tmp_path / "high_ifd.jsonl"
    assert cli.main(["select", cfg.out, "--by", "ifd", "--ratio", "0.5", "--order", "score", "--out", str(out2)]) == 0
    printed = capsys.readouterr().out
    assert "IFD filter on" in printed
    ifd = load_results(cfg.out).examples.set_index("id")["ifd"]
    eligible = ifd[(ifd <= 1) & ifd.notna()].sort_values(ascending=False, kind="stable")
    got = [json.loads(line)["id"] for line in out2.read_text(encoding="utf-8").splitlines()]
    assert got == list(eligible.index[: len(eligible) // 2])


def test_select_json_records_are_equal(run_dir, tmp_path):
    out = tmp_path / "low.json"
    assert _select(run_dir, out, "--by", "effective_rank:attn:mean", "--bottom", "50%") == 0
    got = json.loads(out.read_text(encoding="utf-8"))
    res = load_results(run_dir / "run")
    v = metric_values(res, "effective_rank:attn:mean")
    order = res.examples.set_index("id")["order"]
    ok = v[res.examples.set_index("id").loc[v.index, "status"].eq("ok").to_numpy()].dropna()
    low = sorted(ok.index, key=lambda i: (ok[i], order[i]))[: len(ok) // 2]
    exs = {e.id: e for e in load_examples([str(run_dir / "d.jsonl"), str(run_dir / "e.json")])[0]}
    assert got == [exs[i].record for i in res.examples["id"] if i in low]


def test_select_refuses_changed_data_and_bad_metrics(run_dir, tmp_path, capsys):
    res = load_results(run_dir / "run")
    changed = tmp_path / "d.jsonl"
    changed.write_text(JSONL_LINES[0].replace("42.", "43.") + "\n", encoding="utf-8")
    with pytest.raises(RunDataError, match="changed since the run"):
        run_examples(res, [str(changed), str(run_dir / "e.json")])
    assert _select(run_dir, tmp_path / "x.json", "--by", "nuclear:atn", "--top", "1") == 2
    assert "did you mean 'attn'" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


def test_scores_merge_keyed_by_id(run_dir, tmp_path, capsys):
    out = tmp_path / "scored.jsonl"
    assert cli.main(["scores", str(run_dir / "run"), "--out", str(out), "--metric", "nuclear:mlp:late", "--prefix", "lg_"]) == 0
    res = load_results(run_dir / "run")
    t = score_table(res, None).set_index("id")
    exs = {e.id: e for e in load_examples([str(run_dir / "d.jsonl"), str(run_dir / "e.json")])[0]}
    recs = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert len(recs) == 8
    for rec, i in zip(recs, res.examples["id"]):
        orig = exs[i].record
        assert {k: rec[k] for k in orig} == orig  # the input record, untouched
        assert rec["lg_loss"] == pytest.approx(t.loc[i, "loss"], rel=1e-15)
        assert rec["lg_nuclear:mlp:late"] == pytest.approx(metric_values(res, "nuclear:mlp:late")[i], rel=1e-15)
        assert isinstance(rec["lg_n_response_tokens"], int)
        if math.isnan(t.loc[i, "ifd"]):
            assert rec["lg_ifd"] is None  # NaN is null, valid JSON
        else:
            assert rec["lg_ifd"] == pytest.approx(t.loc[i, "ifd"], rel=1e-15)
    # a record field of the same name is never overwritten
    from dataclasses import replace

    from layergrad.analysis.selection import merge_scores

    first = replace(exs["a"], record={**exs["a"].record, "loss": 0.5})
    with pytest.raises(RunDataError, match="already has a field 'loss'.*--prefix"):
        merge_scores([first], score_table(res, None), ["loss"])
    assert merge_scores([first], score_table(res, None), ["loss"], prefix="s_")[0].record["loss"] == 0.5


# ------------------------------------------------------------------------------ analysis of scores


def test_spearman_matrix_equals_scipy_pairwise_complete():
    from scipy.stats import spearmanr

    from layergrad.analysis.scores import spearman_matrix

    rng = np.random.default_rng(1)
    a = rng.normal(size=30)
    b = a + rng.normal(size=30)
    c = rng.integers(0, 4, 30).astype(float)  # ties
    b[[3, 7]] = np.nan
    t = pd.DataFrame({"id": range(30), "status": ["ok"] * 29 + ["failed"], "a": a, "b": b, "c": c})
    rho, n = spearman_matrix(t)
    ok = slice(0, 29)
    for x, y in [("a", "b"), ("a", "c"), ("b", "c")]:
        xs, ys = t[x].to_numpy()[ok], t[y].to_numpy()[ok]
        keep = np.isfinite(xs) & np.isfinite(ys)
        assert rho.loc[x, y] == pytest.approx(spearmanr(xs[keep], ys[keep]).statistic, rel=1e-12)
        assert n.loc[x, y] == keep.sum()
    assert rho.loc["a", "a"] == pytest.approx(1.0)


def test_high_low_split_curves(run_dir):
    from layergrad.analysis.curves import curve_table
    from layergrad.analysis.scores import split_curves, split_groups, split_ids, split_segments

    res = load_results(run_dir / "run")
    t = score_table(res)
    high, low = split_ids(t, "loss", 0.5)
    ok = t[t["status"] == "ok"].set_index("id")["loss"]
    assert len(high) == len(low) == len(ok) // 2 and not set(high) & set(low)
    assert min(ok[high]) >= max(ok[low])
    curves = split_curves(res, t, "loss", 0.5, metrics=("effective_rank",), roles=("attn",))
    mods = res.modules[res.modules["role"].isin(["q", "k", "v", "o"])]
    for half, ids in (("high", high), ("low", low)):
        for layer in range(3):
            per_ex = mods[mods["id"].isin(ids) & (mods["layer"] == layer)].groupby("id")["effective_rank"].mean()
            got = curves[(curves["half"] == half) & (curves["layer"] == layer)]["mean"].item()
            assert got == pytest.approx(per_ex.mean(), rel=1e-12)
    seg = split_segments(res, t, "loss", 0.5, metrics=("nuclear",), roles=("mlp",))
    assert set(seg["segment"]) == {"early", "middle", "late", "all"}
    groups = split_groups(res, t, "loss", 0.5)
    assert [g.label for g in groups] == ["high loss", "low loss"]
    assert set(groups[0].ids) == set(high) and set(groups[1].ids) == set(low)
    ct = curve_table(groups, ("effective_rank",), n_boot=20)
    assert set(ct["group"]) == {"high loss", "low loss"}


def test_split_halves_are_disjoint_when_ties_straddle_the_cut():
    import pandas as pd

    from layergrad.analysis.scores import split_ids

    t = pd.DataFrame({"id": list("abcd"), "group": "g", "status": "ok", "loss": [1.0, 2.0, 2.0, 3.0]})
    high, low = split_ids(t, "loss", 0.5)
    assert high == ["d", "b"] and low == ["a", "c"] and not set(high) & set(low)
    same = pd.DataFrame({"id": list("abcd"), "group": "g", "status": "ok", "loss": [1.0] * 4})
    high, low = split_ids(same, "loss", 0.5)
    assert high == ["a", "b"] and low == ["d", "c"]
