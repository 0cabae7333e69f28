"""Figures drawn from the report's tables (so every plotted number is in a CSV).

Matplotlib's object API only (``Figure``, no ``pyplot``): no global backend or state is touched,
so the report can be built from notebooks and servers alike. Each figure is saved as PNG
(300 dpi), SVG and PDF (vector, for papers), and carries a title block naming model, data, prompt
mode and examples. Colours are colour-blind safe: groups take the Okabe-Ito palette in the order
of the report's groups (the same group, the same colour, in every figure of a report); roles take
matplotlib's ``tableau-colorblind10``. Legends sit outside the axes and titles are wrapped to the
figure's width, so neither is cut nor covers the other (:func:`layout_problems` checks it).
"""
from __future__ import annotations

import math
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import rc_context, ticker
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from .tables import WORDS

from layergrad.analysis.groups import Group
from layergrad.analysis.mad import SEGMENTS

DPI = 300
METRIC_LABELS = {
    "nuclear": "nuclear norm", "spectral": "spectral norm", "frobenius": "Frobenius norm",
    "min_sigma": "smallest singular value", "top1_share": "top-1 share", "effective_rank": "effective rank",
    "stable_rank": "stable rank", "s_ratio": "S_ratio (S_max / S_sum)", "s_sum_per_loss": "S_sum / loss",
}
_ROLE_ORDER = ("q", "k", "v", "o", "qkv", "gate", "up", "gate_up", "down", "lm_head", "unknown")
# matplotlib's tableau-colorblind10 style, in its order
_ROLE_COLORS = ["#006BA4", "#FF800E", "#ABABAB", "#595959", "#5F9ED1", "#C85200", "#898989", "#A2C8EC", "#FFBC79", "#CFCFCF"]
# Okabe & Ito (2008), "Color Universal Design"; yellow last (weak on white)
_GROUP_COLORS = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442"]
CORRECTION_WORDS = WORDS["correction"]  # one table of the corrections in words: report.tables


def metric_label(metric: str) -> str:
    return METRIC_LABELS.get(metric, metric)


def role_colors(series: list[str]) -> dict[str, str]:
    known = [s for s in _ROLE_ORDER if s in series]
    rest = [s for s in series if s not in known]
    return {s: _ROLE_COLORS[i % len(_ROLE_COLORS)] for i, s in enumerate(known + rest)}


def group_colors(groups: list[Group]) -> dict[str, str]:
    return {g.label: _GROUP_COLORS[i % len(_GROUP_COLORS)] for i, g in enumerate(groups)}


def provenance(groups: list[Group]) -> str:
    """Title-block text: model, prompt mode (once if shared), and per group its data and n."""
    d = [g.describe() for g in groups]
    lines = []
    shared = {(x["model_short"], x["prompt_mode"]) for x in d}
    if len(shared) == 1:
        model, mode = shared.pop()
        lines.append(f"model: {model} · prompt mode: {mode}")
        per = [f"{x['group']}: {_short(x['data'])}, n={x['n_ok']}" for x in d]
    else:
        per = [f"{x['group']}: {x['model_short']}, {x['prompt_mode']}, {_short(x['data'])}, n={x['n_ok']}" for x in d]
    # Wrap the per-group parts three to a line so wide reports stay readable.
    lines += [" · ".join(per[i:i + 3]) for i in range(0, len(per), 3)]
    return "\n".join(lines)


def _short(text: str, k: int = 48) -> str:
    return text if len(text) <= k else text[: k - 1] + "…"


def _grid(n: int, max_cols: int) -> tuple[int, int]:
    cols = max(1, min(n, max_cols))
    return math.ceil(n / cols), cols


def _axes(fig: Figure, n: int, max_cols: int, **kw):
    rows, cols = _grid(n, max_cols)
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False, **kw)).ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    return axes[:n], cols


def wrap(text: str, width_in: float, fontsize: float = 9) -> str:
    """``text`` wrapped (each of its lines) to about ``width_in`` inches at ``fontsize`` points."""
    chars = max(20, int(width_in * 72 / (0.56 * fontsize)))
    return "\n".join(textwrap.fill(line, chars, break_on_hyphens=False) or line for line in text.split("\n"))


