"""The verdict table (first screen of a report and of an experiment overview) and the short findings.

This is the ONE place that reads the analysis' verdicts for display: :func:`verdict_table` turns the
findings' rows into cells (verdict word, effect text, interval, reason, css class); :func:`table_html`
and :func:`short_findings_html` only lay those out. To show another analysis' verdicts, change
:func:`verdict_table` (and :data:`CSS`) and nothing else.
"""
from __future__ import annotations

import html as htmllib
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from . import findings
from .tables import fmt

#: verdict word -> css class (colour). A word not listed gets ``v-missing`` (grey, muted).
CSS = {
    "lower at equal length": "v-holds", "higher at equal length": "v-holds", "reversed at equal length": "v-holds",
    "hidden by length": "v-holds", "more even": "v-holds", "less even": "v-holds",
    "explained by length": "v-length", "unclear at equal length": "v-length", "not separable from length": "v-length",
    "lower, length not controlled": "v-uncontrolled", "higher, length not controlled": "v-uncontrolled",
    "negligible difference": "v-none", "no clear difference": "v-none", "no clear difference in evenness": "v-none",
    "mixed evenness": "v-none",
}
LEGEND = (("v-holds", "a difference at equal length (or in evenness)"), ("v-length", "length explains it, or may"),
          ("v-none", "no clear or a negligible difference"), ("v-uncontrolled", "significant, length not controlled"),
          ("v-missing", "no inference"))


@dataclass
class Cell:
    verdict: str  # the verdict word(s), as the analysis names them
    effect: str  # the effect in words, e.g. "×1.23 at equal length"
    interval: str  # e.g. "95% CI 1.10–1.37"; "" when there is none (``reason`` says why)
    reason: str  # why there is no interval or no equal-length effect, and small-sample flags; "" when none
    css: str  # the colour class (:data:`CSS`)


@dataclass
class VerdictTable:
    columns: list[tuple[str, str]]  # (key, header): key = "<kind>:<metric>"
    rows: list[tuple[str, dict[str, Cell]]] = field(default_factory=list)  # (row label, key -> cell)


def column_key(row: dict) -> str:
    return f"{row['kind']}:{row['metric']}"


def column_header(key: str) -> str:
    kind, metric = key.split(":", 1)
    name = findings.NAMES.get(metric, metric)
    return f"Evenness of the {name} curve" if kind == "evenness" else name[0].upper() + name[1:]


def _num(v) -> float:
    try:
        v = float(v)
    except (TypeError, ValueError):
        return float("nan")
    return v


def _small(r: dict) -> list[str]:
    n_a, n_b = _num(r.get("n_a")), _num(r.get("n_b"))
    if np.isfinite(n_a) and np.isfinite(n_b) and min(n_a, n_b) < findings.SMALL_N:
        return [f"small sample: n = {fmt(int(n_a))} and {fmt(int(n_b))} (< {findings.SMALL_N} in a group)"]
    return []


def _ci(lo, hi) -> str:
    lo, hi = _num(lo), _num(hi)
    return f"95% CI {fmt(lo)}–{fmt(hi)}" if np.isfinite(lo) and np.isfinite(hi) else ""


def cell(r: dict) -> Cell:
    """One findings row (a dict with findings.FINDINGS_COLUMNS) as a cell; see :func:`verdict_table`."""
    verdict = str(r["verdict"])
    css = CSS.get(verdict, "v-missing")
    flags = _small(r)
    if r["kind"] == "evenness":
        roles = _num(r.get("roles"))
        if not (np.isfinite(roles) and roles > 0):
            return Cell(verdict, "no comparison", "", "; ".join([str(r.get("reason") or "no role could be compared"), *flags]), css)
        effect = (f"rougher in {fmt(int(_num(r['roles_less_even'])))}, smoother in {fmt(int(_num(r['roles_more_even'])))} "
                  f"of {fmt(int(roles))} roles")
        return Cell(verdict, effect, "", "; ".join(["relative roughness, Bonferroni over roles", *flags]), css)
    if verdict == "no inference":
        return Cell(verdict, "no effect", "", "; ".join([str(r.get("reason") or "no interval or test is possible"), *flags]), css)
    lc = str(r.get("length_control") or "")
    if lc in ("equal", "model"):
        effect = f"×{fmt(_num(r['adj_ratio']))} at equal length" + (" (exact)" if lc == "equal" else "")
        return Cell(verdict, effect, _ci(r.get("adj_ci_low"), r.get("adj_ci_high")),
                    "; ".join([f"overall ×{fmt(_num(r['ratio']))}", *flags]), css)
    effect = f"×{fmt(_num(r['ratio']))} overall"
    why = {"lengths unknown": "no effect at equal length: response lengths unknown",
           "no common support": "no effect at equal length: the lengths do not overlap (cut one group to the other's lengths)",
           }.get(lc, str(r.get("reason") or ""))
    return Cell(verdict, effect, _ci(r.get("ci_low"), r.get("ci_high")), "; ".join(x for x in (why, *flags) if x), css)


