"""The report: files and columns, traceability, labels, validation, CLI, and a real headless browser."""
from __future__ import annotations

import html as htmllib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from layergrad.analysis import AnalysisError
from layergrad.report import build_report, make_report
from helpers import make_run, noise
from helpers import report_parser
from browser import browser_check, needs_chromium
from browser import chromium as _chromium

ROLES = ("q", "k", "v", "o")
L = 6
FAST = {"n_boot": 200, "n_perm": 499}


def _cosine_rows(n, rng):
    rows = []
    for i in range(n):
        for l in range(L):
            for kind, roles in (("next_layer", ROLES), ("q_o", ("q",)), ("k_v", ("k",))):
                if kind == "next_layer" and l == L - 1:
                    continue
                for r in roles:
                    rows.append({"id": f"e{i}", "kind": kind, "role": r, "layer": l, "module_a": f"model.layers.{l}.self_attn.{r}_proj",
                                 "module_b": "b", "cosine": float(np.tanh(0.1 * l + 0.1 * rng.standard_normal()))})
    return rows


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """Two groups: 'fast' (short answers) and 'slow' (long, larger and flatter gradients); NaNs, failures, cosines."""
    tmp = tmp_path_factory.mktemp("report")
    rng = np.random.default_rng(0)
    runs = []
    for label, shift, n in (("fast", 0.0, 14), ("slow", 1.0, 16)):
        lengths = rng.integers(20, 60, n) * (1 + 3 * shift)
        vals = {
            "nuclear": noise(rng, n, len(ROLES), L, loc=1.0 + shift, scale=0.1),
            "top1_share": noise(rng, n, len(ROLES), L, loc=0.4 - 0.1 * shift, scale=0.02),
            "effective_rank": noise(rng, n, len(ROLES), L, loc=4.0 + shift, scale=0.3),
        }
        if label == "slow":
            vals["nuclear"][2, 1, 3] = np.nan  # one NaN: excluded from that cell, reported
        path = make_run(tmp / label, vals, ROLES, lengths=lengths, model="HuggingFaceTB/SmolLM2-135M-Instruct",
                        prompt_mode="chat", data=(f"{label}_thinking.json",), cosine=_cosine_rows(n, rng),
                        not_ok=[("skipped", "no response tokens after truncation")] if label == "fast" else [])
        runs.append((label, path))
    out = tmp / "out"
    rep = make_report(runs, out, seed=0, **FAST)
    return rep, out


def test_outputs_and_columns(report):
    rep, out = report
    assert rep.index == out / "index.html" and rep.index.exists()
    want = {
        "curves": ["group", "role", "layer", "metric", "mean", "ci_low", "ci_high", "n"],
        "mad": ["group", "role", "segment", "metric", "mad", "ci_low", "ci_high"],
        "compare": ["group_a", "group_b", "design", "n_pairs", "role", "layer", "metric", "rel_diff", "ratio", "ratio_ci_low",
                    "ratio_ci_high", "auroc", "p_value", "p_adjusted", "correction", "min_p", "n_a", "n_b"],
        "length": ["group", "role", "metric", "n", "pearson_r", "pearson_p", "spearman_rho", "spearman_p"],
        "cosine": ["group", "kind", "role", "layer", "mean", "ci_low", "ci_high", "n"],
    }
    for name, cols in want.items():
        df = pd.read_csv(out / f"{name}.csv")
        assert list(df.columns) == cols, name
        assert len(df) > 0, name
        assert (out / f"{name}.md").read_text().splitlines()[2].startswith("| " + " | ".join(cols) + " |")
        tex = (out / f"{name}.tex").read_text()
        assert r"\begin{longtable}" in tex and r"\toprule" in tex and tex.count(r"\\") >= len(df)
    curves = pd.read_csv(out / "curves.csv")
    assert set(curves["metric"]) == {"nuclear", "spectral", "frobenius", "top1_share", "effective_rank"}
    assert len(curves) == 2 * 5 * len(ROLES) * L
    assert set(pd.read_csv(out / "mad.csv")["segment"]) == {"early", "middle", "late", "all"}
    compare = pd.read_csv(out / "compare.csv")
    assert len(compare) == 5 * len(ROLES) * L and set(compare["group_a"]) == {"fast"}
    nuc = compare[compare["metric"] == "nuclear"]
    assert (nuc["auroc"] == 1.0).all() and (nuc["p_adjusted"] < 0.05).all() and (nuc["correction"] == "maxt").all()
    assert (nuc["design"] == "paired").all() and (nuc["n_pairs"] == 14).all()  # instructions 0..13 shared: paired on them
    for stem in ("curves_nuclear", "curves_top1_share", "curves_effective_rank", "mad_nuclear", "auroc_1_vs_2",
                 "length_nuclear", "cosine_next_layer", "cosine_q_o", "cosine_k_v"):
        assert (out / "figures" / f"{stem}.png").stat().st_size > 10_000
        assert (out / "figures" / f"{stem}.svg").stat().st_size > 10_000