def legend_below(fig: Figure, handles, title: str, fontsize: float = 8):
    """A figure legend under the axes (constrained layout makes room): the title block sits on top, so the two never meet."""
    if not handles:
        return None
    return fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 7 if title == "role" else 4),
                      title=title, fontsize=fontsize, title_fontsize=fontsize, frameon=False)


def _title(fig: Figure, headline: str, groups: list[Group]) -> None:
    width = fig.get_size_inches()[0] - 0.3
    fig.suptitle(wrap(f"{headline}\n{provenance(groups)}", width), fontsize=9, linespacing=1.4)


def save(fig: Figure, out: Path, name: str) -> dict[str, Path]:
    """Write ``name.png`` (300 dpi), ``name.svg`` and ``name.pdf`` under ``out``."""
    paths = {"png": out / f"{name}.png", "svg": out / f"{name}.svg", "pdf": out / f"{name}.pdf"}
    fig.savefig(paths["png"], dpi=DPI, metadata={"Software": None})
    # Text stays text in the SVG and PDF (editable in a paper's figure, searchable), not glyph outlines.
    with rc_context({"svg.fonttype": "none", "svg.hashsalt": "layergrad", "pdf.fonttype": 42}):
        fig.savefig(paths["svg"], metadata={"Date": None})
        fig.savefig(paths["pdf"], metadata={"CreationDate": None, "Creator": None, "Producer": None})
    return paths