def verdict_table(rows: pd.DataFrame, label=None) -> VerdictTable:
    """The first screen's table from the findings' rows.

    Input contract: ``rows`` has one row per (pair of groups, headline metric) with the columns of
    ``findings.csv`` (:data:`layergrad.report.findings.FINDINGS_COLUMNS`); used here:
    ``group_a, group_b`` (the pair: b is compared against a), ``metric``, ``kind`` (``level`` or
    ``evenness``), ``verdict`` (:mod:`layergrad.analysis.verdicts`; colours in :data:`CSS`), ``n_a, n_b``;
    level rows: ``ratio, ci_low, ci_high`` (overall), ``length_control`` and ``adj_ratio, adj_ci_low,
    adj_ci_high`` (at equal length), ``reason``; evenness rows: ``roles, roles_more_even,
    roles_less_even, reason``. Missing values may be NaN or None.
    ``label(row) -> str`` names a table row (default ``"<group_b> vs <group_a>"``; the overview adds
    model and comparison). Columns appear in the order of their first row; a pair without a row for
    a column gets no cell there.
    """
    label = label or (lambda r: f"{r['group_b']} vs {r['group_a']}")
    recs = rows.to_dict("records")
    keys = list(dict.fromkeys(column_key(r) for r in recs))
    table = VerdictTable([(k, column_header(k)) for k in keys])
    by_row: dict[str, dict[str, Cell]] = {}
    for r in recs:
        by_row.setdefault(label(r), {})[column_key(r)] = cell(r)
    table.rows = list(by_row.items())
    return table


def table_html(table: VerdictTable, caption: str = "") -> str:
    """The table as HTML (class ``verdicts``), with a colour legend."""
    e = htmllib.escape
    out = ['<table class="verdicts">']
    if caption:
        out.append(f"<caption>{e(caption)}</caption>")
    out.append("<thead><tr><th>comparison</th>" + "".join(f"<th>{e(h)}</th>" for _, h in table.columns) + "</tr></thead><tbody>")
    for name, cells in table.rows:
        tds = []
        for key, _ in table.columns:
            c = cells.get(key)
            if c is None:
                tds.append('<td class="v-missing"><span class="reason">not computed for this pair</span></td>')
                continue
            parts = [f'<span class="word">{e(c.verdict)}</span>', f'<span class="effect">{e(c.effect)}</span>']
            parts += [f'<span class="ci">{e(c.interval)}</span>'] if c.interval else []
            parts += [f'<span class="reason">{e(c.reason)}</span>'] if c.reason else []
            tds.append(f'<td class="{c.css}">{"".join(parts)}</td>')
        out.append(f'<tr><td class="pair">{e(name)}</td>{"".join(tds)}</tr>')
    out.append("</tbody></table>")
    used = {c.css for _, cells in table.rows for c in cells.values()}
    out.append('<p class="legend">' + "".join(f'<span class="{k}">{e(t)}</span>' for k, t in LEGEND if k in used) + "</p>")
    return "".join(out)


def short_findings_html(rows: pd.DataFrame, href: str = "findings.csv") -> str:
    """One line per finding (verdict, metric, pair, effect), its full sentence with linked numbers one click
    away (a ``details`` element); grouped by pair."""
    if len(rows) == 0:
        return "<p>One group only: no comparison to state. The curves below describe it.</p>"
    e = htmllib.escape
    out, last = [], None
    for i, r in enumerate(rows.to_dict("records")):
        pair = (r["group_a"], r["group_b"])
        if pair != last:
            out.append(("</ul>" if last is not None else "") + f'<h3>{e(str(r["group_b"]))} vs {e(str(r["group_a"]))}</h3><ul class="findings">')
            last = pair
        c = cell(r)
        what = column_header(column_key(r))
        line = f"<strong>{e(what)}</strong>: {e(c.verdict)}; {e(c.effect)}" + (f" ({e(c.interval)})" if c.interval else "") + "."
        if _small(r):
            line += f" Small sample: n = {e(fmt(r['n_a']))} and {e(fmt(r['n_b']))}."
        out.append(f'<li class="{c.css}"><details><summary>{line}</summary><div>{findings.sentence_html(r, i + 1, href)}</div></details></li>')
    out.append("</ul>")
    return "".join(out)