def _png_dpi(path: Path) -> float:
    data = path.read_bytes()
    i = data.index(b"pHYs")
    ppm = int.from_bytes(data[i + 4:i + 8], "big")  # pixels per metre
    return ppm * 0.0254


def test_png_300_dpi_and_figures_labelled(report):
    _, out = report
    assert _png_dpi(out / "figures" / "curves_nuclear.png") == pytest.approx(300, abs=1)
    for svg in (out / "figures").glob("*.svg"):
        text = htmllib.unescape(svg.read_text())
        assert "SmolLM2-135M-Instruct" in text, svg.name  # model
        assert "prompt mode: chat" in text, svg.name  # prompt mode
        assert "slow_thinking.json" in text and "n=16" in text, svg.name  # data and number of examples
        if svg.name.startswith("auroc"):
            assert "fast_thinking.json" in text and "n=14" in text


def test_html_is_traceable_to_csv(report):
    """Every number shown in the HTML tables is a (rounded) value of a CSV written beside it."""
    _, out = report
    page = (out / "index.html").read_text()
    assert "http://" not in page and "https://" not in page and "<script" not in page  # no network, no JS
    csv_numbers = set()
    for f in out.glob("*.csv"):
        for v in pd.read_csv(f).select_dtypes("number").to_numpy().ravel():
            if np.isfinite(v):
                csv_numbers.add(float(f"{v:.3g}"))
                csv_numbers.add(float(f"{v:.4g}"))
    cells = re.findall(r'<td class="num">([^<]*)</td>', page)
    assert len(cells) > 500
    shown = [float(c) for c in cells if c not in ("–",)]
    missing = [v for v in shown if v not in csv_numbers]
    assert not missing, missing[:10]
    for img in re.findall(r'<img src="([^"]+)"', page):
        assert (out / img).exists() and not img.startswith("/")


def test_html_states_methods_and_notes(report):
    _, out = report
    text = htmllib.unescape(re.sub(r"<[^>]+>", " ", (out / "index.html").read_text()))
    assert "max-T (Westfall & Young 1993)" in text and "within each pair of groups and metric" in text and "sign flips" in text
    assert "Holm" in text and "ln y ~ 1 + group + ln length" in text and "common support" in text
    assert "np.array_split" in text and "early = layers 0-1, middle = layers 2-3, late = layers 4-5" in text
    assert "1 of 15 examples are not ok" in text and "no response tokens after truncation" in text
    assert "excluded from those cells only" in text and "nuclear q layer 3" not in text  # role k, not q
    assert "nuclear k layer 3" in text
    ex = pd.read_csv(out / "exclusions.csv")
    assert ex.to_dict("records") == [{"group": "slow", "metric": "nuclear", "role": "k", "layer": 3, "n_excluded": 1, "n_total": 16}]
    cur = pd.read_csv(out / "curves.csv").query("group == 'slow' and metric == 'nuclear' and role == 'k' and layer == 3")
    assert int(cur["n"].iloc[0]) == 15


def _findings_numbers(page: str) -> list[tuple[str, int, str]]:
    start = page.index('<section id="findings">')
    sec = page[start:page.index("</section>", start)]
    return [(htmllib.unescape(v), int(r), c) for r, c, v in
            re.findall(r'<a class="fnum" href="findings.csv" title="findings.csv row (\d+), column ([a-z_]+)">([^<]*)</a>', sec)]