def layout_problems(fig: Figure) -> list[str]:
    """What is wrong with ``fig``'s layout once drawn: a title (figure or axes) or legend reaching past the
    figure's edge, and a title box intersecting a legend box. Empty when the layout is clean."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)  # the layout as saved (savefig draws on an Agg canvas too)
    canvas.draw()
    r = canvas.get_renderer()
    fb = fig.bbox
    titles = [("suptitle", fig._suptitle)] if fig._suptitle is not None and fig._suptitle.get_text() else []
    titles += [(f"axes title {ax.get_title()!r}", ax.title) for ax in fig.axes if ax.get_visible() and ax.get_title()]
    legends = [("figure legend", lg) for lg in fig.legends]
    legends += [(f"legend of axes {ax.get_title()!r}", ax.get_legend()) for ax in fig.axes if ax.get_legend() is not None]
    boxes = [(n, t.get_window_extent(r)) for n, t in titles] + [(n, lg.get_window_extent(r)) for n, lg in legends]
    out = [f"{n} reaches past the figure's edge" for n, b in boxes
           if b.x0 < fb.x0 - 1 or b.x1 > fb.x1 + 1 or b.y0 < fb.y0 - 1 or b.y1 > fb.y1 + 1]
    for tn, tb in boxes[:len(titles)]:
        for ln, lb in boxes[len(titles):]:
            if tb.overlaps(lb):
                out.append(f"{tn} and {ln} overlap")
    return out


def _log_axis(axis) -> None:
    """Log scale with plain tick labels (0.2, 0.5, 1, 2, 5) instead of 2x10^-1."""
    axis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(ticker.NullFormatter())


def _use_log(values: pd.Series, metric: str) -> bool:
    v = values[np.isfinite(values)]
    return metric in ("nuclear", "spectral", "frobenius") and len(v) > 0 and v.min() > 0 and v.max() / v.min() > 100


def curves_figure(groups: list[Group], curves: pd.DataFrame, metric: str) -> Figure:
    """Per group a panel of per-layer mean curves (one line per role, CI band); shared y-axis."""
    d = curves[curves["metric"] == metric]
    series = list(dict.fromkeys(s for g in groups for s in g.series))
    colors = role_colors(series)
    fig = Figure(figsize=(4.2 * min(len(groups), 3) + 1.2, 3.4 * _grid(len(groups), 3)[0] + 0.9), layout="constrained")
    axes, cols = _axes(fig, len(groups), 3, sharey=True)
    log = _use_log(pd.concat([d["ci_low"], d["mean"]]), metric)
    for i, (ax, g) in enumerate(zip(axes, groups)):
        dg = d[d["group"] == g.label]
        for s in g.series:
            ds = dg[dg["role"] == s]
            if len(ds) == 0:
                continue
            ax.plot(ds["layer"], ds["mean"], color=colors[s], lw=1.4, marker="o", ms=2.2, label=s)
            ax.fill_between(ds["layer"], ds["ci_low"], ds["ci_high"], color=colors[s], alpha=0.2, lw=0)
        if len(dg) == 0:
            ax.text(0.5, 0.5, f"{metric} not stored\nfor this run", ha="center", va="center", transform=ax.transAxes, color="0.4")
        ax.set_title(f"{g.label} (n={g.n})", fontsize=9)
        ax.set_xlabel("layer")
        ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
        if i % cols == 0:
            ax.set_ylabel(metric_label(metric) + (" (log scale)" if log else ""))
        if log:
            ax.set_yscale("log")
            _log_axis(ax.yaxis)
        ax.grid(alpha=0.3, lw=0.5)
    handles = [Line2D([], [], color=colors[s], lw=2, label=s) for s in series]
    legend_below(fig, handles, "role")
    _title(fig, f"{metric_label(metric).capitalize()} per layer: mean over examples, 95% bootstrap CI", groups)
    return fig


def mad_figure(groups: list[Group], mad: pd.DataFrame, metric: str) -> Figure:
    """MAD bars per segment, one bar per group, one panel per role; bootstrap CI as error bars."""
    d = mad[mad["metric"] == metric]
    series = list(dict.fromkeys(s for g in groups for s in g.series))
    gcol = group_colors(groups)
    fig = Figure(figsize=(3.2 * min(len(series), 4) + 1.6, 2.9 * _grid(len(series), 4)[0] + 0.9), layout="constrained")
    axes, cols = _axes(fig, len(series), 4, sharey=False)
    width = 0.8 / max(len(groups), 1)
    x = np.arange(len(SEGMENTS))
    for i, (ax, s) in enumerate(zip(axes, series)):
        for j, g in enumerate(groups):
            dg = d[(d["group"] == g.label) & (d["role"] == s)].set_index("segment").reindex(list(SEGMENTS))
            y = dg["mad"].to_numpy(float)
            err = np.vstack([y - dg["ci_low"].to_numpy(float), dg["ci_high"].to_numpy(float) - y])
            ax.bar(x + (j - (len(groups) - 1) / 2) * width, y, width, color=gcol[g.label],
                   yerr=np.clip(np.nan_to_num(err), 0, None), error_kw={"lw": 0.8, "capsize": 1.5})
        ax.set_xticks(x, SEGMENTS, fontsize=8)
        ax.set_title(s, fontsize=9)
        if i % cols == 0:
            ax.set_ylabel(f"MAD of {metric_label(metric)}")
        ax.grid(axis="y", alpha=0.3, lw=0.5)
    handles = [Patch(color=gcol[g.label], label=g.label) for g in groups]
    legend_below(fig, handles, "group")
    _title(fig, f"MAD between consecutive layers of the mean {metric_label(metric)} curve (thirds of depth), 95% BC bootstrap CI", groups)
    return fig


def auroc_figure(a: Group, b: Group, compare: pd.DataFrame, metrics: list[str], alpha: float = 0.05) -> Figure:
    """Heat maps (role x layer) of AUROC(b vs a) per metric; dots mark adjusted p < alpha, the adjustment
    named in words from compare.csv's ``correction`` column."""
    d = compare[(compare["group_a"] == a.label) & (compare["group_b"] == b.label)]
    codes = list(dict.fromkeys(str(c) for c in d["correction"].dropna())) if "correction" in d else []
    corr = " / ".join(CORRECTION_WORDS.get(c, c) for c in codes) or "FDR"
    metrics = [m for m in metrics if (d["metric"] == m).any()] or metrics[:1]
    series = a.series
    fig = Figure(figsize=(max(6.0, 0.2 * a.n_layers + 2.5), (0.18 * len(series) + 0.7) * len(metrics) + 1.0), layout="constrained")
    axes = np.atleast_1d(fig.subplots(len(metrics), 1, squeeze=False, sharex=True)).ravel()
    im = None
    for ax, m in zip(axes, metrics):
        grid = np.full((len(series), a.n_layers), np.nan)
        sig = np.zeros_like(grid, dtype=bool)
        dm = d[d["metric"] == m]
        r = dm["role"].map({s: i for i, s in enumerate(series)}).to_numpy()
        grid[r, dm["layer"].to_numpy(int)] = dm["auroc"].to_numpy(float)
        sig[r, dm["layer"].to_numpy(int)] = dm["p_adjusted"].to_numpy(float) < alpha
        im = ax.imshow(grid, cmap="RdBu_r", vmin=0, vmax=1, aspect="auto", interpolation="nearest")
        yy, xx = np.nonzero(sig)
        ax.scatter(xx, yy, s=4, c="black", marker="o", linewidths=0)
        ax.set_yticks(range(len(series)), series, fontsize=8)
        ax.set_ylabel(metric_label(m), fontsize=9)
    axes[-1].set_xlabel("layer")
    fig.colorbar(im, ax=list(axes), shrink=0.9, label=f"AUROC: P({b.label} > {a.label})")
    _title(fig, f"Where {b.label!r} differs from {a.label!r}: AUROC per role and layer (dot: {corr}-adjusted p < {alpha})", [a, b])
    return fig


