"""The unification page of a quality study: do the quality metrics agree on the gradients' spectra?

From the experiment's runs (``[quality]`` in the TOML: which matrix axis names the metric and which
the high/low split), per model, pool and metric the high split against the low split on each property
(:func:`layergrad.analysis.quality.quality_effects`), written as ``quality_effects.csv|md|tex``, an
agreement matrix figure (metrics x properties: the ratio high/low, its interval, its sign) and
``index.html``.
"""
from __future__ import annotations

import html as htmlmod
from pathlib import Path

import numpy as np
import pandas as pd

from layergrad.analysis.groups import COSINE_KINDS
from layergrad.analysis.quality import (ANALYSIS, CLAIM, QualityCell, ReasoningCell, cosine_summary, quality_effects, reasoning_effects,
                                         score_correlations)

from . import figures, html, tables

CAPTION = ("Per model, pool and quality metric: the high split against the low split on each spectral property "
           "(the primary analysis: ratio of geometric means high/low overall and at equal length, 95% t intervals, "
           "Holm-adjusted p over the study, verdict); effect: at equal length where the lengths overlap, else overall "
           "(basis); sign +1/-1 where it is above/below 1 with a Holm-adjusted p below 0.05 (effect_p_holm); agrees: the sign the follow-up paper reports "
           "(nuclear lower and effective rank higher for high quality); lengths: median response tokens and the share of "
           "examples inside the other split's length range.")


def agreement_figure(effects: pd.DataFrame):
    """Rows: model / pool / metric; columns: properties. Colour: log2(ratio high/low); text: the ratio, its
    interval and a mark: check where the sign agrees with the paper, cross where it contradicts it, ? unsettled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(dict.fromkeys(zip(effects["model"], effects["pool"], effects["metric"])))
    props = list(dict.fromkeys(effects["property"]))
    val = np.full((len(rows), len(props)), np.nan)
    fig, ax = plt.subplots(figsize=(2.2 + 2.4 * len(props), 1.0 + 0.55 * len(rows)), layout="constrained")
    mark = {"yes": "\u2713", "no": "\u2717", "unsettled": "?", "": ""}
    texts = []
    for _, r in effects.iterrows():
        i, j = rows.index((r["model"], r["pool"], r["metric"])), props.index(r["property"])
        val[i, j] = np.log2(r["effect"]) if r["effect"] > 0 else np.nan
        star = "" if r["basis"] == "at equal length" else "*"
        texts.append((i, j, f"{r['effect']:.3g}{star} {mark[r['agrees']]}\n[{r['effect_ci_low']:.3g}, {r['effect_ci_high']:.3g}]"))
    lim = max(float(np.nanmax(np.abs(val))) if np.isfinite(val).any() else 1.0, 0.1)
    for i, j, text in texts:  # white on the dark ends of the scale
        ax.text(j, i, text, ha="center", va="center", fontsize=8, color="white" if abs(val[i, j]) > 0.6 * lim else "black")
    im = ax.imshow(val, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto")
    ax.set_xticks(range(len(props)), [f"{p}\n(paper: high {'<' if CLAIM.get(p) == -1 else '>' if CLAIM.get(p) == 1 else '?'} low)"
                                      for p in props])
    ax.set_yticks(range(len(rows)), [" / ".join(x for x in r if x) for r in rows], fontsize=8)
    fig.colorbar(im, ax=ax, label="log2(ratio of geometric means high / low)")
    ax.set_title("Do the quality metrics agree? high vs low split per metric, at equal length\n"
                 "\u2713 sign as the paper, \u2717 opposite (Holm p < 0.05), ? not significant\n"
                 "* lengths do not overlap: overall, not length-controlled", fontsize=9)
    return fig


COSINE_CAPTION = ("Gradient cosine similarities per split and kind (next_layer: a module and the same role one layer up; "
                  "q_o, k_v: two modules of one layer; gapK, in runs of every pair of layers: K layers apart, table only): each example's mean over roles and layers, their mean over the "
                  "examples with a 95% t interval, and the mean absolute cosine. The follow-up paper reports them near zero.")


def cosine_figure(cos: pd.DataFrame):
    """One panel per cosine kind: per model / pool / metric the high and the low split's mean cosine with its interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = [k for k in COSINE_KINDS if k in set(cos["kind"])]  # gapK (every pair of layers): the table only
    cos = cos[cos["kind"].isin(kinds)]
    rows = list(dict.fromkeys(zip(cos["model"], cos["pool"], cos["metric"])))
    fig, axes = plt.subplots(1, len(kinds), figsize=(2.0 + 3.0 * len(kinds), 1.2 + 0.45 * len(rows)), sharey=True,
                             layout="constrained", squeeze=False)
    for ax, kind in zip(axes[0], kinds):
        k = cos[cos["kind"] == kind]
        top = float(np.nanmax(np.abs(k[["ci_low", "ci_high", "mean"]].to_numpy(float)))) if len(k) else 0.0
        exp = int(np.floor(np.log10(top))) if np.isfinite(top) and top > 0 else 0  # cosines near 0: 1e-4 .. 1e-2
        for split, dy, colour in (("high", -0.15, "tab:blue"), ("low", 0.15, "tab:orange")):
            d = k[k["split"] == split]
            y = [rows.index(key) + dy for key in zip(d["model"], d["pool"], d["metric"])]
            m, lo, hi = (d[c].to_numpy(float) / 10.0**exp for c in ("mean", "ci_low", "ci_high"))
            ax.errorbar(m, y, xerr=[m - lo, hi - m], fmt="o", ms=4, color=colour, label=f"{split} split", capsize=2)
        ax.axvline(0, color="0.5", lw=0.8)
        ax.xaxis.set_major_locator(plt.MaxNLocator(5))
        ax.set_title(kind, fontsize=9)
        ax.set_xlabel(f"mean gradient cosine (x 1e{exp}), 95% t CI" if exp else "mean gradient cosine, 95% t CI", fontsize=8)
    axes[0][0].set_yticks(range(len(rows)), [" / ".join(x for x in r if x) for r in rows], fontsize=8)
    axes[0][0].invert_yaxis()
    axes[0][-1].legend(fontsize=8, loc="best")
    fig.suptitle("Gradient cosines per split: near zero?", fontsize=10)
    return fig