def test_findings_at_the_top_built_from_csv_values(report):
    """Every number of a findings sentence links to its findings.csv cell and equals it; those cells are values of the
    other CSVs (primary, compare)."""
    _, out = report
    page = (out / "index.html").read_text()
    assert page.index('id="findings"') < page.index('id="runs"') < page.index('id="methods"')
    f = pd.read_csv(out / "findings.csv")
    assert set(f.query("kind == 'level'")["metric"]) == {"nuclear", "effective_rank"} and set(f["kind"]) == {"level", "evenness"}
    nums = _findings_numbers(page)
    assert len(nums) >= 20
    from layergrad.report.tables import fmt
    for text, row, col in nums:
        assert text == fmt(f.iloc[row - 1][col], col), (text, row, col)
    prim = pd.read_csv(out / "primary.csv").query("role == 'all'").set_index(["group_a", "group_b", "metric"])
    cmp_ = pd.read_csv(out / "compare.csv")
    for r in f[f["kind"] == "level"].itertuples():
        key = (r.group_a, r.group_b, r.metric)
        assert r.ratio == prim.loc[key, "ratio"] and r.ci_low == prim.loc[key, "ci_low"] and r.p_holm == prim.loc[key, "p_holm"]
        c = cmp_[(cmp_["metric"] == r.metric)]
        assert r.cells == len(c) and r.cells_significant == int((c["p_adjusted"] < 0.05).sum())
        assert r.sentence.startswith(r.verdict[0].upper() + r.verdict[1:])
    nuc = f[(f["metric"] == "nuclear") & (f["kind"] == "level")].iloc[0]
    # slow's nuclear norms are 2x fast's and its responses 4x longer: the lengths do not overlap
    assert nuc["design"] == "paired" and nuc["ratio"] > 1.8 and nuc["cells_significant"] == nuc["cells"]
    assert nuc["verdict"] == "not separable from length" and nuc["length_control"] == "no common support"
    assert "max-T, family-wise 5%" in nuc["sentence"] and "--truncate-to" in nuc["sentence"]


def test_small_groups_warned_and_findings_for_independent_groups(tmp_path):
    rng = np.random.default_rng(21)
    a = make_run(tmp_path / "a", {"nuclear": noise(rng, 4, 2, 6, loc=1.0)}, lengths=rng.integers(20, 40, 4),
                 instructions=[f"x{i}" for i in range(4)], ids=[f"a{i}" for i in range(4)])
    b = make_run(tmp_path / "b", {"nuclear": noise(rng, 12, 2, 6, loc=1.5)}, lengths=rng.integers(20, 40, 12),
                 instructions=[f"y{i}" for i in range(12)], ids=[f"b{i}" for i in range(12)])
    rep = make_report([("A", a), ("B", b)], tmp_path / "out", **FAST)
    page = rep.index.read_text()
    start = page.index('<section id="findings">')
    sec = htmllib.unescape(re.sub(r"<[^>]+>", " ", page[start:page.index("</section>", start)]))
    assert "Small sample." in sec and "'A' has only 4 examples" in sec
    f = pd.read_csv(tmp_path / "out" / "findings.csv")
    lev = f.query("kind == 'level'")
    assert (lev["design"] == "independent").all() and "independent, 4 and 12 instructions" in lev["sentence"].iloc[0]
    assert (pd.read_csv(tmp_path / "out" / "design.csv")["design"] == "independent").all()


def test_paper_segments_reproduce_the_papers_mad(tmp_path):
    """--segments paper on an imported 28-layer file gives the paper code's MAD of the same curves."""
    from layergrad.store.paper import import_reference

    rng = np.random.default_rng(22)
    n, L = 5, 28
    lines = []
    s_sum = np.exp(rng.normal(size=(n, 4, L)))
    share = rng.uniform(0.1, 0.6, size=(n, 4, L))
    for i in range(n):
        rec = {"instruction": f"q{i}", "output": "a" * (i + 1), "loss": float(1 + i)}
        for l in range(L):
            for r, role in enumerate("qkvo"):
                v = float(s_sum[i, r, l])
                rec[f"model.layers.{l}.self_attn.{role}_proj.weight"] = {"S_sum": v, "S_max": v * float(share[i, r, l]), "S_min": v / 100,
                                                                         "frobenius_norm": v / 2, "M_mean": 0.0, "M_max": 1.0, "M_min": -1.0}
        lines.append(json.dumps(rec))
    src = tmp_path / "paper.jsonl"
    src.write_text("\n".join(lines) + "\n")
    import_reference(src, tmp_path / "imported")
    rep = make_report([("paper", tmp_path / "imported")], tmp_path / "out", metrics=("nuclear", "s_ratio", "s_sum_per_loss"),
                      segments="paper", **FAST)
    mad = pd.read_csv(tmp_path / "out" / "mad.csv").set_index(["role", "segment", "metric"])

    def paper_mad(values):  # the paper's code: mean |diff| of the per-layer mean curve within a segment
        curve = values.mean(axis=0)
        return {"early": np.mean(np.abs(np.diff(curve[:7]))), "middle": np.mean(np.abs(np.diff(curve[7:21]))),
                "late": np.mean(np.abs(np.diff(curve[21:])))}

    loss = np.arange(1, n + 1, dtype=float)[:, None, None]
    for metric, values in {"nuclear": s_sum, "s_ratio": share, "s_sum_per_loss": s_sum / loss}.items():
        for r, role in enumerate("qkvo"):
            for seg, want in paper_mad(values[:, r]).items():
                assert f"{mad.loc[(role, seg, metric), 'mad']:.6g}" == f"{want:.6g}", (metric, role, seg)
    text = rep.index.read_text()
    assert "the paper&#39;s layer splits" in text or "the paper's layer splits" in text
    assert "early = layers 0-6, middle = layers 7-20, late = layers 21-27" in text