def length_figure(groups: list[Group], points: pd.DataFrame, stats: pd.DataFrame, metric: str = "nuclear") -> Figure:
    """Response length against the per-example layer-mean metric, one panel per role, colour by group."""
    series = list(dict.fromkeys(s for g in groups for s in g.series))
    gcol = group_colors(groups)
    fig = Figure(figsize=(3.2 * min(len(series), 4) + 1.8, 2.9 * _grid(len(series), 4)[0] + 0.9), layout="constrained")
    axes, cols = _axes(fig, len(series), 4)
    for i, (ax, s) in enumerate(zip(axes, series)):
        for g in groups:
            p = points[(points["group"] == g.label) & (points["role"] == s)]
            st = stats[(stats["group"] == g.label) & (stats["role"] == s)]
            rho = st["spearman_rho"].iloc[0] if len(st) else np.nan
            ax.scatter(p["n_response_tokens"], p[metric], s=5, alpha=0.6, color=gcol[g.label], linewidths=0,
                       label=f"{g.label} (ρ={rho:.2f})")
        ok = points[(points["role"] == s)]
        if len(ok) and (ok["n_response_tokens"] > 0).all() and (ok[metric] > 0).all():
            ax.set_xscale("log")
            ax.set_yscale("log")
            _log_axis(ax.xaxis)
            _log_axis(ax.yaxis)
        ax.set_title(s, fontsize=9)
        ax.set_xlabel("response tokens")
        if i % cols == 0:
            ax.set_ylabel(f"{metric_label(metric)} (mean over layers)")
        ax.legend(fontsize=6, loc="best", handletextpad=0.2, borderpad=0.3)
        ax.grid(alpha=0.3, lw=0.5)
    _title(fig, f"Response length against {metric_label(metric)} per example (ρ: Spearman)", groups)
    return fig


def cosine_figure(groups: list[Group], cos: pd.DataFrame, kind: str) -> Figure:
    """Per group a panel of the per-layer mean cosine similarity of one kind, one line per role."""
    d = cos[cos["kind"] == kind]
    series = list(dict.fromkeys(d["role"]))
    colors = role_colors(series)
    fig = Figure(figsize=(4.2 * min(len(groups), 3) + 1.2, 3.4 * _grid(len(groups), 3)[0] + 0.9), layout="constrained")
    axes, cols = _axes(fig, len(groups), 3, sharey=True)
    what = {"next_layer": "same role, layer l vs l+1", "q_o": "q vs o, same layer", "k_v": "k vs v, same layer"}.get(kind, kind)
    for i, (ax, g) in enumerate(zip(axes, groups)):
        dg = d[d["group"] == g.label]
        for s in series:
            ds = dg[dg["role"] == s]
            ax.plot(ds["layer"], ds["mean"], color=colors[s], lw=1.4, marker="o", ms=2.2)
            ax.fill_between(ds["layer"], ds["ci_low"], ds["ci_high"], color=colors[s], alpha=0.2, lw=0)
        if len(dg) == 0:
            ax.text(0.5, 0.5, "no cosine rows\nfor this run", ha="center", va="center", transform=ax.transAxes, color="0.4")
        ax.axhline(0, color="0.5", lw=0.6)
        ax.set_title(f"{g.label} (n={g.n})", fontsize=9)
        ax.set_xlabel("layer")
        ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
        if i % cols == 0:
            ax.set_ylabel("gradient cosine similarity")
        ax.grid(alpha=0.3, lw=0.5)
    handles = [Line2D([], [], color=colors[s], lw=2, label=s) for s in series]
    legend_below(fig, handles, "role")
    _title(fig, f"Gradient cosine similarity ({what}): mean over examples, 95% bootstrap CI", groups)
    return fig