REASONING_CAPTION = ("Each reasoning group (e.g. DeepSeek-R1 traces) against every high and low split of its model, by the "
                     "same analysis as the agreement matrix: the ratio of geometric means reasoning / split overall and at equal "
                     "length where the lengths overlap, 95% t intervals, Holm over these rows, verdict; agrees: the follow-up "
                     "paper reports the highest effective ranks for reasoning data (no claim on the nuclear norm).")


CORRELATION_CAPTION = ("Exploratory: over every scored example of a model and pool (each record once, whatever its splits), "
                       "Spearman's rho between a record's own quality score and its spectral summary (mean over layers and "
                       "roles), and the partial rank correlation controlling for the number of response tokens, only where the "
                       "lengths of the examples above the score's median and of those at or below it overlap (length_support; the "
                       "primary analysis's rule); elsewhere it would be extrapolation and is left empty.")


def example_frame(cells: list[QualityCell], scores: list[str]) -> pd.DataFrame:
    """One row per scored example of each model and pool: its ``scores`` (the records' own fields, read
    from the runs' data files), each property's mean over layers and roles, and its response tokens."""
    from layergrad.inputs.data import Fields, load_examples

    rows, seen = [], set()
    for c in cells:
        for g in (c.high, c.low):
            exs, _ = load_examples([str(p) for p in g.manifest.get("data") or []], group=g.manifest.get("group"),
                                   fields=Fields(**(g.manifest.get("fields") or {})), skip_invalid=True)
            rec = {e.id: e.record for e in exs}
            means = {m: np.nanmean(v.reshape(len(v), -1), axis=1) if v.size else np.full(len(v), np.nan)
                     for m, v in g.values.items()}
            for k, i in enumerate(g.ids):
                if (c.model, c.pool, i) in seen or i not in rec:
                    continue
                seen.add((c.model, c.pool, i))
                rows.append({"model": c.model, "pool": c.pool, "id": i, "n_response_tokens": g.lengths[k],
                             **{s: rec[i].get(s) for s in scores}, **{m: float(v[k]) for m, v in means.items()}})
    return pd.DataFrame(rows)


