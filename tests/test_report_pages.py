"""The pages: the first screen (question, verdict table, headline figure), one template for every page,
every section right for every kind of run, figure layouts, progress, and the API's default roles."""
from __future__ import annotations

import html as htmllib
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from browser import browser_check, needs_chromium, screenshot
from helpers import make_run, noise

from layergrad.analysis import load_group
from layergrad.report import figures, verdicts
from layergrad.report.build import make_report

ATTN, MLP = ("q", "k", "v", "o"), ("gate", "up", "down")
L = 4
FAST = {"n_boot": 50, "n_perm": 99}
GOLDEN = Path("/work/shared/golden/reference_base.jsonl")


def two_groups(tmp: Path, roles, n=(6, 7), seed=0):
    """Two runs, 'short' and 'long' (larger nuclear norms), ``roles`` measured; lengths overlapping."""
    rng = np.random.default_rng(seed)
    runs = []
    for label, shift, k in (("short", 0.0, n[0]), ("long", 0.5, n[1])):
        vals = {"nuclear": noise(rng, k, len(roles), L, loc=1.0 + shift, scale=0.1),
                "effective_rank": noise(rng, k, len(roles), L, loc=3.0 + shift, scale=0.2),
                "top1_share": noise(rng, k, len(roles), L, loc=0.4, scale=0.02)}
        lens = rng.integers(20, 40, k)
        runs.append((label, make_run(tmp / label, vals, roles, lengths=lens, data=(f"{label}.json",),
                                     loss=rng.uniform(0.5, 2.0, k), seed=seed + k)))
    return runs