def score_distribution_figure(groups: list[Group], summary: pd.DataFrame, scores: list[str]) -> Figure:
    """One panel per score, one box per group, drawn from ``score_summary`` itself (scores_summary.csv):
    box = quartiles, line = median, whiskers = min and max, diamond = mean."""
    gcol = group_colors(groups)
    fig = Figure(figsize=(max(2.4, 0.55 * len(groups) + 1.2) * min(len(scores), 4) + 0.8, 2.9 * _grid(len(scores), 4)[0] + 1.1),
                 layout="constrained")
    axes, _ = _axes(fig, len(scores), 4)
    for ax, score in zip(axes, scores):
        stats, pos, colors = [], [], []
        for j, g in enumerate(groups):
            r = summary[(summary["group"] == g.label) & (summary["score"] == score)]
            if len(r) == 0 or int(r["n"].iloc[0]) == 0:
                continue
            r = r.iloc[0]
            stats.append({"med": r["median"], "q1": r["q25"], "q3": r["q75"], "whislo": r["min"], "whishi": r["max"],
                          "mean": r["mean"], "label": g.label})
            pos.append(j)
            colors.append(gcol[g.label])
        if stats:
            boxes = ax.bxp(stats, positions=pos, widths=0.6, showmeans=True, showfliers=False, patch_artist=True,
                           meanprops={"marker": "D", "markersize": 3, "markerfacecolor": "black", "markeredgecolor": "black"},
                           medianprops={"color": "black", "lw": 1})
            for patch, c in zip(boxes["boxes"], colors):
                patch.set_facecolor(c)
                patch.set_alpha(0.6)
        else:
            ax.text(0.5, 0.5, "no finite values", ha="center", va="center", transform=ax.transAxes, color="0.4")
        ax.set_xticks(range(len(groups)), [g.label for g in groups], fontsize=7, rotation=30 if len(groups) > 2 else 0)
        ax.set_xlim(-0.6, len(groups) - 0.4)
        ax.set_title(score, fontsize=8)
        ax.grid(axis="y", alpha=0.3, lw=0.5)
    _title(fig, "Scores per group: box = quartiles, whiskers = min and max, diamond = mean (ok examples)", groups)
    return fig