def write_page(cells: list[QualityCell], out: Path, *, title: str, notes=(), properties=("nuclear", "effective_rank"),
               scores=None, reasoning: list[ReasoningCell] = ()) -> Path:
    """Compute the effects (and, for ``scores``, the correlations) and write the page under ``out``;
    returns ``out/index.html``. ``scores`` default: the cells' metric names that are fields of the records."""
    import warnings

    out = Path(out)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    effects = quality_effects(cells, properties)
    files = tables.write_table(effects, out, "quality_effects", CAPTION)
    wanted = list(dict.fromkeys(c.metric for c in cells)) if scores is None else list(scores)
    frame = example_frame(cells, wanted) if cells else pd.DataFrame()
    present = [s for s in wanted if s in frame.columns and pd.to_numeric(frame[s], errors="coerce").notna().any()]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # constant inputs are skipped by score_correlations
        corr = score_correlations(frame, present, properties) if present else pd.DataFrame()
    corr_files = tables.write_table(corr, out, "quality_correlations", CORRELATION_CAPTION) if len(corr) else {}
    cos = cosine_summary(cells)
    cos_section = [html.left_out("cosines", "Gradient cosines", "the runs hold no cosines (measure them with cosine = true in [run])")]
    if len(cos):
        cos_files = tables.write_table(cos, out, "quality_cosines", COSINE_CAPTION)
        cos_figs = []
        if cos["kind"].isin(COSINE_KINDS).any():
            cfig = cosine_figure(cos)
            figures.save(cfig, out / "figures", "cosines")
            cos_figs = [html.FigureRef("figures/cosines.png", "figures/cosines.svg", "Mean gradient cosine per split and kind, "
                                       "95% t intervals.", int(cfig.get_size_inches()[0] * 96))]
        cos_section = [html.Section("cosines", "Gradient cosines", intro=COSINE_CAPTION, figures=cos_figs, tables=[html.TableRef(
            title="quality_cosines.csv", html=html.jinja2.utils.markupsafe.Markup(tables.to_html(cos, 400, "quality_cosines.csv")),
            files=[(ext, p.name) for ext, p in cos_files.items()], n_rows=len(cos), caption=COSINE_CAPTION)])]
    reasoning_section, items = [], []
    if reasoning:
        reff = reasoning_effects(list(reasoning), properties)
        r_files = tables.write_table(reff, out, "quality_reasoning", REASONING_CAPTION)
        for (model, label, prop), g in reff.groupby(["model", "reasoning", "property"], sort=False):
            counts = g["verdict"].value_counts()
            items.append(f"<li><strong>{htmlmod.escape(model)} / {htmlmod.escape(label)}, {htmlmod.escape(prop)}</strong> against "
                         f"{len(g)} instruction splits (n = {int(g['n_reasoning'].iloc[0])} vs {int(g['n_against'].min())}-"
                         f"{int(g['n_against'].max())}; median response tokens {g['median_tokens_reasoning'].iloc[0]:.0f} vs "
                         f"{g['median_tokens_against'].min():.0f}-{g['median_tokens_against'].max():.0f}): "
                         f"{htmlmod.escape('; '.join(f'{n} {w}' for w, n in counts.items()))}</li>")
        reasoning_section = [html.Section("reasoning", "Reasoning traces against the instruction splits", intro=REASONING_CAPTION,
                                          tables=[html.TableRef(title="quality_reasoning.csv", html=html.jinja2.utils.markupsafe.Markup(
                                              tables.to_html(reff, 400, "quality_reasoning.csv")), files=[(ext, p.name) for ext, p in r_files.items()],
                                              n_rows=len(reff), caption=REASONING_CAPTION)])]
    fig = agreement_figure(effects)
    figures.save(fig, out / "figures", "agreement")
    fig_ref = html.FigureRef("figures/agreement.png", "figures/agreement.svg",
                             "Agreement matrix: each quality metric's high split over its low split, per spectral property.",
                             int(fig.get_size_inches()[0] * 96))
    shown = effects.drop(columns=["analysis"])
    table = html.TableRef(title="quality_effects.csv", html=html.jinja2.utils.markupsafe.Markup(tables.to_html(shown, 400, "quality_effects.csv")),
                          files=[(ext, p.name) for ext, p in files.items()], n_rows=len(effects), caption=CAPTION)
    words = []
    for (model, pool, metric), g in effects.groupby(["model", "pool", "metric"], sort=False):
        parts = [f"{r['property']}: {r['verdict']}, {r['effect']:.3g} [{r['effect_ci_low']:.3g}, {r['effect_ci_high']:.3g}] "
                 f"{r['basis']} ({'agrees with the paper' if r['agrees'] == 'yes' else r['agrees'] or 'no claim'})" for _, r in g.iterrows()]
        lens = g.iloc[0]
        words.append(f"<li><strong>{htmlmod.escape(' / '.join(x for x in (model, pool, metric) if x))}</strong> "
                     f"(n = {int(lens['n_high'])} high, {int(lens['n_low'])} low; median response tokens {lens['median_tokens_high']:.0f} "
                     f"vs {lens['median_tokens_low']:.0f}, length overlap {lens['length_overlap']:.2f}): "
                     f"{htmlmod.escape('; '.join(parts))}</li>")
    runs = pd.DataFrame([{"model": c.model, "pool": c.pool, "metric": c.metric, "high": c.high.label, "n_high": c.high.n,
                          "low": c.low.label, "n_low": c.low.n} for c in cells])
    methods = [f"Statistic: {ANALYSIS} (layergrad.analysis.quality.quality_effects; the primary analysis of the reports' Methods, "
               "independent samples). Verdict words: layergrad.analysis.verdicts.RULES.",
               "Claim checked: the follow-up paper (Li et al. 2025) reports lower nuclear norms and higher effective ranks "
               "for higher-quality data; 'agrees' compares with that claim the sign of the effect where its Holm-adjusted p "
               "(effect_p_holm) is below 0.05.",
               "Length: the splits differ in response length for some metrics (e.g. OpenHermes reward); a norm falls and an "
               "effective rank rises with length for mechanical reasons, so an effect whose splits barely overlap in length "
               "(no common support: basis 'overall, not length-controlled', marked * in the figure) cannot be told apart from length "
               "by this page."]
    page = html.render_page(kind="quality", title=title, subtitle="quality study: do the quality metrics agree?",
                       question="Do the quality metrics agree? Each metric's high split against its low split, at equal length where "
                                "the lengths overlap.", headline=fig_ref, runs_table=tables.to_html(runs, 400, ""),
                       notes=list(notes), methods=methods,
                       sections=[html.Section("agreement", "Agreement matrix", figures=[fig_ref], tables=[table]),
                                 *([html.Section("correlations", "Quality scores and spectra (exploratory)", intro=CORRELATION_CAPTION,
                                                 tables=[html.TableRef(title="quality_correlations.csv", html=html.jinja2.utils.markupsafe.Markup(
                                                     tables.to_html(corr, 400, "quality_correlations.csv")),
                                                     files=[(ext, p.name) for ext, p in corr_files.items()], n_rows=len(corr),
                                                     caption=CORRELATION_CAPTION)])] if len(corr) else []),
                                 *reasoning_section, *cos_section],
                       findings="<ul>" + "".join(words + items) + "</ul>")
    index = out / "index.html"
    index.write_text(page, encoding="utf-8")
    return index


