"""The report's Scores panel on synthetic runs with known answers (written through the real store).

Runs: attention nuclear norms fall and effective ranks rise with IFD by construction, so their
Spearman with IFD is -1 and +1; the high/low split is checked against a sort by hand and its
curves against direct means of the stored module rows.
"""
from __future__ import annotations

import html as htmllib
import math
import re

import numpy as np
import pandas as pd
import pytest

from layergrad.analysis import AnalysisError
from layergrad.report import make_report
from layergrad.report.scores import split
from layergrad.store import RunStore, load_results
from layergrad.store.schema import METRICS
from helpers import ROLE_PATHS
from helpers import report_parser

ROLES = ("q", "k", "v", "o", "gate", "up", "down")
ATTN = ("q", "k", "v", "o")
L = 3
FAST = {"n_boot": 50, "n_perm": 99, "metrics": ("nuclear", "effective_rank")}
MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"


def ifd_run(path, prefix, ifd_values, *, ifd=True, seed=0, lengths=None, data="alpaca.json", failed=0):
    """A run whose example i has IFD ``ifd_values[i]`` (NaN: undefined) and known spectra:

    attn modules: nuclear = 10 - 5 * ifd + 0.1 * layer + 0.01 * role, effective_rank = 2 + 3 * ifd + 0.2 * layer
    (both monotone in IFD after averaging over modules); mlp modules: random. Example i's loss is
    ``1 + 0.1 * i``. Without ``ifd`` the rows carry no IFD fields and the manifest says ``ifd: false``.
    ``failed``: extra examples with status failed (no module rows).
    """
    rng = np.random.default_rng(seed)
    n = len(ifd_values)
    lengths = np.arange(20, 20 + 7 * n, 7) if lengths is None else lengths
    modules = [f"model.layers.{l}.{ROLE_PATHS[r]}" for l in range(L) for r in ROLES]
    manifest = {"model": MODEL, "model_fingerprint": "fp", "dtype": "float32", "prompt_mode": "base", "max_length": 1024,
                "modules": "all", "module_names": modules, "n_layers": L, "data": [data], "group": None, "spectrum_k": 8,
                "created": "2025-01-01T00:00:00Z", "layergrad_version": "0.1.0", "ifd": ifd}
    store = RunStore(path)
    store.open(manifest)
    ex, mods = [], []
    for i, v in enumerate(ifd_values):
        loss = 1.0 + 0.1 * i
        row = {"id": f"{prefix}{i}", "group": None, "source": data, "index": i, "order": i, "status": "ok", "reason": None,
               "instruction": "q", "output": "a", "loss": loss, "n_tokens": int(lengths[i]) + 10, "n_prompt_tokens": 10,
               "n_response_tokens": int(lengths[i]), "response_chars": 4 * int(lengths[i]), "truncated": False}
        if ifd:
            undefined = math.isnan(v)
            row.update({"loss_with_prompt": loss, "loss_no_prompt": math.nan if undefined else loss / v, "ifd": v,
                        "ifd_ppl": math.nan if undefined else math.exp(loss - loss / v),
                        "ifd_reason": "no response tokens" if undefined else None})
        ex.append(row)
        x = 0.5 if math.isnan(v) else v
        for l in range(L):
            for r, role in enumerate(ROLES):
                vals = {m: float(rng.uniform(0.5, 1.5)) for m in METRICS}
                if role in ATTN:
                    vals["nuclear"] = 10 - 5 * x + 0.1 * l + 0.01 * r
                    vals["effective_rank"] = 2 + 3 * x + 0.2 * l
                mods.append({"id": f"{prefix}{i}", "module": f"model.layers.{l}.{ROLE_PATHS[role]}", "layer": l, "role": role,
                             "out_features": 8, "in_features": 8, "rank": 8, "method": "factored", **vals})
    for j in range(failed):
        ex.append({"id": f"{prefix}x{j}", "group": None, "source": data, "index": n + j, "order": n + j, "status": "failed",
                   "reason": "out of memory", **({"ifd": math.nan} if ifd else {})})
    store.write_part(ex, mods)
    return path