def spearman_figure(groups: list[Group], spearman: pd.DataFrame, scores: list[str]) -> Figure:
    """Heat map of Spearman's rho between scores (``scores_spearman.csv``), each cell annotated."""
    k = len(scores)
    rho = spearman.pivot(index="score_a", columns="score_b", values="rho").reindex(index=scores, columns=scores).to_numpy(float)
    n = spearman.loc[spearman["score_a"] != spearman["score_b"], "n"]
    fig = Figure(figsize=(0.62 * k + 3.6, 0.55 * k + 2.4), layout="constrained")
    ax = fig.subplots()
    im = ax.imshow(rho, cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest")
    for i in range(k):
        for j in range(k):
            v = rho[i, j]
            ax.text(j, i, "–" if np.isnan(v) else f"{v:.2f}", ha="center", va="center", fontsize=6.5,
                    color="white" if np.isfinite(v) and abs(v) > 0.6 else "black")
    ax.set_xticks(range(k), scores, rotation=40, ha="right", fontsize=7)
    ax.set_yticks(range(k), scores, fontsize=7)
    fig.colorbar(im, ax=ax, shrink=0.8, label="Spearman ρ")
    pairs = f"n = {int(n.min())}" if len(n) and n.min() == n.max() else (f"n = {int(n.min())}-{int(n.max())} per pair" if len(n) else "")
    _title(fig, f"Spearman rank correlation between scores, all groups pooled ({pairs}; – : too few or constant)", groups)
    return fig


def split_curves_figure(groups: list[Group], halves: list[Group], split: pd.DataFrame, metric: str, by: str, fraction: float) -> Figure:
    """:func:`curves_figure` of the high and low parts of a split (``split_curves.csv``), side by side;
    the title block names the report's groups, whose examples the parts are drawn from."""
    fig = curves_figure(halves, split.rename(columns={"half": "group"}), metric)
    high, low = halves
    _title(fig, f"{metric_label(metric).capitalize()} per layer, {high.label} (n={high.n}) vs {low.label} (n={low.n}): "
           f"top / bottom {100 * fraction:g}% by {by}; mean over examples, 95% bootstrap CI", groups)
    return fig


def overlay_figure(groups: list[Group], curves: pd.DataFrame, metric: str) -> Figure:
    """Per role a panel with every group's per-layer mean curve on the same axes (the paper's style), CI bands."""
    d = curves[curves["metric"] == metric]
    series = list(dict.fromkeys(s for g in groups for s in g.series))
    gcol = group_colors(groups)
    fig = Figure(figsize=(3.2 * min(len(series), 4) + 1.8, 2.9 * _grid(len(series), 4)[0] + 0.9), layout="constrained")
    axes, cols = _axes(fig, len(series), 4, sharex=True)
    log = _use_log(pd.concat([d["ci_low"], d["mean"]]), metric)
    for i, (ax, s) in enumerate(zip(axes, series)):
        for g in groups:
            ds = d[(d["group"] == g.label) & (d["role"] == s)]
            if len(ds) == 0:
                continue
            ax.plot(ds["layer"], ds["mean"], color=gcol[g.label], lw=1.4, marker="o", ms=2.0)
            ax.fill_between(ds["layer"], ds["ci_low"], ds["ci_high"], color=gcol[g.label], alpha=0.18, lw=0)
        ax.set_title(s, fontsize=9)
        ax.set_xlabel("layer")
        ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
        if i % cols == 0:
            ax.set_ylabel(metric_label(metric) + (" (log scale)" if log else ""))
        if log:
            ax.set_yscale("log")
            _log_axis(ax.yaxis)
        ax.grid(alpha=0.3, lw=0.5)
    handles = [Line2D([], [], color=gcol[g.label], lw=2, label=f"{g.label} (n={g.n})") for g in groups]
    legend_below(fig, handles, "group")
    _title(fig, f"{metric_label(metric).capitalize()} per layer, all groups on the same axes: mean over examples, 95% bootstrap CI", groups)
    return fig


def headline_figure(groups: list[Group], curves: pd.DataFrame, metric: str, role: str, why: str = "") -> Figure:
    """The report's headline: every group's per-layer mean ``metric`` curve for one ``role`` on one axis,
    95% bootstrap bands; legend outside the axes. ``why``: the role's reason, appended to the title."""
    d = curves[(curves["metric"] == metric) & (curves["role"] == role)]
    gcol = group_colors(groups)
    fig = Figure(figsize=(7.0, 4.1), layout="constrained")
    ax = fig.subplots()
    log = _use_log(pd.concat([d["ci_low"], d["mean"]]), metric)
    for g in groups:
        ds = d[d["group"] == g.label]
        if len(ds) == 0:
            continue
        ax.plot(ds["layer"], ds["mean"], color=gcol[g.label], lw=1.8, marker="o", ms=2.6, label=f"{g.label} (n={g.n})")
        ax.fill_between(ds["layer"], ds["ci_low"], ds["ci_high"], color=gcol[g.label], alpha=0.2, lw=0)
    ax.set_xlabel("layer")
    ax.set_ylabel(f"{metric_label(metric)} of {role}" + (" (log scale)" if log else ""))
    if log:
        ax.set_yscale("log")
        _log_axis(ax.yaxis)
    ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
    ax.grid(alpha=0.3, lw=0.5)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), title="group", fontsize=8, title_fontsize=8, frameon=False)
    _title(fig, f"{metric_label(metric).capitalize()} per layer, role {role}{why}: mean over examples, 95% bootstrap CI", groups)
    return fig