def study_cells(conf: dict, jobs) -> tuple[list[QualityCell], list[ReasoningCell], list[str]]:
    """The cells of an experiment's ``[quality]`` table (see :mod:`layergrad.experiment`) from its runs
    (``jobs``): high vs low per metric, each ``reasoning`` group against every split of its model, and a
    note for each metric whose high or low split has no run."""
    from layergrad.analysis.groups import load_group
    from layergrad.experiment import ExperimentError

    q = conf["quality"]  # keys checked by experiment.load_config
    where = f"{conf.get('_path', 'experiment')}: [quality]"
    m_axis, l_axis = q.get("metric", "metric"), q.get("level", "level")
    high, low = q.get("high", "high"), q.get("low", "low")
    axes = {g["label"]: g.get("axes") or {} for g in conf["groups"]}
    if not any(m_axis in a and l_axis in a for a in axes.values()):
        raise ExperimentError(f"{where}: no group has the axes {m_axis!r} and {l_axis!r}; name them in [matrix] "
                              f"or give [[groups]] axes = {{ {m_axis} = ..., {l_axis} = ... }}")
    runs: dict[tuple, dict[str, str]] = {}  # (model, pool, metric) -> level -> run dir
    for job in jobs:
        a = axes.get(job.label, {})
        if m_axis not in a or a.get(l_axis) not in (high, low):
            continue
        pool = " / ".join(v for k, v in a.items() if k not in (m_axis, l_axis) and v)
        runs.setdefault((job.model_name, pool, a[m_axis]), {})[a[l_axis]] = (job.label, job.cfg.out)
    cells, notes = [], []
    for (model, pool, metric), by_level in runs.items():
        if high not in by_level or low not in by_level:
            notes.append(f"{model} / {pool} / {metric}: only the {next(iter(by_level))!r} split was run; no comparison")
            continue
        cells.append(QualityCell(model, pool, metric, load_group(*by_level[high]), load_group(*by_level[low])))
    reasoning = []
    for job in jobs:  # each reasoning group against every split of its model
        if job.label in q.get("reasoning", []):
            group = load_group(job.label, job.cfg.out)
            reasoning += [ReasoningCell(job.model_name, group, split) for c in cells if c.model == job.model_name for split in (c.high, c.low)]
    return cells, reasoning, notes


def study_page(conf: dict, jobs, out: Path) -> Path:
    """The experiment's quality page (``reports/quality/index.html``)."""
    cells, reasoning, notes = study_cells(conf, jobs)
    props = tuple(conf["quality"].get("properties", ("nuclear", "effective_rank")))
    return write_page(cells, out, title=f"{conf['name']}: quality metrics", notes=notes, properties=props,
                      scores=conf["quality"].get("scores"), reasoning=reasoning)