def test_incompatible_runs_refused_before_writing(tmp_path):
    rng = np.random.default_rng(1)
    a = make_run(tmp_path / "a", {"nuclear": noise(rng, 4, 2, 6)})
    b = make_run(tmp_path / "b", {"nuclear": noise(rng, 4, 2, 8)})
    # different depth: a cross-model report on relative depth (tests/test_crossmodel.py), not a refusal
    build_report([("A", a), ("B", b)], tmp_path / "out", **FAST)
    assert (tmp_path / "out" / "model_similarity.csv").exists()
    with pytest.raises(AnalysisError, match="repeated: 'A'"):
        build_report([("A", a), ("A", a)], tmp_path / "out")
    with pytest.raises(AnalysisError, match="unknown metric 'nuclaer'; did you mean 'nuclear'"):
        build_report([("A", a)], tmp_path / "out", metrics=("nuclaer",))


def test_single_imported_run(tmp_path):
    """A run imported from the paper's JSONL (no spectrum metrics, depth inferred) reports alone."""
    rng = np.random.default_rng(2)
    vals = {m: noise(rng, 1, 2, 3) for m in ("nuclear", "spectral", "frobenius", "min_sigma")}
    run = make_run(tmp_path / "paper", vals, prompt_mode="imported", fill=False, manifest_extra={"n_layers": None})
    rep = make_report([("paper", run)], tmp_path / "out", **FAST)
    text = rep.index.read_text()
    assert "single ok example" in text and "stores no values of" in text and "effective_rank" in text
    curves = pd.read_csv(tmp_path / "out" / "curves.csv")
    assert set(curves["metric"]) == {"nuclear", "spectral", "frobenius"} and curves["ci_low"].isna().all()
    assert not (tmp_path / "out" / "figures" / "auroc_1_vs_2.png").exists()




def test_cli(tmp_path, capsys):
    rng = np.random.default_rng(3)
    a = make_run(tmp_path / "a", {"nuclear": noise(rng, 5, 2, 3)})
    b = make_run(tmp_path / "b", {"nuclear": noise(rng, 5, 2, 3)})
    args = report_parser().parse_args(["report", "--run", "None CoT=" + str(a), "--run", str(b), "--out", str(tmp_path / "o"),
                                 "--metric", "nuclear", "--n-boot", "50", "--n-perm", "99"])
    assert args.runs == [("None CoT", a), (None, b)]  # a bare DIR: labelled by its group, else its name
    assert (args.segments, args.correction, args.pairing) == ("thirds", "maxt", "auto")
    p2 = report_parser().parse_args(["report", "--run", str(a), "--out", "x", "--segments", "paper", "--correction", "bh", "--pairing", "none",
                               "--metric", "s_ratio", "--metric", "s_sum_per_loss"])
    assert (p2.segments, p2.correction, p2.pairing, p2.metrics) == ("paper", "bh", "none", ["s_ratio", "s_sum_per_loss"])
    assert args.func(args) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "o" / "index.html")
    assert set(pd.read_csv(tmp_path / "o" / "curves.csv")["metric"]) == {"nuclear"}
    assert (tmp_path / "o" / "figures" / "auroc_1_vs_2.png").exists()
    build_report([("None CoT", a)], tmp_path / "o", metrics=("nuclear",), n_boot=50, n_perm=99)
    assert not (tmp_path / "o" / "figures" / "auroc_1_vs_2.png").exists()  # no stale figure of the earlier report
    c = make_run(tmp_path / "c", {"nuclear": noise(rng, 5, 1, 3)}, roles=("down",))
    args = report_parser().parse_args(["report", "--run", f"A={a}", "--run", f"C={c}", "--out", str(tmp_path / "o2")])
    assert args.func(args) == 2
    assert "share no measured role" in capsys.readouterr().err
    args = report_parser().parse_args(["report", "--run", f"X={tmp_path / 'nothing'}", "--out", str(tmp_path / "o3")])
    assert args.func(args) == 2 and "not a layergrad run directory" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        report_parser().parse_args(["report", "--out", "x"])  # --run is required
    help_text = report_parser()._subparsers._group_actions[0].choices["report"].format_help()
    assert "examples:" in help_text and 'layergrad report --run "None CoT=' in help_text