IFD_A = [0.9, 0.3, 0.55, 1.2, 0.1, math.nan, 0.7, 0.45]  # one undefined IFD, one above 1 (kept: no IFD filter in the split)
IFD_B = [0.65, 0.2, 0.95, 0.35, 0.8, 0.05]


@pytest.fixture(scope="module")
def ifd_report(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("scores")
    a = ifd_run(tmp / "a", "a", IFD_A, data="good.json", failed=1)
    b = ifd_run(tmp / "b", "b", IFD_B, seed=1, data="bad.json")
    out = tmp / "out"
    return make_report([("good", a), ("bad", b)], out, **FAST), out


def _ifd_by_id():
    return pd.Series(IFD_A + IFD_B, index=[f"a{i}" for i in range(len(IFD_A))] + [f"b{i}" for i in range(len(IFD_B))])


def test_tables_exist_with_their_columns(ifd_report):
    _, out = ifd_report
    want = {
        "scores_summary": ["group", "score", "n", "n_nan", "mean", "std", "min", "q25", "median", "q75", "max"],
        "scores_spearman": ["score_a", "score_b", "rho", "n"],
        "split_summary": ["split_by", "half", "group", "n", "min", "median", "max"],
        "split_curves": ["split_by", "half", "role", "layer", "metric", "mean", "ci_low", "ci_high", "n"],
    }
    for name, cols in want.items():
        assert list(pd.read_csv(out / f"{name}.csv").columns) == cols, name
        assert (out / f"{name}.md").exists() and r"\begin{longtable}" in (out / f"{name}.tex").read_text()
    assert list(pd.read_csv(out / "split_ids.csv").columns) == ["half", "rank", "id", "group", "score"]
    scores = pd.read_csv(out / "scores.csv")
    panel = ["ifd", "ifd_ppl", "loss_no_prompt", "loss", "n_response_tokens", "nuclear:attn:mean", "nuclear:mlp:mean",
             "effective_rank:attn:mean", "effective_rank:mlp:mean"]
    assert [c for c in scores.columns if c in panel] == panel
    assert len(scores) == len(IFD_A) + len(IFD_B) and set(scores["group"]) == {"good", "bad"}  # ok examples only
    summary = pd.read_csv(out / "scores_summary.csv")
    assert set(summary["score"]) == set(panel) and set(summary["group"]) == {"good", "bad"}
    row = summary.query("group == 'good' and score == 'ifd'").iloc[0]
    finite = [v for v in IFD_A if not math.isnan(v)]
    assert row["n"] == len(finite) and row["n_nan"] == 1 and row["median"] == pytest.approx(np.median(finite))


def test_spearman_of_monotone_scores_is_one(ifd_report):
    _, out = ifd_report
    sp = pd.read_csv(out / "scores_spearman.csv").set_index(["score_a", "score_b"])
    n_finite = sum(not math.isnan(v) for v in IFD_A + IFD_B)
    assert sp.loc[("ifd", "nuclear:attn:mean"), "rho"] == pytest.approx(-1.0, abs=1e-12)
    assert sp.loc[("ifd", "effective_rank:attn:mean"), "rho"] == pytest.approx(1.0, abs=1e-12)
    assert sp.loc[("nuclear:attn:mean", "effective_rank:attn:mean"), "rho"] == pytest.approx(-1.0, abs=1e-12)
    assert sp.loc[("ifd", "nuclear:attn:mean"), "n"] == n_finite  # the NaN IFD leaves only its pairs
    assert sp.loc[("loss", "nuclear:attn:mean"), "n"] == len(IFD_A) + len(IFD_B)
    assert abs(sp.loc[("ifd", "nuclear:mlp:mean"), "rho"]) < 0.9  # random: no spurious perfect correlation
    assert len(sp) == 9 * 9


def test_split_by_ifd_holds_the_top_and_bottom_halves(ifd_report):
    _, out = ifd_report
    ifd = _ifd_by_id().dropna().sort_values(ascending=False)
    k = len(ifd) // 2
    ids = pd.read_csv(out / "split_ids.csv")
    assert set(ids["half"]) == {"high ifd", "low ifd"}
    assert ids.query("half == 'high ifd'")["id"].tolist() == ifd.index[:k].tolist()
    assert ids.query("half == 'low ifd'")["id"].tolist() == ifd.index[::-1][:k].tolist()
    assert ids["score"].tolist() == pytest.approx(ifd.iloc[:k].tolist() + ifd.iloc[::-1].iloc[:k].tolist())
    summ = pd.read_csv(out / "split_summary.csv").set_index(["half", "group"])
    assert summ.loc[("high ifd", "all"), "n"] == k and summ.loc[("high ifd", "all"), "min"] == pytest.approx(ifd.iloc[k - 1])
    assert summ.loc[("high ifd", "good"), "n"] + summ.loc[("high ifd", "bad"), "n"] == k


def test_split_curves_equal_direct_means(ifd_report):
    rep, out = ifd_report
    curves = pd.read_csv(out / "split_curves.csv")
    assert set(curves["metric"]) == {"nuclear", "effective_rank"} and set(curves["role"]) == set(ROLES)
    ids = pd.read_csv(out / "split_ids.csv")
    mods = pd.concat([load_results(out.parent / d).modules for d in ("a", "b")])
    for half in ("high ifd", "low ifd"):
        members = ids.loc[ids["half"] == half, "id"]
        m = mods[mods["id"].isin(members)]
        direct = m.groupby(["role", "layer"])[["nuclear", "effective_rank"]].mean()
        got = curves[curves["half"] == half]
        for row in got.itertuples():
            assert row.mean == pytest.approx(direct.loc[(row.role, row.layer), row.metric], rel=1e-12)
            assert row.n == len(members)
            assert row.ci_low <= row.mean <= row.ci_high
    hi = curves.query("half == 'high ifd' and metric == 'nuclear' and role == 'q'")["mean"].to_numpy()
    lo = curves.query("half == 'low ifd' and metric == 'nuclear' and role == 'q'")["mean"].to_numpy()
    assert (hi < lo).all()  # nuclear falls with IFD by construction


def test_html_shows_the_panel_figures_labelled(ifd_report):
    rep, out = ifd_report
    page = rep.index.read_text()
    stems = ["scores_distribution", "scores_spearman", "scores_split_nuclear", "scores_split_effective_rank"]
    imgs = re.findall(r'<img src="([^"]+)"', page)
    for stem in stems:
        assert f"figures/{stem}.png" in imgs
        assert (out / "figures" / f"{stem}.png").stat().st_size > 10_000
        svg = htmllib.unescape((out / "figures" / f"{stem}.svg").read_text())
        assert "SmolLM2-135M-Instruct" in svg and "prompt mode: base" in svg
        assert "good: good.json, n=8" in svg and "bad: bad.json, n=6" in svg
    text = htmllib.unescape(re.sub(r"<[^>]+>", " ", page))
    assert 'id="scores"' in page and "IFD is shown as the loss ratio" in text and "not computed" not in text
    for name in ("scores.csv", "scores_summary.csv", "scores_spearman.csv", "split_curves.csv", "split_ids.csv", "split_summary.csv"):
        assert f'href="{name}"' in page, name
    assert "high ifd (n=6)" in htmllib.unescape((out / "figures" / "scores_split_nuclear.svg").read_text())


def test_without_ifd_the_panel_says_so_and_uses_loss(tmp_path):
    """Runs made without --ifd (same ids in both: made unique as group/id)."""
    a = ifd_run(tmp_path / "a", "e", [0.5] * 6, ifd=False)
    b = ifd_run(tmp_path / "b", "e", [0.5] * 5, ifd=False, seed=3)
    rep = make_report([("A", a), ("B", b)], tmp_path / "out", **FAST)
    out = tmp_path / "out"
    text = htmllib.unescape(re.sub(r"<[^>]+>", " ", rep.index.read_text()))
    assert "IFD was not computed for these runs" in text
    scores = pd.read_csv(out / "scores.csv")
    assert not {"ifd", "ifd_ppl", "loss_no_prompt"} & set(scores.columns) and "loss" in scores.columns
    assert set(pd.read_csv(out / "scores_summary.csv")["score"]) == {
        "loss", "n_response_tokens", "nuclear:attn:mean", "nuclear:mlp:mean", "effective_rank:attn:mean", "effective_rank:mlp:mean"}
    assert any("written as group/id" in n for n in rep.notes) and scores["id"].is_unique
    ids = pd.read_csv(out / "split_ids.csv")
    loss = scores.set_index("id")["loss"].sort_values(ascending=False, kind="stable")  # 1.0 .. 1.5 in each run
    # ties (the same losses in A and B) go to the earlier input: run A before run B
    expected_high = sorted(loss.index, key=lambda i: (-loss[i], i[0] != "A"))[:5]
    expected_low = sorted(loss.index, key=lambda i: (loss[i], i[0] != "B"))[:5]
    assert ids.query("half == 'high loss'")["id"].tolist() == expected_high
    assert set(ids.query("half == 'low loss'")["id"]) == set(expected_low)
    assert (pd.read_csv(out / "split_curves.csv")["split_by"] == "loss").all()

    with pytest.raises(AnalysisError, match="no 'ifd' scores.*--ifd"):
        make_report([("A", a)], tmp_path / "out2", split_by="ifd", **FAST)


def test_split_is_disjoint_when_ties_straddle_the_cut():
    t = pd.DataFrame({"id": list("abcdef"), "status": ["ok"] * 5 + ["failed"], "order": range(6),
                      "n_response_tokens": [10, 20, 20, 20, 30, 99]})
    high, low = split(t, "n_response_tokens", 0.5)
    assert high == ["e", "b"] and low == ["a", "d"]  # c (the middle of 5) in neither; ties: earlier input is higher
    assert split(t, "n_response_tokens", 0.1) == ([], [])


def test_options_validated_and_few_examples_leave_the_panel_out(tmp_path, capsys):
    a = ifd_run(tmp_path / "a", "a", [0.1, 0.5, 0.9, 0.3, 0.7, 0.2, 0.8, 0.4])
    with pytest.raises(AnalysisError, match="--split-fraction 0.7"):
        make_report([("A", a)], tmp_path / "out", split_fraction=0.7)
    with pytest.raises(AnalysisError, match="did you mean 'effective_rank'"):
        make_report([("A", a)], tmp_path / "out", split_by="efective_rank:attn")
    assert not (tmp_path / "out" / "index.html").exists()

    args = report_parser().parse_args(["report", "--run", f"A={a}", "--out", str(tmp_path / "out"), "--metric", "nuclear",
                                 "--n-boot", "20", "--n-perm", "19", "--split-by", "effective_rank:attn:mean", "--split-fraction", "0.25"])
    assert args.func(args) == 0
    ids = pd.read_csv(tmp_path / "out" / "split_ids.csv")
    assert ids.query("half == 'high effective_rank:attn:mean'")["id"].tolist() == ["a2", "a6"]  # the two highest IFDs
    assert ids.query("half == 'low effective_rank:attn:mean'")["id"].tolist() == ["a0", "a5"]
    assert (tmp_path / "out" / "figures" / "scores_split_nuclear.png").exists()
    capsys.readouterr()

    few = ifd_run(tmp_path / "few", "f", [0.2, 0.4, 0.6])
    rep = make_report([("F", few)], tmp_path / "out", n_boot=20, n_perm=19, metrics=("nuclear",))
    assert any("scores panel left out: 3 ok example(s)" in n for n in rep.notes)
    assert 'id="scores"' not in rep.index.read_text()
    for name in ("scores.csv", "scores_summary.csv", "split_curves.csv", "split_ids.csv", "figures/scores_split_nuclear.png"):
        assert not (tmp_path / "out" / name).exists(), name  # no stale panel of the earlier report