METRICS = ("nuclear", "effective_rank")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Reports built once for the module (figures at 72 dpi: the layout is the same, the PNGs faster to write):
    attn-only (two groups), mlp-only (two groups), one group of every module."""
    tmp = tmp_path_factory.mktemp("pages")
    old, figures.DPI = figures.DPI, 72
    cache = {}

    def get(kind: str):
        if kind not in cache:
            roles = {"attn-only": ATTN, "mlp-only": MLP, "one group, all modules": ATTN + MLP}[kind]
            runs = two_groups(tmp / kind.replace(" ", "_").replace(",", ""), roles)
            runs = runs[:1] if kind.startswith("one group") else runs
            out = tmp / ("out-" + kind.replace(" ", "_").replace(",", ""))
            cache[kind] = (runs, make_report(runs, out, metrics=METRICS, progress=False, **FAST), out)
        return cache[kind]

    yield get
    figures.DPI = old


def page_text(page: str) -> str:
    body = page[page.index("<body"):]
    return htmllib.unescape(re.sub(r"<[^>]+>", " ", re.sub(r"<style>.*?</style>", "", body, flags=re.S)))


def assert_sections_right(page: str, out: Path) -> None:
    """No empty section (each has a figure or a table), no 'nan' in the text, every figure as PNG, SVG and PDF."""
    for m in re.finditer(r'<section class="lg-section" id="([^"]+)">(.*?)</section>', page, re.S):
        assert "<figure" in m.group(2) or "<table" in m.group(2) or "<li>" in m.group(2), f"section {m.group(1)} is empty"
    text = page_text(page)
    # a value printed as Python's nan, or "= NaN" / ": NaN" (captions may define what NaN means in a CSV)
    bad = re.search(r".{0,60}(\bnan\b|[=:]\s*NaN\b).{0,60}", text, re.S)
    assert bad is None, bad.group(0)
    assert "None." not in text  # an empty table's placeholder
    for png in re.findall(r'<img src="(figures/[^"]+)\.png"', page):
        for ext in ("png", "svg", "pdf"):
            assert (out / f"{png}.{ext}").stat().st_size > 1000, f"{png}.{ext}"


# ---- the verdict table ------------------------------------------------------------------------


def _row(**kw):
    base = dict(group_a="a", group_b="b", metric="nuclear", kind="level", verdict="higher at equal length", n_a=20, n_b=30,
                ratio=1.5, ci_low=1.2, ci_high=1.8, length_control="model", adj_ratio=1.25, adj_ci_low=1.1, adj_ci_high=1.4,
                reason="", roles=np.nan, roles_more_even=np.nan, roles_less_even=np.nan)
    return base | kw


def test_verdict_cells_say_the_effect_at_equal_length_or_why_not():
    rows = pd.DataFrame([
        _row(),
        _row(metric="effective_rank", verdict="higher, length not controlled", length_control="lengths unknown",
             adj_ratio=np.nan, adj_ci_low=None, adj_ci_high=None),
        _row(group_a="a", group_b="c", verdict="not separable from length", n_a=5, n_b=5, length_control="no common support",
             adj_ratio=np.nan, adj_ci_low=np.nan, adj_ci_high=np.nan),
        _row(group_b="c", kind="evenness", metric="nuclear", verdict="more even", roles=4, roles_more_even=3, roles_less_even=0),
        _row(group_a="a", group_b="d", verdict="no inference", reason="only 1 pair with finite values", ratio=np.nan),
    ])
    t = verdicts.verdict_table(rows)
    assert [h for _, h in t.columns] == ["Nuclear norm", "Effective rank", "Evenness of the nuclear norm curve"]
    assert [name for name, _ in t.rows] == ["b vs a", "c vs a", "d vs a"]
    cells = dict(t.rows)
    c = cells["b vs a"]["level:nuclear"]
    assert (c.verdict, c.effect, c.interval, c.reason, c.css) == ("higher at equal length", "×1.25 at equal length", "95% CI 1.1–1.4",
                                                                  "overall ×1.5", "v-holds")
    c = cells["b vs a"]["level:effective_rank"]
    assert c.effect == "×1.5 overall" and c.interval == "95% CI 1.2–1.8" and "response lengths unknown" in c.reason
    assert c.css == "v-uncontrolled"
    c = cells["c vs a"]["level:nuclear"]
    assert c.css == "v-length" and "do not overlap" in c.reason and c.interval == "95% CI 1.2–1.8"
    assert "n = 5 and 5" in c.reason  # both small groups named, not one of them
    c = cells["c vs a"]["evenness:nuclear"]
    assert c.effect == "rougher in 0, smoother in 3 of 4 roles" and c.css == "v-holds"
    c = cells["d vs a"]["level:nuclear"]
    assert c.css == "v-missing" and "only 1 pair" in c.reason and c.interval == ""
    assert "level:effective_rank" not in cells["c vs a"]
    page = verdicts.table_html(t)
    assert page.count("<tr>") == 4 and "not computed for this pair" in page and 'class="v-holds"' in page
    assert "nan" not in page.lower().replace("nanc", "")
    from layergrad.report.findings import FINDINGS_COLUMNS

    full = rows.reindex(columns=FINDINGS_COLUMNS).assign(design="independent", pair_by="", clustered=False, n_left=0,
                                                         n_units_a=20, n_units_b=30, p_holm=0.01, adj_p_holm=0.01)
    short = verdicts.short_findings_html(full)
    assert short.count("<details>") == 5 and "<strong>Nuclear norm</strong>: higher at equal length; ×1.25 at equal length" in short


# ---- figure layouts -----------------------------------------------------------------------------


def test_layout_check_finds_overlap_and_cut_titles():
    fig = Figure(figsize=(4, 3), layout="constrained")
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], label="a line")
    fig.suptitle("a title")
    fig.legend(loc="upper center")  # on top of the title
    assert any("overlap" in p for p in figures.layout_problems(fig))
    fig = Figure(figsize=(3, 2))
    fig.suptitle("a title far too long for a figure three inches wide, so it runs past both edges of it")
    assert any("past the figure's edge" in p for p in figures.layout_problems(fig))
    fig = Figure(figsize=(3, 2))
    fig.suptitle(figures.wrap("a title far too long for a figure three inches wide, so it runs past both edges of it", 2.7))
    assert figures.layout_problems(fig) == []


@pytest.mark.parametrize("kind", ["attn-only", "mlp-only"])
def test_every_figure_has_clean_layout(built, kind):
    """Titles (figure and axes) and legends inside the figure and never intersecting, for every figure of a report,
    with long group labels."""
    runs, rep, _ = built(kind)
    t = rep.tables
    groups = [load_group("a rather long group label: " + label, path) for label, path in runs]
    t = {k: v.replace({label: "a rather long group label: " + label for label, _ in runs}) if "group" in getattr(v, "columns", []) else v
         for k, v in t.items()}
    t["compare"] = t["compare"].replace({label: "a rather long group label: " + label for label, _ in runs})
    role = groups[0].series[0]
    figs = {"headline": figures.headline_figure(groups, t["curves"], "nuclear", role, " (the role with the most significant layers, 3)"),
            "overlay": figures.overlay_figure(groups, t["curves"], "nuclear"),
            "curves": figures.curves_figure(groups, t["curves"], "effective_rank"),
            "mad": figures.mad_figure(groups, t["mad"], "nuclear"),
            "auroc": figures.auroc_figure(*groups, t["compare"], ["nuclear", "effective_rank"]),
            "scores": figures.score_distribution_figure(groups, t["scores_summary"], list(t["scores_summary"]["score"].unique())),
            "spearman": figures.spearman_figure(groups, t["scores_spearman"], list(t["scores_summary"]["score"].unique()))}
    if len(t["length_points"]):
        figs["length"] = figures.length_figure(groups, t["length_points"], t["length"])
    for name, fig in figs.items():
        assert figures.layout_problems(fig) == [], name
    # the heat map names the correction actually used, in words
    assert "max-T (family-wise)-adjusted" in figs["auroc"]._suptitle.get_text().replace("\n", " ")
    # one group, one colour, in every figure
    colour = figures.group_colors(groups)[groups[1].label]
    assert figs["headline"].axes[0].lines[1].get_color() == colour
    assert figs["overlay"].axes[0].lines[1].get_color() == colour


# ---- every section right for every run ------------------------------------------------------


@pytest.mark.parametrize("kind", ["attn-only", "mlp-only", "one group, all modules"])
def test_reports_have_no_empty_section_and_no_nan(built, kind):
    _, rep, out = built(kind)
    page = rep.index.read_text()
    assert_sections_right(page, out)
    text = page_text(page)
    # what is absent is one line saying why
    assert "Where in the response the gradient comes from : left out: the runs were made without" in text
    assert "Cross-layer gradient similarity : left out" in text
    assert 'id="headline-figure"' in page and 'id="question"' in page
    if kind.startswith("one group"):
        assert "Group comparisons : left out: one group: nothing to compare" in text and 'id="verdicts"' not in page
    else:
        assert 'id="verdicts"' in page and page.index('id="verdicts"') < page.index('id="findings"') < page.index('id="methods"')
    # Methods last
    assert page.index('id="methods"') > max(m.start() for m in re.finditer(r'class="lg-section" id="(?!methods)', page))


def test_imported_paper_results_report_cleanly(tmp_path):
    if not GOLDEN.exists():
        pytest.skip(f"{GOLDEN} absent (golden outputs of the paper's code)")
    from layergrad.store.paper import import_reference

    import_reference(GOLDEN, tmp_path / "imported")
    old, figures.DPI = figures.DPI, 72
    try:
        rep = make_report([("paper", tmp_path / "imported")], tmp_path / "out", progress=False, **FAST)
    finally:
        figures.DPI = old
    page = rep.index.read_text()
    assert_sections_right(page, tmp_path / "out")
    text = page_text(page)
    # no lengths, one group, no effective rank stored: each left out with its reason, no empty panel
    assert "Length effect : left out: no example has both a response length" in text
    assert "Group comparisons : left out: one group" in text
    assert not [f for f in re.findall(r'figures/(\w+)\.png', page) if "effective_rank" in f]
    assert 'id="headline-figure"' in page


def test_token_share_figure_of_an_attn_only_run_has_clean_layout(tmp_path):
    """The shares figure with long labels: its title wrapped inside the figure, its legend off the title."""
    from layergrad.report import shares

    rng = np.random.default_rng(0)
    run = make_run(tmp_path / "r", {"nuclear": noise(rng, 3, 4, L)}, ATTN, data=("a_rather_long_data_file_name_for_shares.json",))
    groups = [load_group("answer only, the fast-thinking group", run), load_group("detailed reasoning, the slow group", run)]
    rows = [(g.label, seg, "attn", k / 10, (k + 1) / 10, rng.uniform(0, 0.2)) for g in groups for seg in ("early", "middle", "late")
            for k in range(10)]
    curve = pd.DataFrame(rows, columns=["group", "segment", "module_group", "rel_low", "rel_high", "share"])
    fig = shares.curve_figure(groups, curve)
    assert figures.layout_problems(fig) == []
    assert len(fig.axes) == 3  # attn only: no empty mlp panels


def test_token_shares_of_an_attn_only_run_shade_by_attn(tmp_path):
    """The shaded examples use a module group the run measured (no empty 'mlp shares' boxes)."""
    from layergrad.report import shares

    assert shares.SHADE[1][0] == "mlp" and "attn" in shares.SHADE[1]
    frame = pd.DataFrame({"id": ["e0"] * 4, "segment": ["late"] * 4, "module_group": ["attn"] * 4, "position": range(4),
                          "share": [0.1, 0.2, 0.3, 0.4], "response": [False, True, True, True], "token": list("abcd")})
    html_ = shares.shaded_html(frame)
    assert html_.count("<span") == 4 and 'class="shaded"' in html_


# ---- progress -----------------------------------------------------------------------------------


def test_progress_bar_and_no_progress(tmp_path, capsys, monkeypatch):
    from layergrad.cli import main
    from layergrad.report import build
    from layergrad.report.progress import Progress

    steps = Progress(True, 3)
    for part in ("curves", "MAD", "page"):
        steps(part)
    steps.close()
    err = capsys.readouterr().err
    assert "report:" in err and "/3" in err and "part/s, page" in err  # tqdm's bar over the report's parts
    steps = Progress(False, 3)
    steps("curves")
    steps.close()
    assert capsys.readouterr().err == ""
    seen = []
    monkeypatch.setattr(build, "make_report", lambda *a, **kw: seen.append(kw["progress"]) or build.Report(tmp_path / "index.html"))
    for flag in ([], ["--no-progress"]):
        assert main(["report", "--run", f"a={tmp_path}", "--out", str(tmp_path / "o"), *flag]) == 0
    assert seen == [True, False]


# ---- one template for every page ----------------------------------------------------------------


@pytest.fixture(scope="module")
def pages(built, tmp_path_factory):
    return _pages(tmp_path_factory.mktemp("every-page"), built)


def _pages(tmp: Path, built) -> dict[str, Path]:
    """A report, a cross-model report, a by-step report, a training report and an experiment overview."""
    from layergrad.analysis import checkpoints as ck
    from layergrad.experiment import _overview_html
    from layergrad.report import checkpoints as step_report

    pages = {}
    runs, rep, _ = built("attn-only")
    pages["report"] = rep.index
    rng = np.random.default_rng(1)
    deep = make_run(tmp / "deep", {"nuclear": noise(rng, 5, 2, 6)}, roles=("q", "o"), model="tiny-other")
    pages["cross-model"] = make_report([("four", runs[0][1]), ("six", deep)], tmp / "cross", metrics=("nuclear",), progress=False,
                                       n_boot=20).index
    steps = [make_run(tmp / f"ck{s}", {"nuclear": noise(rng, 4, 2, 3, loc=1 + s / 100)}, roles=("q", "o")) for s in (10, 20, 30)]
    pages["by-step"] = make_report([], tmp / "steps", checkpoints=[f"{s}={p}" for s, p in zip((10, 20, 30), steps)],
                                   metrics=("nuclear",), n_boot=20, progress=False).index
    series = ck.load_checkpoints([f"{s}={p}" for s, p in zip((10, 20, 30), steps)])
    pages["training"], _, _ = step_report.write(series, tmp / "training", ["nuclear"], ["nuclear"], n_boot=20, seed=0, kind="training")
    (tmp / "reports").symlink_to(rep.index.parent)
    overview = tmp / "index.html"
    overview.write_text(_overview_html("study", [("tiny", "short vs long", Path("reports/index.html"), 2)], ["a note"], tmp))
    pages["overview"] = overview
    return pages


def test_every_page_uses_the_one_template(pages):
    styles = set()
    for kind, index in pages.items():
        page = index.read_text()
        assert '<header class="lg-header" id="lg-header">' in page and '<meta name="generator" content="layergrad">' in page, kind
        assert f'class="layergrad lg-{kind}"' in page, kind
        styles.add(re.search(r"<style>(.*?)</style>", page, re.S).group(1))
        assert_sections_right(page, index.parent)
    assert len(styles) == 1  # one stylesheet
    assert 'id="verdicts"' in pages["overview"].read_text() and "short vs long: long vs short" in pages["overview"].read_text()


@needs_chromium
def test_first_screen_of_every_page_in_a_browser(pages, tmp_path):
    """At 1400 x 900, without scrolling: the verdict table (report, overview) and the headline figure (report, cross-model,
    by-step, training) are on the first screen; no page has a broken image or a script error."""
    for kind, index in pages.items():
        found = browser_check(index, tmp_path / f"profile-{kind}")
        assert found["errors"] == [] and found["console"] == [], kind
        assert all(i["complete"] and i["width"] > 0 for i in found["images"]), (kind, found["images"])
        boxes = found["boxes"]
        assert boxes["header"] is not None and boxes["question"]["bottom"] <= 900, kind
        if kind in ("report", "overview"):
            assert boxes["verdicts"] is not None and boxes["verdicts"]["bottom"] <= 900, (kind, boxes)
        if kind != "overview":
            assert boxes["headline_img"] is not None and boxes["headline_img"]["bottom"] <= 900, (kind, boxes)
            assert boxes["headline_img"]["height"] > 250, (kind, boxes)  # a figure, not a thumbnail
        shot = tmp_path / f"{kind}.png"
        screenshot(index, shot, tmp_path / f"profile-shot-{kind}")
        assert shot.stat().st_size > 20_000


# ---- the Python API defaults to the roles a run measured ------------------------------------------


@pytest.mark.parametrize("roles,want", [(ATTN, ("attn",)), (ATTN + MLP, ("attn", "mlp")), (MLP, ("mlp",))], ids=["attn", "all", "mlp"])
def test_split_helpers_default_to_measured_roles(tmp_path, roles, want):
    from layergrad.analysis.scores import split_curves, split_segments
    from layergrad.analysis.selection import score_table
    from layergrad.store import load_results

    rng = np.random.default_rng(5)
    n = 8
    vals = {"nuclear": noise(rng, n, len(roles), L), "effective_rank": noise(rng, n, len(roles), L)}
    loss = rng.permutation(np.arange(1.0, n + 1))
    res = load_results(make_run(tmp_path / "run", vals, roles, loss=loss))
    t = score_table(res)
    seg = split_segments(res, t, "loss", 0.25)
    cur = split_curves(res, t, "loss", 0.25)
    assert tuple(dict.fromkeys(seg["roles"])) == want and tuple(dict.fromkeys(cur["roles"])) == want
    # oracle: the high quarter = the 2 largest losses; per example the mean over the role set's modules of a layer
    high = np.argsort(-loss)[:2]
    for k, group in enumerate(want):
        r = [i for i, role in enumerate(roles) if role in {"attn": ATTN, "mlp": MLP}[group]]
        for layer in (0, L - 1):
            expect = float(np.mean(vals["nuclear"][high][:, r, layer].astype(np.float64).mean(axis=1)))
            got = cur[(cur["half"] == "high") & (cur["roles"] == group) & (cur["layer"] == layer) & (cur["metric"] == "nuclear")]["mean"]
            assert got.item() == pytest.approx(expect, rel=1e-12)