# ---- headless browser ------------------------------------------------------------------------

@needs_chromium
def test_browser_check_detects_problems(tmp_path):
    """The check itself can fail: a missing image and a script error are caught."""
    page = tmp_path / "bad.html"
    page.write_text('<!DOCTYPE html><html><head><title>t</title></head><body><img src="missing.png">'
                    "<script>undefinedFunction();</script></body></html>")
    found = browser_check(page, tmp_path / "profile")
    assert found["images"] == [{"src": "missing.png", "width": 0, "complete": True}]
    assert any("missing.png" in e for e in found["errors"]) and any("undefinedFunction" in e for e in found["errors"])
    assert any("undefinedFunction" in c for c in found["console"])


@needs_chromium
def test_report_in_headless_browser(report, tmp_path):
    _, out = report
    found = browser_check(out / "index.html", tmp_path / "profile")
    assert found["errors"] == [] and found["console"] == []
    # headline, overlay, curves, MAD, AUROC, length, cosine, scores (distribution, Spearman, 2 split)
    assert len(found["images"]) == 1 + 3 + 3 + 3 + 1 + 1 + 3 + 4
    # the first screen (1400 x 900, no scrolling) holds the verdict table and the headline figure
    boxes = found["boxes"]
    assert boxes["verdicts"]["bottom"] <= 900 and boxes["headline_img"]["bottom"] <= 900, boxes
    bad = [i for i in found["images"] if not (i["complete"] and i["width"] > 0)]
    assert not bad, bad
    shot = tmp_path / "report.png"
    res = _chromium([f"--screenshot={shot}", "--window-size=1280,2400", "--hide-scrollbars", (out / "index.html").as_uri()], tmp_path / "profile2")
    assert shot.exists() and shot.stat().st_size > 50_000, res.stderr[-800:]
    assert not [line for line in res.stderr.splitlines() if ":CONSOLE" in line]
    # the first screen is the findings section; and an overlay figure (all groups on the same axes)
    first = tmp_path / "findings.png"
    res = _chromium([f"--screenshot={first}", "--window-size=1280,900", "--hide-scrollbars", (out / "index.html").as_uri()], tmp_path / "profile3")
    assert first.exists() and first.stat().st_size > 20_000, res.stderr[-800:]
    overlay = tmp_path / "overlay.png"
    res = _chromium([f"--screenshot={overlay}", "--window-size=1400,900", "--hide-scrollbars", (out / "figures" / "overlay_nuclear.png").as_uri()],
                    tmp_path / "profile4")
    assert overlay.exists() and overlay.stat().st_size > 20_000, res.stderr[-800:]
    keep = out.parent / "screenshots"  # kept beside the report for a person to look at
    keep.mkdir(exist_ok=True)
    for p in (first, overlay):
        shutil.copy(p, keep / p.name)


def test_cli_module_imports_nothing_heavy():
    code = "import sys, layergrad.cli.report; assert 'matplotlib' not in sys.modules, 'matplotlib imported'"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr[-500:]


def test_cli_metric_choices_include_the_derived_metrics():
    from layergrad.analysis.groups import ANALYSIS_METRICS
    from layergrad.cli.report import _METRICS

    assert tuple(_METRICS) == tuple(ANALYSIS_METRICS)
