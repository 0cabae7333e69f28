"""The token-shares section (runs made with ``run --token-shares``): the curve of share against
relative position in the response per group, and a few examples' text shaded by share.

Absent (``None``) when no run holds shares. Definitions: :mod:`layergrad.analysis.shares`.
"""
from __future__ import annotations

import html as _html
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from layergrad.analysis.groups import Group
from layergrad.analysis.shares import N_BINS, selected_examples, share_tables
from layergrad.store import load_shares

from . import figures

SEGMENT_ORDER = ("early", "middle", "late")
SHADE = ("late", ("mlp", "attn"))  # the segment and the module groups, first measured first, whose shares shade the examples' text
CAPTIONS = {
    "token_shares": f"Mean over examples of the summed share of the response tokens in each of {N_BINS} bins of relative position "
                    "(0 = first response token, 1 = last); per segment (third of the depth) and module group.",
    "token_shares_summary": "Per group, segment and module group: mean share of the prompt tokens, of the response tokens, and of the "
                            "last bin of the response; n = examples.",
}


def load(per_run: list[tuple[Path, list[Group]]]) -> tuple[pd.DataFrame, dict[str, str]]:
    """Every run's shares (ok examples of the groups only) and id -> group label."""
    frames, group_of = [], {}
    for path, groups in per_run:
        ids = {str(e): g.label for g in groups for e in g.ids}
        s = load_shares(path, ids)
        if len(s):
            frames.append(s)
            group_of.update({e: ids[e] for e in dict.fromkeys(s["id"])})
    return (pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()), group_of


def curve_figure(groups: list[Group], curve: pd.DataFrame) -> Figure:
    """Rows: segments; columns: module groups; one line per group."""
    colors = figures.group_colors(groups)
    mgs = list(dict.fromkeys(curve["module_group"]))
    segs = [s for s in SEGMENT_ORDER if s in set(curve["segment"])]
    fig = Figure(figsize=(4.2 * len(mgs) + 1.4, 2.6 * len(segs) + 1.0), layout="constrained")
    axes = fig.subplots(len(segs), len(mgs), squeeze=False, sharex=True, sharey=True)
    for r, seg in enumerate(segs):
        for c, mg in enumerate(mgs):
            ax = axes[r][c]
            for g in groups:
                d = curve[(curve["group"] == g.label) & (curve["segment"] == seg) & (curve["module_group"] == mg)]
                if len(d):
                    ax.plot((d["rel_low"] + d["rel_high"]) / 2, d["share"], color=colors[g.label], lw=1.5, marker="o", ms=2.5)
            ax.axhline(1 / N_BINS, color="0.6", lw=0.6, ls="--")
            ax.set_title(f"{seg} layers, {mg}", fontsize=9)
            if r == len(segs) - 1:
                ax.set_xlabel("relative position in the response")
            if c == 0:
                ax.set_ylabel("share of |G|² per bin")
            ax.grid(alpha=0.3, lw=0.5)
    handles = [Line2D([], [], color=colors[g.label], lw=2, label=g.label) for g in groups if g.label in set(curve["group"])]
    figures.legend_below(fig, handles, "group")
    figures._title(fig, "Where in the response the gradient comes from: mean token share per bin "
                        "(dashed: 1/bins, all of it spread evenly over the response)", groups)
    return fig


def shaded_html(rows: pd.DataFrame) -> str:
    """One example's tokens as spans, background alpha ``|share| / max |share|`` (orange: positive, blue: negative);
    prompt tokens in italics; the share in each span's title."""
    rows = rows.sort_values("position")
    top = float(np.nanmax(np.abs(rows["share"].to_numpy()))) if len(rows) else 0.0
    spans = []
    for r in rows.itertuples():
        v = float(r.share)
        a = 0.0 if not np.isfinite(v) or top == 0 else min(abs(v) / top, 1.0)
        rgb = "230,120,0" if v >= 0 else "30,100,220"
        style = f"background: rgba({rgb},{a:.3f})" + ("" if r.response else "; font-style: italic; color: #777")
        text = _html.escape(r.token or "")
        spans.append(f'<span style="{style}" title="position {r.position}: share {v:.4g}">{text}</span>')
    return '<div class="shaded">' + "".join(spans) + "</div>"


def section(per_run, groups: list[Group], out: Path, fig, table, html, write_table):
    """The section, or ``None`` when no run holds shares. ``fig``/``table``/``write_table``: build.py's helpers."""
    shares, group_of = load(per_run)
    if not len(shares):
        return None, {}, {}
    curve, summary = share_tables(shares, group_of)
    tabs = {"token_shares": curve, "token_shares_summary": summary}
    files = {name: write_table(df, out, name, CAPTIONS[name]) for name, df in tabs.items()}
    sec = html.Section("token_shares", "Where in the response the gradient comes from",
                       "Token t's share of a module's gradient G = sum_t d_t x_t^T is <d_t x_t^T, G> / |G|²; summed over the modules of "
                       "a group (attn: q, k, v, o; mlp: gate, up, down) and the layers of a third of the depth, weighted by |G|² "
                       "(run --token-shares). Position t's output gradient carries the loss of predicting token t + 1, so the last "
                       "token's share is 0; prompt tokens have shares too (through attention).")
    sec.figures.append(fig(curve_figure(groups, curve), out, "token_shares", CAPTIONS["token_shares"]))
    sec.tables.append(table("token_shares_summary.csv", summary, files["token_shares_summary"], None, False, "token_shares_summary"))
    sec.tables.append(table("token_shares.csv", curve, files["token_shares"], 2000, True, "token_shares"))
    seg, wanted = SHADE
    measured = set(shares.loc[shares["segment"] == seg, "module_group"])
    mg = next((m for m in (*wanted, *sorted(measured)) if m in measured), None)
    for g in groups if mg is not None else []:  # no shares of that segment at all: no shaded text (the curve says it)
        ids = [str(e) for e in g.ids if group_of.get(str(e)) == g.label]
        for eid in selected_examples(shares, ids):
            rows = shares[(shares["id"] == eid) & (shares["segment"] == seg) & (shares["module_group"] == mg)]
            if not len(rows):
                continue
            ref = html.TableRef(title=f"{g.label}: example {eid}, shaded by its {seg}-layer {mg} shares",
                                html=html.jinja2.utils.markupsafe.Markup(shaded_html(rows)), files=[], n_rows=len(rows),
                                caption="Background: |share| relative to the example's largest (orange positive, blue negative); "
                                        "prompt tokens in grey italics; hover a token for its share.")
            sec.tables.append(ref)
    return sec, tabs, files
